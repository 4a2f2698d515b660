"""``make up`` / ``make down``: the embedded set-up starts and stops what it says."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.servers import BIN, REPO, free_port

pytestmark = pytest.mark.e2e

SCRIPT = REPO / "deployments" / "embedded.sh"


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_up_starts_server_deployments_and_worker_and_down_stops_them(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_PORT": str(port),
        "TWEETFLOW_STATE_DIR": str(tmp_path / "state"),
        "TWEETFLOW_BIN": str(BIN),
    }
    for name in ("PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(name, None)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        up = subprocess.run(
            [str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=300
        )
        assert up.returncode == 0, up.stdout + up.stderr
        state = tmp_path / "state"
        pids = {n: int((state / f"{n}.pid").read_text()) for n in ("server", "worker")}
        assert all(alive(pid) for pid in pids.values()), pids
        assert (state / "server.log").exists() and (state / "worker.log").exists()

        # The UI and the API answer on loopback, with the deployment and its form.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(f"http://127.0.0.1:{port}/api") as client:
            deployment = client.read_deployment_by_name("retrain/weekly")
            assert [s.active for s in deployment.schedules] == [True]
            # Only the embedded set-up's own pool and deployments.
            assert [p.name for p in client.read_work_pools()] == ["tweetflow-local"]
            assert {d.work_pool_name for d in client.read_deployments()} == {
                "tweetflow-local"
            }
            form = deployment.parameter_openapi_schema["properties"]
            assert {"source", "log_level", "clustering"} <= set(form)
            # The worker registers with its first poll, a few seconds after start.
            deadline = time.monotonic() + 90
            workers = []
            while not workers and time.monotonic() < deadline:
                workers = client.read_workers_for_work_pool("tweetflow-local")
                time.sleep(1)
            assert workers, "no worker polls tweetflow-local"

        again = subprocess.run(
            [str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=300
        )
        assert again.returncode == 0 and "already running" in again.stdout
        assert int((state / "server.pid").read_text()) == pids["server"]

        down = subprocess.run(
            [str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(alive(pid) for pid in pids.values()), pids
        assert not list(state.glob("*.pid"))
        assert bystander.poll() is None, "down stopped a process it did not start"
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)
        bystander.kill()
        bystander.wait()
