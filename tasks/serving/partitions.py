"""Batch inference in partitions: one Prefect task per source object (parsed
by ingestion's own task on the same workers: the flow never holds the
source), or, for a source of one object, per range of rows of its raw
snapshot; run wherever the flow's task runner sends them (a Dask cluster's
workers).

Each partition is classified as ``classify_raw`` classifies a chunk, and its
predictions, its rows' ids and text hashes, and its quarantine are stored as
content-addressed Parquet parts, with an index written last: a partition that
was complete (same rows, model, settings and code) is never computed again, so
a task re-run after a lost worker, or a rerun of the flow, only reads it back.
The id rules that need every row (an id repeated with another text, exact
repeats) are decided once every part is in (``combine_partitions``), and the
output is assembled from the parts: the same rows, in the same order, as the
in-process path writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from data_contracts import make_quarantine
from tasks.infra.caching import source_version, uncached_task
from tasks.infra.lazy import np, pd
from tasks.infra.parallel import map_ordered
from tasks.infra.partitioned import check_rows, iter_rows, worker_threads
from tasks.infra.store import ArtifactMissing, ArtifactRef, ArtifactStore
from tasks.ml.cleaning import CONFLICT_REASON, CleaningConfig
from tasks.ml.cleaning import STAGE as CLEANING_STAGE
from tasks.serving.inference import (
    CHUNK_ROWS,
    PREDICTION_COLUMNS,
    RAW_COLUMNS,
    STAGE,
    ChunkResult,
    batch_summary,
    classify_chunk,
    conflict_quarantine,
    id_checks,
    prediction_writer,
)
from tasks.serving.model import TweetClassifier
from tasks.serving.resolve import LoadedModel


class IngestedPart(Protocol):
    """What ingestion hands a partition (its output models have these fields):
    the accepted raw rows, the rows the raw contract refused, and the counts."""

    raw: ArtifactRef
    quarantine: ArtifactRef
    rows_read: int
    outbound_skipped: int


PARTS = f"{STAGE}/parts"  # data/batch_inference/parts/<sha256>.parquet
INDEX = f"data/{PARTS}/index"  # one JSON record per complete partition
MODELS = "serving"  # models/serving/<digest>: the bundle the workers load
_LOADED: dict[str, TweetClassifier] = {}  # per worker process, by bundle digest


class Partition(BaseModel):
    """What one task classifies with one model: rows ``start``..``stop`` of a
    raw snapshot, or (``name``: a source object's) every row ingestion hands
    the task."""

    model_config = ConfigDict(frozen=True)

    number: int
    of: int
    model: ArtifactRef
    model_version: str
    config: CleaningConfig
    raw: ArtifactRef | None = None
    start: int = 0
    stop: int = 0
    name: str = ""  # the source object, when ingestion hands the rows

    def key(self, raw: ArtifactRef, start: int, stop: int) -> str:
        """What decides the partition's output: its rows (a content-addressed
        raw frame and a range of it), the model, the cleaning settings, the code."""
        basis = [
            raw.sha256,
            start,
            stop,
            self.model.sha256,
            self.model_version,
            self.config.model_dump(mode="json"),
            source_version(__name__),
        ]
        return hashlib.sha256(json.dumps(basis).encode()).hexdigest()

    def describe(self) -> str:
        """Which rows, for the logs."""
        return self.name or f"rows {self.start}..{self.stop}"


class PartitionOutput(BaseModel):
    """A classified partition: its parts in the store and its counts."""

    model_config = ConfigDict(frozen=True)

    number: int
    what: str  # the object's name or the row range, for the logs
    start: int  # a snapshot's row range (0, 0 for an object)
    stop: int
    raw: ArtifactRef  # the raw rows that ``ids``' positions refer to
    predictions: ArtifactRef  # the usable rows whose id is new in the partition
    ids: ArtifactRef  # every usable row: tweet_id, text hash, position, predicted
    quarantine: ArtifactRef  # rows set aside (empty, too long), in row order
    usable: int
    predicted: int
    quarantined: int
    # An object read by the partition: its rows read, its brand replies skipped
    # and the rows the raw contract refused (None: a snapshot's range).
    rows_read: int = 0
    outbound_skipped: int = 0
    ingestion_quarantine: ArtifactRef | None = None
    worker: str = ""  # where it was computed (host:pid)
    reused: bool = False


def plan_partitions(
    raw: ArtifactRef,
    model: ArtifactRef,
    model_version: str,
    config: CleaningConfig,
    rows: int,
) -> list[Partition]:
    """The raw snapshot cut into ranges of ``rows`` rows (the last may be shorter)."""
    total = int(raw.rows or 0)
    starts = list(range(0, total, max(1, rows)))
    return [
        Partition(
            raw=raw,
            start=start,
            stop=min(start + rows, total),
            number=i,
            of=len(starts),
            model=model,
            model_version=model_version,
            config=config,
        )
        for i, start in enumerate(starts)
    ]


def plan_object_partitions(
    names: list[str], model: ArtifactRef, model_version: str, config: CleaningConfig
) -> list[Partition]:
    """One partition per source object (by name), in the order ingestion reads
    them; each is given its rows by ingestion's task for that object."""
    return [
        Partition(
            name=name,
            number=i,
            of=len(names),
            model=model,
            model_version=model_version,
            config=config,
        )
        for i, name in enumerate(names)
    ]


