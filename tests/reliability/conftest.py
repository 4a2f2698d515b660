"""The reliability suite (``make test-reliability``): real processes, real
servers, real faults. Not part of the default ``pytest`` run (see
``tests/conftest.py``); CI runs it as its own step."""

from __future__ import annotations

from pathlib import Path

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
