"""The command lines generated from the parameter models: every field reachable,
help with description and default, --version, today's flags, one error line."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

ROOT = Path(__file__).resolve().parents[2]
BATCH_REQUIRED = ["--source", "in.csv", "--output", "out.parquet"]


def commands() -> list[tuple[type[BaseModel], Any, list[str]]]:
    from flows.cli import parse_batch_args, parse_retrain_args
    from flows.parameters import BatchInferenceParameters, RetrainParameters

    return [
        (RetrainParameters, parse_retrain_args, []),
        (BatchInferenceParameters, parse_batch_args, BATCH_REQUIRED),
    ]


def leaf_settings(model: type[BaseModel]) -> list[tuple[str, ...]]:
    """Every leaf field's path, walked here independently of flows.options."""
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += [(name, *sub) for sub in leaf_settings(annotation)]
        else:
            paths.append((name,))
    return paths


def value_at(params: BaseModel, path: tuple[str, ...]) -> Any:
    for name in path:
        params = getattr(params, name)
    return params


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: Any = value
    for name in reversed(path):
        out = {name: out}
    return out


def other_value(model: type[BaseModel], path: tuple[str, ...]) -> tuple[Any, list]:
    """A valid non-default value of the field and the argv words that set it."""
    from flows.options import Setting

    default = value_at(model(**required_values(model)), path)
    flag = Setting(path, model.model_fields[path[0]]).flag
    if isinstance(default, bool):
        off = "--no-" + flag.removeprefix("--")
        return (not default), [off if default else flag]
    schema_words = ["never", "force", "DEBUG", "ERROR", "fasttext", "sif", "mean"]
    schema_words += ["linear_svc", "random_forest", "none", "auto", "balanced"]
    candidates: list[Any] = []
    if isinstance(default, int):
        candidates = [default + 1, default - 1, 2, 10]
    elif isinstance(default, float):
        candidates = [default / 2, default + 0.1, 0.5, 1.0]
    candidates += [7, 12, 0.5, "s3-bucket/other-results", "other", "body", "1"]
    candidates += schema_words
    for candidate in candidates:
        if candidate == default:
            continue
        try:
            built = model.model_validate(
                {**required_values(model), **nested(path, candidate)}
            )
        except ValidationError:
            continue
        expected = value_at(built, path)
        if expected != default:
            return expected, [flag, str(candidate)]
    raise AssertionError(f"no other valid value found for {'.'.join(path)}")


def required_values(model: type[BaseModel]) -> dict[str, Any]:
    return {
        name: f"{name}.value"
        for name, field in model.model_fields.items()
        if field.is_required()
    }


def snake_case(word: str) -> str:
    """A flag spelled as its field (``--no-features.skip_gram``); values unchanged."""
    if not word.startswith("--"):
        return word
    prefix = "--no-" if word.startswith("--no-") else "--"
    return prefix + word.removeprefix(prefix).replace("-", "_")


def test_every_field_of_both_models_is_reachable_from_the_command_line() -> None:
    for model, parse, _ in commands():
        paths = leaf_settings(model)
        assert len(paths) > 10
        for path in paths:
            expected, words = other_value(model, path)
            argv = words + [
                word
                for name, value in required_values(model).items()
                if name != path[0]
                for word in (f"--{name}", value)
            ]
            assert value_at(parse(argv), path) == expected, (path, argv)
            # The same flag spelled as the field (underscores) sets it too.
            snake = [snake_case(word) for word in argv]
            assert value_at(parse(snake), path) == expected, (path, snake)


def test_a_nested_flag_sets_that_value_and_leaves_the_rest_at_the_defaults() -> None:
    from flows.cli import parse_retrain_args
    from flows.parameters import RetrainParameters

    for spelling in ("--features.vector-size", "--features.vector_size"):
        params = parse_retrain_args([spelling, "150"])
        assert params.features.vector_size == 150
        assert (
            params.model_copy(update={"features": RetrainParameters().features})
            == RetrainParameters()
        )
    params = parse_retrain_args(
        ["--no-features.stem", "--clustering.n-clusters", "9", "--training.C", "0.5"]
    )
    assert params.features.stem is False and params.clustering.n_clusters == 9
    assert params.training.C == 0.5


