"""Quiet when healthy: the default command line prints no traceback and no
error-level line from Prefect's own services, with no network to report to.

The command is run as a person runs it: no ``PREFECT_API_URL``, no analytics
setting in the environment (the command turns analytics off itself, also for
the temporary server it starts), a fresh ``PREFECT_HOME``. Both default paths
are tried: Prefect's temporary server (``TWEETFLOW_LOCAL_SERVER=0``) and the
local server the command starts on a free port (stopped with
``deployments/embedded.sh down``, its pid killed whatever ``down`` did).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

from tests.reliability.faults import record
from tests.reliability.runs import retrain_args
from tests.servers import BIN, REPO, free_port

RUN_TIMEOUT = 400
# What a healthy run must never print on stderr.
NOISE = re.compile(
    r"Traceback|\sERROR\s|\| ERROR|\| CRITICAL|database is locked"
    r"|telemetry.*(error|fail)|(error|fail).*telemetry|Exception in",
    re.IGNORECASE,
)


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a person's shell: no Prefect or analytics settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "TWEETFLOW_"))
    }
    return env | {"PREFECT_HOME": str(tmp_path / "prefect-home"), **extra}


def noise(stderr: str) -> list[str]:
    """The stderr lines a healthy run must not print."""
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a command from the repo root, output captured."""
    return subprocess.run(
        args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_the_temporary_server_path_is_quiet(small_csv: Path, tmp_path: Path) -> None:
    """A healthy retrain on Prefect's temporary server: no noise on stderr; a
    source without a text column: one ``error:`` line and nothing else loud."""
    env = offline_env(tmp_path, TWEETFLOW_LOCAL_SERVER="0")
    done = run(retrain_args(small_csv, tmp_path / "artifacts"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting temporary server" in done.stderr
    assert noise(done.stderr) == [], noise(done.stderr)

    moods = tmp_path / "moods.csv"
    moods.write_text("id,mood\n1,happy\n2,sad\n")
    refused = run(retrain_args(moods, tmp_path / "artifacts"), env)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(errors) == 1, refused.stderr[-3000:]
    assert noise(refused.stderr) == [], noise(refused.stderr)
    record(
        "quiet when healthy",
        tried=2,
        recovered=1,
        refused=1,
        note="temporary server: a healthy run and a refused source print no "
        "traceback or error-level line",
    )


def test_the_local_server_path_is_quiet(small_csv: Path, tmp_path: Path) -> None:
    """The first run starts the local server (free port, state under tmp) and is
    quiet; the server is stopped afterwards."""
    state = tmp_path / "state"
    env = offline_env(
        tmp_path,
        PREFECT_PORT=str(free_port()),
        TWEETFLOW_STATE_DIR=str(state),
        TWEETFLOW_BIN=str(BIN),
    )
    pid = None
    try:
        done = run(retrain_args(small_csv, tmp_path / "artifacts"), env)
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int((state / "server.pid").read_text())
        assert done.returncode == 0, done.stderr[-3000:]
        assert "starting the local Prefect server" in done.stderr
        assert noise(done.stderr) == [], noise(done.stderr)
        server_log = "".join(p.read_text() for p in state.glob("*.log"))
        assert noise(server_log) == [], noise(server_log)
    finally:
        down = run([str(REPO / "deployments" / "embedded.sh"), "down"], env)
        if pid is not None:  # never leave it running, whatever `down` did
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    assert down.returncode == 0, down.stderr
    record(
        "quiet when healthy",
        tried=1,
        recovered=1,
        note="local server: the run and the server's own log print no traceback "
        "or error-level line",
    )
