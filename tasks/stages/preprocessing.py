"""Preprocessing: normalise and tokenise the prepared tweets.

Per row, so on a Dask cluster the prepared tweets are tokenised in partitions
(``tokenise_partition`` on the workers) and the stage's frame is assembled from
their parts, byte for byte what the in-process path writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from tasks.infra.caching import source_version, stage_task, uncached_task
from tasks.infra.lazy import pa, pd
from tasks.infra.parallel import map_ordered
from tasks.infra.partitioned import (
    ClusterSpec,
    PartOutput,
    PartStore,
    RowRange,
    check_rows,
    logged,
    map_on_cluster,
    on_worker,
    part_tables,
    plan_ranges,
    rebatch,
)
from tasks.infra.progress import current
from tasks.infra.store import ArtifactRef, ArtifactStore, CheckedChunk
from tasks.ml.text import token_counts, tokenise

STAGE = "preprocessing"
CHUNK_ROWS = 100_000  # rows read, tokenised and written at a time


class PreprocessingConfig(BaseModel):
    """Tokeniser settings (shared with batch inference through the model)."""

    model_config = ConfigDict(extra="forbid")

    keep_mentions: bool = Field(
        True,
        description="Keep @mentions as tokens (brands and news accounts name a "
        "tweet's subject); when off they become a placeholder.",
    )
    remove_stop_words: bool = Field(
        True, description="Drop English stop words and Twitter filler (rt, amp, via)."
    )


def preprocess_frame(
    prepared: pd.DataFrame, config: PreprocessingConfig
) -> pd.DataFrame:
    """Tokenise prepared tweets (and their replies) into the preprocessed contract."""
    tokens = tokenise(
        prepared["text"],
        keep_mentions=config.keep_mentions,
        remove_stop_words=config.remove_stop_words,
    )
    context = prepared["context"].fillna("").astype("str")
    has_context = context.str.len().gt(0)
    context_tokens = pd.Series("", index=prepared.index, dtype="str")
    if has_context.any():
        context_tokens[has_context] = tokenise(
            context[has_context],
            keep_mentions=config.keep_mentions,
            remove_stop_words=config.remove_stop_words,
        )
    return pd.DataFrame(
        {
            "tweet_id": prepared["tweet_id"].astype("str"),
            "split": prepared["split"].astype("str"),
            "tokens": tokens,
            "n_tokens": token_counts(tokens),
            "context_tokens": context_tokens,
            "n_replies": prepared["n_replies"].astype("int64"),
        }
    )


@dataclass(frozen=True)
class TokenCounts:
    """What the stored tokens hold: rows, tokens, rows without any token, and
    rows whose replies were tokenised as context."""

    rows: int = 0
    tokens: int = 0
    empty: int = 0
    with_context: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        """Both chunks' counts."""
        return TokenCounts(
            self.rows + other.rows,
            self.tokens + other.tokens,
            self.empty + other.empty,
            self.with_context + other.with_context,
        )


def tokenise_to_store(
    store: ArtifactStore,
    prepared: ArtifactRef,
    config: PreprocessingConfig,
    chunk: int = CHUNK_ROWS,
) -> tuple[ArtifactRef, TokenCounts]:
    """``preprocess_frame`` over the stored prepared tweets, ``chunk`` rows at a
    time on every core (the work is Arrow kernels, which release the interpreter
    lock), each chunk checked and written as it is done: reading, tokenising and
    writing overlap, and no whole frame is held. Reports rows done."""
    progress = current()
    progress.phase("tokenising", prepared.rows, "rows")
    # Row for row the prepared tweets, whose ids were checked unique.
    known = {"tweet_id": store.get_frame(prepared, columns=["tweet_id"])["tweet_id"]}
    with store.frame_writer(STAGE, "preprocessed", unique_as=known) as writer:

        def tokenise_and_check(rows: pd.DataFrame) -> tuple[CheckedChunk, TokenCounts]:
            frame = preprocess_frame(rows, config)
            return writer.check(frame), token_counts_of(frame)

        total = TokenCounts()
        for part, counts in map_ordered(
            tokenise_and_check, store.iter_frames(prepared, rows=chunk)
        ):
            writer.write(part)
            total += counts
            progress.advance(counts.rows)
        if not total.rows:  # no row group to read: an empty frame of the contract
            empty = store.get_frame(prepared)
            writer.write(preprocess_frame(empty, config))
        current().phase("writing", 1)
    return writer.ref, total


def token_counts_of(frame: pd.DataFrame) -> TokenCounts:
    """What a preprocessed chunk holds."""
    return TokenCounts(
        len(frame),
        int(frame["n_tokens"].sum()),
        int(frame["n_tokens"].eq(0).sum()),
        int(frame["context_tokens"].str.len().gt(0).sum()),
    )


