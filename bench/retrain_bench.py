"""Benchmark the retrain flow on the bundled corpus: cold, then warm (all cached).

Prints the wall time of each stage, of the whole flow and tweets per second,
and the discovery quality against the six collection subjects (NMI / ARI).
Results are also written to ``bench/results/retrain.json``. Not a test: the
machines are shared and noisy, so nothing here asserts a time.

Usage: ``python -m bench.retrain_bench [--artifacts-dir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from bench.subjects import label_subjects

if TYPE_CHECKING:
    from flows.parameters import RetrainParameters
    from flows.retrain import RetrainResult


def discovery_quality(labels: pd.DataFrame) -> dict[str, float]:
    """NMI / ARI of the pseudo-labels against keyword-labelled collection subjects."""
    subjects = label_subjects(labels["text"])
    known = subjects.notna() & labels["cluster_id"].ge(0)
    return {
        "nmi": float(
            normalized_mutual_info_score(
                subjects[known], labels.loc[known, "cluster_id"]
            )
        ),
        "ari": float(
            adjusted_rand_score(subjects[known], labels.loc[known, "cluster_id"])
        ),
        "labelled_share": float(known.mean()),
    }


def start_api() -> float:
    """Make sure the Prefect API answers before timing (an ephemeral one starts now)."""
    from prefect.client.orchestration import get_client

    started = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.read_flows(limit=1)
    return time.perf_counter() - started


def timed_run(params: RetrainParameters) -> tuple[RetrainResult, float]:
    """Run the flow once; return its result and wall time."""
    from flows.retrain import retrain

    started = time.perf_counter()
    result = retrain(**params.as_flow_kwargs())
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--artifacts-dir", default=None, help="default: a temporary dir"
    )
    parser.add_argument("--keep", action="store_true", help="keep the artifacts dir")
    args = parser.parse_args(argv)
    from flows.parameters import RetrainParameters

    artifacts = Path(args.artifacts_dir or tempfile.mkdtemp(prefix="tweetflow-bench-"))
    if artifacts.exists() and any(artifacts.iterdir()):
        raise SystemExit(
            f"{artifacts} is not empty; a cold run needs an empty directory"
        )
    params = RetrainParameters(artifacts_dir=str(artifacts), log_level="WARNING")
    api_s = start_api()
    try:
        cold, cold_s = timed_run(params)
        warm, warm_s = timed_run(params)
        labels = pd.read_parquet(Path(cold.run_dir) / "pseudo_labels.parquet")
        quality = discovery_quality(labels)
    finally:
        if not args.keep:
            shutil.rmtree(artifacts, ignore_errors=True)
    rows = cold.counts["rows_read"]
    print(f"retrain benchmark on the bundled corpus ({rows} tweets)")
    print(f"(Prefect API ready in {api_s:.1f}s before timing)")
    print(f"{'stage':<14}{'cold s':>10}{'warm s':>10}")
    for stage, seconds in cold.stage_seconds.items():
        # an unchanged warm run publishes and registers nothing: no such steps
        again = warm.stage_seconds.get(stage)
        print(
            f"{stage:<14}{seconds:>10.2f}{'-' if again is None else f'{again:.2f}':>10}"
        )
    print(f"{'whole flow':<14}{cold_s:>10.2f}{warm_s:>10.2f}")
    print(f"tweets/s      {rows / cold_s:>10.0f}{rows / warm_s:>10.0f}")
    print(
        f"k={cold.k}  NMI={quality['nmi']:.3f}  ARI={quality['ari']:.3f}  "
        f"(subjects known for {quality['labelled_share']:.1%} of tweets)"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "retrain.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "api_start_seconds": api_s,
                "cold_seconds": cold_s,
                "warm_seconds": warm_s,
                "cold_stage_seconds": cold.stage_seconds,
                "warm_stage_seconds": warm.stage_seconds,
                "k": cold.k,
                "quality": quality,
                "metrics": cold.metrics,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
