"""Preparation: clean the text, remove duplicates and empties, split by tweet id.

The split is a pure function of the tweet id (a salted hash), so adding new
tweets never moves old ones between discovery, validation and evaluation.
"""

from __future__ import annotations

import hashlib
import html
import re
import time
from dataclasses import dataclass

import ftfy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_contracts import get_contract, make_quarantine, split_quarantine
from data_contracts.schemas import MAX_TEXT_CHARS
from tasks.infra.caching import stage_task
from tasks.infra.store import ArtifactRef, ArtifactStore

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
# Characters that betray mis-decoded UTF-8; only these rows go through ftfy.
MOJIBAKE_HINT = re.compile(r"[\u00c2-\u00c3\u00e2][\u0080-\u00bf]|\u00e2\u20ac")
# C0/C1 control characters, zero-width marks and any run of whitespace.
SPACE_LIKE = re.compile(
    r"[\s\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\ufeff]+"
)
# The same two patterns in RE2 syntax, run by Arrow over the whole column (tests
# check them against the Python ones code point by code point). SPACE_RUN_RE2
# leaves out the runs that are already one " ", so most tweets have no match.
MOJIBAKE_HINT_RE2 = r"[\x{c2}\x{c3}\x{e2}][\x{80}-\x{bf}]|\x{e2}\x{20ac}"
_SPACE_LIKE_NOT_SPACE_RE2 = (
    r"\x00-\x1f\x7f-\xa0\x{1680}\x{2000}-\x{200f}"
    r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}"
)
SPACE_RUN_RE2 = (
    rf"[{_SPACE_LIKE_NOT_SPACE_RE2}][ {_SPACE_LIKE_NOT_SPACE_RE2}]*"
    rf"| [ {_SPACE_LIKE_NOT_SPACE_RE2}]+"
)


class PreparationConfig(BaseModel):
    """Cleaning and splitting settings."""

    model_config = ConfigDict(extra="forbid")

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
    fix_mojibake: bool = Field(
        True, description="Repair mis-decoded UTF-8 (mojibake) with ftfy."
    )
    max_chars: int = Field(
        MAX_TEXT_CHARS,
        ge=1,
        le=MAX_TEXT_CHARS,
        description="Texts longer than this after cleaning are quarantined.",
    )

    @model_validator(mode="after")
    def _discovery_left(self) -> PreparationConfig:
        if self.validation_fraction + self.evaluation_fraction >= 0.6:
            raise ValueError("validation + evaluation must leave >= 40% for discovery")
        return self


def clean_text(text: pd.Series, fix_mojibake: bool = True) -> pd.Series:
    """Unescape HTML entities, repair mojibake and normalise whitespace.

    Exactly ``_clean_text_reference``, with the two regexes run as RE2 over the
    whole column; html.unescape and ftfy see only the rows that can need them.
    """
    out = text.astype("str")
    has_entity = out.str.contains("&", regex=False)
    if has_entity.any():
        out = out.where(~has_entity, out[has_entity].map(html.unescape))
    if fix_mojibake:
        hint = pc.match_substring_regex(pa.array(out.array), MOJIBAKE_HINT_RE2)
        suspicious = pd.Series(
            hint.fill_null(False).to_numpy(zero_copy_only=False), index=out.index
        )
        if suspicious.any():
            out = out.where(~suspicious, out[suspicious].map(ftfy.fix_text))
    spaced = pc.replace_substring_regex(pa.array(out.array), SPACE_RUN_RE2, " ")
    return pd.Series(spaced, index=out.index, name=out.name, dtype="str").str.strip()


def _clean_text_reference(text: pd.Series, fix_mojibake: bool = True) -> pd.Series:
    """The specification of ``clean_text``: one Python regex per row and step."""
    out = text.astype("str")
    has_entity = out.str.contains("&", regex=False)
    out = out.where(~has_entity, out[has_entity].map(html.unescape))
    if fix_mojibake:
        suspicious = out.str.contains(MOJIBAKE_HINT)
        if suspicious.any():
            out = out.where(~suspicious, out[suspicious].map(ftfy.fix_text))
    return out.str.replace(SPACE_LIKE, " ", regex=True).str.strip()


