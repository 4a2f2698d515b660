"""Store locks (``tasks.infra.lease``): one holder at a time, bounded waits,
stale leases of dead or silent holders taken over, S3 conditional writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.infra.lease import LockTimeout, StoreLock

ROOT = Path(__file__).resolve().parents[2]


def lease_file(root: Path, name: str = "release") -> Path:
    return root / "locks" / f"{name}.lock"


def test_a_lease_records_its_holder_and_is_released_on_exit(tmp_path: Path) -> None:
    with StoreLock(str(tmp_path), "release", purpose="retrain flow run abc") as lock:
        lease = json.loads(lease_file(tmp_path).read_text())
        assert lease["holder"] == lock.holder and lease["pid"] == os.getpid()
        assert lease["purpose"] == "retrain flow run abc" and lease["host"]
        assert lease["expires"] > time.time()
    assert not lease_file(tmp_path).exists()


def test_a_second_holder_waits_bounded_and_names_the_holder(tmp_path: Path) -> None:
    lines: list[str] = []
    with StoreLock(str(tmp_path), "release", purpose="the first run"):
        other = StoreLock(str(tmp_path), "release", wait_seconds=1.0, log=lines.append)
        started = time.monotonic()
        with pytest.raises(LockTimeout, match="held by the first run"):
            other.acquire()
        assert 1.0 <= time.monotonic() - started < 5.0
    assert lines and "waiting for the release lock" in lines[0]
    assert f"pid {os.getpid()}" in lines[0]
    with StoreLock(str(tmp_path), "release", wait_seconds=0.0):
        pass  # free again once released


def test_the_holder_renews_its_lease_while_it_works(tmp_path: Path) -> None:
    with StoreLock(str(tmp_path), "release", lease_seconds=0.6):
        first = json.loads(lease_file(tmp_path).read_text())["expires"]
        time.sleep(1.5)  # longer than the lease: only renewal keeps it
        renewed = json.loads(lease_file(tmp_path).read_text())["expires"]
        assert renewed > first
        with pytest.raises(LockTimeout):
            StoreLock(str(tmp_path), "release", wait_seconds=0.0).acquire()


def write_lease(root: Path, holder: str, purpose: str, expires_in: float) -> Path:
    """A lease file of a holder on another machine."""
    path = lease_file(root)
    path.parent.mkdir(parents=True)
    lease = {
        "holder": holder,
        "host": "another-machine",
        "pid": 1,
        "purpose": purpose,
        "acquired": time.time() - 120,
        "expires": time.time() + expires_in,
    }
    path.write_text(json.dumps(lease))
    return path


def test_an_expired_lease_of_another_host_is_taken_over(tmp_path: Path) -> None:
    path = write_lease(tmp_path, "gone", "a run on a lost machine", -60)
    lines: list[str] = []
    with StoreLock(str(tmp_path), "release", wait_seconds=0.0, log=lines.append) as lk:
        assert json.loads(path.read_text())["holder"] == lk.holder
    assert any("took over the stale release lock" in line for line in lines)


def test_a_live_lease_of_another_host_is_not_taken_over(tmp_path: Path) -> None:
    path = write_lease(tmp_path, "busy", "a run elsewhere", 60)
    with pytest.raises(LockTimeout, match="a run elsewhere"):
        StoreLock(str(tmp_path), "release", wait_seconds=0.2).acquire()
    assert json.loads(path.read_text())["holder"] == "busy"


HOLD = """
import sys, time
from tasks.infra.lease import StoreLock
lock = StoreLock(sys.argv[1], "release", purpose="a process about to be killed")
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_sigkilled_holder_does_not_block(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(lease_file(tmp_path).read_text())["pid"] == proc.pid
    lines: list[str] = []
    started = time.monotonic()
    with StoreLock(str(tmp_path), "release", wait_seconds=5.0, log=lines.append):
        assert time.monotonic() - started < 2.0  # its pid is gone: stale at once
    assert "a process about to be killed" in "".join(lines)


def test_s3_leases_are_conditional_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against moto: ``If-None-Match: *`` creates, ``If-Match`` renews, takes over
    and releases."""
    moto = pytest.importorskip("moto")
    import boto3

    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="store")
        key = "prefix/locks/release.lock"
        with pytest.raises(s3.exceptions.ClientError, match="PreconditionFailed"):
            s3.put_object(Bucket="store", Key="x", Body=b"1", IfNoneMatch="*")
            s3.put_object(Bucket="store", Key="x", Body=b"2", IfNoneMatch="*")
        # A lease long enough that a busy machine cannot let it lapse before
        # the second acquire; renewed every second.
        with StoreLock("s3://store/prefix", "release", lease_seconds=3.0) as lock:
            etag = s3.head_object(Bucket="store", Key=key)["ETag"]
            body = json.loads(s3.get_object(Bucket="store", Key=key)["Body"].read())
            assert body["holder"] == lock.holder
            with pytest.raises(LockTimeout):
                StoreLock("s3://store/prefix", "release", wait_seconds=0.0).acquire()
            time.sleep(1.5)
            assert s3.head_object(Bucket="store", Key=key)["ETag"] != etag  # renewed
        assert "Contents" not in s3.list_objects_v2(Bucket="store", Prefix=key)
        stale = {**body, "holder": "gone", "host": "elsewhere", "expires": 0.0}
        s3.put_object(Bucket="store", Key=key, Body=json.dumps(stale).encode())
        with StoreLock("s3://store/prefix", "release", wait_seconds=0.0) as lock:
            taken = json.loads(s3.get_object(Bucket="store", Key=key)["Body"].read())
            assert taken["holder"] == lock.holder


OPEN = """
import sys
from tasks.infra.registry import Registry, RegistryConfig
reg = Registry.open(sys.argv[1], RegistryConfig())
reg.ensure_registered_model()
print(reg.experiment_id(), flush=True)
"""


def test_two_processes_create_one_embedded_store(tmp_path: Path) -> None:
    """Both open a new embedded MLflow store at once; it is created (migrated)
    once, under the store's mlflow-store lock, and both get the one experiment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert len({out.strip() for out, _ in outputs}) == 1
    assert (tmp_path / "mlflow" / ".store-ready").is_file()
    assert not (tmp_path / "locks" / "mlflow-store.lock").exists()
