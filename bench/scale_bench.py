"""The retrain and batch inference at the original dataset's size, on this machine.

For each N: generate (once, kept in ``bench/results/scale/``) a customer-support
file of N customer tweets and about 0.8 N brand replies (``bench.scale_data``),
run a cold ``python -m flows.retrain`` on it into an empty store (with the
local Prefect server already running, as after a user's first run), then
``python -m flows.batch_inference`` on the same file, each as its own process.
Prints per-stage seconds and seconds per million tweets, the whole process's
wall time and peak RSS (``wait4``: the largest of the process and the children
it waited for; and, sampled every 0.2 s, the peak while each step ran), the
longest silence in the retrain's log, the NMI of the
categories against the generator's subjects and the gate's verdict. Results go
to ``bench/results/scale.json``. Not a test: nothing here asserts a time.

Usage: ``python -m bench.scale_bench N [N ...] [--keep] [--repeat R]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pandas as pd
from sklearn.metrics import normalized_mutual_info_score

from bench import scale_data

RESULTS = Path(__file__).parent / "results"
LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \|")
STEP_DONE = re.compile(
    r"Flow run '[^']*' - ([a-z]+): (?:computed|reused from cache) in"
)
RSS_EVERY = 0.2  # seconds between two samples of the process's memory


def scale_file(n: int) -> Path:
    """The generated file for N customer tweets (generated on first use)."""
    path = RESULTS / "scale" / f"support-{n}.csv"
    if not path.exists():
        started = time.perf_counter()
        rows, _ = scale_data.write(n, path)
        print(f"generated {path} ({rows} rows) in {time.perf_counter() - started:.0f}s")
    return path


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (its threads, not its
    children), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    """Resident memory of a process now (MB), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_measured(
    cmd: list[str], log: Path
) -> tuple[int, float, float, list[tuple[float, float, float]], float]:
    """Run a command with its output in ``log``.

    Returns (exit code, seconds, peak RSS MB from ``wait4``, RSS samples, CPU
    seconds): the samples are (time of day in seconds, RSS MB, CPU seconds so
    far) every 0.2 s, to find which stage reached the peak and how many cores
    each stage kept busy; CPU seconds are user + system time.
    """
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    samples: list[tuple[float, float, float]] = []
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(RSS_EVERY):
                now = datetime.now()
                of_day = now.hour * 3600 + now.minute * 60 + now.second
                samples.append(
                    (
                        of_day + now.microsecond / 1e6,
                        _rss_mb(proc.pid),
                        _cpu_seconds(proc.pid),
                    )
                )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, seconds, usage.ru_maxrss / 1024, samples, cpu


def _stamped(log: Path) -> list[tuple[float, str]]:
    stamps: list[tuple[float, str]] = []
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if m:
            h, mi, s, ms = (int(g) for g in m.groups())
            stamps.append((h * 3600 + mi * 60 + s + ms / 1000, line))
    return stamps


def _step_of(log: Path) -> Callable[[float], str]:
    """The step of the flow running at a time of day, from its log.

    A step runs from the previous step's "<name>: computed in" (or "reused")
    line in the flow's log to its own; before the flow run begins is
    "start-up", after its last step "finishing". A step run several times
    (registry) counts as one.
    """
    stamped = _stamped(log)
    begin = next((t for t, line in stamped if "Beginning flow run" in line), None)
    ends = [(t, m.group(1)) for t, line in stamped if (m := STEP_DONE.search(line))]

    def step(t: float) -> str:
        if begin is not None and t < begin:
            return "start-up"
        return next((name for end, name in ends if t <= end), "finishing")

    return step


def peak_rss_by_step(
    log: Path, samples: list[tuple[float, float, float]]
) -> dict[str, float]:
    """Peak RSS (MB) while each step of the flow ran (steps as ``_step_of``)."""
    step = _step_of(log)
    peaks: dict[str, float] = {}
    for t, rss, _ in samples:
        name = step(t)
        peaks[name] = max(peaks.get(name, 0.0), rss)
    return {k: round(v) for k, v in peaks.items()}


