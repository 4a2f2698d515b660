"""Model-layer tests: category quality on every labelled corpus.

The real retrain flow runs with default settings (seeded, deterministic) on the
bundled corpus (six collection subjects, labelled by keyword rules) and on the
US airline complaints from the shared data folder, and the pseudo-labels are
scored the way ``make quality`` scores them (bench/quality.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.quality import (
    airline_corpus,
    bundled_corpus,
    cluster_prf,
    evaluate,
    partition_scores,
)


def test_cluster_precision_recall_f1_on_hand_made_partitions() -> None:
    same = cluster_prf(np.array(list("aabb")), np.array([0, 0, 1, 1]))
    assert same == pytest.approx((1.0, 1.0, 1.0))
    # One cluster for everything: precision is the largest class's share.
    p, r, f = cluster_prf(np.array(list("aaab")), np.array([0, 0, 0, 0]))
    assert (p, r) == pytest.approx((0.75, 1.0))
    assert f == pytest.approx(2 * 0.75 / 1.75)
    # One cluster per tweet: perfect precision, recall is 1 / class size.
    p, r, _ = cluster_prf(np.array(list("aabb")), np.array([0, 1, 2, 3]))
    assert (p, r) == pytest.approx((1.0, 0.5))
    # Roles are not symmetric: clusters {a,a} {a,b,b,c}; classes a, b, c.
    p, r, f = cluster_prf(np.array(list("aaabbc")), np.array([0, 0, 1, 1, 1, 1]))
    assert (p, r) == pytest.approx((4 / 6, 5 / 6))
    assert f == pytest.approx(2 * (4 / 6) * (5 / 6) / (9 / 6))
    # Labels are names, not numbers: renaming clusters changes nothing.
    renamed = partition_scores(np.array(list("aaabbc")), np.array([7, 7, 3, 3, 3, 3]))
    assert renamed["f1"] == pytest.approx(100 * f)
    assert renamed["nmi"] == pytest.approx(
        partition_scores(np.array(list("aaabbc")), np.array([0, 0, 1, 1, 1, 1]))["nmi"]
    )


@pytest.fixture(scope="module")
def airline() -> object:
    corpus = airline_corpus()
    if corpus is None:
        pytest.skip("the shared data folder with us_airline_tweets.csv is absent")
    return corpus


@pytest.mark.flow
def test_bundled_corpus_finds_its_six_subjects_with_automatic_k(
    prefect_api, tmp_path
) -> None:
    row = evaluate(bundled_corpus(), "auto", artifacts=tmp_path)
    assert row["k"] == 6
    assert row["nmi"] >= 0.95, row
    # Each subject dominates one cluster of its own.
    from bench.quality import _source_rows, clusters_of_rows
    from bench.subjects import label_subjects

    rows = _source_rows(bundled_corpus())
    run = sorted((tmp_path / "runs").iterdir())[-1]
    labels = pd.read_parquet(run / "pseudo_labels.parquet")
    table = pd.crosstab(label_subjects(rows["text"]), clusters_of_rows(rows, labels))
    purity = table.max(axis=1) / table.sum(axis=1)
    assert (purity > 0.9).all(), purity.to_dict()
    assert table.idxmax(axis=1).is_unique
    # Names: the curated map names every subject's cluster.
    assert set(row["categories"].values()) >= {
        "Airline customer service",
        "NFL DeflateGate",
        "Self-driving cars",
        "Coachella festival",
        "Apple",
        "Allergy medicine (Claritin)",
    }


@pytest.mark.flow
def test_airline_complaints_with_k_given(prefect_api, airline) -> None:
    row = evaluate(airline, 9)
    assert row["scored"] == 7988
    assert row["nmi"] >= 0.25, row
    assert row["f1"] >= 52, row
    # The curated map was written for the bundled corpus: none of its names fits
    # these clusters, which are named by their own words instead.
    assert "Airline customer service" not in row["categories"].values()


@pytest.mark.flow
def test_airline_complaints_with_automatic_k(prefect_api, airline) -> None:
    row = evaluate(airline, "auto")
    assert 6 <= row["k"] <= 18, row
    assert row["nmi"] >= 0.22, row
