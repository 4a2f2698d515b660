"""Fixtures of the end-to-end tests that need real servers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.aws import aws_env, client, moto_server

BUCKET = "tweetflow"


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory, prefect_api) -> Iterator[dict]:
    """moto's S3 server with the store's bucket; this process's AWS settings use it.
    Yields the environment a worker or a command line needs (AWS, Prefect API)."""
    import s3fs
    from prefect.settings import PREFECT_API_URL

    work = tmp_path_factory.mktemp("dask-s3")
    with moto_server(work) as aws, pytest.MonkeyPatch.context() as env:
        for key, value in aws.items():
            env.setenv(key, value)
        env.setenv("TWEETFLOW_CACHE_DIR", str(work / "cache"))
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(key, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        client("s3", aws).create_bucket(Bucket=BUCKET)
        child = aws_env(dict(os.environ), aws)
        child["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
        child["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        try:
            yield child
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
