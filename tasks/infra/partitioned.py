"""Per-row stages in partitions on a Dask cluster.

A stage that runs on a cluster splits its input frame into ranges of rows
(``plan_ranges``), maps one Prefect task per range over the cluster's workers
(``map_on_cluster``: a nested flow on a ``DaskTaskRunner``), and each task
stores its rows' output as content-addressed Parquet parts with an index
written last (``PartStore``): a range that was complete (same input rows,
settings and code) is read back, not computed again. The stage's output frame
is then assembled from the parts in row order, row group by row group as the
in-process path writes it (``rebatch``), so both paths store the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.infra.store import ArtifactMissing, ArtifactRef, ArtifactStore


class ClusterSpec(BaseModel):
    """Where a stage's partitions run: the scheduler address and the rows per
    partition (never part of a stage's cache key: the output is the same)."""

    model_config = ConfigDict(frozen=True)

    address: str
    partition_rows: int = Field(200_000, ge=1)


class RowRange(BaseModel):
    """Rows ``start``..``stop`` of a stage's input frame: partition ``number``
    of ``of``."""

    model_config = ConfigDict(frozen=True)

    number: int
    of: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        """Rows in the range."""
        return self.stop - self.start


class PartOutput(BaseModel):
    """A completed partition: its parts in the store and its counts."""

    model_config = ConfigDict(frozen=True)

    number: int
    start: int
    stop: int
    parts: dict[str, ArtifactRef]
    counts: dict[str, int] = Field(default_factory=dict)
    worker: str = ""  # where it was computed (host:pid)
    reused: bool = False  # complete earlier: read back, not computed
    name: str = ""  # a source object's name, when the partition is one

    def describe(self) -> str:
        """Which rows, for the logs."""
        return self.name or f"rows {self.start}..{self.stop}"


def plan_ranges(rows: int, size: int) -> list[RowRange]:
    """Ranges of ``size`` rows covering ``rows`` rows (one, empty, for none)."""
    size = max(1, size)
    starts = list(range(0, rows, size)) or [0]
    return [
        RowRange(number=i, of=len(starts), start=s, stop=min(rows, s + size))
        for i, s in enumerate(starts)
    ]


def worker_name() -> str:
    """This process, as the logs and the outputs name it (host:pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_threads() -> int:
    """Threads a partition may use: the Dask worker's own (its share of the
    machine, as the cluster was sized), or every core outside a worker. On a
    worker, Arrow's own thread pool is held to that share too (Dask already
    holds the BLAS libraries to it)."""
    from tasks.infra.parallel import cores

    try:
        from distributed import get_worker

        threads = max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError):
        return cores()
    import pyarrow as pa

    if pa.cpu_count() != threads:
        pa.set_cpu_count(threads)
    return threads


def rows_digest(frames: Iterable[Any]) -> str:
    """sha256 of the rows of pandas frames, in order (each row's values hashed
    by pandas, row positions aside): the same rows give the same digest
    wherever they sit in a larger frame."""
    import pandas as pd

    digest = hashlib.sha256()
    for frame in frames:
        hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        digest.update(hashed.tobytes())
    return digest.hexdigest()


def part_key(*basis: Any) -> str:
    """Content address of a partition's output: sha256 of what decides it."""
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


class PartStore:
    """A stage's partition records: ``data/<stage>/parts/index/<key>.json``,
    each written after every part it names (a complete partition only)."""

    def __init__(self, store: ArtifactStore, stage: str) -> None:
        """Partitions of ``stage`` in ``store``."""
        self.store, self.stage = store, stage
        self.parts = f"{stage}/parts"

    def _index(self, key: str) -> str:
        return f"data/{self.parts}/index/{key}.json"

    def known(self, key: str, part: RowRange | None = None) -> PartOutput | None:
        """A partition completed earlier whose parts are all still there (as
        partition ``part`` of this run, when its rows were elsewhere then)."""
        text = self.store.read_text(self._index(key))
        if text is None:
            return None
        done = PartOutput.model_validate_json(text)
        try:
            for ref in done.parts.values():
                self.store.open_frame(ref)
        except ArtifactMissing:
            return None
        update: dict[str, Any] = {"reused": True, "worker": worker_name()}
        if part is not None:
            update |= {"number": part.number, "start": part.start, "stop": part.stop}
        return done.model_copy(update=update)

    def rows_of(
        self,
        ref: ArtifactRef,
        part: RowRange,
        columns: list[str] | None,
        rows: int,
        *basis: Any,
    ) -> tuple[list[tuple[int, Any]], str, PartOutput | None]:
        """Rows ``part`` of the stored frame ``ref`` (``rows`` at a time, with
        their positions), the partition's key (a digest of those rows and
        ``basis``: settings, code) and its complete earlier output, if any.
        Keyed by the rows, not where they sit: an input that grew at the end
        keeps the partitions of the rows before."""
        chunks = list(iter_rows(self.store, ref, part.start, part.stop, columns, rows))
        key = part_key(rows_digest(frame for _, frame in chunks), *basis)
        return chunks, key, self.known(key, part)

    def save(
        self,
        key: str,
        part: RowRange,
        frames: dict[str, Any],
        contracts: dict[str, str] | None = None,
        **counts: int,
    ) -> PartOutput:
        """Store a partition's frames as parts (checked against their stage
        contracts, by name), then its record; the record."""
        contracts = contracts or {}
        refs = {
            name: self.store.put_frame(frame, self.parts, contracts.get(name))
            for name, frame in frames.items()
        }
        out = PartOutput(
            number=part.number,
            start=part.start,
            stop=part.stop,
            parts=refs,
            counts=counts,
            worker=worker_name(),
        )
        self.store.write_text(self._index(key), out.model_dump_json())
        return out


