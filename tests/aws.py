"""A stand-in for AWS in end-to-end tests: ``moto`` in server mode on loopback.

One moto process serves every AWS API (ECS, EC2, S3, ...) on one free port; a
subprocess reaches it through ``AWS_ENDPOINT_URL`` and fake credentials, a test
through :func:`client`. The server starts in about a second and is always stopped
on exit, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
