"""The artifact store: content-addressed files under one root directory.

Stages pass small ``ArtifactRef`` records between each other; the data itself
lives here as Parquet frames or as directories of model files. Every write goes
to a temporary name first and is moved into place when complete, so a crash
never leaves a half-written artifact where a complete one is expected.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from data_contracts import ContractViolation, get_contract, validate_frame
from tasks.infra import storage
from tasks.infra.lazy import pd
from tasks.infra.parallel import map_ordered

CHUNK = 1 << 20
PUT_CHUNK = 200_000  # rows of a whole frame checked and written at a time


class ArtifactRef(BaseModel):
    """A reference to an artifact in the store: where it is and what it holds."""

    model_config = ConfigDict(frozen=True)

    uri: str
    sha256: str
    rows: int = 0
    contract: str | None = None
    kind: Literal["frame", "dir"] = "frame"


class ArtifactMissing(Exception):
    """A referenced artifact is absent or does not match its recorded hash."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    storage.write_bytes(str(path), data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def frame_to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Serialise a frame to Parquet bytes (deterministic for equal frames), as
    the store writes it (``parquet_options``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **parquet_options(table.schema, table))
    return buffer.getvalue()


def manifest_for(directory: Path) -> dict[str, str]:
    """Map each file under ``directory`` (relative path) to its sha256."""
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def verify_manifest(directory: Path) -> dict[str, str]:
    """Check every file listed in ``directory/manifest.json`` against its sha256.

    Raises ArtifactMissing naming the first file that is missing, unlisted or
    altered. Returns the manifest's file map.
    """
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactMissing(f"no manifest.json in {directory}")
    listed: dict[str, str] = json.loads(manifest_path.read_text())["files"]
    actual = manifest_for(directory)
    for name, digest in listed.items():
        if name not in actual:
            raise ArtifactMissing(f"{directory}: {name} is listed but missing")
        if actual[name] != digest:
            raise ArtifactMissing(
                f"{directory}: {name} does not match its sha256 in manifest.json"
            )
    extra = sorted(set(actual) - set(listed))
    if extra:
        raise ArtifactMissing(f"{directory}: files not in manifest.json: {extra}")
    return listed


def manifest_digest(files: dict[str, str]) -> str:
    """A directory's content digest: sha256 of its manifest's file map."""
    return sha256_bytes(json.dumps(files, sort_keys=True).encode())


def write_manifest(directory: Path, extra: dict | None = None) -> str:
    """Write ``manifest.json`` for ``directory``; return its content digest."""
    files = manifest_for(directory)
    body = json.dumps({"files": files, **(extra or {})}, indent=2, sort_keys=True)
    atomic_write_text(directory / "manifest.json", body + "\n")
    return manifest_digest(files)


def local_cache_for(root_uri: str) -> Path:
    """Local folder that mirrors model directories of a remote store.

    ``TWEETFLOW_CACHE_DIR`` sets its parent (default ``~/.cache/tweetflow``).
    Everything in it is content-addressed and verified before use.
    """
    base = Path(
        os.environ.get("TWEETFLOW_CACHE_DIR", Path.home() / ".cache" / "tweetflow")
    )
    return base / sha256_bytes(root_uri.encode())[:16]


DICTIONARY_MAX_DISTINCT = 0.5  # share of distinct values above which no dictionary
DICTIONARY_SAMPLE_ROWS = 10_000  # first rows that share is measured on


def parquet_options(schema: Any, sample: Any = None) -> dict[str, Any]:
    """How the store writes Parquet (``schema`` a pyarrow.Schema, ``sample`` an
    optional pyarrow.Table of the first rows): zstd, with dictionaries only where
    values repeat. Floating-point columns (tweet vectors, distances) are stored
    plain: their values barely repeat or compress, and building a dictionary for
    each is what made writing a million vectors slow. Text columns whose values
    are mostly distinct in the sample (ids, tweets, tokens) skip the dictionary
    too: pyarrow would build one, find it too large and fall back, for nothing."""
    import pyarrow as pa

    floats = {f.name for f in schema if pa.types.is_floating(f.type)}
    distinct = set()
    if sample is not None and sample.num_rows:
        import pyarrow.compute as pc

        head = sample.slice(0, DICTIONARY_SAMPLE_ROWS)
        for f in schema:
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                share = pc.count_distinct(head.column(f.name)).as_py()
                if share > DICTIONARY_MAX_DISTINCT * head.num_rows:
                    distinct.add(f.name)
    return {
        "compression": {f.name: "none" if f.name in floats else "zstd" for f in schema},
        "use_dictionary": [
            f.name for f in schema if f.name not in floats and f.name not in distinct
        ],
    }


