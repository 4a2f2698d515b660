"""The frozen evaluation set: the tweets every challenger and champion are scored on.

It lives in the artifact store (``registry/frozen_evaluation.parquet``, local or
on S3), so every run that shares the store shares it, whichever machine it
runs on. It is frozen from the first gated run's evaluation split, written
once and never replaced; a configured file must exist.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pandas as pd

from tasks.infra import storage
from tasks.infra.errors import RegistryError
from tasks.infra.store import ArtifactStore, frame_to_parquet_bytes, sha256_bytes
from tasks.release.config import ReleaseConfig
from tasks.release.gate import FrozenSet

FROZEN_FILE = "registry/frozen_evaluation.parquet"


def frozen_uri(store: ArtifactStore, config: ReleaseConfig) -> str:
    """Where the frozen evaluation set is: configured, or in the store."""
    if config.frozen_evaluation:
        text = config.frozen_evaluation
        return (
            text if storage.is_remote(text) else str(storage.local_path(text).resolve())
        )
    return store.uri(FROZEN_FILE)


def frozen_evaluation_set(
    store: ArtifactStore, config: ReleaseConfig, run_dir: str | Path
) -> FrozenSet:
    """The frozen set; on first use, freeze ``run_dir``'s evaluation split."""
    uri = frozen_uri(store, config)
    created = False
    if not storage.exists(uri):
        if config.frozen_evaluation:
            raise RegistryError(f"frozen evaluation set {uri} does not exist")
        created = freeze(Path(run_dir), uri)
    try:
        data = storage.read_bytes(uri)
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # any unreadable file is the same problem
        raise RegistryError(
            f"frozen evaluation set {uri} is unreadable: {exc}"
        ) from None
    missing = {"tweet_id", "text"} - set(frame.columns)
    if missing:
        raise RegistryError(
            f"frozen evaluation set {uri} lacks columns {sorted(missing)}"
        )
    frame = frame[["tweet_id", "text"]].astype({"tweet_id": "str", "text": "str"})
    if frame.empty:
        raise RegistryError(f"frozen evaluation set {uri} has no tweets")
    return FrozenSet(uri, sha256_bytes(data), frame.reset_index(drop=True), created)


def freeze(run_dir: Path, uri: str) -> bool:
    """Write the run's evaluation split to ``uri`` unless something is there.

    Returns whether this call wrote it. Locally the file is linked into place
    (a concurrent writer cannot be overwritten); on S3 it is written only when
    absent.
    """
    labels = run_dir / "pseudo_labels.parquet"
    if not labels.is_file():
        raise RegistryError(f"{run_dir} has no pseudo_labels.parquet to freeze")
    frame = pd.read_parquet(labels, columns=["tweet_id", "split", "text"])
    frame = frame[frame["split"] == "evaluation"][["tweet_id", "text"]]
    if frame.empty:
        raise RegistryError(
            f"{run_dir}: the evaluation split is empty; nothing to freeze"
        )
    data = frame_to_parquet_bytes(
        frame.astype({"tweet_id": "str", "text": "str"}).sort_values("tweet_id")
    )
    if storage.is_remote(uri):
        if storage.exists(uri):
            return False
        storage.write_bytes(uri, data)
        return True
    path = storage.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another writer got there first
        except FileExistsError:
            return False
        except OSError:  # filesystems without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)
