"""The frozen evaluation set: the tweets every challenger and champion are scored on.

It lives in the artifact store (``registry/frozen_evaluation.parquet``, local or
on S3), so every run that shares the store shares it, whichever machine it
runs on. It is frozen from the first gated run's evaluation split, written
once and never replaced; its sha256 is recorded beside it on first use, and a
set that no longer matches is refused. A configured file must exist.
"""

from __future__ import annotations

import io
from pathlib import Path

from tasks.infra import storage
from tasks.infra.errors import RegistryError
from tasks.infra.lazy import pd
from tasks.infra.store import ArtifactStore, frame_to_parquet_bytes, sha256_bytes
from tasks.release.config import ReleaseConfig
from tasks.release.gate import FrozenSet

FROZEN_FILE = "registry/frozen_evaluation.parquet"
FROZEN_SHA_FILE = FROZEN_FILE + ".sha256"  # recorded on first use


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
        created = freeze(Path(run_dir), uri, config.frozen_size)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise RegistryError(f"frozen evaluation set {uri} does not exist") from None
    check_recorded_sha256(store, uri, sha256_bytes(data))
    try:
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


def check_recorded_sha256(store: ArtifactStore, uri: str, digest: str) -> None:
    """The frozen set must still hash to what was recorded when it was first read.

    The first read records the sha256 (written once, like the set itself); any
    later change to the file (truncated, edited, replaced) is refused, naming it.
    Only the store's own set is recorded: a configured file is its owner's to
    update, and the store is left untouched.
    """
    if uri != store.uri(FROZEN_FILE):
        return
    relative = FROZEN_SHA_FILE
    recorded = store.read_text(relative)
    if recorded is None:
        storage.write_new(store.uri(relative), (digest + "\n").encode())
        recorded = store.read_text(relative) or digest
    if recorded.strip() != digest:
        raise RegistryError(
            f"frozen evaluation set {uri} does not match its recorded sha256 "
            f"({store.uri(relative)}): refusing to gate on altered tweets; restore "
            "the file (or delete both to freeze a new set)"
        )


def freeze(run_dir: Path, uri: str, size: int = 20_000) -> bool:
    """Write the run's evaluation split (at most ``size`` tweets, a seeded sample
    of it when larger) to ``uri`` unless something is there.

    Returns whether this call wrote it (``storage.write_new``: a concurrent
    writer is never overwritten).
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
    if len(frame) > size:
        frame = frame.sample(n=size, random_state=0)
    data = frame_to_parquet_bytes(
        frame.astype({"tweet_id": "str", "text": "str"}).sort_values("tweet_id")
    )
    return storage.write_new(uri, data)
