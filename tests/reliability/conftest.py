"""The reliability suite (``make test-reliability``): real processes, real
servers, real faults. Not part of the default ``pytest`` run (see
``tests/conftest.py``); CI runs it as its own step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import faults

REPORT = Path(__file__).resolve().parents[2] / "bench" / "results" / "reliability.md"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the fault table and write it beside the benchmarks' results."""
    if not faults.TABLE:
        return
    terminalreporter.section("reliability: faults tried and how they ended")
    terminalreporter.write_line(faults.markdown())
    faults.write(REPORT)
    terminalreporter.write_line(f"(written to {REPORT})")


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One real Prefect server per module; the environment its commands use."""
    from tests.servers import prefect_server

    work = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(work) as env:
        env = {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            env.pop(name, None)  # each store's own embedded registry
        env["TWEETFLOW_CACHE_DIR"] = str(work / "cache")
        yield env
