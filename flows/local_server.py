"""The Prefect API a command-line run reports to.

A run started by ``python -m flows.retrain`` (or ``flows.batch_inference``)
without ``PREFECT_API_URL`` used to start Prefect's temporary server each time
(7-15 s) and lose its runs when it stopped. Instead it reports to the local
server of ``make up`` on ``127.0.0.1:$PREFECT_PORT`` (4200), starting just that
server (``deployments/embedded.sh server``, in the background, logs in
``.state/``) when nothing answers there. Later runs find it running, so a warm
run is a few seconds, and every run stays visible at http://127.0.0.1:4200.
``make down`` stops it.

``PREFECT_API_URL`` (environment or Prefect profile) always wins;
``TWEETFLOW_LOCAL_SERVER=0`` keeps the old behaviour (a temporary server per
run). If the local server cannot be started, the run says so in one line and
uses a temporary server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deployments" / "embedded.sh"
HOST = "127.0.0.1"
START_TIMEOUT = 180  # seconds; the script's own wait is 120 s


def local_api_url() -> str:
    """The local server's API address."""
    return f"http://{HOST}:{os.environ.get('PREFECT_PORT', '4200')}/api"


def answers(api_url: str, timeout: float = 1.0) -> bool:
    """Whether a Prefect API answers its health check at ``api_url``."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as reply:
            return reply.status == 200
    except OSError:
        return False


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def api_for_command_line() -> str | None:
    """The API a command-line run should use, starting the local server if needed.

    None means: leave Prefect's own choice (a configured API, or, when the local
    server is turned off or cannot start, a temporary one).
    """
    if configured_api_url() or os.environ.get("TWEETFLOW_LOCAL_SERVER", "1") == "0":
        return None
    url = local_api_url()
    if answers(url):
        return url
    print(
        f"starting the local Prefect server on {url.removesuffix('/api')} "
        "(once; `make down` stops it)",
        file=sys.stderr,
    )
    try:
        done = subprocess.run(
            [str(SCRIPT), "server"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = str(exc)
    else:
        if done.returncode == 0 and answers(url):
            return url
        lines = (done.stderr or done.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit code {done.returncode}"
    print(
        f"note: the local Prefect server did not start ({reason}); "
        "using a temporary one",
        file=sys.stderr,
    )
    return None