def ship_model(store: ArtifactStore, loaded: LoadedModel) -> ArtifactRef:
    """The verified model bundle, stored content-addressed where every worker
    can read it (``models/serving/<digest>``, manifest written last)."""
    staging = store.staging_dir(MODELS)
    try:
        shutil.copytree(loaded.path, staging, dirs_exist_ok=True)
        return store.commit_dir(staging, MODELS)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _model(store: ArtifactStore, ref: ArtifactRef) -> TweetClassifier:
    """The bundle loaded once per worker process (files verified on first use)."""
    if ref.sha256 not in _LOADED:
        _LOADED[ref.sha256] = TweetClassifier.load(store.get_dir(ref))
    return _LOADED[ref.sha256]


def _worker() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _known(store: ArtifactStore, index: str) -> PartitionOutput | None:
    """A partition completed earlier whose parts are all still there."""
    text = store.read_text(index)
    if text is None:
        return None
    done = PartitionOutput.model_validate_json(text)
    try:
        for ref in (done.raw, done.predictions, done.ids, done.quarantine):
            store.open_frame(ref)
        if done.ingestion_quarantine is not None:
            store.open_frame(done.ingestion_quarantine)
    except ArtifactMissing:
        return None
    return done.model_copy(update={"reused": True, "worker": _worker()})


