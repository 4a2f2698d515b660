"""Batch inference: classify new tweets with a verified model bundle.

New tweets go through the same ingestion, preparation and tokenising code as
training (``tasks.stages.ingestion``, ``tasks.stages.preparation``, ``tasks.ml.text`` via the
model); only the steps that learn something are skipped. Every row read is
either predicted, quarantined with its reason, or counted as an exact repeat.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pandas as pd

from data_contracts import check_row_accounting, get_contract, validate_frame
from tasks.infra import storage
from tasks.serving.model import TweetClassifier
from tasks.stages.ingestion import IngestionConfig, ingest_frame
from tasks.stages.preparation import PreparationConfig, prepare_for_inference

STAGE = "batch_inference"
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


def classify_frame(
    raw: pd.DataFrame,
    model: TweetClassifier,
    model_version: str,
    config: PreparationConfig | None = None,
) -> InferenceResult:
    """Prepare raw tweets exactly as training does, then classify them.

    A pure function of one partition: rows in, predictions out.
    """
    prepared, quarantine, duplicates = prepare_for_inference(
        raw, config or PreparationConfig()
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


def classify_source(
    source: str,
    output: str,
    model: TweetClassifier,
    model_version: str,
    ingestion: IngestionConfig,
    preparation: PreparationConfig,
) -> dict[str, Any]:
    """Read a source, classify it, write predictions (and any quarantine) as Parquet.

    Returns the counts, the per-category table and where things were written.
    Raises if the row accounting does not add up: nothing is dropped silently.
    """
    read = ingest_frame(source, ingestion)
    result = classify_frame(read.raw, model, model_version, preparation)
    quarantine = pd.concat([read.quarantine, result.quarantine], ignore_index=True)
    counts = {
        "rows_read": read.rows_read - read.outbound_skipped,
        "outbound_skipped": read.outbound_skipped,
        "predicted": len(result.predictions),
        "quarantined": len(quarantine),
        "duplicates_removed": result.duplicates_removed,
        "no_known_words": result.no_known_words,
    }
    check_row_accounting(counts, "predicted")
    storage.write_bytes(output, predictions_to_parquet(result.predictions))
    written = {"predictions": output}
    if len(quarantine):
        written["quarantine"] = quarantine_uri(output)
        storage.write_bytes(written["quarantine"], predictions_to_parquet(quarantine))
    return {
        "counts": counts,
        "categories": summary_table(result.predictions),
        "quarantine_reasons": (
            quarantine["reason"].value_counts().to_dict() if len(quarantine) else {}
        ),
        "written": written,
    }


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


def predictions_to_parquet(predictions: pd.DataFrame) -> bytes:
    """The predictions as Parquet bytes."""
    buffer = io.BytesIO()
    predictions.to_parquet(buffer, index=False, compression="zstd")
    return buffer.getvalue()
