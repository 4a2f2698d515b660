"""S3 for real: a retrain reading from and writing to moto's S3 server over HTTP.

moto runs in server mode on loopback, behind a small proxy that can fail chosen
requests with a 500, so the retries are exercised against real HTTP faults.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.aws import FaultyProxy, client, moto_server
from tests.conftest import STAGES, small_params, task_states

pytestmark = [pytest.mark.e2e, pytest.mark.flow]

SOURCE_BUCKET = "tweets"
STORE_BUCKET = "tweetflow"


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A generic two-column CSV of real tweets."""
    # Quote every field: some texts hold a bare carriage return.
    return (
        frame[["tweet_id", "text"]]
        .to_csv(index=False, quoting=csv.QUOTE_ALL)
        .encode("utf-8")
    )


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, prefect_api):
    """moto's S3 behind a fault-injecting proxy; this process's AWS settings use it."""
    import s3fs

    work = tmp_path_factory.mktemp("s3")
    with (
        moto_server(work) as aws,
        FaultyProxy(aws["AWS_ENDPOINT_URL"]) as proxy,
        pytest.MonkeyPatch.context() as env,
    ):
        for key, value in aws.items():
            env.setenv(key, value)
        env.setenv("AWS_ENDPOINT_URL", proxy.url)
        # One attempt per request: the flow's own retries must absorb the faults.
        env.setenv("AWS_MAX_ATTEMPTS", "1")
        env.setenv("AWS_RETRY_MODE", "standard")
        env.setenv("TWEETFLOW_CACHE_DIR", str(work / "cache"))
        # The store's own embedded registry, not the session's shared one.
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(key, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        boto = client("s3", aws)
        for bucket in (SOURCE_BUCKET, STORE_BUCKET):
            boto.create_bucket(Bucket=bucket)
        try:
            yield SimpleNamespace(boto=boto, proxy=proxy)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


def read_object(boto, bucket: str, key: str) -> bytes:
    """An object's bytes, straight from moto."""
    return boto.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(boto, bucket: str, prefix: str) -> list[str]:
    """Every key under a prefix."""
    pages = boto.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def retrain_s3(source: str, store: str, **changes):
    """Run the retrain flow; return (result, task states, flow run id)."""
    from flows.retrain import retrain

    params = small_params(Path("unused"), Path("unused"), **changes)
    params = params.model_copy(update={"source": source, "artifacts_dir": store})
    state = retrain(**params.as_flow_kwargs(), return_state=True)
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    return state.result(), task_states(run_id), run_id


@pytest.fixture(scope="module")
def incoming(s3, corpus: pd.DataFrame):
    """Two CSV objects of real tweets under s3://tweets/incoming/."""
    sample = corpus.sample(500, random_state=11)
    for i, part in enumerate([sample.iloc[:250], sample.iloc[250:]], start=1):
        s3.boto.put_object(
            Bucket=SOURCE_BUCKET, Key=f"incoming/part-{i}.csv", Body=csv_bytes(part)
        )
    return sample


@pytest.fixture(scope="module")
def first_s3_run(s3, incoming):
    """A retrain from the incoming prefix into an S3 artifact store."""
    return retrain_s3(f"s3://{SOURCE_BUCKET}/incoming/", f"s3://{STORE_BUCKET}/store")


def test_retrain_reads_and_writes_s3(s3, first_s3_run) -> None:
    result, states, _ = first_s3_run
    assert {states[s] for s in STAGES} == {"Completed"}
    assert result.counts["rows_read"] == 500
    assert result.run_dir == f"s3://{STORE_BUCKET}/store/runs/{result.run_id}"

    latest = read_object(s3.boto, STORE_BUCKET, "store/LATEST").decode().strip()
    assert latest == result.run_id
    run_keys = set(keys(s3.boto, STORE_BUCKET, f"store/runs/{latest}/"))
    for name in [
        "run.json",
        "pseudo_labels.parquet",
        "report.md",
        "model/manifest.json",
    ]:
        assert f"store/runs/{latest}/{name}" in run_keys, name
    labels = pd.read_parquet(
        io.BytesIO(
            read_object(
                s3.boto, STORE_BUCKET, f"store/runs/{latest}/pseudo_labels.parquet"
            )
        )
    )
    assert len(labels) == result.counts["accepted"]
    record = json.loads(
        read_object(s3.boto, STORE_BUCKET, f"store/runs/{latest}/run.json")
    )
    raw_uri = record["refs"]["raw"]["uri"]
    assert raw_uri.startswith(f"s3://{STORE_BUCKET}/store/data/ingestion/")
    # Prefect's cached task results live in the same bucket.
    assert keys(s3.boto, STORE_BUCKET, "store/prefect-results/")


def test_an_unchanged_rerun_is_served_from_the_s3_cache(s3, first_s3_run) -> None:
    result, states, _ = retrain_s3(
        f"s3://{SOURCE_BUCKET}/incoming/", f"s3://{STORE_BUCKET}/store"
    )
    assert {states[s] for s in STAGES} == {"Cached"}
    assert result.counts == first_s3_run[0].counts


def test_a_new_object_is_ingested_incrementally(
    s3, first_s3_run, corpus: pd.DataFrame, incoming: pd.DataFrame
) -> None:
    extra = corpus.drop(incoming.index).sample(100, random_state=12)
    s3.boto.put_object(
        Bucket=SOURCE_BUCKET, Key="incoming/part-3.csv", Body=csv_bytes(extra)
    )
    try:
        result, states, _ = retrain_s3(
            f"s3://{SOURCE_BUCKET}/incoming/", f"s3://{STORE_BUCKET}/store"
        )
    finally:
        s3.boto.delete_object(Bucket=SOURCE_BUCKET, Key="incoming/part-3.csv")
    assert states["ingestion"] == "Completed"
    assert result.counts["rows_read"] == 600
    record = json.loads(
        read_object(s3.boto, STORE_BUCKET, f"store/runs/{result.run_id}/run.json")
    )
    sha = record["refs"]["raw"]["sha256"]
    snapshot = json.loads(
        read_object(s3.boto, STORE_BUCKET, f"store/data/ingestion/snapshots/{sha}.json")
    )
    objects = {o["uri"].rsplit("/", 1)[-1]: o for o in snapshot["objects"]}
    assert sorted(objects) == ["part-1.csv", "part-2.csv", "part-3.csv"]
    assert [objects[n]["reused"] for n in sorted(objects)] == [True, True, False]
    assert all(o["version"] for o in objects.values())  # the S3 ETag
    # The first snapshot is untouched: it still lists exactly its two objects.
    first = json.loads(
        read_object(
            s3.boto,
            STORE_BUCKET,
            "store/data/ingestion/snapshots/"
            + json.loads(
                read_object(
                    s3.boto,
                    STORE_BUCKET,
                    f"store/runs/{first_s3_run[0].run_id}/run.json",
                )
            )["refs"]["raw"]["sha256"]
            + ".json",
        )
    )
    assert len(first["objects"]) == 2


def test_batch_inference_from_an_s3_prefix_to_s3(s3, first_s3_run) -> None:
    from flows.batch_inference import batch_inference

    state = batch_inference(
        source=f"s3://{SOURCE_BUCKET}/incoming/",
        output=f"s3://{STORE_BUCKET}/predictions/latest.parquet",
        artifacts_dir=f"s3://{STORE_BUCKET}/store",
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    predictions = pd.read_parquet(
        io.BytesIO(read_object(s3.boto, STORE_BUCKET, "predictions/latest.parquet"))
    )
    assert len(predictions) == result.counts["predicted"]
    assert result.counts["rows_read"] == 500
    # The champion of the store's registry (later reruns here registered more).
    assert set(predictions["model_version"]) == {result.model_version}
    assert result.model_version.startswith("tweetflow-classifier/")


def ingestion_run_count(flow_run_id) -> int:
    """How many times the ingestion task ran in a flow run (from the API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as api:
        runs = api.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    [ingestion] = [r for r in runs if r.name.startswith("ingestion")]
    assert ingestion.state.is_completed()
    return ingestion.run_count


@pytest.mark.parametrize(
    ("skip", "where", "task_runs"),
    [(0, "pre-flight check in the flow", 1), (1, "ingestion task", 2)],
)
def test_a_transient_s3_fault_is_retried_with_nothing_lost(
    s3, first_s3_run, skip: int, where: str, task_runs: int, tmp_path: Path
) -> None:
    """A 500 on reading an object: the first GET is the pre-flight check's, the
    second the ingestion task's; either way the run completes with every row."""
    s3.proxy.faults.clear()
    s3.proxy.fail("GET", "/incoming/part-1.csv", times=1, after=skip)
    result, _, flow_run_id = retrain_s3(
        f"s3://{SOURCE_BUCKET}/incoming/",
        f"s3://{STORE_BUCKET}/faulty-{tmp_path.name}",
    )
    assert len(s3.proxy.faults) == 1, (where, s3.proxy.faults)
    assert result.counts == first_s3_run[0].counts, where
    assert ingestion_run_count(flow_run_id) == task_runs, where


def test_result_storage_in_the_prefect_aws_s3_bucket_block(
    s3, incoming, tmp_path: Path
) -> None:
    """The production choice: cached results in an S3Bucket block (prefect-aws)."""
    from deployments.blocks import save_result_storage

    slug = save_result_storage(STORE_BUCKET, "block-results", name="results-under-test")
    assert slug == "s3-bucket/results-under-test"
    source = f"s3://{SOURCE_BUCKET}/incoming/"
    _, first, _ = retrain_s3(source, str(tmp_path), result_storage=slug)
    assert {first[s] for s in STAGES} == {"Completed"}
    stored = keys(s3.boto, STORE_BUCKET, "block-results/")
    assert len(stored) >= len(STAGES)  # one result (and its key record) per stage
    _, second, _ = retrain_s3(source, str(tmp_path), result_storage=slug)
    assert {second[s] for s in STAGES} == {"Cached"}
    assert not (tmp_path / "prefect-results").exists()


def test_the_frozen_set_is_one_object_every_machine_shares(
    s3, incoming, tmp_path: Path, monkeypatch
) -> None:
    """Two retrains into one S3 store from two machines (two local caches, one
    team MLflow): both gate on the same frozen object in the store, written once."""
    from tasks.infra.registry import TAG_FROZEN_SHA, Registry
    from tasks.infra.store import sha256_bytes
    from tasks.release.config import ReleaseConfig

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'team.db'}")
    monkeypatch.setenv("TWEETFLOW_MLFLOW_ARTIFACT_LOCATION", (tmp_path / "ml").as_uri())
    store = f"s3://{STORE_BUCKET}/shared-{tmp_path.name}"
    key = f"shared-{tmp_path.name}/registry/frozen_evaluation.parquet"
    # The second machine's data differs: its own evaluation split would too.
    later = incoming.iloc[100:]
    s3.boto.put_object(
        Bucket=SOURCE_BUCKET, Key=f"later-{tmp_path.name}/a.csv", Body=csv_bytes(later)
    )
    for machine, source in (
        ("one", f"s3://{SOURCE_BUCKET}/incoming/"),
        ("two", f"s3://{SOURCE_BUCKET}/later-{tmp_path.name}/"),
    ):
        monkeypatch.setenv("TWEETFLOW_CACHE_DIR", str(tmp_path / machine))
        retrain_s3(source, store)
        if machine == "one":
            frozen = read_object(s3.boto, STORE_BUCKET, key)
            written = s3.boto.head_object(Bucket=STORE_BUCKET, Key=key)["LastModified"]
            assert not list((tmp_path / machine).rglob("frozen_evaluation.parquet"))
    assert read_object(s3.boto, STORE_BUCKET, key) == frozen  # never rewritten
    assert s3.boto.head_object(Bucket=STORE_BUCKET, Key=key)["LastModified"] == written
    registry = Registry.open(tmp_path / "two", ReleaseConfig())
    tags = [registry.version(v).tags[TAG_FROZEN_SHA] for v in ("1", "2")]
    assert tags == [sha256_bytes(frozen)] * 2


def test_threads_downloading_one_object_each_get_the_whole_file(
    s3, tmp_path: Path
) -> None:
    """Steps running side by side (categories beside training) read the same
    stored frame: every download succeeds, whole, and leaves no temporary."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.infra import storage

    body = bytes(range(256)) * 4096  # 1 MB
    s3.boto.put_object(Bucket=STORE_BUCKET, Key="shared/frame.parquet", Body=body)
    target = tmp_path / "cache" / "frame.parquet"

    def download(_: int) -> bytes:
        storage.download_file(f"s3://{STORE_BUCKET}/shared/frame.parquet", target)
        return target.read_bytes()

    with ThreadPoolExecutor(6) as pool:
        copies = list(pool.map(download, range(12)))
    assert all(copy == body for copy in copies)
    assert sorted(p.name for p in target.parent.iterdir()) == ["frame.parquet"]
