"""A command-line run without PREFECT_API_URL starts the local server once and
later runs reuse it: the runs stay visible, nothing prints a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import BIN, REPO, free_port

pytestmark = pytest.mark.e2e


def retrain(source: Path, artifacts: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.retrain", "--source", str(source)]
        + ["--artifacts-dir", str(artifacts), "--log-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def test_the_first_run_starts_the_local_server_and_the_next_reuses_it(
    small_csv: Path, tmp_path: Path
) -> None:
    port = free_port()
    state = tmp_path / "state"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_") and k != "TWEETFLOW_LOCAL_SERVER"
    }
    env |= {
        "PREFECT_PORT": str(port),
        "PREFECT_HOME": str(tmp_path / "client-home"),  # no profile with an API
        "TWEETFLOW_STATE_DIR": str(state),
        "TWEETFLOW_BIN": str(BIN),
    }
    pid = None
    try:
        first = retrain(small_csv, tmp_path / "artifacts", env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "starting the local Prefect server" in first.stderr
        pid = int((state / "server.pid").read_text())
        os.kill(pid, 0)  # still running after the run ended
        second = retrain(small_csv, tmp_path / "artifacts", env)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "starting the local Prefect server" not in second.stderr
        assert int((state / "server.pid").read_text()) == pid
        for run in (first, second):
            assert f"runs: http://127.0.0.1:{port}/runs" in run.stdout
            for noise in ("Traceback", "database is locked", "telemetry"):
                assert noise not in run.stderr, (noise, run.stderr[-2000:])
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(f"http://127.0.0.1:{port}/api") as client:
            runs = client.read_flow_runs()
        assert sorted(r.state_name for r in runs) == ["Completed", "Completed"]
    finally:
        down = subprocess.run(
            [str(REPO / "deployments" / "embedded.sh"), "down"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if pid is not None:  # never leave it running, whatever `down` did
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    assert down.returncode == 0, down.stderr
