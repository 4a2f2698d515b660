"""The retrain's per-row stages in partitions on real Dask clusters.

Customer-support threads (tweets and the brand's replies: real ones from the
shared data, else generated) in six files,
so that replies sit in other objects than the tweets they answer and exact
repeats in other partitions than their first copies. A retrain on a cluster
the run starts, and one on an existing ``dask scheduler`` with two ``dask
worker`` processes against moto's S3 server, must store exactly what the
in-process retrain stores: every stage's output has the same sha256, and the
categories, counts and metrics are the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.quality import SHARED_DATA, THREADS_FILE
from tasks.release.publishing import STAGE_REFS
from tests.aws import client
from tests.conftest import run_retrain, small_params
from tests.e2e.conftest import BUCKET
from tests.e2e.test_dask import dask_cluster, finished_by_worker

pytestmark = [pytest.mark.e2e, pytest.mark.flow]

THREADS = SHARED_DATA / THREADS_FILE
ROWS = 3000
OBJECTS = 6
PARTITION_ROWS = 400
# Every stage output a run records (run.json), all decided by the stages.
STAGE_OUTPUTS = list(STAGE_REFS)


@pytest.fixture(scope="module")
def threads_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first conversations of the real threads file (or, where the shared
    data is absent, generated support threads from the bundled corpus: every
    brand reply after every tweet) in six CSV objects, cut by rows, so replies
    land in other objects than their tweets; with exact repeats of a few
    customer tweets in the last object."""
    if THREADS.is_file():
        frame = pd.read_csv(THREADS, dtype=str, nrows=ROWS, keep_default_na=False)
    else:
        from bench.scale_data import generate

        frame, _ = generate(ROWS // 2, seed=3)
    customers = frame[frame["inbound"].str.lower().eq("true")]
    repeats = customers.iloc[[5, 50, 500]].assign(
        tweet_id=lambda f: "repeat-" + f["tweet_id"]
    )
    frame = pd.concat([frame, repeats], ignore_index=True)
    folder = tmp_path_factory.mktemp("threads") / "inbox"
    folder.mkdir()
    size = -(-len(frame) // OBJECTS)
    for i, start in enumerate(range(0, len(frame), size)):
        frame.iloc[start : start + size].to_csv(
            folder / f"part-{i:02d}.csv", index=False
        )
    return folder


def params(source: str, artifacts: str, **changes):
    """The retrain settings every run of this module shares."""
    return small_params(
        source,
        artifacts,
        clustering={"k_min": 3, "k_max": 6, "selection_sample": 1000},
        **changes,
    )


def outputs(result) -> dict[str, str]:
    """Each stage output's sha256, from the run's record."""
    info = json.loads((Path(result.local_run_dir) / "run.json").read_text())
    return {name: info["refs"][name]["sha256"] for name in STAGE_OUTPUTS}


@pytest.fixture(scope="module")
def in_process(prefect_api, threads_dir: Path, tmp_path_factory):
    """The reference: the same retrain in this process."""
    store = tmp_path_factory.mktemp("in-process")
    result, _ = run_retrain(params(threads_dir, store))
    assert result.counts["replies_linked"] > 0
    assert result.counts["duplicates_removed"] >= 3
    return result


def assert_same_retrain(result, reference) -> None:
    """Every stage stored the same bytes; the same categories, counts, metrics."""
    assert outputs(result) == outputs(reference)
    assert result.k == reference.k
    assert result.categories == reference.categories
    assert result.counts == reference.counts
    assert result.metrics == reference.metrics


def partition_records(store: Path, stage: str) -> list[dict]:
    """The partition records a stage left in a local store."""
    index = store / "data" / stage / "parts" / "index"
    return [json.loads(p.read_text()) for p in sorted(index.glob("*.json"))]


def test_a_local_cluster_retrains_what_the_process_retrains(
    in_process, threads_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask"))
    store = tmp_path / "artifacts"
    inbox = tmp_path / "inbox"  # the same files, which this test adds to
    shutil.copytree(threads_dir, inbox)
    result, states = run_retrain(
        params(inbox, store, dask_workers=2, partition_rows=PARTITION_ROWS)
    )
    assert_same_retrain(result, in_process)
    info = json.loads((Path(result.local_run_dir) / "run.json").read_text())
    # Each stage's partitions cover its input's rows once (the raw snapshot,
    # the prepared tweets, the preprocessed ones), on both workers.
    for stage, input_name in (
        ("preparation", "raw"),
        ("preprocessing", "prepared"),
        ("features", "preprocessed"),
    ):
        records = sorted(partition_records(store, stage), key=lambda r: r["start"])
        expected = info["refs"][input_name]["rows"]
        assert len(records) == -(-expected // PARTITION_ROWS), stage
        assert [(r["start"], r["stop"]) for r in records] == [
            (start, min(expected, start + PARTITION_ROWS))
            for start in range(0, expected, PARTITION_ROWS)
        ], stage
        assert len({r["worker"] for r in records}) == 2, (stage, records)
    # The six objects were parsed by the workers, and the snapshot reused them.
    objects = list((store / "data/ingestion/objects").glob("*.json"))
    assert len(objects) == OBJECTS

    # Run again on the cluster, nothing changed: every stage from cache.
    again, states = run_retrain(
        params(inbox, store, dask_workers=2, partition_rows=PARTITION_ROWS)
    )
    assert again.unchanged and again.run_id == result.run_id

    # A new object in the source: only it is parsed (an object's record is
    # written when it is parsed), and the new snapshot holds its tweets.
    kept = {p.name: p.stat().st_mtime_ns for p in objects}
    before = {
        s: len(partition_records(store, s))
        for s in ("preparation", "preprocessing", "features")
    }
    pd.DataFrame(
        {
            "tweet_id": ["new-1", "new-2"],
            "author_id": ["c-new", "airline"],
            "inbound": ["True", "False"],
            "created_at": ["Tue Oct 31 22:10:47 +0000 2017"] * 2,
            "text": ["@airline my bag never arrived in Denver", "@c-new Sorry!"],
            "response_tweet_id": ["new-2", ""],
            "in_response_to_tweet_id": ["", "new-1"],
        }
    ).to_csv(inbox / "part-99.csv", index=False)
    grown, _ = run_retrain(
        params(inbox, store, dask_workers=2, partition_rows=PARTITION_ROWS)
    )
    records = list((store / "data/ingestion/objects").glob("*.json"))
    assert len(records) == OBJECTS + 1
    assert {p.name: p.stat().st_mtime_ns for p in records if p.name in kept} == kept
    assert grown.counts["rows_read"] == result.counts["rows_read"] + 1
    assert grown.counts["replies_linked"] == result.counts["replies_linked"] + 1
    # Partitions are keyed by their rows: the rows before the new object's
    # keep theirs, only the last range of each grown input is computed.
    after = {s: len(partition_records(store, s)) for s in before}
    assert after["preparation"] == before["preparation"] + 1
    assert after["preprocessing"] == before["preprocessing"] + 1
    embedder_kept = outputs(grown)["embedder"] == outputs(result)["embedder"]
    grown_parts = -(-grown.counts["accepted"] // PARTITION_ROWS)
    assert after["features"] - before["features"] == (
        1 if embedder_kept else grown_parts
    )


def test_an_existing_cluster_retrains_from_s3_what_the_process_retrains(
    in_process, s3_env: dict, threads_dir: Path, tmp_path: Path
) -> None:
    """The source an S3 prefix of six objects and the store on S3: the workers
    parse the objects and compute every stage's partitions, each with its own
    local cache of the store, as on other machines."""
    from flows.retrain import retrain
    from tasks.infra.errors import InputError

    boto = client("s3", {k: v for k, v in s3_env.items() if k.startswith("AWS_")})
    for path in sorted(threads_dir.iterdir()):
        boto.put_object(
            Bucket=BUCKET, Key=f"threads/{path.name}", Body=path.read_bytes()
        )
    source = f"s3://{BUCKET}/threads/"
    with dask_cluster(tmp_path / "cluster", s3_env) as cluster:
        # Its workers could not see a local store: refused before any stage.
        with pytest.raises(InputError, match="needs a shared artifact store"):
            refused = params(source, tmp_path / "local", dask_address=cluster.address)
            retrain(**refused.as_flow_kwargs())
        assert not (tmp_path / "local" / "data").exists()
        result, _ = run_retrain(
            params(
                source,
                f"s3://{BUCKET}/retrain",
                dask_address=cluster.address,
                partition_rows=PARTITION_ROWS,
            )
        )
        ran = cluster.client.run_on_scheduler(finished_by_worker)
    assert set(ran) == {"w1", "w2"}, ran  # both workers ran partitions
    info = json.loads((Path(result.local_run_dir) / "run.json").read_text())
    partitions = sum(
        -(-info["refs"][name]["rows"] // PARTITION_ROWS)
        for name in ("raw", "prepared", "preprocessed")
    )
    # Each object parsed, then every partition of the three row stages.
    assert sum(ran.values()) == OBJECTS + partitions, ran
    assert_same_retrain(result, in_process)
