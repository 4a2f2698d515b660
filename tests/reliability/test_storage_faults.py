"""Storage and server faults, on real servers: S3 (moto behind a fault proxy),
a real Prefect server (behind a proxy that can drop every connection) and the
embedded MLflow SQLite store locked by another process.

What the system does, fault by fault (README, "Storage and server faults"):
- an S3 503 SlowDown storm longer than the retry budget: the run fails with one
  ``error:`` line naming the object and the attempts; later it resumes cleanly;
- a stale S3 listing: the snapshot is the older listing's, consistently (every
  object listed is read whole, its content hashed into the snapshot);
- the Prefect API unreachable for a few seconds: Prefect's client retries and
  the run completes;
- the MLflow store locked by another process: the registry task waits/retries
  and completes once the lock is released.
"""

from __future__ import annotations

import contextlib
import csv
import re
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.aws import FaultyProxy, aws_env, client, moto_server
from tests.reliability.faults import record
from tests.reliability.runs import LoggedRun, retrain_args
from tests.servers import BIN, prefect_server

BUCKET = "tweets"
SOURCE = f"s3://{BUCKET}/incoming/"
RUN_TIMEOUT = 240.0
LOCK_SECONDS = 8.0
OUTAGE_SECONDS = 5.0


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A generic two-column CSV of real tweets, every field quoted."""
    return (
        frame[["tweet_id", "text"]]
        .to_csv(index=False, quoting=csv.QUOTE_ALL)
        .encode("utf-8")
    )


class DroppingProxy:
    """A loopback TCP proxy that can drop every connection for a while."""

    def __init__(self, port: int) -> None:
        """Forward to ``127.0.0.1:port``."""
        self.upstream = port
        self.down_until = 0.0
        self.dropped = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = False

    def outage(self, seconds: float) -> None:
        """Drop every open and new connection for ``seconds``."""
        self.down_until = time.monotonic() + seconds
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        self._listener.settimeout(0.5)
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() < self.down_until:
                self.dropped += 1
                conn.close()
                continue
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._open |= {conn, up}
        try:
            while not self._stopping:
                ready, _, _ = select.select([conn, up], [], [], 1.0)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (up if sock is conn else conn).sendall(data)
        except OSError:
            self.dropped += 1
        finally:
            with self._lock:
                self._open -= {conn, up}
            conn.close()
            up.close()

    def __enter__(self) -> DroppingProxy:
        """Start serving in a thread."""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving; close what is open."""
        self._stopping = True
        self._listener.close()
        self._thread.join(timeout=10)
        self.outage(0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, small_csv: Path):
    """A Prefect server, moto's S3 behind a fault proxy with the small corpus under
    ``s3://tweets/incoming/``, and one local artifact store for the module."""
    work = tmp_path_factory.mktemp("faults")
    with (
        prefect_server(work / "prefect") as server,
        moto_server(work / "moto") as aws,
        FaultyProxy(aws["AWS_ENDPOINT_URL"]) as s3_proxy,
    ):
        boto = client("s3", aws)
        boto.create_bucket(Bucket=BUCKET)
        boto.put_object(
            Bucket=BUCKET, Key="incoming/part-1.csv", Body=small_csv.read_bytes()
        )
        env = aws_env(server, aws) | {
            "AWS_ENDPOINT_URL": s3_proxy.url,
            "AWS_MAX_ATTEMPTS": "1",
            "TWEETFLOW_CACHE_DIR": str(work / "cache"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        yield SimpleNamespace(
            env=env,
            aws=aws,
            boto=boto,
            proxy=s3_proxy,
            store=work / "store",
            work=work,
        )


def run_to_end(
    args: list[str], env: dict[str, str], log: Path, during: tuple | None = None
) -> LoggedRun:
    """Run a command to its end; ``during`` = (line pattern, action) runs the
    action when the line appears."""
    with LoggedRun(args, env, log) as run:
        if during is not None and run.wait_for(during[0], RUN_TIMEOUT) is not None:
            during[1]()
        run.wait_for(r"(?!x)x", RUN_TIMEOUT)
        run.finish(30)
    return run


def test_a_slowdown_storm_longer_than_the_retries_fails_clearly_then_resumes(
    world: SimpleNamespace,
) -> None:
    """503 SlowDown on every read of the object: one error line naming it; once
    the storm is over the same command completes."""
    world.proxy.rules.clear()
    world.proxy.fail(
        "GET", "/incoming/part-1.csv", times=10_000, status=503, code="SlowDown"
    )
    args = retrain_args(SOURCE, world.store)
    storm = run_to_end(args, world.env, world.work / "storm.log")
    world.proxy.rules.clear()
    errors = [line for line in storm.lines if line.startswith("error:")]
    assert storm.proc.returncode != 0, storm.text[-3000:]
    assert len(errors) == 1 and "part-1.csv" in errors[0], storm.text[-3000:]
    assert "SlowDown" in errors[0] or "503" in errors[0], errors
    assert "Traceback" not in storm.text, storm.text[-3000:]
    resumed = run_to_end(args, world.env, world.work / "resumed.log")
    assert resumed.proc.returncode == 0, resumed.text[-3000:]
    assert (world.store / "LATEST").is_file()
    record(
        "S3 503 SlowDown storm",
        tried=1,
        recovered=1,
        refused=1,
        note=f"{len(world.proxy.faults)} requests answered 503: {errors[0][:200]}",
    )


def test_a_stale_listing_gives_a_consistent_older_snapshot(
    world: SimpleNamespace, corpus: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing frozen before a second object lands: the source resolves to the
    old set and ingestion reads exactly it; a fresh listing sees both."""
    import s3fs

    from tasks.stages.ingestion import IngestionConfig, ingest_frame
    from tasks.stages.ingestion.sources import resolve_source, source_fingerprint

    for key, value in world.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        world.proxy.freeze("GET", "list-type=2")
        before = source_fingerprint(SOURCE)
        old_rows = len(ingest_frame(SOURCE, IngestionConfig()).raw)
        extra = corpus.sample(300, random_state=23)
        world.boto.put_object(
            Bucket=BUCKET, Key="incoming/part-2.csv", Body=csv_bytes(extra)
        )
        stale = [f.name for f in resolve_source(SOURCE)]
        assert stale == ["part-1.csv"] and source_fingerprint(SOURCE) == before
        assert len(ingest_frame(SOURCE, IngestionConfig()).raw) == old_rows
        world.proxy.frozen.clear()
        fresh = [f.name for f in resolve_source(SOURCE)]
        assert fresh == ["part-1.csv", "part-2.csv"]
        assert len(ingest_frame(SOURCE, IngestionConfig()).raw) > old_rows
    finally:
        world.proxy.frozen.clear()
        world.boto.delete_object(Bucket=BUCKET, Key="incoming/part-2.csv")
        s3fs.S3FileSystem.clear_instance_cache()
    record(
        "S3 stale listing",
        tried=1,
        recovered=1,
        note="a stale listing yields the older set of objects, read whole "
        "(consistent older snapshot); a fresh listing sees the new object",
    )


def test_the_prefect_api_unreachable_for_seconds_mid_run(
    world: SimpleNamespace,
) -> None:
    """Every connection to the Prefect API dropped for a few seconds while the
    stages run: the run completes (Prefect's client retries)."""
    api = re.search(r":(\d+)/api", world.env["PREFECT_API_URL"])
    assert api is not None
    with DroppingProxy(int(api.group(1))) as proxy:
        env = world.env | {"PREFECT_API_URL": f"http://127.0.0.1:{proxy.port}/api"}
        args = [*retrain_args(SOURCE, world.store), "--promote", "force"]
        trigger = (
            r"Flow run '[^']*' - preflight: ",
            lambda: proxy.outage(OUTAGE_SECONDS),
        )
        done = run_to_end(args, env, world.work / "outage.log", trigger)
    assert proxy.dropped > 0, "the outage dropped nothing"
    completed_without_traceback(done)
    lost = len(re.findall(r"'EventsWorker' failed with \d+ pending", done.text))
    record(
        "Prefect API unreachable",
        tried=1,
        recovered=1,
        note=f"{OUTAGE_SECONDS:.0f} s outage ({proxy.dropped} connections dropped): "
        f"the run completed; {lost} batches of events lost (EventsWorker errors)",
    )


def completed_without_traceback(run: LoggedRun) -> None:
    """The command exited 0 and printed no traceback."""
    assert run.proc.returncode == 0, run.text[-4000:]
    assert "Traceback" not in run.text, run.text[-4000:]


def hold_exclusive_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``BEGIN EXCLUSIVE`` on the SQLite file for ``seconds``."""
    code = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "db.execute('ROLLBACK')\n"
    )
    proc = subprocess.Popen(
        [str(BIN / "python"), "-c", code, str(db), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_the_mlflow_store_locked_by_another_process(world: SimpleNamespace) -> None:
    """``BEGIN EXCLUSIVE`` held on ``mlflow.db`` while the registry step runs: the
    step waits and retries, the run completes once the lock is released."""
    db = world.store / "mlflow" / "mlflow.db"
    if not db.is_file():  # the store of the storm test's resumed run
        run_to_end(retrain_args(SOURCE, world.store), world.env, world.work / "a.log")
    lockers: list[subprocess.Popen] = []
    args = [*retrain_args(SOURCE, world.store), "--promote", "force"]
    trigger = (
        r"Flow run '[^']*' - publishing: computed",
        lambda: lockers.append(hold_exclusive_lock(db, LOCK_SECONDS)),
    )
    try:
        done = run_to_end(args, world.env, world.work / "locked.log", trigger)
    finally:
        for proc in lockers:
            proc.kill()
            proc.wait(timeout=10)
    assert lockers, "the run never reached the registry"
    completed_without_traceback(done)
    record(
        "MLflow store locked",
        tried=1,
        recovered=1,
        note=f"BEGIN EXCLUSIVE held {LOCK_SECONDS:.0f} s during the registry step: "
        "it waited and completed",
    )


def test_a_lock_longer_than_sqlite_waits_is_retried_as_transient() -> None:
    """Past MLflow's 20 s busy timeout the registry's error is transient: the
    task retries it with backoff, and a command that still fails prints one
    ``error:`` line (``flows.cli.run_command``)."""
    import sqlite3

    from tasks.infra.caching import is_transient

    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as exc:
            raise RuntimeError("(sqlite3.OperationalError) database is locked") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(sqlite3.OperationalError("no such table: runs"))
