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


# The command line generated from these models: tests/unit/test_cli.py.


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
