"""Real servers for end-to-end tests: a Prefect server on a free loopback port.

Every loop is bounded and every process started here is stopped on exit, even when
the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 90.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(
        f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}"
    )


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop a process group started with ``start_new_session``: TERM twice, then KILL.

    A Prefect worker ignores the first signal, hence the second.
    """
    if proc.poll() is not None:
        return
    for _ in range(2):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace / 2)
            return
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a background process in its own session, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.contextmanager
def prefect_server(workdir: Path) -> Iterator[dict[str, str]]:
    """A real Prefect server (SQLite) on a free loopback port, with its own home.

    Yields the environment that points the ``prefect`` CLI and client at it.
    """
    port = free_port()
    home = workdir / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(workdir / "default-results"),
        "PYTHONUNBUFFERED": "1",
    }
    # The test session's own harness settings must not leak into the server.
    env.pop("PREFECT_API_KEY", None)
    log = workdir / "server.log"
    proc = spawn(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env,
        log,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health", proc, log, STARTUP_TIMEOUT)
        yield env
    finally:
        stop(proc)


def prefect(
    *args: str, env: dict[str, str], timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the ``prefect`` CLI from the repo root; fail with its output on error."""
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"prefect {' '.join(args)} exited {done.returncode}:\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done
