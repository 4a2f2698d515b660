"""Training and evaluation on synthetic vectors: what is fitted, what is scored,
and the errors for inputs that cannot make a classifier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.infra.errors import InsufficientDataError
from tasks.stages.training import TrainingConfig, train_and_evaluate

DIMS = 8


def synthetic(per_class: int = 40, classes: int = 3, seed: int = 0):
    """Well separated classes; every split holds every class; a few unknown rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(classes, DIMS))
    labels = np.repeat(np.arange(classes), per_class)
    vectors = centres[labels] + rng.normal(0, 0.3, size=(len(labels), DIMS))
    split = np.resize(
        np.array(["discovery"] * 3 + ["validation", "evaluation"]), len(labels)
    )
    labels = labels.copy()
    labels[:2] = -1  # no known words: no category
    ids = [f"t{i}" for i in range(len(labels))]
    features = pd.DataFrame(
        vectors.astype(np.float32), columns=[f"f{i:03d}" for i in range(DIMS)]
    )
    features.insert(0, "tweet_id", ids)
    assignments = pd.DataFrame({"tweet_id": ids, "cluster_id": labels, "split": split})
    return features, assignments


@pytest.mark.parametrize(
    "classifier", ["logistic_regression", "linear_svc", "random_forest"]
)
def test_fits_on_discovery_and_scores_validation_and_evaluation(
    classifier: str,
) -> None:
    features, assignments = synthetic()
    model, metrics, report, matrix, classes = train_and_evaluate(
        features, assignments, TrainingConfig(classifier=classifier), seed=0
    )
    known = assignments["cluster_id"] >= 0
    for split in ("discovery", "validation", "evaluation"):
        rows = int((known & (assignments["split"] == split)).sum())
        key = "train_rows" if split == "discovery" else f"{split}_rows"
        assert metrics[key] == rows, split
    assert classes == [0, 1, 2]
    assert metrics["validation_accuracy"] == 1.0
    assert metrics["evaluation_macro_f1"] == 1.0
    assert matrix.sum() == metrics["evaluation_rows"]
    assert np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0
    assert "precision" in report
    assert set(model.classes_) == {0, 1, 2}  # the unknown rows were left out


def test_scores_fall_when_the_labels_do_not_follow_the_vectors() -> None:
    features, assignments = synthetic(per_class=60)
    rng = np.random.default_rng(1)
    shuffled = assignments.copy()
    known = shuffled["cluster_id"] >= 0
    shuffled.loc[known, "cluster_id"] = rng.permutation(
        shuffled.loc[known, "cluster_id"].to_numpy()
    )
    _, metrics, *_ = train_and_evaluate(features, shuffled, TrainingConfig(), seed=0)
    assert metrics["evaluation_accuracy"] < 0.7


def test_a_split_without_rows_is_counted_and_not_scored() -> None:
    features, assignments = synthetic()
    assignments["split"] = assignments["split"].replace("validation", "discovery")
    _, metrics, *_ = train_and_evaluate(features, assignments, TrainingConfig(), seed=0)
    assert metrics["validation_rows"] == 0
    assert "validation_accuracy" not in metrics
    assert "evaluation_accuracy" in metrics


def test_features_and_assignments_must_be_aligned() -> None:
    features, assignments = synthetic()
    with pytest.raises(ValueError, match="not aligned"):
        train_and_evaluate(
            features,
            assignments.iloc[::-1].reset_index(drop=True),
            TrainingConfig(),
            seed=0,
        )


def test_one_category_cannot_make_a_classifier() -> None:
    features, assignments = synthetic()
    assignments["cluster_id"] = np.where(assignments["cluster_id"] >= 0, 0, -1)
    with pytest.raises(InsufficientDataError, match="fewer than two categories"):
        train_and_evaluate(features, assignments, TrainingConfig(), seed=0)


def test_the_same_seed_gives_the_same_model() -> None:
    features, assignments = synthetic()
    config = TrainingConfig(classifier="random_forest", n_estimators=20)
    vectors = features.filter(like="f0").to_numpy(np.float32)
    first = train_and_evaluate(features, assignments, config, seed=3)[0]
    second = train_and_evaluate(features, assignments, config, seed=3)[0]
    assert np.array_equal(first.predict_proba(vectors), second.predict_proba(vectors))


def test_the_classifier_fits_a_seeded_sample_of_a_large_discovery_split() -> None:
    features, assignments = synthetic(per_class=100)
    config = TrainingConfig(sample=50)
    _, metrics, *_ = train_and_evaluate(features, assignments, config, seed=0)
    assert metrics["train_rows"] == 50
    whole = (assignments["split"] == "validation") & (assignments["cluster_id"] >= 0)
    assert metrics["validation_rows"] == int(whole.sum())  # scored in full
    again = train_and_evaluate(features, assignments, config, seed=0)[1]
    assert again == metrics