class HashingFile(io.RawIOBase):
    """A new local file that is hashed (sha256) as it is written.

    Data goes straight to the operating system; a background thread hashes it
    (hashlib releases the interpreter lock) and hands it to the disk every
    ``SYNC_EVERY`` bytes, so closing the file costs neither a second pass over
    it to hash it nor a long wait for the disk, and the writer's thread does
    neither.
    """

    SYNC_EVERY = 64 * 1024 * 1024
    QUEUED = 64  # writes waiting to be hashed at most (pyarrow writes ~100 KB)

    def __init__(self, path: Path) -> None:
        """Create (or truncate) ``path`` for writing."""
        import queue

        super().__init__()
        self._fh = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.QUEUED)
        self._error: BaseException | None = None
        self._hasher = threading.Thread(
            target=self._hash, name="tweetflow-hash", daemon=True
        )
        self._hasher.start()

    def _hash(self) -> None:
        unsynced = 0
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain the queue; close() reports the error
            try:
                self._digest.update(data)
                unsynced += len(data)
                if unsynced >= self.SYNC_EVERY:
                    os.fdatasync(self._fh.fileno())
                    unsynced = 0
            except BaseException as exc:  # re-raised by close()
                self._error = exc

    def writable(self) -> bool:
        """Always: the file is open for writing."""
        return True

    def write(self, data: Any) -> int:
        """Write ``data`` (bytes) and queue it to be hashed."""
        data = bytes(data)  # immutable: the hasher reads it later
        view = memoryview(data)
        while view:
            view = view[self._fh.write(view) or 0 :]
        self._queue.put(data)
        return len(data)

    def close(self) -> None:
        """Wait for the hash, close; raise what the background thread raised."""
        if not self._fh.closed:
            self._queue.put(None)
            self._hasher.join()
            self._fh.close()
        super().close()
        if self._error is not None:
            raise self._error

    def hexdigest(self) -> str:
        """Hex sha256 of everything written (once closed)."""
        if not self._fh.closed:
            raise RuntimeError("the file is still being written")
        return self._digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}


def _known_good(path: Path, sha256: str) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return _VERIFIED.get((str(path), stat.st_size, stat.st_mtime_ns)) == sha256


def _remember_good(path: Path, sha256: str) -> None:
    stat = path.stat()
    _VERIFIED[(str(path), stat.st_size, stat.st_mtime_ns)] = sha256


