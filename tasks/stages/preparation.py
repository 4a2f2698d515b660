"""Preparation: clean the text, remove duplicates and empties, split by tweet id.

The split is a pure function of the tweet id (a salted hash), so adding new
tweets never moves old ones between discovery, validation and evaluation.

Cleaning a text or a reply is per row: on a Dask cluster it runs in partitions
(``clean_partition`` on the workers); removing duplicates, pooling their
replies and the id conflicts need every row and run here, on the cleaned
columns, so both paths prepare the same tweets.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_contracts import get_contract, split_quarantine
from tasks.infra.caching import source_version, stage_task, uncached_task
from tasks.infra.errors import InsufficientDataError
from tasks.infra.lazy import np, pa, pc, pd
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
)
from tasks.infra.store import ArtifactRef, ArtifactStore
from tasks.ml.cleaning import CleaningConfig, clean_and_check, clean_column

STAGE = "preparation"
RAW_KEPT = ["source", "source_row", "context", "n_replies"]  # with tweet_id, text
PREPARED_COLUMNS = [
    "tweet_id",
    "text",
    "split",
    "source",
    "source_row",
    "context",
    "n_replies",
]


class PreparationConfig(CleaningConfig):
    """Cleaning and splitting settings."""

    validation_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="Share of tweets in the validation split."
    )
    evaluation_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="Share of tweets in the evaluation split."
    )
    split_salt: str = Field(
        "tweetflow-split-v1",
        description="Salt of the id hash that assigns splits; change it only to "
        "reshuffle every split on purpose.",
    )

    @model_validator(mode="after")
    def _discovery_left(self) -> PreparationConfig:
        if self.validation_fraction + self.evaluation_fraction >= 0.6:
            raise ValueError("validation + evaluation must leave >= 40% for discovery")
        return self


def split_of(
    tweet_ids: pd.Series, salt: str, validation: float, evaluation: float
) -> pd.Series:
    """Assign each id to discovery / validation / evaluation by a salted hash."""
    salted = hashlib.blake2b(salt.encode("utf-8") + b"\x00", digest_size=8)

    def digest(tweet_id: str) -> bytes:
        h = salted.copy()
        h.update(tweet_id.encode("utf-8"))
        return h.digest()

    ids = tweet_ids.astype("str")
    digests = b"".join(  # 100k ids at a time: never a million Python strings
        b"".join(map(digest, ids.iloc[start : start + 100_000].tolist()))
        for start in range(0, len(ids), 100_000)
    )
    # The digest read as a big-endian integer, over 2**64: uniform in [0, 1).
    u = np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2**64
    split = np.where(
        u < validation,
        "validation",
        np.where(u < validation + evaluation, "evaluation", "discovery"),
    )
    return pd.Series(split, index=tweet_ids.index, dtype="str")


@dataclass(frozen=True)
class PreparationResult:
    """Prepared tweets, the rows quarantined here and the duplicate count."""

    prepared: pd.DataFrame
    quarantine: pd.DataFrame
    duplicates_removed: int


def pooled_replies(
    df: pd.DataFrame, text_codes: np.ndarray
) -> tuple[pd.Series, pd.Series] | None:
    """All the replies of the tweets that share a text, per text: joined contexts
    and their number (None when no shared text has replies).

    Deduplication keeps the first tweet of each text; giving it these keeps
    every reply of its duplicates. ``text_codes`` number the distinct texts
    (``pd.factorize`` of ``text``).
    """
    counts = np.bincount(text_codes)
    shared = (counts[text_codes] > 1) & df["n_replies"].gt(0).to_numpy()
    if not shared.any():
        return None
    groups = df[shared].groupby("text", sort=False)
    context = groups["context"].agg(lambda texts: "\n".join(texts.dropna()))
    return context, groups["n_replies"].sum()


def _arrow(text: pd.Series) -> pa.Array:
    """A text column as one Arrow array."""
    values = pa.array(text.array, pa.large_string())
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def text_codes_of(text: pd.Series) -> np.ndarray:
    """A number per distinct text, in order of first use (``pd.factorize``'s
    codes, missing texts numbered too), hashed in Arrow."""
    encoded = pc.dictionary_encode(_arrow(text), null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def first_of_each(codes: np.ndarray) -> np.ndarray:
    """Which rows are the first with their code."""
    first = np.zeros(len(codes), dtype=bool)
    first[np.unique(codes, return_index=True)[1]] = True
    return first


@dataclass(frozen=True)
class CleanedColumns:
    """A raw snapshot's texts and replies already cleaned, row for row (the
    replies missing where a tweet has none)."""

    text: pd.Series
    context: pd.Series


def clean_columns(raw: pd.DataFrame, fix_mojibake: bool) -> pd.DataFrame:
    """The cleaned ``text`` and ``context`` of raw rows (context missing where
    the row has none)."""
    context = raw["context"]
    has_context = context.notna()
    cleaned = pd.Series(None, index=raw.index, dtype="str")
    if has_context.any():
        cleaned[has_context] = clean_column(context[has_context], fix_mojibake)
    return pd.DataFrame(
        {"text": clean_column(raw["text"], fix_mojibake), "context": cleaned}
    )


def prepare_frame(
    raw: pd.DataFrame,
    config: PreparationConfig,
    cleaned: CleanedColumns | None = None,
) -> PreparationResult:
    """Clean, deduplicate, quarantine bad rows and split a raw snapshot.

    Replies kept as a tweet's ``context`` are cleaned like texts and follow
    their tweet (pooled onto the surviving copy of a duplicate). ``cleaned``:
    the texts and replies cleaned already (in partitions), row for row.
    """
    df, quarantined = clean_and_check(
        raw[PREPARED_COLUMNS[:2] + RAW_KEPT],
        config,
        None if cleaned is None else cleaned.text,
    )
    text_codes = text_codes_of(df["text"])
    pooled = pooled_replies(df, text_codes)
    before = len(df)
    df = df[first_of_each(text_codes)]
    duplicates_removed = before - len(df)
    if pooled is not None:
        context, n_replies = pooled
        gets = df["text"].isin(context.index).to_numpy()
        df.loc[gets, "context"] = df.loc[gets, "text"].map(context)
        df.loc[gets, "n_replies"] = df.loc[gets, "text"].map(n_replies).astype("int64")
    has_context = df["context"].notna()
    if has_context.any():
        if cleaned is None:
            clean = clean_column(df.loc[has_context, "context"], config.fix_mojibake)
        else:  # cleaned already, but for the replies pooled just now
            clean = cleaned.context.set_axis(raw.index).reindex(df.index)
            if pooled is not None:
                joined = df.index[gets]
                clean.loc[joined] = clean_column(
                    df.loc[joined, "context"], config.fix_mojibake
                )
            clean = clean[has_context]
        context = pc.replace_with_mask(
            _arrow(df["context"]), pa.array(has_context.to_numpy()), _arrow(clean)
        )
        df = df.assign(context=pd.Series(context, index=df.index, dtype="str"))

    df = df.assign(
        split=split_of(
            df["tweet_id"],
            config.split_salt,
            config.validation_fraction,
            config.evaluation_fraction,
        )
    )[PREPARED_COLUMNS]
    accepted, contract_quarantine = split_quarantine(
        df.reset_index(drop=True), get_contract("prepared"), STAGE
    )
    quarantined.append(contract_quarantine)
    quarantine = pd.concat(quarantined, ignore_index=True)
    return PreparationResult(
        accepted.reset_index(drop=True), quarantine, duplicates_removed
    )


def clean_partition_here(
    part: RowRange, raw: ArtifactRef, config: PreparationConfig, *, artifacts_dir: str
) -> PartOutput:
    """Clean the texts and replies of rows ``part`` of the raw snapshot (on
    whichever worker runs the task); a part complete earlier is read back."""
    store = ArtifactStore(artifacts_dir)
    parts = PartStore(store, STAGE)
    columns = ["text", "context"]
    chunks, key, known = parts.rows_of(
        raw, part, columns, 100_000, config.fix_mojibake, source_version(__name__)
    )
    if known is not None:
        return known
    frames = on_worker(lambda item: clean_columns(item[1], config.fix_mojibake), chunks)
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else clean_columns(store.get_frame(raw, columns=columns), config.fix_mojibake)
    )
    if len(frame) != part.rows:
        raise RuntimeError(
            f"{STAGE}: partition {part.number} read {len(frame)} of {part.rows} rows"
        )
    return parts.save(key, part, {"cleaned": frame}, rows=len(frame))


@uncached_task("clean-partition", retries=3)
def clean_partition(
    part: RowRange, raw: ArtifactRef, config: PreparationConfig, *, artifacts_dir: str
) -> PartOutput:
    """Clean rows ``part`` of the raw snapshot, as a task of its own (on a
    cluster's worker): ``clean_partition_here``."""
    started = time.perf_counter()
    out = clean_partition_here(part, raw, config, artifacts_dir=artifacts_dir)
    return logged(STAGE, out, started)


def clean_on_cluster(
    store: ArtifactStore,
    raw: ArtifactRef,
    config: PreparationConfig,
    cluster: ClusterSpec,
    logger: Any,
) -> CleanedColumns:
    """Every raw row's text and replies cleaned in partitions on the cluster."""
    rows = int(raw.rows or 0)
    done = map_on_cluster(
        clean_partition,
        plan_ranges(rows, cluster.partition_rows),
        cluster,
        STAGE,
        logger,
        raw=raw,
        config=config,
        artifacts_dir=store.root_uri,
    )
    check_rows(STAGE, done, rows)
    frame = pa.concat_tables(part_tables(store, done, "cleaned")).to_pandas()
    return CleanedColumns(frame["text"], frame["context"])


class PreparationOutput(BaseModel):
    """References and counts produced by preparation."""

    model_config = ConfigDict(frozen=True)

    prepared: ArtifactRef
    quarantine: ArtifactRef
    rows_in: int
    duplicates_removed: int
    split_counts: dict[str, int]


@stage_task(STAGE)
def prepare(
    raw: ArtifactRef,
    config: PreparationConfig,
    *,
    artifacts_dir: str,
    cluster: ClusterSpec | None = None,
) -> PreparationOutput:
    """Clean and split the raw snapshot; quarantine what cannot be used. On
    ``cluster``, the per-row cleaning runs there in partitions."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    cleaned = (
        None
        if cluster is None
        else clean_on_cluster(store, raw, config, cluster, logger)
    )
    result = prepare_frame(
        store.get_frame(raw, columns=PREPARED_COLUMNS[:2] + RAW_KEPT), config, cleaned
    )
    if result.prepared.empty:
        reasons = result.quarantine["reason"].value_counts()
        raise InsufficientDataError(
            f"preparation: none of the {raw.rows} tweets is usable "
            f"({result.duplicates_removed} duplicates; quarantine reasons: "
            + (", ".join(f"{r}: {n}" for r, n in reasons.items()) or "none")
            + ")"
        )
    prepared = store.put_frame(result.prepared, STAGE, "prepared", checked=True)
    quarantine = store.put_frame(result.quarantine, "quarantine/preparation")
    counts = result.prepared["split"].value_counts().to_dict()
    logger.info(
        "preparation: %d rows in, %d accepted, %d quarantined, %d exact duplicates "
        "removed; splits %s (%.2fs)",
        raw.rows,
        len(result.prepared),
        len(result.quarantine),
        result.duplicates_removed,
        counts,
        time.perf_counter() - started,
    )
    if len(result.quarantine):
        logger.warning(
            "preparation quarantine reasons: %s",
            result.quarantine["reason"].value_counts().to_dict(),
        )
    return PreparationOutput(
        prepared=prepared,
        quarantine=quarantine,
        rows_in=raw.rows,
        duplicates_removed=result.duplicates_removed,
        split_counts={str(k): int(v) for k, v in counts.items()},
    )
