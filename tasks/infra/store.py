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
import time
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from data_contracts import get_contract, validate_frame
from tasks.infra import storage

CHUNK = 1 << 20


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
    """Serialise a frame to Parquet bytes (deterministic for equal frames)."""
    buffer = io.BytesIO()
    df.reset_index(drop=True).to_parquet(buffer, index=False, compression="zstd")
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
        self, df: pd.DataFrame, stage: str, contract: str | None = None
    ) -> ArtifactRef:
        """Store a frame as ``data/<stage>/<sha256>.parquet`` and return its ref.

        A frame meant to meet a contract is checked first: a stage whose output
        breaks its contract raises ``ContractViolation`` and stores nothing.
        """
        if contract is not None:
            validate_frame(df, get_contract(contract), stage)
        data = frame_to_parquet_bytes(df)
        digest = sha256_bytes(data)
        uri = self.uri(f"data/{stage}/{digest}.parquet")
        if not storage.exists(uri):
            storage.write_bytes(uri, data)
        return ArtifactRef(uri=uri, sha256=digest, rows=len(df), contract=contract)

    def get_frame(
        self, ref: ArtifactRef, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """Read a stored frame, checking that its content still has the recorded hash."""
        try:
            data = storage.read_bytes(ref.uri)
        except FileNotFoundError:
            raise ArtifactMissing(f"artifact {ref.uri} is missing") from None
        if sha256_bytes(data) != ref.sha256:
            raise ArtifactMissing(f"artifact {ref.uri} does not match its sha256")
        return pd.read_parquet(io.BytesIO(data), columns=columns)

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
        return Path(tempfile.mkdtemp(dir=base, prefix=f"{stage}-"))

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
