"""Concurrent runs on one store, with real processes on one real Prefect server:
two retrains started together on a new local directory and on one ``s3://``
prefix (moto), a batch inference while a promotion moves the champion, and a
retrain refused cleanly when another holder keeps the release lock."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.aws import aws_env, client, moto_server
from tests.reliability import faults
from tests.reliability.commands import batch_inference, finish, retrain, start

FAULT = "concurrent runs"


def start_two_retrains(
    source: str, store: str, env: dict[str, str], logs: Path
) -> list[tuple[subprocess.Popen, Path]]:
    """Start two retrains half a second apart (different settings: two models)."""
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    for name, c in (("a", "1.0"), ("b", "3.0")):
        args = retrain(source, store, "--training.C", c)
        started.append((start(args, env, logs / name), logs / name))
        time.sleep(0.5)
    return started


def check_store(read, versions: list, champion) -> list[str]:
    """Consistency of a store after two retrains; returns the two run ids.

    ``read(relative)`` gives a store file's text (None if absent); ``versions``
    are the registered versions, ``champion`` the alias's version.
    """
    run_ids = sorted({v.tags["tweetflow_run_id"] for v in versions})
    assert len(run_ids) == 2 and len(versions) == 2, run_ids
    for run_id in run_ids:
        assert read(f"runs/{run_id}/run.json") is not None, run_id
        record = json.loads(read(f"runs/{run_id}/registry.json"))
        (version,) = [v for v in versions if v.tags["tweetflow_run_id"] == run_id]
        assert record["model_version"].endswith(f"/{version.version}")
    latest = (read("LATEST") or "").strip()
    assert latest in run_ids  # a complete, registered run
    assert champion is not None and champion.tags["promotion"] == "promoted"
    return run_ids


def registry_of(root: Path):
    from tasks.infra.registry import Registry
    from tasks.release.config import ReleaseConfig

    return Registry.open(root, ReleaseConfig())


def assert_quiet(results: list[SimpleNamespace]) -> None:
    for result in results:
        assert result.code == 0, result.err[-3000:]
        assert "Traceback" not in result.err, result.err[-3000:]
        assert "CommandError" not in result.err, result.err[-3000:]


@pytest.fixture(scope="module")
def pairs(server_env, small_csv: Path, tmp_path_factory):
    """Two retrains on a new local directory and two on one new ``s3://`` prefix
    (moto), all four started together (the machine's two cores are shared)."""
    work = tmp_path_factory.mktemp("concurrent")
    store = work / "artifacts"  # a new directory
    with moto_server(work / "moto") as aws:
        boto = client("s3", aws)
        for bucket in ("tweets", "store"):
            boto.create_bucket(Bucket=bucket)
        boto.upload_file(str(small_csv), "tweets", "in/tweets.csv")
        s3_env = {
            **aws_env(server_env, aws),
            "TWEETFLOW_CACHE_DIR": str(work / "cache"),
        }
        local = start_two_retrains(
            str(small_csv), str(store), server_env, work / "logs"
        )
        remote = start_two_retrains(
            "s3://tweets/in/tweets.csv", "s3://store/prefix", s3_env, work / "s3-logs"
        )
        yield SimpleNamespace(
            store=store,
            local=[finish(proc, log) for proc, log in local],
            remote=[finish(proc, log) for proc, log in remote],
            aws=aws,
            boto=boto,
            cache=work / "cache",
        )


@pytest.fixture(scope="module")
def local_pair(pairs):
    """The local store and its two retrains' (exit code, stdout, stderr)."""
    return pairs.store, pairs.local


def test_two_retrains_on_a_new_local_directory_both_complete(
    monkeypatch, local_pair
) -> None:
    from tasks.serving.resolve import resolve_model

    store, results = local_pair
    assert_quiet(results)
    waited = [r for r in results if "waiting for the release lock" in r.err]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reg = registry_of(store)
    versions = reg.client.search_model_versions(f"name = '{reg.name}'")

    def read(relative: str) -> str | None:
        path = store / relative
        return path.read_text() if path.is_file() else None

    run_ids = check_store(read, versions, reg.champion())
    from tasks.release.config import ReleaseConfig

    loaded = resolve_model("champion", store, ReleaseConfig())  # files verified
    assert loaded.version == f"{reg.name}/{reg.champion().version}"
    assert not (store / "locks" / "release.lock").exists()  # released on exit
    faults.record(
        FAULT,
        tried=1,
        recovered=1,
        note=f"two retrains on a new local directory: both completed ({run_ids}); "
        f"{len(waited)} waited for the release lock",
    )


def test_batch_inference_during_a_promotion_reads_a_verified_version(
    monkeypatch, server_env, local_pair, small_csv: Path
) -> None:
    import pandas as pd

    store, _ = local_pair
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reg = registry_of(store)
    champion = reg.champion().version
    other = next(
        v.version
        for v in reg.client.search_model_versions(f"name = '{reg.name}'")
        if v.version != champion
    )
    logs = store.parent / "logs"
    output = store.parent / "predictions.parquet"
    promote = start(
        ["flows.promote", "--to", str(other), "--artifacts-dir", str(store)],
        server_env,
        logs / "promote",
    )
    time.sleep(0.5)
    batch = start(
        batch_inference(small_csv, output, store),
        server_env,
        logs / "batch",
    )
    results = [finish(promote, logs / "promote"), finish(batch, logs / "batch")]
    assert_quiet(results)
    assert str(reg.champion().version) == str(other)
    predictions = pd.read_parquet(output)
    used = set(predictions["model_version"].astype(str))
    assert used <= {f"{reg.name}/{champion}", f"{reg.name}/{other}"}, used
    counts = re.search(
        r"(\d+) rows read, (\d+) predicted, (\d+) quarantined, (\d+) exact",
        results[1].out,
    )
    assert counts, results[1].out
    read, predicted, quarantined, repeats = map(int, counts.groups())
    assert read == len(pd.read_csv(small_csv)) == predicted + quarantined + repeats
    assert len(predictions) == predicted  # no row lost
    faults.record(
        FAULT,
        tried=1,
        recovered=1,
        note=f"batch inference while the champion moved {champion} -> {other}: "
        f"served {sorted(used)}, verified",
    )


def test_a_retrain_refuses_with_one_line_while_another_holds_the_lock(
    server_env, local_pair, small_csv: Path
) -> None:
    from tasks.infra.lease import release_lock

    store, _ = local_pair
    env = {**server_env, "TWEETFLOW_LOCK_WAIT_SECONDS": "3"}
    runs_before = sorted((store / "runs").iterdir())
    latest = (store / "LATEST").read_text()
    with release_lock(str(store), "a release by hand"):
        proc = start(
            retrain(small_csv, store, "--training.C", "2.0"),
            env,
            store.parent / "logs" / "refused",
        )
        refused = finish(proc, store.parent / "logs" / "refused")
    code, out, err = refused.code, refused.out, refused.err
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "held by a release by hand" in errors[0], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "waiting for the release lock" in err + out
    assert sorted((store / "runs").iterdir()) == runs_before
    assert (store / "LATEST").read_text() == latest
    faults.record(FAULT, tried=1, refused=1, note="lock held too long: one error line")


def test_two_retrains_on_one_s3_prefix_both_complete(monkeypatch, pairs) -> None:
    import s3fs

    assert_quiet(pairs.remote)
    for key, value in pairs.aws.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TWEETFLOW_CACHE_DIR", str(pairs.cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        from tasks.infra.store import ArtifactStore

        store = ArtifactStore("s3://store/prefix")
        reg = registry_of(store.root)
        versions = reg.client.search_model_versions(f"name = '{reg.name}'")
        run_ids = check_store(store.read_text, versions, reg.champion())
        listed = pairs.boto.list_objects_v2(Bucket="store", Prefix="prefix/locks/")
        assert "Contents" not in listed  # both released their lease
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    waited = [r for r in pairs.remote if "waiting for the release lock" in r.err]
    faults.record(
        FAULT,
        tried=1,
        recovered=1,
        note=f"two retrains on one s3:// prefix (moto): both completed ({run_ids}); "
        f"{len(waited)} waited for the release lock",
    )
