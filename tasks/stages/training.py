"""Training: a scikit-learn classifier learns the pseudo-labels.

Fitted on the discovery split, evaluated on validation and evaluation. Its
agreement with KMeans measures only how well it reproduces the partition (the
labels are KMeans' own); the clustering's silhouette and stability, reported
beside it, are the figures that do not depend on the pseudo-labels alone.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Literal

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from tasks.infra.caching import stage_task
from tasks.infra.errors import InsufficientDataError
from tasks.infra.lazy import np, pd
from tasks.infra.store import ArtifactRef, ArtifactStore
from tasks.ml.bundle import CLASSIFIER_FILE
from tasks.ml.embedding import vectors_of

if TYPE_CHECKING:
    from sklearn.base import ClassifierMixin

STAGE = "training"
METRICS_FILE = "metrics.json"
REPORT_FILE = "classification_report.txt"
CONFUSION_PLOT = "confusion_matrix.png"  # drawn by publishing, with names
CONFUSION_FILE = "confusion_matrix.json"


class TrainingConfig(BaseModel):
    """Classifier settings."""

    model_config = ConfigDict(extra="forbid")

    classifier: Literal["logistic_regression", "linear_svc", "random_forest"] = Field(
        "logistic_regression", description="scikit-learn estimator to train."
    )
    C: float = Field(
        1.0, gt=0.0, description="Inverse regularisation strength (linear models)."
    )
    max_iter: int = Field(1000, ge=10, description="Solver iteration limit.")
    class_weight: Literal["balanced", "none"] = Field(
        "balanced", description="Weight classes inversely to their size, or not."
    )
    n_estimators: int = Field(200, ge=1, description="Trees (random forest only).")
    sample: int = Field(
        200_000,
        ge=0,
        description="Discovery tweets the classifier is fitted on: a seeded sample "
        "when there are more (0: all). Validation and evaluation are scored in full.",
    )


def make_classifier(config: TrainingConfig, seed: int) -> ClassifierMixin:
    """Build the configured, unfitted estimator."""
    # scikit-learn is imported when a model is built (about 1 s), not with the flow.
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    weight = None if config.class_weight == "none" else "balanced"
    if config.classifier == "linear_svc":
        return LinearSVC(
            C=config.C, max_iter=config.max_iter, class_weight=weight, random_state=seed
        )
    if config.classifier == "random_forest":
        return RandomForestClassifier(
            n_estimators=config.n_estimators,
            class_weight=weight,
            random_state=seed,
            n_jobs=1,
        )
    return LogisticRegression(
        C=config.C, max_iter=config.max_iter, class_weight=weight, random_state=seed
    )


def train_and_evaluate(
    features: pd.DataFrame, assignments: pd.DataFrame, config: TrainingConfig, seed: int
) -> tuple[ClassifierMixin, dict, str, np.ndarray, list[int]]:
    """Fit on discovery, score validation and evaluation.

    Returns (model, metrics, text report, evaluation confusion matrix, labels).
    Tweets with no known words (cluster -1) are left out of fitting and scoring.
    """
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        f1_score,
    )

    if not features["tweet_id"].equals(assignments["tweet_id"]):
        raise ValueError("training: features and cluster assignments are not aligned")
    vectors = vectors_of(features)
    labels = assignments["cluster_id"].to_numpy()
    split = assignments["split"].to_numpy()
    usable = labels >= 0
    train = usable & (split == "discovery")
    if 0 < config.sample < int(train.sum()):
        rows = np.flatnonzero(train)
        keep = np.random.default_rng(seed).choice(
            len(rows), config.sample, replace=False
        )
        train = np.zeros_like(train)
        train[rows[keep]] = True
    if len(np.unique(labels[train])) < 2:
        raise InsufficientDataError(
            "training: fewer than two categories in the discovery split"
        )
    model = make_classifier(config, seed).fit(vectors[train], labels[train])
    classes = sorted(int(c) for c in np.unique(labels[train]))
    metrics: dict = {"train_rows": int(train.sum())}
    report = ""
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for name in ("validation", "evaluation"):
        mask = usable & (split == name)
        metrics[f"{name}_rows"] = int(mask.sum())
        if not mask.any():
            continue
        predicted = model.predict(vectors[mask])
        metrics[f"{name}_accuracy"] = float(accuracy_score(labels[mask], predicted))
        metrics[f"{name}_macro_f1"] = float(
            f1_score(
                labels[mask],
                predicted,
                average="macro",
                labels=classes,
                zero_division=0,
            )
        )
        if name == "evaluation":
            report = classification_report(
                labels[mask], predicted, labels=classes, zero_division=0
            )
            matrix = confusion_matrix(labels[mask], predicted, labels=classes)
    return model, metrics, report, matrix, classes


def training_rows(
    assignments: pd.DataFrame, config: TrainingConfig, seed: int
) -> np.ndarray:
    """Positions of the tweets ``train_and_evaluate`` uses: the discovery tweets
    it fits on (the same seeded sample) and every validation and evaluation
    tweet with a category, in order."""
    labels = assignments["cluster_id"].to_numpy()
    split = assignments["split"].to_numpy()
    usable = labels >= 0
    train = usable & (split == "discovery")
    if 0 < config.sample < int(train.sum()):
        rows = np.flatnonzero(train)
        keep = np.random.default_rng(seed).choice(
            len(rows), config.sample, replace=False
        )
        train = np.zeros_like(train)
        train[rows[keep]] = True
    return np.flatnonzero(train | (usable & (split != "discovery")))


def gather_rows(
    store: ArtifactStore, features: ArtifactRef, rows: np.ndarray
) -> pd.DataFrame:
    """The features frame's rows at ``rows`` (sorted positions), read in chunks."""
    parts, start = [], 0
    for chunk in store.iter_frames(features, rows=100_000):
        stop = start + len(chunk)
        inside = rows[(rows >= start) & (rows < stop)] - start
        parts.append(chunk.iloc[inside])
        start = stop
    return pd.concat(parts, ignore_index=True)