def iter_rows(
    store: ArtifactStore,
    ref: ArtifactRef,
    start: int,
    stop: int,
    columns: list[str] | None,
    rows: int,
) -> Iterator[tuple[int, Any]]:
    """Rows ``start``..``stop`` of a stored frame, at most ``rows`` at a time,
    each with its position; only the row groups that hold them are read."""
    parquet = store.open_frame(ref)
    offset = 0
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        lo, hi = max(start, offset), min(stop, offset + size)
        if lo < hi:
            table = parquet.read_row_group(group, columns=columns)
            for at in range(lo, hi, rows):
                part = table.slice(at - offset, min(rows, hi - at)).to_pandas()
                yield at, part
        offset += size
        if offset >= stop:
            break


def rebatch(tables: Iterable[Any], sizes: Iterable[int]) -> Iterator[Any]:
    """Arrow tables re-cut into consecutive tables of the given ``sizes``, in
    order: partition parts become the row groups the in-process path writes.
    Raises if the tables hold more or fewer rows than the sizes add up to."""
    import pyarrow as pa

    source = iter(tables)
    table = None
    for size in sizes:
        pending: list[Any] = []
        while size:
            if table is None or not table.num_rows:
                table = next(source, None)
                if table is None:
                    raise RuntimeError("the parts hold fewer rows than their input")
                continue
            take = min(size, table.num_rows)
            pending.append(table.slice(0, take))
            table = table.slice(take)
            size -= take
        if pending:
            yield pa.concat_tables(pending).combine_chunks()
    if (table is not None and table.num_rows) or any(t.num_rows for t in source):
        raise RuntimeError("the parts hold more rows than their input")


def fixed_sizes(rows: int, size: int) -> list[int]:
    """``rows`` cut ``size`` at a time (the last one shorter)."""
    return [min(size, rows - start) for start in range(0, rows, size)]


def part_tables(
    store: ArtifactStore, done: list[PartOutput], name: str
) -> Iterator[Any]:
    """Part ``name`` of every partition, in row order, as Arrow tables (one
    partition held at a time)."""
    for out in sorted(done, key=lambda o: o.start):
        yield store.open_frame(out.parts[name]).read()


def map_on_cluster(
    task: Any,
    items: list[Any],
    cluster: ClusterSpec,
    stage: str,
    logger: Any,
    **unmapped_kwargs: Any,
) -> list[PartOutput]:
    """``task`` mapped over ``items`` on the cluster's workers, as a nested flow
    run (``<stage>-partitions``) on a ``DaskTaskRunner``; each completed
    partition is logged. Returns the outputs in partition order."""
    from prefect import flow, unmapped
    from prefect.futures import as_completed
    from prefect_dask import DaskTaskRunner

    @flow(name=f"{stage}-partitions", log_prints=False)
    def partitions(count: int) -> list[PartOutput]:
        kwargs = {k: unmapped(v) for k, v in unmapped_kwargs.items()}
        futures = task.map(items, **kwargs)
        done: list[PartOutput] = []
        for future in as_completed(futures):
            out = future.result()
            done.append(out)
            logger.info(
                "%s: %d/%d partitions done (%s%s on %s)",
                stage,
                len(done),
                count,
                out.describe(),
                ", read back" if out.reused else "",
                out.worker,
            )
        return sorted(done, key=lambda o: (o.number, o.name))

    started = time.perf_counter()
    runner: Any = DaskTaskRunner(address=cluster.address)
    done = partitions.with_options(task_runner=runner)(len(items))
    logger.info(
        "%s: %d partitions on %s in %.2fs (%d read back), %d workers",
        stage,
        len(done),
        cluster.address,
        time.perf_counter() - started,
        sum(o.reused for o in done),
        len({o.worker for o in done}),
    )
    return done


def logged(stage: str, out: PartOutput, started: float) -> PartOutput:
    """``out``, once the partition's task has said in its own log (the
    dashboard's) what it did, where and how long it took."""
    from prefect import get_run_logger

    get_run_logger().info(
        "%s partition: %s, %s on %s (%.2fs)",
        stage,
        out.describe(),
        "read back (complete earlier)" if out.reused else "computed",
        out.worker,
        time.perf_counter() - started,
    )
    return out


def on_worker(fn: Any, chunks: Iterable[Any]) -> list[Any]:
    """``fn`` over a partition's chunks, in order, on the threads the worker
    may use (``worker_threads``)."""
    from tasks.infra.parallel import map_ordered

    return list(map_ordered(fn, chunks, threads=worker_threads()))


def check_rows(stage: str, done: Iterable[Any], expected: int) -> None:
    """Raise unless the partitions (anything with ``start`` and ``stop``)
    cover rows 0..``expected`` once each."""
    at = 0
    for out in sorted(done, key=lambda o: o.start):
        if out.start != at:
            raise RuntimeError(f"{stage}: partitions miss or repeat rows at {at}")
        at = out.stop
    if at != expected:
        raise RuntimeError(f"{stage}: partitions cover {at} of {expected} rows")