def classify_partition_here(
    store: ArtifactStore, part: Partition, ingested: IngestedPart | None = None
) -> PartitionOutput:
    """Classify one partition and store its parts (or read back a complete one);
    ``ingested``: the rows of an object partition, as ingestion stored them."""
    if ingested is not None:
        raw, start, stop = ingested.raw, 0, int(ingested.raw.rows or 0)
        extra: dict[str, Any] = {
            "rows_read": ingested.rows_read,
            "outbound_skipped": ingested.outbound_skipped,
            "ingestion_quarantine": ingested.quarantine,
        }
    else:
        assert part.raw is not None
        raw, start, stop, extra = part.raw, part.start, part.stop, {}
    index = f"{INDEX}/{part.key(raw, start, stop)}.json"
    known = _known(store, index)
    if known is not None:
        return known
    model = _model(store, part.model)

    def one(item: tuple[int, pd.DataFrame]) -> ChunkResult:
        return classify_chunk(
            item[0], item[1], model, part.model_version, part.config, hash_texts=True
        )

    threads = worker_threads()
    expected = stop - start
    chunks = iter_rows(store, raw, start, stop, RAW_COLUMNS, CHUNK_ROWS)
    predicted, keys, quarantined = [], [], []
    read = 0
    for done in map_ordered(one, chunks, threads=threads):
        read += len(done.reasons) + len(done.ids)
        predicted.append(done.predictions[PREDICTION_COLUMNS])
        keys.append(
            pd.DataFrame(
                {
                    "tweet_id": done.ids.astype("str").array,
                    "text_hash": done.text_hashes,
                    "position": done.rows.astype(np.int64),
                    "predicted": done.first,
                }
            )
        )
        if len(done.reasons):
            quarantined.append(
                make_quarantine(done.set_aside, CLEANING_STAGE, done.reasons)
            )
    if read != expected:
        raise RuntimeError(
            f"partition {part.number}: read {read} rows of {expected} "
            f"({part.describe()})"
        )
    frames = {
        "predictions": _concat(predicted, PREDICTION_COLUMNS),
        "ids": _concat(keys, ["tweet_id", "text_hash", "position", "predicted"]),
        "quarantine": _concat(quarantined, None),
    }
    refs = {name: store.put_frame(frame, PARTS) for name, frame in frames.items()}
    usable = len(frames["ids"])
    out = PartitionOutput(
        number=part.number,
        what=part.describe(),
        start=start,
        stop=stop,
        raw=raw,
        **refs,
        usable=usable,
        predicted=len(frames["predictions"]),
        quarantined=len(frames["quarantine"]),
        **extra,
        worker=_worker(),
    )
    if usable + out.quarantined != expected:
        raise RuntimeError(f"partition {part.number}: rows unaccounted for")
    store.write_text(index, out.model_dump_json())  # last: the partition is complete
    return out


def _concat(frames: list[pd.DataFrame], columns: list[str] | None) -> pd.DataFrame:
    if frames:
        return pd.concat(frames, ignore_index=True)
    if columns is None:
        return make_quarantine(pd.DataFrame(), CLEANING_STAGE, None)
    from tasks.serving.inference import empty_predictions

    if columns == PREDICTION_COLUMNS:
        return empty_predictions()
    return pd.DataFrame(
        {
            "tweet_id": pd.Series([], dtype="str"),
            "text_hash": np.zeros(0, np.uint64),
            "position": np.zeros(0, np.int64),
            "predicted": np.zeros(0, bool),
        }
    )


@uncached_task("classify-partition")
def classify_partition(
    part: Partition, artifacts_dir: str, ingested: Any = None
) -> PartitionOutput:
    """Classify one partition (on whichever worker runs it): a range of the
    raw snapshot, or the rows ingestion's task handed it (``ingested``, an
    ``IngestedPart``)."""
    from prefect import get_run_logger

    started = time.perf_counter()
    out = classify_partition_here(ArtifactStore(artifacts_dir), part, ingested)
    get_run_logger().info(
        "classify-partition %d/%d: %s, %d predicted, %d set aside%s on %s (%.2fs)",
        part.number + 1,
        part.of,
        part.describe(),
        out.predicted,
        out.quarantined,
        ", read back (complete earlier)" if out.reused else "",
        out.worker,
        time.perf_counter() - started,
    )
    return out


