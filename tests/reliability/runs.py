"""The real retrain command as a subprocess whose log lines a test can follow.

A reader thread collects the merged stdout/stderr line by line, so a test can
wait (bounded) for a line and then act: SIGKILL the process group at that
moment, or let it finish. Every process started here is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.reliability.commands import FAST
from tests.servers import BIN, REPO


def retrain_args(source: Path | str, artifacts: Path | str) -> list[str]:
    """``python -m flows.retrain`` on ``source`` into ``artifacts``, fast settings."""
    return [
        str(BIN / "python"),
        "-m",
        "flows.retrain",
        "--source",
        str(source),
        "--artifacts-dir",
        str(artifacts),
        *FAST,
    ]


class LoggedRun:
    """A command started in its own session, its output lines followed live."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        """Start ``args`` with ``env``; every line also goes to ``log``."""
        self.lines: list[str] = []
        self.log = log
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a") as out:
            for line in self.proc.stdout:
                out.write(line)
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str | None:
        """The first new line matching ``pattern`` (regex), or None if the process
        ended or ``timeout`` seconds passed first."""
        wanted = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self._queue.put(None)  # stays ended for later calls
                return None
            self.lines.append(line)
            if wanted.search(line):
                return line
        return None

    def kill(self) -> None:
        """SIGKILL the whole process group (the command and anything it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._drain()

    def finish(self, timeout: float) -> int:
        """Wait for the command to end (killed after ``timeout``); its exit code."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._drain()
        return self.proc.returncode

    def _drain(self) -> None:
        self._reader.join(timeout=10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    @property
    def text(self) -> str:
        """Everything the command printed so far."""
        return "\n".join(self.lines)

    def __enter__(self) -> LoggedRun:
        """Use as a context: the process is killed on exit if still running."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Kill the process group if the command is still running."""
        if self.proc.poll() is None:
            self.kill()
