"""Publishing without a flow: the pseudo-label table, the per-category table,
which labels names carry over from, and the row accounting of a run."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from data_contracts.validation import ContractViolation
from tasks.infra.store import ArtifactRef
from tasks.ml.bundle import Category
from tasks.release.publishing import (
    StageOutputs,
    cluster_table,
    naming_basis,
    pseudo_label_frame,
    run_counts,
)


def category(cluster_id: int, name: str, origin: str = "terms") -> Category:
    return Category(
        cluster_id=cluster_id,
        category=name,
        origin=origin,
        is_new=False,
        top_terms=name.split(" / "),
    )


CATEGORIES = [
    category(0, "refund / money"),
    category(1, "delay / flight"),
    category(-1, "no known words", "none"),
]
PREPARED = pd.DataFrame(
    {
        "tweet_id": ["a", "b", "c", "d", "e"],
        "split": ["discovery", "discovery", "validation", "evaluation", "discovery"],
        "text": ["refund me", "money back", "flight late", "delayed again", "zzz"],
    }
)
ASSIGNMENTS = pd.DataFrame(
    {
        "tweet_id": ["a", "b", "c", "d", "e"],
        "cluster_id": [0, 0, 1, 1, -1],
        "distance": [0.5, 0.1, 0.2, 0.3, 0.0],
    }
)


def test_every_accepted_tweet_gets_its_cluster_and_category_name() -> None:
    frame = pseudo_label_frame(PREPARED, ASSIGNMENTS, CATEGORIES)
    assert list(frame.columns) == [
        "tweet_id",
        "split",
        "text",
        "cluster_id",
        "category",
    ]
    assert frame.set_index("tweet_id")["category"].to_dict() == {
        "a": "refund / money",
        "b": "refund / money",
        "c": "delay / flight",
        "d": "delay / flight",
        "e": "no known words",
    }
    assert frame["cluster_id"].dtype == "int64"


def test_a_tweet_without_a_cluster_is_an_error_not_a_dropped_row() -> None:
    with pytest.raises(ValueError, match="no cluster assignment"):
        pseudo_label_frame(PREPARED, ASSIGNMENTS.iloc[:4], CATEGORIES)


def test_a_cluster_without_a_name_breaks_the_pseudo_labels_contract() -> None:
    with pytest.raises(ContractViolation):
        pseudo_label_frame(PREPARED, ASSIGNMENTS, CATEGORIES[:1])


def test_the_cluster_table_counts_shares_and_shows_the_most_central_tweets() -> None:
    labels = pseudo_label_frame(PREPARED, ASSIGNMENTS, CATEGORIES)
    rows = {
        r["cluster_id"]: r for r in cluster_table(labels, ASSIGNMENTS, CATEGORIES, 1)
    }
    assert rows[0]["tweets"] == 2 and rows[0]["share"] == 0.4
    assert rows[0]["examples"] == "money back"  # distance 0.1 beats 0.5
    assert rows[1]["examples"] == "flight late"
    assert rows[-1]["tweets"] == 1 and rows[-1]["name_from"] == "none"
    assert sum(r["tweets"] for r in rows.values()) == len(PREPARED)


def test_an_empty_no_known_words_group_is_left_out_of_the_table() -> None:
    assignments = ASSIGNMENTS.assign(cluster_id=[0, 0, 1, 1, 1])
    labels = pseudo_label_frame(PREPARED, assignments, CATEGORIES)
    table = cluster_table(labels, assignments, CATEGORIES)
    assert [r["cluster_id"] for r in table] == [0, 1]


def ref(name: str) -> dict:
    return ArtifactRef(uri=f"file:///{name}", sha256=name * 8).model_dump()


def test_names_carry_over_from_the_previous_labels_unless_clustering_is_unchanged() -> (
    None
):
    previous = {
        "refs": {"clustering_model": ref("c1"), "pseudo_labels": ref("l1")},
        "naming_basis": ref("l0"),
    }
    assert naming_basis(None, "c1c1") is None
    # A new clustering: name it after the previous run's labels.
    assert naming_basis(previous, "other").uri == "file:///l1"
    # The same clustering: reuse the previous run's own basis, so names repeat.
    assert naming_basis(previous, "c1" * 8).uri == "file:///l0"
    first = {**previous, "naming_basis": None}
    assert naming_basis(first, "c1" * 8) is None


def outputs(**ingestion: int) -> StageOutputs:
    """Stage outputs holding just the figures ``run_counts`` reads."""
    ing = {
        "rows_read": 14,
        "outbound_skipped": 2,
        "replies_read": 2,
        "replies_linked": 2,
        "replies_unlinked": {},
        **ingestion,
    }
    return StageOutputs.model_construct(
        ingestion=SimpleNamespace(**ing),
        preparation=SimpleNamespace(
            duplicates_removed=3,
            split_counts={"discovery": 4, "validation": 2, "evaluation": 1},
        ),
        features=SimpleNamespace(no_known_words=1),
    )


QUARANTINE = pd.DataFrame({"tweet_id": ["q"], "n_replies": [1]})


def test_run_counts_account_for_every_row_and_reply() -> None:
    counts = run_counts(outputs(), 6, 1, QUARANTINE, {"tweets_with_reply_view": 1})
    # 14 rows read = 2 brand tweets skipped + 2 replies + 10 customer tweets;
    # the 10 are 6 accepted + 1 quarantined + 3 duplicates; the 2 replies sit
    # with an accepted tweet and with the quarantined one.
    assert counts["rows_read"] == 10
    assert counts["quarantined"] == 1 and counts["replies_with_quarantined"] == 1
    assert counts["discovery_rows"] == 4 and counts["evaluation_rows"] == 1


def test_run_counts_refuse_a_lost_row() -> None:
    with pytest.raises(RuntimeError, match="row accounting does not add up"):
        run_counts(outputs(), 5, 1, QUARANTINE, {"tweets_with_reply_view": 1})


def test_run_counts_refuse_a_lost_reply() -> None:
    with pytest.raises(RuntimeError, match="reply accounting does not add up"):
        run_counts(
            outputs(rows_read=15, replies_read=3),  # one reply neither linked nor not
            6,
            1,
            QUARANTINE,
            {"tweets_with_reply_view": 1},
        )
