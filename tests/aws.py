"""A stand-in for AWS in end-to-end tests: ``moto`` in server mode on loopback.

One moto process serves every AWS API (ECS, EC2, S3, ...) on one free port; a
subprocess reaches it through ``AWS_ENDPOINT_URL`` and fake credentials, a test
through :func:`client`. The server starts in about a second and is always stopped
on exit, even when the test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.servers import BIN, free_port, spawn, stop, wait_for

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
STARTUP_TIMEOUT = 30.0

# Variables that would point boto3 at a real account or another endpoint.
_AWS_OVERRIDES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def aws_env(base: dict[str, str], aws: dict[str, str]) -> dict[str, str]:
    """``base`` with the moto settings in ``aws`` and no route to a real account."""
    env = {
        key: value
        for key, value in base.items()
        if key not in _AWS_OVERRIDES and not key.startswith("AWS_ENDPOINT_URL_")
    }
    env.update(aws)
    return env


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[dict[str, str]]:
    """A moto server on a free loopback port; yields the AWS_* variables that reach it.

    Merge them into a subprocess environment with :func:`aws_env`; the server's
    output goes to ``workdir / "moto.log"``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    missing = str(workdir / "no-aws-config")  # no shared config or credentials file
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    log = workdir / "moto.log"
    proc = spawn(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        aws_env({**os.environ, "PYTHONUNBUFFERED": "1"}, aws),
        log,
    )
    try:
        wait_for(f"{endpoint}/moto-api/data.json", proc, log, STARTUP_TIMEOUT)
        yield aws
    finally:
        stop(proc, grace=10.0)


def client(service: str, aws: dict[str, str]) -> Any:
    """A boto3 client for ``service`` against the moto server described by ``aws``.

    Built from ``aws`` alone, so the test process's own environment never matters.
    """
    import boto3

    return boto3.session.Session(
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_DEFAULT_REGION"],
    ).client(service, endpoint_url=aws["AWS_ENDPOINT_URL"])


class FaultyProxy:
    """A loopback HTTP proxy in front of moto that fails chosen requests.

    ``fail(method, path_part, times)`` makes the next ``times`` matching requests
    answer ``500 InternalError`` (an S3 server fault; ``status`` and ``code``
    choose another, e.g. ``503 SlowDown``) without reaching moto;
    ``freeze(method, path_part)`` answers every matching request with the first
    answer moto gave it (a stale listing); everything else is forwarded
    unchanged. ``faults`` lists what was failed.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        # [method, path_part, to_skip, to_fail, status, code]
        self.rules: list[list] = []
        self.frozen: dict[tuple[str, str], dict[str, tuple]] = {}
        self.faults: list[str] = []
        self.requests: list[str] = []
        self.url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def fail(
        self,
        method: str,
        path_part: str,
        times: int = 1,
        after: int = 0,
        status: int = 500,
        code: str = "InternalError",
    ) -> None:
        """Fail ``times`` requests whose path contains ``path_part``, after ``after``."""
        self.rules.append([method, path_part, after, times, status, code])

    def freeze(self, method: str, path_part: str) -> None:
        """Answer each matching request with the first answer moto gave to the
        same request (a stale listing)."""
        self.frozen[(method, path_part)] = {}

    def _should_fail(self, method: str, path: str) -> tuple[int, str] | None:
        for rule in self.rules:
            if rule[0] != method or rule[1] not in path:
                continue
            if rule[2] > 0:
                rule[2] -= 1
            elif rule[3] > 0:
                rule[3] -= 1
                self.faults.append(f"{method} {path}")
                return rule[4], rule[5]
        return None

    def _frozen_key(self, method: str, path: str) -> tuple[str, str] | None:
        return next((k for k in self.frozen if k[0] == method and k[1] in path), None)

    def __enter__(self) -> FaultyProxy:
        proxy = self
        upstream = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.requests.append(f"{self.command} {self.path}")
                fault = proxy._should_fail(self.command, self.path)
                if fault is not None:
                    payload = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error>'
                        b"<Code>" + fault[1].encode() + b"</Code><Message>injected "
                        b"fault</Message></Error>"
                    )
                    self.send_response(fault[0])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(
                    upstream.hostname, upstream.port, timeout=60
                )
                try:
                    headers = {k: v for k, v in self.headers.items()}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    answer = (response.status, response.reason, response.getheaders())
                    frozen = proxy._frozen_key(self.command, self.path)
                    if frozen is not None:
                        seen = proxy.frozen[frozen].setdefault(
                            self.path, (answer, data)
                        )
                        answer, data = seen
                    self.send_response(answer[0], answer[1])
                    for key, value in answer[2]:
                        if key.lower() not in ("transfer-encoding", "content-length"):
                            self.send_header(key, value)
                    # A HEAD answer carries the object's length, not the body's.
                    length = (
                        next(
                            (v for k, v in answer[2] if k.lower() == "content-length"),
                            "0",
                        )
                        if self.command == "HEAD"
                        else str(len(data))
                    )
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
