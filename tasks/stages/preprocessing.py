"""Preprocessing: normalise and tokenise the prepared tweets."""

from __future__ import annotations

import time

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from tasks.infra.caching import stage_task
from tasks.infra.lazy import pd
from tasks.infra.parallel import map_ordered
from tasks.infra.progress import current
from tasks.infra.store import ArtifactRef, ArtifactStore
from tasks.ml.text import token_counts, tokenise

STAGE = "preprocessing"
CHUNK_ROWS = 100_000  # rows tokenised between two progress updates


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


def tokenise_in_chunks(
    prepared: pd.DataFrame, config: PreprocessingConfig, chunk: int = CHUNK_ROWS
) -> pd.DataFrame:
    """``preprocess_frame`` a chunk of rows at a time on every core (the work is
    Arrow kernels, which release the interpreter lock), reporting rows done."""
    progress = current()
    progress.phase("tokenising", len(prepared), "rows")
    parts = []
    chunks = (
        prepared.iloc[start : start + chunk] for start in range(0, len(prepared), chunk)
    )
    for part in map_ordered(lambda rows: preprocess_frame(rows, config), chunks):
        parts.append(part)
        progress.advance(len(part))
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts) if parts else preprocess_frame(prepared, config)


class PreprocessingOutput(BaseModel):
    """Reference and counts produced by preprocessing."""

    model_config = ConfigDict(frozen=True)

    preprocessed: ArtifactRef
    empty_token_rows: int
    mean_tokens: float


@stage_task(STAGE)
def preprocess(
    prepared: ArtifactRef, config: PreprocessingConfig, *, artifacts_dir: str
) -> PreprocessingOutput:
    """Tokenise the prepared tweets."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    rows = store.get_frame(prepared)
    frame = tokenise_in_chunks(rows, config)
    current().phase("writing", 1)
    # Row for row the prepared tweets, whose ids were checked unique.
    known = {"tweet_id": rows["tweet_id"]}
    del rows
    ref = store.put_frame(frame, STAGE, "preprocessed", unique_as=known)
    empty = int(frame["n_tokens"].eq(0).sum())
    mean = float(frame["n_tokens"].mean()) if len(frame) else 0.0
    logger.info(
        "preprocessing: %d rows in, %d rows out, %.1f tokens per tweet, "
        "%d tweets with no tokens, %d with replies tokenised as context (%.2fs)",
        prepared.rows,
        len(frame),
        mean,
        empty,
        int(frame["context_tokens"].str.len().gt(0).sum()),
        time.perf_counter() - started,
    )
    return PreprocessingOutput(
        preprocessed=ref, empty_token_rows=empty, mean_tokens=mean
    )
