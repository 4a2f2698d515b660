"""The flow's parameter model: what the Prefect UI form and the CLI are built from."""

from __future__ import annotations

import pytest
from pydantic import ValidationError


def walk(schema: dict, definitions: dict, path: str = "") -> list[str]:
    """Paths of properties without a description, following $refs."""
    missing = []
    for name, prop in schema.get("properties", {}).items():
        where = f"{path}.{name}" if path else name
        if "$ref" in prop:
            target = definitions[prop["$ref"].rsplit("/", 1)[-1]]
            missing += walk(target, definitions, where)
        if not prop.get("description"):
            missing.append(where)
    return missing


def test_every_parameter_has_a_description() -> None:
    from flows.retrain import retrain

    schema = retrain.parameters.model_dump()
    assert walk(schema, schema["definitions"]) == []
    assert "log_level" in schema["properties"]
    assert schema["properties"]["clustering"]["$ref"].endswith("ClusteringConfig")


def test_flow_signature_is_the_parameter_model() -> None:
    """The flow's form and the model cannot drift apart: same names, same defaults."""
    import inspect

    from flows.parameters import RetrainParameters
    from flows.retrain import retrain

    signature = inspect.signature(retrain.fn)
    assert list(signature.parameters) == list(RetrainParameters.model_fields)
    defaults = RetrainParameters()
    for name, parameter in signature.parameters.items():
        assert parameter.default == getattr(defaults, name), name
    # The form's descriptions (from the flow docstring) are the model's.
    form = retrain.parameters.model_dump()["properties"]
    for name, field in RetrainParameters.model_fields.items():
        assert " ".join(form[name]["description"].split()) == " ".join(
            field.description.split()
        ), name


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("local", True),
        ("s3-bucket/tweetflow-results", True),
        ("/tmp/results", False),
        ("s3://bucket/prefix", False),
        ("", False),
    ],
)
def test_result_storage_is_local_or_a_block_slug(value: str, ok: bool) -> None:
    from flows.parameters import RetrainParameters

    if ok:
        assert RetrainParameters(result_storage=value).result_storage == value
    else:
        with pytest.raises(ValidationError, match="result_storage"):
            RetrainParameters(result_storage=value)


def test_cli_arguments_map_onto_the_parameter_model() -> None:
    from flows.cli import parse_retrain_args as parse_args

    params = parse_args(
        [
            "--source",
            "x.csv",
            "--n-clusters",
            "7",
            "--seed",
            "3",
            "--text-column",
            "body",
            "--id-column",
            "key",
            "--encoding",
            "latin-1",
            "--log-level",
            "DEBUG",
            "--artifacts-dir",
            "out",
        ]
    )
    assert params.source == "x.csv" and params.artifacts_dir == "out"
    assert params.clustering.n_clusters == 7 and params.seed == 3
    assert (
        params.ingestion.text_column == "body" and params.ingestion.id_column == "key"
    )
    assert params.log_level == "DEBUG" and params.ingestion.encoding == "latin-1"
    assert parse_args([]).clustering.n_clusters == "auto"


def test_command_line_defaults_are_the_models_and_help_shows_them(capsys) -> None:
    from flows.cli import batch_parser, parse_batch_args, parse_retrain_args
    from flows.parameters import BatchInferenceParameters, RetrainParameters

    assert parse_retrain_args([]) == RetrainParameters()
    batch = parse_batch_args(["--source", "in.csv", "--output", "out.parquet"])
    assert batch == BatchInferenceParameters(source="in.csv", output="out.parquet")
    with pytest.raises(SystemExit):
        batch_parser().parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: champion)" in shown and "(default: artifacts)" in shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-clusters", "many"], "--n-clusters must be 'auto' or a number"),
        (["--promote", "sometimes"], "invalid choice: 'sometimes'"),
        (["--log-level", "LOUD"], "invalid choice: 'LOUD'"),
        (["--seed", "x"], "invalid int value"),
    ],
)
def test_bad_arguments_are_one_usage_error(argv, message, capsys) -> None:
    from flows.cli import parse_retrain_args

    with pytest.raises(SystemExit) as exit_info:
        parse_retrain_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_invalid_settings_are_rejected() -> None:
    from flows.parameters import RetrainParameters

    with pytest.raises(ValidationError):
        RetrainParameters.model_validate({"clustering": {"k_min": 9, "k_max": 3}})
    with pytest.raises(ValidationError):
        RetrainParameters.model_validate({"training": {"classifier": "xgboost"}})
    with pytest.raises(ValidationError):
        RetrainParameters.model_validate(
            {"preparation": {"validation_fraction": 0.4, "evaluation_fraction": 0.4}}
        )
    with pytest.raises(ValidationError):
        RetrainParameters.model_validate({"unknown": 1})
