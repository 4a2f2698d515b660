"""Batch inference in partitions on real Dask clusters.

A cluster the run starts (``dask_workers``), and an existing one: a ``dask
scheduler`` and two ``dask worker`` processes on 127.0.0.1, with the artifact
store on moto's S3 server (the workers see no file of the test's). Every output
must equal the in-process path's; the scheduler's task stream says which worker
ran what; a worker killed with SIGKILL mid-run loses and duplicates nothing.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.aws import client
from tests.e2e.conftest import BUCKET
from tests.servers import BIN, REPO, free_port, spawn, stop

pytestmark = [pytest.mark.e2e, pytest.mark.flow]

STARTUP_TIMEOUT = 60.0
STREAM = "tweetflow-test-task-stream"


def table_sha(frame: pd.DataFrame) -> str:
    """sha256 of a table sorted by every column (row order aside, same values)."""
    ordered = frame.sort_values(list(frame.columns), kind="stable").reset_index(
        drop=True
    )
    hashed = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def tweet_rows(corpus: pd.DataFrame) -> pd.DataFrame:
    """6,000 real tweets with what the id rules act on across partitions: exact
    repeats, an id given two texts, a blank text, and a row without a text (the
    raw contract refuses it)."""
    sample = corpus.sample(6000, random_state=11)[["tweet_id", "text"]]
    sample = sample.reset_index(drop=True)
    extra = [
        sample.iloc[[10, 20, 30]],  # exact repeats, far from their first rows
        pd.DataFrame(
            {"tweet_id": [sample.at[40, "tweet_id"]], "text": ["another text"]}
        ),
        pd.DataFrame({"tweet_id": ["empty-1"], "text": ["   "]}),
        pd.DataFrame({"tweet_id": ["no-text-1"], "text": [None]}),
    ]
    return pd.concat([sample, *extra], ignore_index=True)


@pytest.fixture(scope="module")
def tweets(tmp_path_factory: pytest.TempPathFactory, tweet_rows) -> Path:
    """The tweets as one CSV file (partitions: ranges of its raw snapshot)."""
    path = tmp_path_factory.mktemp("dask-data") / "tweets.csv"
    tweet_rows.to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    return path


@pytest.fixture(scope="module")
def tweets_dir(tmp_path_factory: pytest.TempPathFactory, tweet_rows) -> Path:
    """The same tweets in 12 files (partitions: one per file); the repeats,
    the conflict and the refused rows land in other files than their firsts."""
    folder = tmp_path_factory.mktemp("dask-folder") / "inbox"
    folder.mkdir()
    size = -(-len(tweet_rows) // 12)
    for i, start in enumerate(range(0, len(tweet_rows), size)):
        part = tweet_rows.iloc[start : start + size]
        part.to_csv(folder / f"part-{i:02d}.csv", index=False, quoting=csv.QUOTE_ALL)
    return folder


@pytest.fixture(scope="module")
def model(first_run) -> str:
    """The seeded 400-tweet run's model bundle (a run folder)."""
    _, result, _ = first_run
    return result.local_run_dir


def reference(source: Path, model: str, work: Path) -> SimpleNamespace:
    """The same batch inference in this process, no cluster."""
    from flows.batch_inference import batch_inference

    out = work / "predictions.parquet"
    result = batch_inference(
        source=str(source),
        output=str(out),
        model=model,
        artifacts_dir=str(work / "artifacts"),
    )
    assert result.partitions == 0
    # The row without a text, the blank one, the two rows of the conflicting id.
    assert result.counts["quarantined"] >= 4
    assert result.counts["duplicates_removed"] >= 3  # the sample repeats some too
    return SimpleNamespace(
        result=result,
        predictions=pd.read_parquet(out),
        quarantine=pd.read_parquet(work / "predictions.quarantine.parquet"),
    )


@pytest.fixture(scope="module")
def in_process(prefect_api, tweets: Path, model: str, tmp_path_factory):
    """The reference for the one-file source."""
    return reference(tweets, model, tmp_path_factory.mktemp("in-process"))


@pytest.fixture(scope="module")
def in_process_dir(prefect_api, tweets_dir: Path, model: str, tmp_path_factory):
    """The reference for the 12-file source (same rows, other source names)."""
    return reference(tweets_dir, model, tmp_path_factory.mktemp("in-process-dir"))


