"""Store locks: a lease that one process at a time holds on an artifact store.

A lease is a small JSON record (holder id, host, pid, purpose, expiry) kept at
``<store>/locks/<name>.lock``. It is taken with one atomic create-if-absent:
locally a hard link that fails on an existing name, on S3 a ``PUT`` with
``If-None-Match: *``. While held, a heartbeat thread renews the expiry; a
holder that dies (even by SIGKILL) stops renewing, so its lease goes stale when
it expires, or at once when it was on this host and its pid is gone. A stale
lease is taken over with a conditional replace (locally under an ``flock`` the
kernel drops with the process, on S3 a ``PUT`` with ``If-Match`` on the lease's
ETag), so of two waiters exactly one wins. Waiting is bounded: after
``wait_seconds`` the caller gets a ``LockTimeout`` naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.infra import storage
from tasks.infra.errors import InputError

LEASE_SECONDS = 60.0  # a dead holder on another host blocks at most this long
WAIT_SECONDS_ENV = "TWEETFLOW_LOCK_WAIT_SECONDS"
WAIT_SECONDS = 1800.0  # a release of the full corpus takes minutes, not half an hour
POLL_SECONDS = 0.5
LOG_EVERY_SECONDS = 30.0


class LockTimeout(InputError):
    """Another run held the store's lock for longer than this run would wait."""


@dataclass(frozen=True)
class Lease:
    """Who holds a lock and until when (wall-clock seconds since the epoch)."""

    holder: str
    host: str
    pid: int
    purpose: str
    acquired: float
    expires: float

    def describe(self) -> str:
        """The holder, for log lines and errors."""
        return (
            f"{self.purpose or 'a run'} (holder {self.holder[:12]}, host {self.host}, "
            f"pid {self.pid})"
        )

    def is_stale(self, now: float) -> bool:
        """Expired, or held by a process of this host that no longer exists."""
        if now > self.expires:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _parse(data: bytes) -> Lease | None:
    try:
        return Lease(**json.loads(data))
    except (ValueError, TypeError):  # a torn or foreign file: treat as stale
        return None


