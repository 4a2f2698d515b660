"""The batch-inference flow: classify new tweets with the champion (or a chosen)
model. Wiring only: the source is read by the ingestion stage (brand replies
skipped and counted), the model resolved and verified, the tweets cleaned,
embedded and classified by serving, the predictions written as Parquet.

Run locally: ``python -m flows.batch_inference --help``.
"""

from __future__ import annotations

from concurrent.futures import wait
from typing import Any

from prefect import flow, get_run_logger, unmapped
from pydantic import BaseModel

from flows.cli import apply_log_level, batch_main, exit_now
from flows.parameters import BatchInferenceParameters, LogLevel
from tasks.infra.caching import StageRunner
from tasks.infra.cluster import choose_cluster, prefect_api_url, task_runner
from tasks.infra.store import ArtifactStore
from tasks.release.config import load_release_config
from tasks.serving.inference import check_output, classify, report_batch
from tasks.serving.partitions import (
    Partition,
    PartitionOutput,
    classify_partition,
    combine,
    plan_object_partitions,
    plan_partitions,
    ship_model_task,
)
from tasks.serving.resolve import load_model
from tasks.stages.ingestion import (
    IngestionConfig,
    ingest,
    list_objects,
    parse_object,
    preflight,
)
from tasks.stages.ingestion.sources import SourceFile
from tasks.stages.preparation import PreparationConfig

D = BatchInferenceParameters.model_fields


class BatchInferenceResult(BaseModel):
    """What a batch inference produced."""

    counts: dict[str, int]
    categories: list[dict[str, Any]]
    quarantine_reasons: dict[str, int]
    written: dict[str, str]
    seconds: float
    model_version: str
    output: str
    no_known_share: float
    # On a Dask cluster: the partitions, how many were complete already (read
    # back, not computed), and the workers that ran them.
    partitions: int = 0
    partitions_reused: int = 0
    workers: list[str] = []


@flow(name="classify-partitions", log_prints=False)
def classify_partitions(
    partitions: list[Partition],
    artifacts_dir: str,
    objects: list[SourceFile] | None = None,
    ingestion: IngestionConfig | None = None,
) -> list[PartitionOutput]:
    """Classify every partition as a task on this flow's task runner (a Dask
    cluster's workers); with ``objects``, each partition's rows come from
    ingestion's task for its object, on the workers too. Logs each partition
    as it completes."""
    from prefect.futures import as_completed

    logger = get_run_logger()
    store = unmapped(artifacts_dir)
    ingested: Any = unmapped(None)
    if objects:
        ingested = parse_object.map(objects, unmapped(ingestion), artifacts_dir=store)
    futures = classify_partition.map(partitions, artifacts_dir=store, ingested=ingested)
    done: list[PartitionOutput] = []
    for future in as_completed(futures):
        out = future.result()
        done.append(out)
        logger.info(
            "classify: %d/%d partitions done (%s on %s)",
            len(done),
            len(partitions),
            out.what,
            out.worker,
        )
    return sorted(done, key=lambda out: out.number)


@flow(name="batch-inference", log_prints=False)
def batch_inference(
    source: str,
    output: str,
    model: str = D["model"].default,
    artifacts_dir: str = D["artifacts_dir"].default,
    log_level: LogLevel = D["log_level"].default,
    promotion_config: str = D["promotion_config"].default,
    ingestion: IngestionConfig = IngestionConfig(),  # noqa: B008 - immutable in use
    preparation: PreparationConfig = PreparationConfig(),  # noqa: B008
    dask_address: str = D["dask_address"].default,
    dask_workers: int = D["dask_workers"].default,
    partition_rows: int = D["partition_rows"].default,
) -> BatchInferenceResult:
    """Classify new tweets and write predictions as Parquet.

    Args:
        source: New tweets: a local path / file:// URI to a .csv, .jsonl or .parquet
            file or a directory of them, or an s3:// object or prefix.
        output: Parquet file URI (local or s3://) for the predictions, or a folder
            ending with / for a partitioned dataset (_manifest.json written last).
        model: 'champion' (the registry alias), a registered version number, or the
            path of a model bundle folder (runs/<id>/model).
        artifacts_dir: Artifact store root whose registry holds the models.
        log_level: Verbosity of the run's logs in the Prefect dashboard.
        promotion_config: Registry settings (YAML): MLflow URI and model name.
        ingestion: How the source is read (same options as retrain).
        preparation: Text cleaning (same code and settings as retrain).
        dask_address: An existing Dask scheduler (tcp://HOST:PORT) to run the
            per-row work on, in partitions; empty: TWEETFLOW_DASK_ADDRESS if set.
            Needs an s3:// artifacts_dir.
        dask_workers: Start a local Dask cluster of this many worker processes for
            the run; 0: none.
        partition_rows: Rows per partition on a Dask cluster.
    """
    p = BatchInferenceParameters.model_validate(locals())
    apply_log_level(p.log_level)
    check_output(p.output)
    cluster = choose_cluster(p.dask_address, p.dask_workers, p.artifacts_dir)
    store = ArtifactStore(p.artifacts_dir)
    run = StageRunner(store.root_uri, "local", get_run_logger())
    release = load_release_config(p.promotion_config)
    # Loading the model (mostly Python) runs beside reading the source (mostly
    # Arrow); the source's errors still come first.
    loading = run.beside("load-model", load_model, p.model, str(store.root), release)
    try:
        fingerprint = run("preflight", preflight, p.source, p.ingestion)
        # On a cluster, a source of several objects is read by the partitions
        # themselves (one per object): the flow never holds it.
        objects = (
            run("list-objects", list_objects, p.source) if cluster.distributed else []
        )
        read = None
        if len(objects) < 2:
            read = run("ingestion", ingest, p.source, p.ingestion, fingerprint, False)
    finally:
        wait([loading])
    loaded = loading.result()
    if not cluster.distributed:
        assert read is not None
        summary = run(
            "classify",
            classify,
            read.raw,
            read.quarantine,
            read.rows_read,
            read.outbound_skipped,
            p.output,
            loaded,
            p.preparation,
        )
    else:
        bundle = run("ship-model", ship_model_task, loaded)
        if read is None:
            partitions = plan_object_partitions(
                [o.name for o in objects], bundle, loaded.version, p.preparation
            )
            what = "one per source object"
        else:
            partitions = plan_partitions(
                read.raw, bundle, loaded.version, p.preparation, p.partition_rows
            )
            what = f"{p.partition_rows} rows of the raw snapshot each"
        get_run_logger().info(
            "classify: %d partitions (%s) on %s",
            len(partitions),
            what,
            cluster.describe(),
        )
        runner = task_runner(cluster, prefect_api_url())
        done = classify_partitions.with_options(task_runner=runner)(
            partitions,
            store.root_uri,
            objects if read is None else None,
            p.ingestion,
        )
        summary = run("combine", combine, done, read, p.output, p.preparation)
    run("report", report_batch, summary, loaded.version, p.source)
    counts = summary["counts"]
    return BatchInferenceResult(
        **summary,
        model_version=loaded.version,
        output=p.output,
        no_known_share=counts["no_known_words"] / max(counts["predicted"], 1),
    )


if __name__ == "__main__":
    exit_now(batch_main())
