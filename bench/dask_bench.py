"""Batch inference in partitions on a local Dask cluster of 1 and 2 workers.

For each N: generate (once, kept in ``bench/results/dask/``) a partitioned
Parquet dataset in the customer-support schema (``bench.scale_data``: N
customer tweets and about 0.8 N brand replies, in files of ``--file-rows``
rows), train a model on the bundled corpus into a fresh store, then run
``python -m flows.batch_inference --dask-workers W`` on the dataset for each W,
each as its own process. Prints tweets/s for the whole process and for the
partitions (from the first partition submitted to the last one done), the
scaling ratio of 2 workers over 1, and the peak RSS of the flow process and of
each worker process (sampled every 0.2 s over the process tree). The outputs
of every W must be the same table. Results go to ``bench/results/dask.json``.
Not a test: nothing here asserts a time.

Usage: ``python -m bench.dask_bench N [N ...] [--workers 1 2]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from bench import scale_data
from bench.scale_bench import _rss_mb, _stamped

RESULTS = Path(__file__).parent / "results"
SAMPLE_EVERY = 0.2  # seconds between two samples of the process tree
PLANNED = re.compile(r"classify: (\d+) partitions")
ROWS_READ = re.compile(r"combine: .*?; (\d+) rows read")
PART_DONE = re.compile(r"classify: (\d+)/(\d+) partitions done")


def dataset(n: int, file_rows: int) -> Path:
    """The generated dataset for N customer tweets (generated on first use):
    ``part-*.parquet`` files, a ``subjects.parquet`` beside the folder."""
    folder = RESULTS / "dask" / f"support-{n}"
    if (folder / "_COMPLETE").exists():
        return folder
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    frame, subjects = scale_data.generate(n)
    # Customer tweets and replies interleaved as in the original file.
    frame = frame.sort_values("tweet_id", key=lambda s: s.astype("int64"))
    for i, start in enumerate(range(0, len(frame), file_rows)):
        part = frame.iloc[start : start + file_rows]
        part.to_parquet(folder / f"part-{i:05d}.parquet", index=False)
    subjects.to_parquet(folder.with_name(folder.name + ".subjects.parquet"))
    (folder / "_COMPLETE").write_text(f"{len(frame)} rows\n")
    print(
        f"generated {folder} ({len(frame)} rows) in {time.perf_counter() - started:.0f}s"
    )
    return folder


def _children(pid: int) -> list[int]:
    """A process's children, whichever of its threads started them."""
    out: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return out


