"""Model-layer test: discovery on the whole bundled corpus finds its six subjects.

Runs the stage functions (no Prefect) with the default configuration, choosing
k automatically, and compares the pseudo-labels with the collection subjects
labelled by keyword rules (bench/subjects.py).
"""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.metrics import normalized_mutual_info_score

from bench.subjects import label_subjects
from tasks.clustering import ClusteringConfig, fit_clusters
from tasks.features import FeaturesConfig, feature_frame, fit_embedder
from tasks.preparation import PreparationConfig, prepare_frame
from tasks.preprocessing import PreprocessingConfig, preprocess_frame


@pytest.fixture(scope="module")
def discovered(corpus: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    prepared = prepare_frame(corpus, PreparationConfig()).prepared
    tokens = preprocess_frame(prepared, PreprocessingConfig())
    discovery = tokens.loc[tokens["split"].eq("discovery"), "tokens"]
    embedder = fit_embedder(discovery, FeaturesConfig(), seed=42)
    vectors, n_known = embedder.embed(tokens["tokens"])
    features = feature_frame(tokens, vectors, n_known)
    assignments, description, _ = fit_clusters(
        features, tokens["tokens"], ClusteringConfig(), seed=42
    )
    return assignments.assign(text=prepared["text"].to_numpy()), description


def test_automatic_k_finds_the_six_subjects(discovered) -> None:  # noqa: ANN001
    assignments, description = discovered
    assert description["k"] == 6
    subjects = label_subjects(assignments["text"])
    known = subjects.notna() & assignments["cluster_id"].ge(0)
    assert known.mean() > 0.99
    nmi = normalized_mutual_info_score(
        subjects[known], assignments.loc[known, "cluster_id"]
    )
    assert nmi >= 0.95, nmi


def test_each_subject_dominates_one_cluster(discovered) -> None:  # noqa: ANN001
    assignments, _ = discovered
    subjects = label_subjects(assignments["text"])
    table = pd.crosstab(subjects, assignments["cluster_id"])
    purity = table.max(axis=1) / table.sum(axis=1)
    assert (purity > 0.9).all(), purity.to_dict()
    assert table.idxmax(axis=1).is_unique


def test_clustering_reports_stability_and_silhouette(
    discovered,
) -> None:  # noqa: ANN001
    _, description = discovered
    assert description["stability_ari"] > 0.9
    assert description["silhouette"] > 0.3
    best = max(description["k_selection"], key=description["k_selection"].get)
    assert int(best) == description["k"]