def combine_partitions(
    store: ArtifactStore,
    parts: list[PartitionOutput],
    snapshot: tuple[ArtifactRef, pd.DataFrame, int, int] | None,
    output: str,
    config: CleaningConfig,
) -> dict[str, Any]:
    """The id rules over every partition's rows, then the output assembled from
    the parts (refused rows taken out); the same summary as ``classify_raw``.

    ``snapshot``: for partitions of a raw snapshot, (the snapshot, ingestion's
    quarantine, rows read, brand replies skipped); None for object partitions,
    which read and counted their objects themselves. Raises if the row
    accounting does not add up, per partition or in total."""
    parts = sorted(parts, key=lambda p: p.number)
    if snapshot is not None:
        raw, ingestion_quarantine, rows_read, outbound_skipped = snapshot
        check_rows(STAGE, parts, int(raw.rows or 0))
    else:
        ingestion_quarantine = pd.concat(
            [
                store.get_frame(p.ingestion_quarantine)
                for p in parts
                if p.ingestion_quarantine
            ]
            or [make_quarantine(pd.DataFrame(), CLEANING_STAGE, None)],
            ignore_index=True,
        )
        rows_read = sum(part.rows_read for part in parts)
        outbound_skipped = sum(part.outbound_skipped for part in parts)
    keys = [store.get_frame(part.ids) for part in parts]
    every = (
        pd.concat(keys, ignore_index=True)
        if keys
        else pd.DataFrame({"tweet_id": pd.Series([], dtype="str")})
    )
    hashes = every["text_hash"].to_numpy() if len(every) else np.zeros(0, np.uint64)
    conflict, repeat = id_checks(every["tweet_id"], lambda rows: hashes[rows])
    refused = conflict | repeat
    quarantined: dict[str, list[pd.DataFrame]] = {}
    # The raw rows of conflicting ids, read once per raw frame, in input order.
    conflicting: dict[str, tuple[ArtifactRef, list[np.ndarray]]] = {}
    at = 0
    with prediction_writer(output) as writer:
        for part, part_keys in zip(parts, keys, strict=True):
            mine = refused[at : at + len(part_keys)]
            clash = conflict[at : at + len(part_keys)]
            at += len(part_keys)
            if clash.any():
                positions = part_keys["position"].to_numpy()[clash]
                conflicting.setdefault(part.raw.uri, (part.raw, []))[1].append(
                    positions
                )
            drop = mine[part_keys["predicted"].to_numpy(dtype=bool)]
            predictions = store.get_frame(part.predictions)
            if len(predictions):
                writer.write(predictions[~drop].reset_index(drop=True))
            set_aside = store.get_frame(part.quarantine)
            for why in dict.fromkeys(set_aside["reason"]):
                quarantined.setdefault(why, []).append(
                    set_aside[set_aside["reason"] == why]
                )
        if conflicting:
            quarantined[CONFLICT_REASON] = [
                conflict_quarantine(store, raw_ref, np.concatenate(chunks), config)
                for raw_ref, chunks in conflicting.values()
            ]
    summary = batch_summary(
        writer,
        ingestion_quarantine,
        quarantined,
        config,
        int(repeat.sum()),
        rows_read,
        outbound_skipped,
        output,
    )
    return {
        **summary,
        "partitions": len(parts),
        "partitions_reused": sum(part.reused for part in parts),
        "workers": sorted({part.worker for part in parts if part.worker}),
    }


@uncached_task("ship-model")
def ship_model_task(loaded: LoadedModel, artifacts_dir: str) -> ArtifactRef:
    """Put the verified model where the partitions' workers can load it."""
    return ship_model(ArtifactStore(artifacts_dir), loaded)


@uncached_task("combine")
def combine(
    parts: list[PartitionOutput],
    ingested: IngestedPart | None,
    output: str,
    config: CleaningConfig,
    artifacts_dir: str,
) -> dict[str, Any]:
    """Decide the id rules over every partition and write the predictions;
    ``ingested``: the snapshot the partitions are ranges of (None: objects)."""
    from prefect import get_run_logger

    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    snapshot = (
        None
        if ingested is None
        else (
            ingested.raw,
            store.get_frame(ingested.quarantine),
            ingested.rows_read,
            ingested.outbound_skipped,
        )
    )
    summary = combine_partitions(store, parts, snapshot, output, config)
    counts = summary["counts"]
    seconds = time.perf_counter() - started
    get_run_logger().info(
        "combine: %d partitions computed on %s (%d read back); %d rows read, "
        "%d predicted, %d quarantined, %d exact repeats -> %s (%.2fs)",
        len(parts),
        ", ".join(summary["workers"]) or "-",
        summary["partitions_reused"],
        counts["rows_read"],
        counts["predicted"],
        counts["quarantined"],
        counts["duplicates_removed"],
        output,
        seconds,
    )
    return {**summary, "seconds": round(seconds, 3)}