def cores_by_step(
    log: Path, samples: list[tuple[float, float, float]]
) -> dict[str, float]:
    """Cores each step kept busy on average: the process's CPU seconds over the
    wall seconds between consecutive samples in that step (its own threads;
    the background MLflow store process is not counted)."""
    step = _step_of(log)
    cpu: dict[str, float] = {}
    wall: dict[str, float] = {}
    for (t0, _, c0), (t1, _, c1) in zip(samples, samples[1:], strict=False):
        if c1 <= 0:  # the process has gone
            continue
        name = step(t1)
        cpu[name] = cpu.get(name, 0.0) + c1 - c0
        wall[name] = wall.get(name, 0.0) + (t1 - t0) % 86400
    return {k: round(cpu[k] / wall[k], 2) for k in cpu if wall[k] > 0}


def longest_silence(log: Path) -> tuple[float, str]:
    """The longest gap between two timestamped log lines, and the line after it."""
    stamps = _stamped(log)
    gap, after = 0.0, ""
    for (t0, _), (t1, line) in zip(stamps, stamps[1:], strict=False):
        if (t1 - t0) % 86400 > gap:
            gap, after = (t1 - t0) % 86400, line
    return gap, after[:160]


def bench_one(n: int, keep: bool) -> dict:
    """Cold retrain and batch inference on the N-tweet file; the figures."""
    source = scale_file(n)
    work = Path(tempfile.mkdtemp(prefix=f"tweetflow-scale-{n}-"))
    try:
        artifacts = work / "artifacts"
        py = sys.executable
        code, retrain_s, retrain_rss, retrain_samples, retrain_cpu = run_measured(
            [py, "-m", "flows.retrain", "--source", str(source)]
            + ["--artifacts-dir", str(artifacts)],
            work / "retrain.log",
        )
        if code:
            raise SystemExit(f"retrain failed, see {work / 'retrain.log'}")
        silence, after = longest_silence(work / "retrain.log")
        run_dir = artifacts / "runs" / (artifacts / "LATEST").read_text().strip()
        info = json.loads((run_dir / "run.json").read_text())
        registry = json.loads((run_dir / "registry.json").read_text())
        labels = pd.read_parquet(run_dir / "pseudo_labels.parquet")
        subjects = pd.read_parquet(scale_data.subjects_path(source))
        scored = labels.merge(subjects, on="tweet_id")
        scored = scored[scored["cluster_id"] >= 0]
        nmi = normalized_mutual_info_score(scored["subject"], scored["cluster_id"])
        output = work / "predictions.parquet"
        code, batch_s, batch_rss, batch_samples, batch_cpu = run_measured(
            [py, "-m", "flows.batch_inference", "--source", str(source)]
            + ["--output", str(output), "--artifacts-dir", str(artifacts)],
            work / "batch.log",
        )
        if code:
            raise SystemExit(f"batch inference failed, see {work / 'batch.log'}")
        batch_flow_s = flow_seconds(work / "batch.log")
        return {
            "n": n,
            "rows_in_file": info["counts"]["rows_read"]
            + info["counts"]["outbound_skipped"]
            + info["counts"]["replies_read"],
            "counts": info["counts"],
            "k": info["k"],
            "stage_seconds": info["stage_seconds"],
            "retrain_process_seconds": round(retrain_s, 1),
            "retrain_cpu_seconds": round(retrain_cpu, 1),
            "retrain_peak_rss_mb": round(retrain_rss),
            "longest_log_silence_seconds": round(silence, 1),
            "line_after_longest_silence": after,
            "nmi_vs_subjects": round(float(nmi), 3),
            "promotion": registry["promotion"],
            "batch_process_seconds": round(batch_s, 1),
            "batch_flow_seconds": batch_flow_s,
            "batch_cpu_seconds": round(batch_cpu, 1),
            "batch_peak_rss_mb": round(batch_rss),
            "retrain_peak_rss_mb_by_step": peak_rss_by_step(
                work / "retrain.log", retrain_samples
            ),
            "batch_peak_rss_mb_by_step": peak_rss_by_step(
                work / "batch.log", batch_samples
            ),
            "retrain_cores_by_step": cores_by_step(
                work / "retrain.log", retrain_samples
            ),
            "batch_cores_by_step": cores_by_step(work / "batch.log", batch_samples),
        }
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def best_of(runs: list[dict]) -> dict:
    """One row for several runs of the same N: the fastest retrain's figures,
    the fastest batch inference's, and every run's whole-process seconds (on a
    shared machine other work only ever adds time, so the fastest run is the
    closest to the program's own cost; the list shows the spread)."""
    best = dict(min(runs, key=lambda r: r["retrain_process_seconds"]))
    batch = min(runs, key=lambda r: r["batch_process_seconds"])
    for key in batch:
        if key.startswith("batch_"):
            best[key] = batch[key]
    best["retrain_runs"] = " ".join(f"{r['retrain_process_seconds']:.0f}" for r in runs)
    best["batch_runs"] = " ".join(f"{r['batch_process_seconds']:.0f}" for r in runs)
    return best


