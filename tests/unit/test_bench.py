"""The benchmarks' own helpers: the generated scale file has the support schema,
its replies link to the tweets they answer, and it is deterministic."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import scale_data
from bench.quality import markdown_table
from bench.scale_bench import longest_silence


def test_the_scale_file_is_a_deterministic_customer_support_file(
    tmp_path: Path,
) -> None:
    out = tmp_path / "support.csv"
    rows, customers = scale_data.write(500, out, seed=1)
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(frame.columns) == [
        "tweet_id",
        "author_id",
        "inbound",
        "created_at",
        "text",
        "response_tweet_id",
        "in_response_to_tweet_id",
    ]
    inbound = frame[frame["inbound"] == "True"]
    replies = frame[frame["inbound"] == "False"]
    assert len(frame) == rows and len(inbound) == customers == 500
    assert 0.7 * 500 < len(replies) < 0.9 * 500
    assert set(replies["in_response_to_tweet_id"]) <= set(inbound["tweet_id"])
    assert inbound["text"].str.startswith("@").all()  # addressed to a brand
    subjects = pd.read_parquet(scale_data.subjects_path(out))
    assert list(subjects["tweet_id"]) == list(inbound["tweet_id"])
    assert subjects["subject"].nunique() == 6
    again = tmp_path / "again.csv"
    scale_data.write(500, again, seed=1)
    assert again.read_bytes() == out.read_bytes()
    assert not list(tmp_path.glob(".*partial"))


def test_the_longest_log_silence_is_found(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text(
        "10:00:00.000 | INFO | a\nnot a log line\n10:00:04.500 | INFO | b\n"
        "10:00:13.000 | INFO | c\n"
    )
    gap, after = longest_silence(log)
    assert gap == 8.5 and after.endswith("| c")


def test_the_quality_table_has_one_line_per_row() -> None:
    row = {
        "corpus": "c",
        "setting": "s",
        "k": 6,
        "nmi": 0.5,
        "ari": 0.4,
        "precision": 60.0,
        "recall": 50.0,
        "f1": 54.5,
        "scored": 10,
        "seconds": 1.25,
    }
    lines = markdown_table([row]).splitlines()
    assert lines[-1] == "| c | s | 6 | 0.500 | 0.400 | 60.0 | 50.0 | 54.5 | 10 | 1.2 |"


def test_best_of_takes_the_fastest_retrain_and_the_fastest_batch_and_lists_all() -> (
    None
):
    from bench.scale_bench import best_of

    runs = [
        {
            "retrain_process_seconds": 90.0,
            "batch_process_seconds": 25.0,
            "k": 6,
            "batch_peak_rss_mb": 1300,
        },
        {
            "retrain_process_seconds": 84.0,
            "batch_process_seconds": 31.0,
            "k": 7,
            "batch_peak_rss_mb": 1200,
        },
    ]
    best = best_of(runs)
    assert best["retrain_process_seconds"] == 84.0 and best["k"] == 7
    assert best["batch_process_seconds"] == 25.0 and best["batch_peak_rss_mb"] == 1300
    assert best["retrain_runs"] == "90 84" and best["batch_runs"] == "25 31"


def test_the_dask_bench_times_the_partitions_from_the_flows_log(tmp_path: Path) -> None:
    from bench.dask_bench import partition_seconds

    log = tmp_path / "batch.log"
    log.write_text(
        "23:59:58.500 | INFO    | Flow run 'a' - classify: 4 partitions (one per "
        "source object) on a local Dask cluster of 2 worker processes\n"
        "23:59:59.000 | INFO    | Flow run 'b' - classify: 1/4 partitions done (x)\n"
        "00:00:01.250 | INFO    | Flow run 'b' - classify: 4/4 partitions done (x)\n"
        "00:00:02.000 | INFO    | Task run 'c' - combine: 4 partitions computed on "
        "vm:1, vm:2 (0 read back); 1000 rows read, 990 predicted\n"
    )
    assert partition_seconds(log) == (2.75, 1000, 4)  # across midnight


def test_the_dask_bench_finds_worker_processes_in_the_process_tree() -> None:
    import os
    import subprocess
    import sys

    from bench.dask_bench import _tree

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert {os.getpid(), child.pid} <= set(_tree(os.getpid()))
    finally:
        child.kill()
        child.wait()
