"""Real commands for the reliability suite: ``python -m <flow>`` subprocesses
against one real Prefect server (the ``server_env`` fixture in conftest.py),
with the settings that keep a retrain on a few hundred tweets fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 200.0  # seconds per command, on a loaded 2-core machine
# The fast settings every reliability test retrains with (tests/conftest.py
# small_params, as command-line options).
FAST = [
    "--features.min-count",
    "2",
    "--features.workers",
    "1",
    "--features.vector-size",
    "32",
    "--clustering.k-min",
    "2",
    "--clustering.k-max",
    "4",
    "--clustering.selection-sample",
    "300",
    "--clustering.n-init",
    "1",
]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``python -m args...``, its stdout and stderr to ``log``.out/.err."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log.with_suffix(".out"), "w") as out,
        open(log.with_suffix(".err"), "w") as err,
    ):
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=out, stderr=err
        )


def finish(proc: subprocess.Popen, log: Path) -> SimpleNamespace:
    """Wait (bounded) for a started command: its ``code``, ``out`` and ``err``."""
    try:
        code = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return SimpleNamespace(
        code=code,
        out=log.with_suffix(".out").read_text(),
        err=log.with_suffix(".err").read_text(),
    )


def retrain(source: str | Path, store: str | Path, *extra: str) -> list[str]:
    """The arguments of a fast retrain of ``source`` into ``store``."""
    return [
        "flows.retrain",
        "--source",
        str(source),
        "--artifacts-dir",
        str(store),
        *FAST,
        *extra,
    ]


def batch_inference(
    source: str | Path, output: str | Path, store: str | Path
) -> list[str]:
    """The arguments of a batch inference of ``source`` with the champion."""
    return [
        "flows.batch_inference",
        "--source",
        str(source),
        "--output",
        str(output),
        "--model",
        "champion",
        "--artifacts-dir",
        str(store),
    ]