def _tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_tree_measured(cmd: list[str], log: Path) -> tuple[int, float, dict]:
    """Run a command; the exit code, wall seconds and peak RSS (MB) of the
    process itself and of each descendant that looks like a Dask worker."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    peaks: dict[int, float] = {}
    kinds: dict[int, str] = {}
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_EVERY):
                for pid in _tree(proc.pid):
                    if pid not in kinds:
                        line = _cmdline(pid)
                        kinds[pid] = (
                            "flow"
                            if pid == proc.pid
                            else (
                                "worker"
                                if "spawn" in line or "forkserver" in line
                                else "other"
                            )
                        )
                    peaks[pid] = max(peaks.get(pid, 0.0), _rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    workers = sorted(
        (round(peak) for pid, peak in peaks.items() if kinds.get(pid) == "worker"),
        reverse=True,
    )
    return (
        code,
        seconds,
        {"flow": round(peaks.get(proc.pid, 0.0)), "workers": workers},
    )


def partition_seconds(log: Path) -> tuple[float, int, int]:
    """Seconds from the partitions planned to the last one done; rows, parts."""
    begin = end = None
    rows = parts = 0
    for t, line in _stamped(log):
        if (m := PLANNED.search(line)) and begin is None:
            begin, parts = t, int(m.group(1))
        if PART_DONE.search(line):
            end = t
        if m := ROWS_READ.search(line):
            rows = int(m.group(1))
    if begin is None or end is None:
        return 0.0, rows, parts
    return (end - begin) % 86400, rows, parts


def table_sha(path: Path) -> str:
    """sha256 of the predictions sorted by tweet id."""
    frame = pd.read_parquet(path).sort_values("tweet_id").reset_index(drop=True)
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def bench_one(n: int, workers: list[int], file_rows: int, part_rows: int) -> dict:
    """Batch inference of the N dataset on each cluster size; the figures."""
    source = dataset(n, file_rows)
    work = Path(tempfile.mkdtemp(prefix=f"tweetflow-dask-{n}-"))
    py = sys.executable
    os.environ["DASK_TEMPORARY_DIRECTORY"] = str(work / "dask")
    try:
        artifacts = work / "artifacts"
        trained = subprocess.run(
            [py, "-m", "flows.retrain", "--artifacts-dir", str(artifacts)],
            capture_output=True,
            text=True,
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        )
        if trained.returncode:
            raise SystemExit(f"retrain failed:\n{trained.stdout[-3000:]}")
        runs = {}
        for w in workers:
            # Each cluster size starts from the trained store alone: nothing of
            # the other runs (parsed source, partitions) is read back.
            store = work / f"store-{w}"
            shutil.copytree(artifacts, store)
            out = work / f"predictions-{w}.parquet"
            log = work / f"batch-{w}.log"
            cmd = [py, "-m", "flows.batch_inference", "--source", str(source)]
            cmd += ["--output", str(out), "--artifacts-dir", str(store)]
            cmd += ["--dask-workers", str(w), "--partition-rows", str(part_rows)]
            code, seconds, rss = run_tree_measured(cmd, log)
            if code:
                raise SystemExit(f"batch inference failed, see {log}")
            parts_s, rows, parts = partition_seconds(log)
            runs[w] = {
                "workers": w,
                "seconds": round(seconds, 1),
                "partition_seconds": round(parts_s, 1),
                "rows": rows,
                "partitions": parts,
                "tweets_per_s": round(rows / seconds),
                "partition_tweets_per_s": round(rows / parts_s) if parts_s else 0,
                "peak_rss_mb_flow": rss["flow"],
                "peak_rss_mb_per_worker": rss["workers"],
                "output_sha256": table_sha(out),
            }
            print(json.dumps(runs[w]))
            shutil.rmtree(store, ignore_errors=True)
        return {"n": n, "runs": list(runs.values())}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark for each N; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="+", help="customer tweets")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--file-rows", type=int, default=250_000)
    parser.add_argument("--partition-rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    results = []
    for n in args.n:
        print(f"{datetime.now():%H:%M:%S} N={n:,}: batch inference on 1 and 2 workers")
        results.append(bench_one(n, args.workers, args.file_rows, args.partition_rows))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dask.json").write_text(json.dumps(results, indent=2) + "\n")
    for result in results:
        runs = {r["workers"]: r for r in result["runs"]}
        print(f"\nN={result['n']:,}")
        print(f"{'workers':<34}" + "".join(f"{w:>12}" for w in runs))
        for key in (
            "seconds",
            "tweets_per_s",
            "partition_seconds",
            "partition_tweets_per_s",
            "partitions",
            "peak_rss_mb_flow",
        ):
            print(f"{key:<34}" + "".join(f"{r[key]:>12,}" for r in runs.values()))
        print(
            f"{'peak_rss_mb_per_worker (max)':<34}"
            + "".join(
                f"{max(r['peak_rss_mb_per_worker'] or [0]):>12,}" for r in runs.values()
            )
        )
        if 1 in runs and 2 in runs:
            whole = runs[1]["seconds"] / runs[2]["seconds"]
            inner = runs[1]["partition_seconds"] / max(
                runs[2]["partition_seconds"], 1e-9
            )
            print(
                f"scaling 2 over 1 worker: whole process {whole:.2f}x, partitions {inner:.2f}x"
            )
        same = len({r["output_sha256"] for r in result["runs"]}) == 1
        print(f"same output on every cluster size: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
