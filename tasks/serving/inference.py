"""Batch inference: classify new tweets with a verified model bundle.

New tweets are read by the ingestion stage (the batch flow wires it), cleaned
by the training code (``tasks.ml.cleaning``) and tokenised and embedded by the
model (``tasks.ml.text``, ``tasks.ml.embedding``); only the steps that learn
something are skipped. Every row read is either predicted, quarantined with
its reason, or counted as an exact repeat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from data_contracts import check_row_accounting, get_contract, validate_frame
from tasks.infra import storage
from tasks.infra.caching import uncached_task
from tasks.infra.errors import InputError
from tasks.infra.store import ArtifactRef, ArtifactStore, frame_to_parquet_bytes
from tasks.ml.cleaning import CleaningConfig, clean_and_check
from tasks.serving.model import TweetClassifier
from tasks.serving.resolve import LoadedModel

STAGE = "batch_inference"


class OutputError(InputError):
    """The output URI cannot take the predictions."""


def check_output(output: str) -> None:
    """The output must be a .parquet file URI whose parent can be written."""
    if not output.endswith(".parquet"):
        raise OutputError(f"output {output!r} must name a .parquet file")
    if not storage.is_remote(output):
        parent = storage.local_path(output).parent
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"output folder {parent} is a file")


PREDICTION_COLUMNS = [
    "tweet_id",
    "text",
    "category",
    "cluster_id",
    "confidence",
    "model_version",
]


@dataclass(frozen=True)
class InferenceResult:
    """Predictions, the rows that could not be classified, and the counts."""

    predictions: pd.DataFrame
    quarantine: pd.DataFrame
    duplicates_removed: int
    no_known_words: int


def prepare_for_inference(
    raw: pd.DataFrame, config: CleaningConfig
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


def classify_frame(
    raw: pd.DataFrame,
    model: TweetClassifier,
    model_version: str,
    config: CleaningConfig | None = None,
) -> InferenceResult:
    """Prepare raw tweets exactly as training does, then classify them.

    A pure function of one partition: rows in, predictions out.
    """
    prepared, quarantine, duplicates = prepare_for_inference(
        raw, config or CleaningConfig()
    )
    scored = model.predict(prepared["text"])
    predictions = pd.DataFrame(
        {
            "tweet_id": prepared["tweet_id"].to_numpy(),
            "text": prepared["text"].to_numpy(),
            "category": scored["category"].to_numpy(),
            "cluster_id": scored["cluster_id"].to_numpy(),
            "confidence": scored["confidence"].to_numpy(),
            "model_version": model_version,
        }
    )
    predictions["text"] = predictions["text"].astype("str")
    predictions["category"] = predictions["category"].astype("str")
    predictions["model_version"] = predictions["model_version"].astype("str")
    validate_frame(predictions, get_contract("predictions"), STAGE)
    return InferenceResult(
        predictions[PREDICTION_COLUMNS],
        quarantine,
        duplicates,
        int((scored["n_known"] == 0).sum()),
    )


def write_predictions(
    result: InferenceResult, quarantine: pd.DataFrame, output: str
) -> dict[str, str]:
    """Write predictions (and any quarantine) as Parquet; return where they went."""
    storage.write_bytes(output, frame_to_parquet_bytes(result.predictions))
    written = {"predictions": output}
    if len(quarantine):
        written["quarantine"] = quarantine_uri(output)
        storage.write_bytes(written["quarantine"], frame_to_parquet_bytes(quarantine))
    return written


def classify_raw(
    raw: pd.DataFrame,
    ingestion_quarantine: pd.DataFrame,
    rows_read: int,
    outbound_skipped: int,
    output: str,
    model: TweetClassifier,
    model_version: str,
    config: CleaningConfig,
) -> dict[str, Any]:
    """Classify ingested tweets and write the predictions; return the summary.

    Raises if the row accounting does not add up: nothing is dropped silently.
    """
    result = classify_frame(raw, model, model_version, config)
    quarantine = pd.concat([ingestion_quarantine, result.quarantine], ignore_index=True)
    counts = {
        "rows_read": rows_read - outbound_skipped,
        "outbound_skipped": outbound_skipped,
        "predicted": len(result.predictions),
        "quarantined": len(quarantine),
        "duplicates_removed": result.duplicates_removed,
        "no_known_words": result.no_known_words,
    }
    check_row_accounting(counts, "predicted")
    return {
        "counts": counts,
        "categories": summary_table(result.predictions),
        "quarantine_reasons": (
            quarantine["reason"].value_counts().to_dict() if len(quarantine) else {}
        ),
        "written": write_predictions(result, quarantine, output),
    }


@uncached_task("classify")
def classify(
    raw: ArtifactRef,
    ingestion_quarantine: ArtifactRef,
    rows_read: int,
    outbound_skipped: int,
    output: str,
    loaded: LoadedModel,
    config: CleaningConfig,
    artifacts_dir: str,
) -> dict[str, Any]:
    """Classify every usable ingested tweet; write predictions as Parquet."""
    from prefect import get_run_logger

    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    summary = classify_raw(
        store.get_frame(raw),
        store.get_frame(ingestion_quarantine),
        rows_read,
        outbound_skipped,
        output,
        loaded.model,
        loaded.version,
        config,
    )
    counts = summary["counts"]
    if counts["quarantined"]:
        logger.warning(
            "classify: %d rows quarantined (%s) -> %s",
            counts["quarantined"],
            summary["quarantine_reasons"],
            summary["written"]["quarantine"],
        )
    seconds = time.perf_counter() - started
    logger.info(
        "classify: %d rows read; %d predicted, %d quarantined, %d exact repeats; "
        "%d with no known word; -> %s (%.2fs, %.0f tweets/s)",
        counts["rows_read"],
        counts["predicted"],
        counts["quarantined"],
        counts["duplicates_removed"],
        counts["no_known_words"],
        output,
        seconds,
        counts["rows_read"] / max(seconds, 1e-9),
    )
    return {**summary, "seconds": round(seconds, 3)}


def quarantine_uri(output: str) -> str:
    """Where the rows that could not be classified go, beside the predictions."""
    return output.removesuffix(".parquet") + ".quarantine.parquet"


def summary_table(predictions: pd.DataFrame) -> list[dict]:
    """Tweets per category, largest first, with their share."""
    total = max(len(predictions), 1)
    counts = predictions["category"].value_counts()
    return [
        {"category": str(category), "tweets": int(n), "share": round(n / total, 4)}
        for category, n in counts.items()
    ]


@uncached_task("report")
def report_batch(summary: dict[str, Any], model_version: str, source: str) -> None:
    """Publish the batch-inference summary as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    counts = summary["counts"]
    share = counts["no_known_words"] / max(counts["predicted"], 1)
    lines = [
        "# tweetflow batch inference",
        "",
        f"- model: `{model_version}`",
        f"- source: `{source}`",
        f"- predictions: `{summary['written']['predictions']}`",
        f"- rows read {counts['rows_read']}: predicted {counts['predicted']}, "
        f"quarantined {counts['quarantined']}, exact repeats "
        f"{counts['duplicates_removed']}",
        f"- tweets with no known word: {counts['no_known_words']} ({share:.2%})",
        "",
        "| category | tweets | share |",
        "|---|---|---|",
        *(
            f"| {row['category']} | {row['tweets']} | {row['share']:.2%} |"
            for row in summary["categories"]
        ),
    ]
    create_markdown_artifact(
        key="batch-inference-summary",
        markdown="\n".join(lines) + "\n",
        description=f"predictions by {model_version}",
    )
    create_table_artifact(key="batch-inference-categories", table=summary["categories"])