def assert_same_output(out: Path, reference: SimpleNamespace) -> None:
    """Same rows, same order and values as the in-process path; quarantine too.
    ``out`` is a Parquet file or a dataset folder (read in part order)."""
    predictions = pd.read_parquet(out)
    assert predictions["tweet_id"].is_unique
    assert table_sha(predictions) == table_sha(reference.predictions)
    pd.testing.assert_frame_equal(predictions, reference.predictions)
    quarantine = pd.read_parquet(out.with_name(out.stem + ".quarantine.parquet"))
    pd.testing.assert_frame_equal(quarantine, reference.quarantine)


def test_a_local_cluster_of_two_workers_writes_what_the_process_writes(
    in_process, tweets: Path, model: str, tmp_path: Path, monkeypatch
) -> None:
    from flows.batch_inference import batch_inference

    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask"))
    out = tmp_path / "predictions"  # a partitioned dataset: one part per partition
    result = batch_inference(
        source=str(tweets),
        output=f"{out}/",
        model=model,
        artifacts_dir=str(tmp_path / "artifacts"),
        dask_workers=2,
        partition_rows=700,
    )
    assert result.partitions == 9
    assert len(result.workers) == 2, result.workers  # two processes ran partitions
    assert result.counts == in_process.result.counts
    assert result.categories == in_process.result.categories
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(manifest["parts"]) == 9
    assert manifest["rows"] == result.counts["predicted"]
    assert_same_output(out, in_process)


def test_each_object_is_a_partition_read_on_a_worker_and_only_new_ones_rerun(
    in_process,
    in_process_dir,
    tweets_dir: Path,
    model: str,
    tmp_path: Path,
    monkeypatch,
) -> None:
    from flows.batch_inference import batch_inference

    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask"))
    store = str(tmp_path / "artifacts")
    inbox = tmp_path / "inbox"
    shutil.copytree(tweets_dir, inbox)
    out = tmp_path / "predictions.parquet"
    result = batch_inference(
        source=str(inbox),
        output=str(out),
        model=model,
        artifacts_dir=store,
        dask_workers=2,
    )
    assert result.partitions == 12 and len(result.workers) == 2, result
    assert result.partitions_reused == 0
    assert result.counts == in_process_dir.result.counts
    assert_same_output(out, in_process_dir)
    # The same tweets from one file or twelve: the same predictions.
    pd.testing.assert_frame_equal(pd.read_parquet(out), in_process.predictions)
    # The workers parsed the objects into the store as ingestion does.
    assert (
        len(list((tmp_path / "artifacts/data/ingestion/objects").glob("*.json"))) == 12
    )

    # A new object in the source: only its partition is computed.
    pd.DataFrame({"tweet_id": ["new-1"], "text": ["my flight was cancelled"]}).to_csv(
        inbox / "part-99.csv", index=False
    )
    again = batch_inference(
        source=str(inbox),
        output=str(tmp_path / "again.parquet"),
        model=model,
        artifacts_dir=store,
        dask_workers=2,
    )
    assert (again.partitions, again.partitions_reused) == (13, 12)
    assert again.counts["predicted"] == result.counts["predicted"] + 1
    computed = pd.read_parquet(tmp_path / "again.parquet")
    assert computed["tweet_id"].iloc[-1] == "new-1"