def confusion_record(matrix: np.ndarray, classes: list[int]) -> dict:
    """The evaluation confusion matrix as JSON (publishing draws it with names)."""
    return {"classes": [int(c) for c in classes], "matrix": np.asarray(matrix).tolist()}


class TrainingOutput(BaseModel):
    """References and metrics produced by the training stage."""

    model_config = ConfigDict(frozen=True)

    model: ArtifactRef
    metrics: dict[str, float]


@stage_task(STAGE)
def train(
    features: ArtifactRef,
    assignments: ArtifactRef,
    config: TrainingConfig,
    seed: int,
    *,
    artifacts_dir: str,
) -> TrainingOutput:
    """Train the classifier on the pseudo-labels and write its evaluation."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    labelled = store.get_frame(assignments, columns=["tweet_id", "split", "cluster_id"])
    rows = training_rows(labelled, config, seed)
    model, metrics, report, matrix, classes = train_and_evaluate(
        gather_rows(store, features, rows),
        labelled.iloc[rows].reset_index(drop=True),
        config,
        seed,
    )
    staging = store.staging_dir(STAGE)
    import joblib

    joblib.dump(model, staging / CLASSIFIER_FILE)
    (staging / METRICS_FILE).write_text(
        json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    )
    (staging / REPORT_FILE).write_text(report)
    (staging / CONFUSION_FILE).write_text(
        json.dumps(confusion_record(matrix, classes)) + "\n"
    )
    ref = store.commit_dir(staging, STAGE, {"config": config.model_dump(mode="json")})
    logger.info(
        "training: %s on %d discovery tweets; validation accuracy %.3f, evaluation "
        "accuracy %.3f, evaluation macro-F1 %.3f (agreement with KMeans) (%.2fs)",
        config.classifier,
        metrics["train_rows"],
        metrics.get("validation_accuracy", float("nan")),
        metrics.get("evaluation_accuracy", float("nan")),
        metrics.get("evaluation_macro_f1", float("nan")),
        time.perf_counter() - started,
    )
    return TrainingOutput(model=ref, metrics={k: float(v) for k, v in metrics.items()})
