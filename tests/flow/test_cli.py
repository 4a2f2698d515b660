"""The command line: bad input gives one clear error line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.retrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("make_source", "expected"),
    [
        (lambda d: d / "nope.csv", "does not exist"),
        (
            lambda d: (d / "t.xlsx").write_text("x") and d / "t.xlsx",
            "unsupported format",
        ),
        (
            lambda d: (d / "c.parquet").write_bytes(b"garbage") and d / "c.parquet",
            "cannot read",
        ),
        (
            lambda d: (d / "h.csv").write_text("id,note\n1,hi\n") and d / "h.csv",
            "no text column",
        ),
    ],
)
def test_bad_source_is_one_line_and_nonzero(
    tmp_path: Path, make_source, expected: str
) -> None:
    result = cli(
        "--source", str(make_source(tmp_path)), "--artifacts-dir", str(tmp_path / "a")
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "a" / "LATEST").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-clusters", "many"], "must be 'auto' or a number, not 'many'"),
        (["--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
        (["--features.vector-size", "-3"], "greater than or equal to 8, not -3"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli(*args, "--artifacts-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == "" and not (tmp_path / "LATEST").exists()


def test_help_and_version_need_no_prefect_server() -> None:
    """Neither starts a server (the local one, or a temporary one)."""

    env = {**os.environ, "TWEETFLOW_LOCAL_SERVER": "1", "PREFECT_PORT": "9"}
    for args in (["--help"], ["--version"]):
        done = subprocess.run(
            [sys.executable, "-m", "flows.retrain", *args],
            cwd=ROOT,
            env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout
    assert "--features.vector-size N" in cli("--help").stdout


def test_text_column_option_is_honoured(tmp_path: Path) -> None:
    source = tmp_path / "h.csv"
    source.write_text("id,body\n1,hi\n")
    result = cli(
        "--source",
        str(source),
        "--text-column",
        "missing",
        "--artifacts-dir",
        str(tmp_path),
    )
    assert result.returncode != 0
    assert "no text column 'missing'" in result.stderr


def test_too_little_data_fails_in_the_flow_with_one_error_line(tmp_path: Path) -> None:
    source = tmp_path / "blank.csv"
    source.write_text('text\n" "\n"\t"\n"&nbsp;"\n')
    result = cli("--source", str(source), "--artifacts-dir", str(tmp_path / "a"))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "preparation: none of the 3 tweets is usable" in errors[0]
    assert "text is empty after cleaning: 3" in errors[0]
    assert not (tmp_path / "a" / "LATEST").exists()