@contextlib.contextmanager
def dask_cluster(work: Path, env: dict[str, str], workers: int = 2) -> Iterator:
    """A ``dask scheduler`` and ``workers`` ``dask worker`` processes (no nanny:
    a killed worker stays dead) on 127.0.0.1; each worker has its own local
    cache of the store, as on its own machine. Yields the address, the worker
    processes by name and a client; every process is stopped on exit."""
    from distributed import Client

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    base = {
        **env,
        "DASK_TEMPORARY_DIRECTORY": str(work / "scratch"),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    dask = str(BIN / "dask")
    procs: dict[str, subprocess.Popen] = {}
    scheduler = spawn(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
        + ["--no-dashboard"],
        base,
        work / "scheduler.log",
    )
    try:
        for i in range(1, workers + 1):
            name = f"w{i}"
            procs[name] = spawn(
                [dask, "worker", address, "--name", name, "--nthreads", "1"]
                + ["--no-nanny", "--host", "127.0.0.1", "--no-dashboard"]
                + ["--local-directory", str(work / name)],
                {**base, "TWEETFLOW_CACHE_DIR": str(work / name / "cache")},
                work / f"{name}.log",
            )
        dask_client = Client(address, timeout=STARTUP_TIMEOUT)
        try:
            dask_client.wait_for_workers(workers, timeout=STARTUP_TIMEOUT)
            dask_client.run_on_scheduler(install_task_stream)
            yield SimpleNamespace(address=address, workers=procs, client=dask_client)
        finally:
            dask_client.close()
    finally:
        for proc in procs.values():
            stop(proc, grace=10.0)
        stop(scheduler, grace=10.0)


def install_task_stream(dask_scheduler) -> None:
    """(On the scheduler) record every finished task with the worker that ran it."""
    from distributed.diagnostics.task_stream import TaskStreamPlugin

    dask_scheduler.add_plugin(TaskStreamPlugin(dask_scheduler), name=STREAM)


def finished_by_worker(dask_scheduler) -> dict[str, int]:
    """(On the scheduler) tasks finished per worker name."""
    names = {addr: str(ws.name) for addr, ws in dask_scheduler.workers.items()}
    counts: dict[str, int] = {}
    for record in dask_scheduler.plugins[STREAM].buffer:
        name = names.get(record["worker"], record["worker"])
        counts[name] = counts.get(name, 0) + 1
    return counts


def processing_by_worker(dask_scheduler) -> dict[str, int]:
    """(On the scheduler) tasks now running per worker name."""
    return {str(ws.name): len(ws.processing) for ws in dask_scheduler.workers.values()}


def test_an_existing_cluster_runs_partitions_on_both_workers_against_s3(
    in_process_dir, s3_env: dict, tweets_dir: Path, model: str, tmp_path: Path
) -> None:
    """The source an S3 prefix of 12 objects: each worker reads the objects it
    is given from S3 and writes its parts to the S3 store."""
    from flows.batch_inference import batch_inference
    from tasks.infra.errors import InputError

    store = f"s3://{BUCKET}/cluster"
    boto = client("s3", {k: v for k, v in s3_env.items() if k.startswith("AWS_")})
    for path in sorted(tweets_dir.iterdir()):
        boto.put_object(Bucket=BUCKET, Key=f"inbox/{path.name}", Body=path.read_bytes())
    source = f"s3://{BUCKET}/inbox/"
    with dask_cluster(tmp_path / "cluster", s3_env) as cluster:
        # Its workers could not see a local store: refused before anything runs.
        with pytest.raises(InputError, match="needs a shared artifact store"):
            batch_inference(
                source=source,
                output=str(tmp_path / "refused.parquet"),
                model=model,
                artifacts_dir=str(tmp_path / "local-store"),
                dask_address=cluster.address,
            )
        assert not (tmp_path / "refused.parquet").exists()
        out = tmp_path / "predictions.parquet"
        result = batch_inference(
            source=source,
            output=str(out),
            model=model,
            artifacts_dir=store,
            dask_address=cluster.address,
        )
        ran = cluster.client.run_on_scheduler(finished_by_worker)
    assert result.partitions == 12
    assert set(ran) == {"w1", "w2"}, ran  # both workers ran partitions
    assert sum(ran.values()) == 2 * 12, ran  # each object parsed, then classified
    assert result.counts == in_process_dir.result.counts
    assert_same_output(out, in_process_dir)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(
    in_process, s3_env: dict, tweets: Path, model: str, tmp_path: Path
) -> None:
    """The command line on an existing cluster named by TWEETFLOW_DASK_ADDRESS;
    worker w2 gets SIGKILL once partitions are done and it is running one. The
    source is a local file the workers cannot see: the flow reads it into the
    S3 store and the partitions are ranges of its raw snapshot."""
    out = tmp_path / "predictions.parquet"
    with dask_cluster(tmp_path / "cluster", s3_env) as cluster:
        env = {**s3_env, "TWEETFLOW_DASK_ADDRESS": cluster.address}
        log = tmp_path / "batch.log"
        command = [sys.executable, "-m", "flows.batch_inference"]
        command += ["--source", str(tweets), "--output", str(out), "--model", model]
        command += ["--artifacts-dir", f"s3://{BUCKET}/kill", "--partition-rows", "250"]
        run = spawn(command, env, log)
        try:
            killed = False
            deadline = time.monotonic() + 240
            while run.poll() is None and time.monotonic() < deadline and not killed:
                done = cluster.client.run_on_scheduler(finished_by_worker)
                busy = cluster.client.run_on_scheduler(processing_by_worker)
                if sum(done.values()) >= 2 and busy.get("w2"):
                    os.kill(cluster.workers["w2"].pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.05)
            assert (
                killed
            ), f"the run ended before w2 could be killed:\n{log.read_text()}"
            code = run.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            stop(run)
        assert cluster.workers["w2"].wait(timeout=10) == -signal.SIGKILL
        ran = cluster.client.run_on_scheduler(finished_by_worker)
    assert code == 0, log.read_text()[-4000:]
    assert "w1" in ran, ran
    assert "Traceback" not in log.read_text()
    assert_same_output(out, in_process)