def split_of(
    tweet_ids: pd.Series, salt: str, validation: float, evaluation: float
) -> pd.Series:
    """Assign each id to discovery / validation / evaluation by a salted hash."""
    prefix = salt.encode("utf-8") + b"\x00"
    u = np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(prefix + t.encode("utf-8"), digest_size=8).digest(),
                "big",
            )
            / 2**64
            for t in tweet_ids
        ),
        dtype=np.float64,
        count=len(tweet_ids),
    )
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


def clean_and_check(
    raw: pd.DataFrame, config: PreparationConfig
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Clean the texts and set aside rows nobody can use; shared with inference.

    Returns the usable rows and the quarantine frames (with reasons): texts empty
    after cleaning, texts too long, and ids repeated with different texts.
    """
    df = raw.assign(text=clean_text(raw["text"], config.fix_mojibake))
    quarantined = []
    empty = df["text"].eq("")
    too_long = df["text"].str.len().gt(config.max_chars)
    quarantined.append(
        make_quarantine(df[empty], STAGE, "text is empty after cleaning")
    )
    quarantined.append(
        make_quarantine(
            df[too_long], STAGE, f"text longer than {config.max_chars} characters"
        )
    )
    df = df[~(empty | too_long)]

    # The same id with different texts is a conflict nobody can resolve here.
    texts_per_id = df.groupby("tweet_id")["text"].transform("nunique")
    conflict = texts_per_id.gt(1)
    quarantined.append(
        make_quarantine(df[conflict], STAGE, "tweet_id repeated with a different text")
    )
    return df[~conflict], quarantined


def prepare_for_inference(
    raw: pd.DataFrame, config: PreparationConfig
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The training preparation for new tweets: same cleaning, same checks.

    Unlike training, repeated texts under different ids are all kept (each
    tweet gets its prediction); only exact repeats of a row (same id, same
    text) are dropped. Returns (usable rows, quarantine, exact repeats removed).
    """
    df, quarantined = clean_and_check(raw, config)
    before = len(df)
    df = df.drop_duplicates(subset=["tweet_id"], keep="first")
    return (
        df.reset_index(drop=True),
        pd.concat(quarantined, ignore_index=True),
        before - len(df),
    )


def pool_replies(df: pd.DataFrame) -> pd.DataFrame:
    """Give the first of several tweets with the same text all of their replies.

    Deduplication keeps that first tweet, so no reply is lost with a duplicate.
    """
    shared = df["text"].duplicated(keep=False) & df["n_replies"].gt(0)
    if not shared.any():
        return df
    groups = df[shared].groupby("text", sort=False)
    context = groups["context"].agg(lambda texts: "\n".join(texts.dropna()))
    n_replies = groups["n_replies"].sum()
    first = ~df["text"].duplicated(keep="first") & df["text"].isin(context.index)
    df = df.copy()
    df.loc[first, "context"] = df.loc[first, "text"].map(context)
    df.loc[first, "n_replies"] = df.loc[first, "text"].map(n_replies).astype("int64")
    return df


def prepare_frame(raw: pd.DataFrame, config: PreparationConfig) -> PreparationResult:
    """Clean, deduplicate, quarantine bad rows and split a raw snapshot.

    Replies kept as a tweet's ``context`` are cleaned like texts and follow
    their tweet (pooled onto the surviving copy of a duplicate).
    """
    df, quarantined = clean_and_check(raw, config)
    df = pool_replies(df)
    before = len(df)
    df = df.drop_duplicates(subset=["text"], keep="first")
    duplicates_removed = before - len(df)
    has_context = df["context"].notna()
    if has_context.any():
        cleaned = clean_text(df.loc[has_context, "context"], config.fix_mojibake)
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


@stage_task(
    STAGE,
    ["tasks.stages.preparation", "data_contracts.schemas", "data_contracts.validation"],
)
def prepare(
    raw: ArtifactRef, config: PreparationConfig, artifacts_dir: str
) -> PreparationOutput:
    """Clean and split the raw snapshot; quarantine what cannot be used."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    result = prepare_frame(store.get_frame(raw), config)
    prepared = store.put_frame(result.prepared, STAGE, "prepared")
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