def tokenise_partition_here(
    part: RowRange,
    prepared: ArtifactRef,
    config: PreprocessingConfig,
    *,
    artifacts_dir: str,
) -> PartOutput:
    """Tokenise rows ``part`` of the prepared tweets (on whichever worker runs
    the task) into a part checked against the preprocessed contract; a part
    complete earlier (same rows, settings and code) is read back."""
    store = ArtifactStore(artifacts_dir)
    parts = PartStore(store, STAGE)
    chunks, key, known = parts.rows_of(
        prepared,
        part,
        None,
        CHUNK_ROWS,
        config.model_dump(mode="json"),
        source_version(__name__),
    )
    if known is not None:
        return known
    frames = on_worker(lambda item: preprocess_frame(item[1], config), chunks)
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else preprocess_frame(store.get_frame(prepared).iloc[:0], config)
    )
    if len(frame) != part.rows:
        raise RuntimeError(
            f"{STAGE}: partition {part.number} read {len(frame)} of {part.rows} rows"
        )
    counts = token_counts_of(frame)
    return parts.save(
        key,
        part,
        {"preprocessed": frame},
        {"preprocessed": "preprocessed"},
        rows=counts.rows,
        tokens=counts.tokens,
        empty=counts.empty,
        with_context=counts.with_context,
    )


@uncached_task("tokenise-partition", retries=3)
def tokenise_partition(
    part: RowRange,
    prepared: ArtifactRef,
    config: PreprocessingConfig,
    *,
    artifacts_dir: str,
) -> PartOutput:
    """Tokenise rows ``part`` of the prepared tweets, as a task of its own (on
    a cluster's worker): ``tokenise_partition_here``."""
    started = time.perf_counter()
    out = tokenise_partition_here(part, prepared, config, artifacts_dir=artifacts_dir)
    return logged(STAGE, out, started)


def tokenise_on_cluster(
    store: ArtifactStore,
    prepared: ArtifactRef,
    config: PreprocessingConfig,
    cluster: ClusterSpec,
    logger: Any,
) -> tuple[ArtifactRef, TokenCounts]:
    """``tokenise_to_store`` with the tokenising done in partitions on the
    cluster: the parts are written into one frame, in the row groups the
    in-process path writes, their counts summed."""
    ranges = plan_ranges(int(prepared.rows or 0), cluster.partition_rows)
    done = map_on_cluster(
        tokenise_partition,
        ranges,
        cluster,
        STAGE,
        logger,
        prepared=prepared,
        config=config,
        artifacts_dir=store.root_uri,
    )
    check_rows(STAGE, done, int(prepared.rows or 0))
    current().phase("writing", 1)
    # The prepared ids (checked unique), in the batches the in-process path
    # tokenises: its row groups.
    ids = list(store.iter_batches(prepared, columns=["tweet_id"], rows=CHUNK_ROWS))
    sizes = [batch.num_rows for batch in ids]
    known = (
        {"tweet_id": pa.chunked_array([batch.column(0) for batch in ids])}
        if ids
        else {}
    )
    with store.frame_writer(STAGE, "preprocessed", unique_as=known) as writer:
        for table in rebatch(part_tables(store, done, "preprocessed"), sizes):
            writer.write(CheckedChunk(table, writer))  # checked on the worker
        if not sizes:
            writer.write(preprocess_frame(store.get_frame(prepared), config))
    total = TokenCounts()
    for out in done:
        total += TokenCounts(
            out.counts["rows"],
            out.counts["tokens"],
            out.counts["empty"],
            out.counts["with_context"],
        )
    return writer.ref, total


class PreprocessingOutput(BaseModel):
    """Reference and counts produced by preprocessing."""

    model_config = ConfigDict(frozen=True)

    preprocessed: ArtifactRef
    empty_token_rows: int
    mean_tokens: float


@stage_task(STAGE)
def preprocess(
    prepared: ArtifactRef,
    config: PreprocessingConfig,
    *,
    artifacts_dir: str,
    cluster: ClusterSpec | None = None,
) -> PreprocessingOutput:
    """Tokenise the prepared tweets (in partitions on ``cluster``, if given)."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    if cluster is not None:
        ref, counts = tokenise_on_cluster(store, prepared, config, cluster, logger)
    else:
        ref, counts = tokenise_to_store(store, prepared, config)
    empty = counts.empty
    mean = counts.tokens / counts.rows if counts.rows else 0.0
    logger.info(
        "preprocessing: %d rows in, %d rows out, %.1f tokens per tweet, "
        "%d tweets with no tokens, %d with replies tokenised as context (%.2fs)",
        prepared.rows,
        counts.rows,
        mean,
        empty,
        counts.with_context,
        time.perf_counter() - started,
    )
    return PreprocessingOutput(
        preprocessed=ref, empty_token_rows=empty, mean_tokens=mean
    )