class _LocalLeases:
    """Lease files on a local filesystem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.guard = path.with_name(path.name + ".guard")

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.guard, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # dropped if the process dies
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def create(self, body: bytes) -> bool:
        return storage.write_new(str(self.path), body)

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def replace(self, body: bytes, token: str) -> bool:
        with self._guarded():
            current = self.read()
            if current is None or current[1] != token:
                return False
            storage.write_bytes(str(self.path), body)
            return True

    def delete(self, token: str) -> None:
        with self._guarded():
            current = self.read()
            if current is not None and current[1] == token:
                self.path.unlink(missing_ok=True)


class _S3Leases:
    """Lease objects on S3, written only with conditional PUTs."""

    def __init__(self, uri: str) -> None:
        self.bucket, self.key = uri.split("://", 1)[1].split("/", 1)
        self._client: Any = None

    @property
    def client(self) -> Any:  # a boto3 S3 client
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    @staticmethod
    def _refused(exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
            "NoSuchKey",
            "412",
            "409",
        )

    def create(self, body: bytes) -> bool:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*"
            )
        except Exception as exc:
            if self._refused(exc):
                return False
            raise
        return True

    def read(self) -> tuple[bytes, str] | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if self._refused(exc):
                return None
            raise
        return got["Body"].read(), str(got["ETag"])

    def replace(self, body: bytes, token: str) -> bool:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, IfMatch=token
            )
        except Exception as exc:
            if self._refused(exc):
                return False
            raise
        return True

    def delete(self, token: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=token)
        except Exception as exc:
            if not self._refused(exc):
                raise


class StoreLock:
    """An exclusive, leased lock named ``name`` on the store rooted at ``root``.

    Use as a context manager; it does not nest (a second holder in the same
    process waits like any other). ``log`` receives the waiting line(s).
    """

    def __init__(
        self,
        root: str,
        name: str,
        purpose: str = "",
        lease_seconds: float = LEASE_SECONDS,
        wait_seconds: float | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """A lock on ``root`` (a local path or an ``s3://`` prefix)."""
        root = storage.normalise_root(root)
        self.location = storage.join(root, "locks", f"{name}.lock")
        self.name = name
        self.purpose = purpose
        self.lease_seconds = lease_seconds
        self.wait_seconds = (
            float(os.environ.get(WAIT_SECONDS_ENV, WAIT_SECONDS))
            if wait_seconds is None
            else wait_seconds
        )
        self.log = log or (lambda message: None)
        self.leases: _LocalLeases | _S3Leases = (
            _S3Leases(self.location)
            if storage.is_remote(root)
            else _LocalLeases(storage.local_path(self.location))
        )
        self.holder = uuid.uuid4().hex
        self._token: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost = False

    def _body(self, acquired: float) -> bytes:
        now = time.time()
        lease = Lease(
            self.holder,
            socket.gethostname(),
            os.getpid(),
            self.purpose,
            acquired,
            now + self.lease_seconds,
        )
        return json.dumps(asdict(lease), sort_keys=True).encode()

    def try_acquire(self) -> Lease | None:
        """Take the lease if it is free or stale; else return the holder's lease."""
        body = self._body(time.time())
        if self.leases.create(body):
            self._token = self._own_token(body)
            return None
        current = self.leases.read()
        if current is None:  # released meanwhile: try again next poll
            return Lease("?", "?", 0, "a run releasing the lock", 0.0, time.time())
        data, token = current
        lease = _parse(data)
        stale = lease is None or lease.is_stale(time.time())
        if stale and self.leases.replace(body, token):
            self._token = self._own_token(body)
            if lease is not None:
                self.log(f"took over the stale {self.name} lock of {lease.describe()}")
            return None
        return lease or Lease("?", "?", 0, "an unreadable lease", 0.0, time.time())

    def _own_token(self, body: bytes) -> str:
        current = self.leases.read()
        if current is None or current[0] != body:
            raise RuntimeError(f"lock {self.location} changed while being taken")
        return current[1]

    def acquire(self) -> None:
        """Wait (bounded) for the lease, then keep renewing it in the background."""
        deadline = time.monotonic() + self.wait_seconds
        next_log = 0.0
        while (holder := self.try_acquire()) is not None:
            now = time.monotonic()
            if now >= deadline:
                raise LockTimeout(
                    f"the {self.name} lock on {self.location} is held by "
                    f"{holder.describe()}; gave up after {self.wait_seconds:.0f}s "
                    f"(set {WAIT_SECONDS_ENV} to wait longer)"
                )
            if now >= next_log:
                self.log(
                    f"waiting for the {self.name} lock on {self.location}: held by "
                    f"{holder.describe()}; waiting up to "
                    f"{deadline - now:.0f}s more"
                )
                next_log = now + LOG_EVERY_SECONDS
            time.sleep(POLL_SECONDS)
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._renew, name=f"lease-{self.name}", daemon=True
        )
        self._heartbeat.start()

    def _renew(self) -> None:
        acquired = time.time()
        while not self._stop.wait(self.lease_seconds / 3):
            body = self._body(acquired)
            token = self._token
            if token is None or not self.leases.replace(body, token):
                self.lost = True
                self.log(f"lost the {self.name} lock on {self.location}")
                return
            self._token = self._own_token(body)

    def release(self) -> None:
        """Give the lease back (only if it is still this holder's)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._token is not None:
            self.leases.delete(self._token)
            self._token = None

    def __enter__(self) -> StoreLock:
        """Acquire."""
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        """Release, whether the block succeeded or not."""
        self.release()


RELEASE_LOCK = "release"


def release_lock(
    root: str, purpose: str, log: Callable[[str], None] | None = None
) -> StoreLock:
    """The lock around a store's release: publishing, registration, promotion
    and ``LATEST`` (retrains and by-hand promotions take it)."""
    return StoreLock(root, RELEASE_LOCK, purpose=purpose, log=log)


def run_purpose(kind: str) -> str:
    """``<kind> flow run <id>`` for the current Prefect flow run, for lease records."""
    from prefect.runtime import flow_run

    return f"{kind} flow run {flow_run.id}" if flow_run.id else f"{kind} (local)"