def same_values(values: Any, other: Any) -> bool:
    """Whether two columns (pyarrow arrays or chunked arrays, or pandas Series)
    hold the same values in the same order, whatever their chunks."""
    import pyarrow as pa

    def chunked(column: Any) -> Any:
        if isinstance(column, pa.ChunkedArray):
            return column
        if isinstance(column, pa.Array):
            return pa.chunked_array([column])
        return pa.chunked_array([pa.array(column, from_pandas=True)])

    a, b = chunked(values), chunked(other)
    if len(a) != len(b):
        return False
    if a.type != b.type:
        try:
            b = b.cast(a.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
    return bool(a.equals(b))


@dataclass(frozen=True)
class CheckedChunk:
    """A chunk that met its writer's contract, as an Arrow table."""

    table: Any  # pyarrow.Table
    writer: FrameWriter


class FrameWriter:
    """Writes one frame to the store chunk by chunk; ``ref`` once closed.

    Each chunk is checked against the contract (the row checks; a column
    declared unique is checked across chunks too) and written as one Parquet
    row group to a local temporary file, which is hashed and moved into place
    only when the writer closes without error: a failed or interrupted write
    leaves nothing where a complete frame is expected.
    """

    def __init__(
        self,
        store: ArtifactStore,
        stage: str,
        contract: str | None,
        unique_as: Mapping[str, Any] | None = None,
    ) -> None:
        """Write a frame of ``stage`` meeting ``contract`` (None: unchecked).

        ``unique_as`` maps a column the contract declares unique to values
        already known to be unique (a column of the checked frame this one was
        made from, row for row): when the written column equals them, it is
        unique without counting its values again.
        """
        self.store, self.stage, self.contract = store, stage, contract
        self._known = dict(unique_as or {})
        self.schema = get_contract(contract) if contract is not None else None
        self.rows = 0
        self._ref: ArtifactRef | None = None
        self._writer: Any = None
        self._file: HashingFile | None = None
        # Columns the contract declares unique, and each chunk's values of them.
        self._unique = [
            name
            for name, column in (self.schema.columns if self.schema else {}).items()
            if column.unique
        ]
        self._seen: dict[str, list[Any]] = {}
        self._path = self.store.staging_dir(stage) / "frame.parquet"

    def check(self, df: pd.DataFrame) -> CheckedChunk:
        """Check one chunk against the contract and convert it to Arrow, ready
        for ``write``. Touches nothing of the writer's: threads may check
        chunks side by side while this writer writes earlier ones."""
        import pyarrow as pa

        if self.schema is not None:
            validate_frame(df, self.schema, self.stage)
        table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
        return CheckedChunk(table, self)

    def write(self, chunk: pd.DataFrame | CheckedChunk) -> None:
        """Append one chunk (checked here unless it came from ``check``)."""
        import pyarrow.parquet as pq

        if not isinstance(chunk, CheckedChunk):
            chunk = self.check(chunk)
        elif chunk.writer is not self:
            raise ValueError(f"{self.stage}: a chunk checked by another writer")
        table = chunk.table
        for name in self._unique:
            self._seen.setdefault(name, []).append(table.column(name))
        if self._writer is None:
            self._file = HashingFile(self._path)
            self._writer = pq.ParquetWriter(
                self._file, table.schema, **parquet_options(table.schema, table)
            )
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _check_unique_across_chunks(self) -> None:
        """Raise ContractViolation if a column declared unique repeats a value
        in two chunks (each chunk was checked on its own)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        for name, parts in self._seen.items():
            if len(parts) < 2:
                continue
            values = pa.chunked_array(parts)
            if name in self._known and same_values(values, self._known[name]):
                continue  # the known-unique values, row for row
            if pc.count_distinct(values, mode="all").as_py() == len(values):
                continue
            column = pd.Series(values.to_pandas())
            repeated = column[column.duplicated()].unique()[:3].tolist()
            raise ContractViolation(
                self.stage,
                self.contract or "unnamed",
                pd.DataFrame(
                    {
                        "column": name,
                        "check": "field_uniqueness",
                        "failure_case": repeated,
                        "index": None,
                    }
                ),
            )

    def close(self) -> ArtifactRef:
        """Finish the file, check unique columns across chunks, move it into the
        store."""
        if self._writer is None:
            raise ValueError(f"{self.stage}: no chunk was written")
        self._writer.close()
        assert self._file is not None
        self._file.close()
        self._check_unique_across_chunks()
        digest = self._file.hexdigest()
        uri = self.store.uri(f"data/{self.stage}/{digest}.parquet")
        storage.put_file(self._path, uri)
        if not self.store.remote:
            _remember_good(storage.local_path(uri), digest)
        self._ref = ArtifactRef(
            uri=uri, sha256=digest, rows=self.rows, contract=self.contract
        )
        return self._ref

    @property
    def ref(self) -> ArtifactRef:
        """The stored frame's reference (once closed)."""
        if self._ref is None:
            raise RuntimeError(f"{self.stage}: the frame writer is not closed yet")
        return self._ref

    def abort(self) -> None:
        """Drop what was written."""
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        shutil.rmtree(self._path.parent, ignore_errors=True)

    def __enter__(self) -> FrameWriter:
        """Open for writing."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close on success (the frame is stored), drop it on an error."""
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        finally:
            shutil.rmtree(self._path.parent, ignore_errors=True)


class ArtifactStore:
    """A content-addressed store rooted at a local directory or an ``s3://`` prefix.

    Frames are single files (one write, complete or absent). Directories of model
    files are staged locally; on S3 their files are uploaded with the manifest
    last, and readers verify every file against the manifest before use.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root_uri = storage.normalise_root(root)
        self.remote = storage.is_remote(self.root_uri)
        # Local folder for staging and (remote stores) verified copies of models.
        self.root = (
            local_cache_for(self.root_uri) if self.remote else Path(self.root_uri)
        )

    def uri(self, relative: str) -> str:
        """The URI of a path relative to the store's root."""
        if self.remote:
            return storage.join(self.root_uri, relative)
        return (self.root / relative).as_uri()

    def path_of(self, ref: ArtifactRef) -> Path:
        """Local path of a referenced artifact in a local store."""
        return storage.local_path(ref.uri)

    # Frames ----------------------------------------------------------------
    def put_frame(
        self,
        df: pd.DataFrame,
        stage: str,
        contract: str | None = None,
        checked: bool = False,
        unique_as: Mapping[str, Any] | None = None,
    ) -> ArtifactRef:
        """Store a frame as ``data/<stage>/<sha256>.parquet`` and return its ref.

        A frame meant to meet a contract is checked first: a stage whose output
        breaks its contract raises ``ContractViolation`` and stores nothing.
        ``checked`` says the caller has just validated this very frame against
        the contract (``split_quarantine`` keeps only rows that pass): it is not
        checked twice. ``unique_as``: as ``FrameWriter``'s.
        """
        with self.frame_writer(
            stage, None if checked else contract, unique_as
        ) as writer:
            if len(df) <= PUT_CHUNK:
                writer.write(df)
            else:  # checked and converted on every core, written in order
                parts = (
                    df.iloc[start : start + PUT_CHUNK]
                    for start in range(0, len(df), PUT_CHUNK)
                )
                for chunk in map_ordered(writer.check, parts):
                    writer.write(chunk)
        ref = writer.ref
        return ref.model_copy(update={"contract": contract}) if checked else ref

    def frame_writer(
        self,
        stage: str,
        contract: str | None = None,
        unique_as: Mapping[str, Any] | None = None,
    ) -> FrameWriter:
        """A writer that stores a frame chunk by chunk (one Parquet row group each)."""
        return FrameWriter(self, stage, contract, unique_as)

    def _verified_path(self, ref: ArtifactRef) -> Path:
        """A local file holding the referenced frame, checked against its sha256.

        A remote frame is downloaded once into the local cache. A file already
        checked in this process, unchanged since (same size and modification
        time), is not hashed again.
        """
        if self.remote:
            relative = ref.uri[len(self.root_uri) :].strip("/")
            path = self.root / "cache" / relative
            if not path.is_file() or not _known_good(path, ref.sha256):
                try:
                    storage.download_file(ref.uri, path)
                except FileNotFoundError:
                    raise ArtifactMissing(f"artifact {ref.uri} is missing") from None
        else:
            path = self.path_of(ref)
            if not path.is_file():
                raise ArtifactMissing(f"artifact {ref.uri} is missing")
        if not _known_good(path, ref.sha256):
            if sha256_file(path) != ref.sha256:
                raise ArtifactMissing(f"artifact {ref.uri} does not match its sha256")
            _remember_good(path, ref.sha256)
        return path

    def local_file(self, ref: ArtifactRef) -> Path:
        """A local copy of a stored frame's Parquet file, checked against its sha256."""
        return self._verified_path(ref)

    def open_frame(self, ref: ArtifactRef) -> Any:  # pyarrow.parquet.ParquetFile
        """The stored frame as a Parquet file to read by columns and row groups."""
        import pyarrow.parquet as pq

        return pq.ParquetFile(self._verified_path(ref), pre_buffer=False)

    def get_frame(
        self, ref: ArtifactRef, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """Read a stored frame, checking that its content still has the recorded hash."""
        return self.open_frame(ref).read(columns=columns).to_pandas()

    def iter_frames(
        self, ref: ArtifactRef, columns: list[str] | None = None, rows: int = 100_000
    ) -> Iterator[pd.DataFrame]:
        """The stored frame ``rows`` at a time (bounded memory), in order."""
        for batch in self.open_frame(ref).iter_batches(
            batch_size=rows, columns=columns
        ):
            yield batch.to_pandas()

    def iter_batches(
        self, ref: ArtifactRef, columns: list[str] | None = None, rows: int = 100_000
    ) -> Iterator[Any]:
        """The stored frame ``rows`` at a time as Arrow record batches, in order
        (for numeric columns read straight into NumPy, no pandas frame)."""
        yield from self.open_frame(ref).iter_batches(batch_size=rows, columns=columns)

    # Small text files (LATEST, run records) --------------------------------
    def write_text(self, relative: str, text: str) -> None:
        """Write a small text file atomically."""
        storage.write_bytes(self.uri(relative), text.encode("utf-8"))

    def read_text(self, relative: str) -> str | None:
        """A small text file's content, or None when it does not exist."""
        try:
            return storage.read_bytes(self.uri(relative)).decode("utf-8")
        except FileNotFoundError:
            return None

    # Directories of model files --------------------------------------------
    def staging_dir(self, stage: str) -> Path:
        """A fresh local temporary directory to assemble a directory artifact in."""
        base = self.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        prefix = stage.replace("/", "-")
        return Path(tempfile.mkdtemp(dir=base, prefix=f"{prefix}-"))

    def commit_dir(
        self, staging: Path, stage: str, extra: dict | None = None
    ) -> ArtifactRef:
        """Write the manifest and move a staged directory to ``models/<stage>/<sha>``."""
        digest = write_manifest(staging, extra)
        relative = f"models/{stage}/{digest}"
        if self.remote and not storage.exists(self.uri(f"{relative}/manifest.json")):
            storage.upload_tree(staging, self.uri(relative), last="manifest.json")
        storage.move_into_place(staging, self.root / relative)
        return ArtifactRef(uri=self.uri(relative), sha256=digest, kind="dir")

    def get_dir(self, ref: ArtifactRef) -> Path:
        """Local path of a directory artifact after verifying every file's sha256.

        A remote directory is downloaded once into the local cache.
        """
        if not self.remote:
            path = self.path_of(ref)
            if not path.is_dir():
                raise ArtifactMissing(f"artifact {path} is missing")
            verify_manifest(path)
            return path
        relative = ref.uri[len(self.root_uri) :].strip("/")
        local = self.root / relative
        if local.is_dir():
            try:
                verify_manifest(local)
                return local
            except ArtifactMissing:
                shutil.rmtree(local)
        if not storage.exists(storage.join(ref.uri, "manifest.json")):
            raise ArtifactMissing(f"artifact {ref.uri} is missing")
        staging = self.staging_dir("download")
        storage.download_tree(ref.uri, staging)
        verify_manifest(staging)
        storage.move_into_place(staging, local)
        return local

    def sweep_stale(self, max_age_seconds: float = 24 * 3600) -> list[str]:
        """Remove what crashed runs left behind: staging folders under ``tmp/`` and
        ``runs/.<id>.partial`` folders older than ``max_age_seconds``.

        Nothing ever reads them (they are not in ``LATEST`` or any reference); the
        age threshold leaves a concurrent run's work alone. Returns what was removed.
        """
        now = time.time()
        candidates = [
            *(self.root / "tmp").glob("*"),
            *(self.root / "runs").glob(".*.partial"),
        ]
        removed = []
        for path in candidates:
            try:
                if path.is_dir() and now - path.stat().st_mtime > max_age_seconds:
                    shutil.rmtree(path)
                    removed.append(str(path))
            except FileNotFoundError:  # another sweep got there first
                continue
        return removed


def artifact_refs(output: object) -> dict[str, ArtifactRef]:
    """The artifact references in a stage output, by field name."""
    if isinstance(output, ArtifactRef):
        return {output.kind: output}
    if isinstance(output, BaseModel):
        return {
            name: value
            for name in type(output).model_fields
            if isinstance(value := getattr(output, name), ArtifactRef)
        }
    if isinstance(output, list):
        return {
            f"{i}.{name}": ref
            for i, item in enumerate(output)
            for name, ref in artifact_refs(item).items()
        }
    return {}


def missing_artifacts(output: object) -> list[str]:
    """URIs of artifacts referenced by a stage output that no longer exist.

    A cached stage result is only as good as the files it points at; the flow
    re-runs a stage whose cached output references a deleted artifact.
    """
    return [
        ref.uri
        for ref in artifact_refs(output).values()
        if not storage.exists(
            storage.join(ref.uri, "manifest.json") if ref.kind == "dir" else ref.uri
        )
    ]


def damaged_artifacts(store: ArtifactStore, output: object) -> dict[str, str]:
    """Artifacts of a stage output that exist but fail their sha256 check, by URI.

    A frame's file must hash to its reference; a model directory's files must
    match its manifest and the manifest its reference. Each is hashed once per
    process (later reads reuse the check), and a remote artifact is checked as
    its local copy is fetched, which the next stage would do anyway.
    """
    damaged = {}
    missing = set(missing_artifacts(output))  # absent ones are re-made anyway
    for ref in artifact_refs(output).values():
        if ref.uri in missing:
            continue
        try:
            if ref.kind == "frame":
                store.local_file(ref)
            else:
                listed = verify_manifest(store.get_dir(ref))
                if manifest_digest(listed) != ref.sha256:
                    raise ArtifactMissing(
                        f"artifact {ref.uri}: manifest.json does not match its sha256"
                    )
        except ArtifactMissing as exc:
            damaged[ref.uri] = str(exc)
    return damaged


def discard(store: ArtifactStore, uri: str) -> None:
    """Remove a damaged artifact so that recomputing it can write it again
    (content-addressed names are otherwise never rewritten), with any local
    copy of a remote one."""
    storage.remove(uri)
    if store.remote:
        relative = uri[len(store.root_uri) :].strip("/")
        for local in (store.root / relative, store.root / "cache" / relative):
            storage.remove(str(local))
