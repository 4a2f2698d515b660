"""Preparation: clean the text, remove duplicates and empties, split by tweet id.

The split is a pure function of the tweet id (a salted hash), so adding new
tweets never moves old ones between discovery, validation and evaluation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_contracts import get_contract, split_quarantine
from tasks.infra.caching import stage_task
from tasks.infra.errors import InsufficientDataError
from tasks.infra.store import ArtifactRef, ArtifactStore
from tasks.ml.cleaning import CleaningConfig, clean_and_check, clean_column

STAGE = "preparation"
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

    digests = b"".join(map(digest, tweet_ids.tolist()))
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


def pool_replies(df: pd.DataFrame, text_codes: np.ndarray) -> pd.DataFrame:
    """Give the first of several tweets with the same text all of their replies.

    Deduplication keeps that first tweet, so no reply is lost with a duplicate.
    ``text_codes`` number the distinct texts (``pd.factorize`` of ``text``).
    """
    counts = np.bincount(text_codes)
    shared = (counts[text_codes] > 1) & df["n_replies"].gt(0).to_numpy()
    if not shared.any():
        return df
    groups = df[shared].groupby("text", sort=False)
    context = groups["context"].agg(lambda texts: "\n".join(texts.dropna()))
    n_replies = groups["n_replies"].sum()
    first = first_of_each(text_codes) & df["text"].isin(context.index).to_numpy()
    df = df.copy()
    df.loc[first, "context"] = df.loc[first, "text"].map(context)
    df.loc[first, "n_replies"] = df.loc[first, "text"].map(n_replies).astype("int64")
    return df


def first_of_each(codes: np.ndarray) -> np.ndarray:
    """Which rows are the first with their code."""
    first = np.zeros(len(codes), dtype=bool)
    first[np.unique(codes, return_index=True)[1]] = True
    return first


def prepare_frame(raw: pd.DataFrame, config: PreparationConfig) -> PreparationResult:
    """Clean, deduplicate, quarantine bad rows and split a raw snapshot.

    Replies kept as a tweet's ``context`` are cleaned like texts and follow
    their tweet (pooled onto the surviving copy of a duplicate).
    """
    df, quarantined = clean_and_check(raw, config)
    text_codes = pd.factorize(df["text"], use_na_sentinel=False)[0]
    df = pool_replies(df, text_codes)
    before = len(df)
    df = df[first_of_each(text_codes)]
    duplicates_removed = before - len(df)
    has_context = df["context"].notna()
    if has_context.any():
        cleaned = clean_column(df.loc[has_context, "context"], config.fix_mojibake)
        df = df.assign(context=df["context"].where(~has_context, cleaned))

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
    raw: ArtifactRef, config: PreparationConfig, *, artifacts_dir: str
) -> PreparationOutput:
    """Clean and split the raw snapshot; quarantine what cannot be used."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    result = prepare_frame(store.get_frame(raw), config)
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
