"""Automations on a real Prefect server: a failed retrain and a refused model reach
a webhook receiver on 127.0.0.1 through the saved notification block."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.servers import REPO, prefect_server

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 90  # the server's triggers service acts within seconds


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        super().__init__(("127.0.0.1", 0), Handler)

    def wait_for(self, predicate, what: str) -> dict:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            for body in list(self.received):
                if predicate(body):
                    return body
            time.sleep(0.5)
        raise AssertionError(f"no notification {what} in {self.received}")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.server.received.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def python(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_failed_retrain_and_a_refused_model_are_notified(
    tmp_path: Path, receiver: Receiver
) -> None:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    with prefect_server(tmp_path) as env:
        saved = python("-m", "deployments.automations", "--webhook-url", url, env=env)
        assert saved.returncode == 0, saved.stderr
        assert "tweetflow: retrain failed, tweetflow: model rejected" in saved.stdout
        again = python("-m", "deployments.automations", "--webhook-url", url, env=env)
        assert again.returncode == 0, again.stderr
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
            names = sorted(a.name for a in client.read_automations())
        assert names == ["tweetflow: model rejected", "tweetflow: retrain failed"]

        # A real retrain that fails in its flow (no usable tweet).
        blank = tmp_path / "blank.csv"
        blank.write_text('text\n" "\n"\t"\n')
        failed = python(
            "-m",
            "flows.retrain",
            "--source",
            str(blank),
            "--artifacts-dir",
            str(tmp_path / "artifacts"),
            env=env,
        )
        assert failed.returncode == 1, failed.stdout + failed.stderr
        body = receiver.wait_for(
            lambda b: b["subject"].startswith("tweetflow: retrain"), "for the failure"
        )
        assert body["subject"].endswith("is Failed"), body
        assert "none of the 2 tweets is usable" in body["text"], body

        # The event the promotion task emits when the gate refuses a model.
        emitted = python(
            "-c",
            "from tasks.release.events import REJECTED, emit_release_event; "
            "emit_release_event(REJECTED, 'tweetflow-classifier', {"
            "'model_version': 'tweetflow-classifier/7', 'run_id': 'R7', "
            "'previous_champion': '6', 'reason': 'gate failed: coverage_drop'})",
            env=env,
        )
        assert emitted.returncode == 0, emitted.stderr
        body = receiver.wait_for(
            lambda b: "refused" in b["subject"], "for the refused model"
        )
        assert body["subject"] == "tweetflow: the gate refused tweetflow-classifier/7"
        assert "champion is still 6" in body["text"]
        assert "coverage_drop" in body["text"]
        assert len([b for b in receiver.received if "refused" in b["subject"]]) == 1