def flow_seconds(log: Path) -> float | None:
    """Seconds between a flow run's first and last log line (its own time)."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if m and "Flow run" in line:
            h, mi, s, ms = (int(g) for g in m.groups())
            times.append(h * 3600 + mi * 60 + s + ms / 1000)
    return round((times[-1] - times[0]) % 86400, 1) if len(times) > 1 else None


def print_table(results: list[dict]) -> None:
    """Per stage: seconds and seconds per million customer tweets, for each N."""
    stages = list(results[0]["stage_seconds"])
    head = "".join(f"{'N=' + format(r['n'], ','):>24}" for r in results)
    print(f"{'':<28}{head}")
    print(f"{'stage':<28}" + "".join(f"{'s':>12}{'s/1M':>12}" for _ in results))
    for stage in stages:
        cells = "".join(
            f"{r['stage_seconds'].get(stage, 0):>12.1f}"
            f"{r['stage_seconds'].get(stage, 0) / r['n'] * 1e6:>12.1f}"
            for r in results
        )
        print(f"{stage:<28}{cells}")
    rows = [
        ("retrain, whole process s", "retrain_process_seconds"),
        ("retrain, every run s", "retrain_runs"),
        ("retrain CPU s", "retrain_cpu_seconds"),
        ("retrain peak RSS MB", "retrain_peak_rss_mb"),
        ("longest log silence s", "longest_log_silence_seconds"),
        ("k", "k"),
        ("NMI vs subjects", "nmi_vs_subjects"),
        ("gate", "promotion"),
        ("batch, whole process s", "batch_process_seconds"),
        ("batch, every run s", "batch_runs"),
        ("batch CPU s", "batch_cpu_seconds"),
        ("batch, flow run s", "batch_flow_seconds"),
        ("batch peak RSS MB", "batch_peak_rss_mb"),
    ]
    for label, key in rows:
        print(f"{label:<28}" + "".join(f"{str(r[key]):>24}" for r in results))
    for flow in ("retrain", "batch"):
        for what, key in (
            ("RSS MB", f"{flow}_peak_rss_mb_by_step"),
            ("cores", f"{flow}_cores_by_step"),
        ):
            steps = list(dict.fromkeys(s for r in results for s in r.get(key, {})))
            for step in steps:
                print(
                    f"{flow + ' ' + what + ', ' + step:<28}"
                    + "".join(
                        f"{str(r.get(key, {}).get(step, '')):>24}" for r in results
                    )
                )
    print(
        f"{'retrain tweets/s':<28}"
        + "".join(f"{r['n'] / r['retrain_process_seconds']:>24,.0f}" for r in results)
    )
    print(
        f"{'batch tweets/s (whole)':<28}"
        + "".join(f"{r['n'] / r['batch_process_seconds']:>24,.0f}" for r in results)
    )
    print(
        f"{'batch tweets/s (flow run)':<28}"
        + "".join(
            f"{r['n'] / (r['batch_flow_seconds'] or r['batch_process_seconds']):>24,.0f}"
            for r in results
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Run the scale benchmark for each N and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="+", help="customer tweets")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per N: the table shows the fastest retrain's run and the "
        "fastest batch inference, and lists every run's time",
    )
    args = parser.parse_args(argv)
    # The README's set-up: command-line runs report to the local Prefect server,
    # started once. Start it before measuring, so no run pays for that.
    from flows.local_server import api_for_command_line

    api_for_command_line()
    results = []
    for n in args.n:
        print(f"{datetime.now():%H:%M:%S} N={n:,}: cold retrain, then batch inference")
        runs = [bench_one(n, args.keep) for _ in range(max(1, args.repeat))]
        results.append(best_of(runs))
    print_table(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