def help_lines(parser: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One entry per option: its flags and its help, unwrapped."""
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside a help text
    entries: list[str] = []
    for line in parser.format_help().splitlines():
        if line.lstrip().startswith("-"):
            entries.append(line.strip())
        elif line.startswith("    ") and entries:  # help below a long flag
            entries[-1] += " " + line.strip()
        else:
            entries.append(line)
    return entries


def test_help_shows_every_flag_with_its_description_and_default(monkeypatch) -> None:
    from flows.cli import batch_parser, retrain_parser
    from flows.options import Setting
    from flows.parameters import BatchInferenceParameters, RetrainParameters

    for model, parser in [
        (RetrainParameters, retrain_parser()),
        (BatchInferenceParameters, batch_parser()),
    ]:
        lines = help_lines(parser, monkeypatch)
        defaults = model.model_construct()
        for path in leaf_settings(model):
            owner: Any = model
            for name in path[:-1]:
                owner = owner.model_fields[name].annotation
            field = owner.model_fields[path[-1]]
            flag = Setting(path, field).flag
            entry = [
                line for line in lines if line.startswith((flag + " ", flag + ","))
            ]
            assert len(entry) == 1, (flag, entry)
            shown = entry[0]
            assert " ".join(field.description.split()) in shown, flag
            if field.is_required():
                assert "(required)" in shown, flag
                continue
            assert "(default: " in shown, flag
            default = value_at(defaults, path)
            if default is not None:
                text = str(default).lower() if isinstance(default, bool) else default
                assert f"(default: {text})" in shown, (flag, shown)
        # Underscore spellings are accepted but not listed twice.
        flags = {line.split(" ")[0].rstrip(",") for line in lines if line[:1] == "-"}
        assert not [flag for flag in flags if "_" in flag]


def test_help_keeps_todays_short_flags_beside_the_generated_ones(monkeypatch) -> None:
    from flows.cli import SHORT_FLAGS, batch_parser, retrain_parser

    shown = "\n".join(help_lines(retrain_parser(), monkeypatch))
    assert "--clustering.n-clusters N|auto, --n-clusters N|auto" in shown
    assert "--ingestion.text-column TEXT, --text-column TEXT" in shown
    assert "(default: auto)" in shown and "(default: champion)" not in shown
    batch = "\n".join(help_lines(batch_parser(), monkeypatch))
    assert "(default: champion)" in batch and "--id-column TEXT" in batch
    assert "usage: python -m flows.batch_inference --source TEXT --output TEXT" in batch
    retrain_fields = {".".join(p) for p in leaf_settings(commands()[0][0])}
    assert set(SHORT_FLAGS) <= retrain_fields


def test_todays_flags_work_as_documented() -> None:
    from flows.cli import parse_batch_args, parse_retrain_args

    params = parse_retrain_args(
        ["--source", "x.csv", "--n-clusters", "7", "--seed", "3"]
        + ["--text-column", "body", "--id-column", "key", "--encoding", "latin-1"]
        + ["--log-level", "DEBUG", "--artifacts-dir", "out", "--promote", "never"]
        + ["--promotion-config", "p.yaml", "--category-map", ""]
    )
    assert params.source == "x.csv" and params.artifacts_dir == "out"
    assert params.clustering.n_clusters == 7 and params.seed == 3
    assert params.ingestion.text_column == "body"
    assert params.ingestion.id_column == "key"
    assert params.log_level == "DEBUG" and params.ingestion.encoding == "latin-1"
    assert params.promote == "never" and params.promotion_config == "p.yaml"
    assert params.category_map is None  # empty: name clusters by their words
    assert parse_retrain_args(["--n-clusters", "auto"]).clustering.n_clusters == "auto"
    assert parse_retrain_args([]).clustering.n_clusters == "auto"
    batch = parse_batch_args(
        BATCH_REQUIRED
        + ["--model", "3", "--artifacts-dir", "store", "--log-level", "WARNING"]
        + ["--promotion-config", "p.yaml", "--text-column", "body"]
        + ["--id-column", "key", "--encoding", "utf-8"]
    )
    assert (batch.source, batch.output, batch.model) == ("in.csv", "out.parquet", "3")
    assert batch.artifacts_dir == "store" and batch.log_level == "WARNING"
    assert batch.promotion_config == "p.yaml" and batch.ingestion.encoding == "utf-8"
    assert (batch.ingestion.text_column, batch.ingestion.id_column) == ("body", "key")


def test_command_line_defaults_are_the_models() -> None:
    from flows.cli import parse_batch_args, parse_retrain_args
    from flows.parameters import BatchInferenceParameters, RetrainParameters

    assert parse_retrain_args([]) == RetrainParameters()
    batch = parse_batch_args(BATCH_REQUIRED)
    assert batch == BatchInferenceParameters(source="in.csv", output="out.parquet")


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("argv", [["--version"], ["--seed", "3", "--version"]])
def test_version_is_the_pyproject_version(argv, capsys) -> None:
    from flows.cli import parse_batch_args, parse_retrain_args

    for parse in (parse_retrain_args, parse_batch_args):
        with pytest.raises(SystemExit) as exit_info:
            parse(argv)
        assert exit_info.value.code == 0
        assert capsys.readouterr().out == f"tweetflow {project_version()}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
        (
            ["--features.vector-size", "-3"],
            "argument --features.vector-size: input should be greater than or "
            "equal to 8, not -3",
        ),
        (
            ["--features.vector_size", "x"],
            "argument --features.vector_size: invalid int value: 'x'",
        ),
        (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
        (["--feat", "1"], "unrecognized arguments: --feat 1"),  # no abbreviations
        (
            ["--n-clusters", "many"],
            "argument --clustering.n-clusters/--n-clusters: must be 'auto' or a "
            "number, not 'many'",
        ),
        (["--promote", "sometimes"], "invalid choice: 'sometimes'"),
        (["--log-level", "LOUD"], "invalid choice: 'LOUD'"),
        (
            ["--clustering.k-min", "9", "--clustering.k-max", "3"],
            "argument --clustering.*: k_min must not exceed k_max",
        ),
        (["--result-storage", "/tmp/r"], "argument --result-storage: string should"),
        (["--training.classifier", "xgboost"], "invalid choice: 'xgboost'"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(argv, message, capsys) -> None:
    from flows.cli import parse_retrain_args

    with pytest.raises(SystemExit) as exit_info:
        parse_retrain_args(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0] and "Traceback" not in captured.err
    assert lines[0].endswith("(see python -m flows.retrain --help)")
    assert captured.out == ""


def test_batch_needs_its_source_and_output(capsys) -> None:
    from flows.cli import parse_batch_args

    with pytest.raises(SystemExit) as exit_info:
        parse_batch_args(["--source", "in.csv"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: argument --output: field required "
        "(see python -m flows.batch_inference --help)"
    ]


# --- the tweetflow console script -------------------------------------------


@pytest.fixture
def tweetflow(monkeypatch: pytest.MonkeyPatch):
    """``flows.cli.main`` with an exit that pytest can catch."""
    import flows.cli

    monkeypatch.setattr(flows.cli, "exit_now", lambda code: sys.exit(code))

    def run(*argv: str) -> int:
        with pytest.raises(SystemExit) as exit_info:
            flows.cli.main(list(argv))
        code = exit_info.value.code
        return code if isinstance(code, int) else int(code is not None)

    return run


def test_tweetflow_commands_reach_the_flows_command_lines(tweetflow, capsys) -> None:
    assert tweetflow("--version") == 0
    assert capsys.readouterr().out == f"tweetflow {project_version()}\n"
    assert tweetflow("retrain", "--help") == 0
    assert "usage: tweetflow retrain [options]" in capsys.readouterr().out
    assert tweetflow("infer", "--help") == 0
    assert "--output TEXT" in capsys.readouterr().out
    assert tweetflow("retrain", "--seed", "x") == 2
    assert capsys.readouterr().err == (
        "error: argument --seed: invalid int value: 'x' (see tweetflow retrain --help)\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "error: a command is required: retrain, infer, promote"),
        (("frob",), "error: unknown command 'frob'"),
        (("--bogus",), "error: unrecognized arguments: --bogus"),
    ],
)
def test_tweetflow_bad_commands_are_one_error_line(
    tweetflow, capsys, argv, message
) -> None:
    assert tweetflow(*argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_tweetflow_promote_is_flows_promote_command_line(tweetflow, capsys) -> None:
    assert tweetflow("promote", "--help") == 0
    shown = capsys.readouterr().out
    assert "usage: tweetflow promote --to TEXT [options]" in shown
    assert "The registered version to make the champion" in shown
    assert tweetflow("promote") == 2
    assert capsys.readouterr().err == (
        "error: argument --to: field required (see tweetflow promote --help)\n"
    )


def test_the_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"tweetflow": "flows.cli:main"}
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in makefile
