"""Unit tests of category naming: curated map, carry-over across retrains."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.stages.categories import (
    CategoryMap,
    CategoryMapError,
    load_category_map,
    name_clusters,
)


def clusters() -> list[dict]:
    return [
        {
            "cluster_id": 0,
            "top_terms": ["claritin", "allergies", "zyrtec"],
            "term_scores": [3, 2, 1],
        },
        {
            "cluster_id": 1,
            "top_terms": ["flight", "@united", "delayed"],
            "term_scores": [3, 2, 1],
        },
        {
            "cluster_id": 2,
            "top_terms": ["lineup", "weekend", "drake"],
            "term_scores": [3, 2, 1],
        },
    ]


def assignments(mapping: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame(
        {"tweet_id": list(mapping), "cluster_id": list(mapping.values())}
    )


def test_curated_map_names_matching_clusters_only() -> None:
    cmap = CategoryMap.model_validate(
        {
            "min_hits": 2,
            "categories": [
                {"name": "Airlines", "terms": ["flight", "@united", "bag"]},
                {"name": "Allergy", "terms": ["claritin", "allergies"]},
                {"name": "Apple", "terms": ["iphone", "@apple"]},
            ],
        }
    )
    names = {
        c.cluster_id: (c.category, c.origin)
        for c in name_clusters(clusters(), assignments({}), cmap, None, 0.5)
    }
    assert names[0] == ("Allergy", "curated")
    assert names[1] == ("Airlines", "curated")
    assert names[2] == ("lineup / weekend / drake", "terms")
    assert names[-1][1] == "none"


def test_names_follow_the_same_tweets_across_retrains() -> None:
    # Previous run: tweets a* were "Festival", b* were "Airlines". The new run's
    # cluster ids are permuted (and centroids live in another vector space).
    previous = pd.DataFrame(
        {
            "tweet_id": ["a1", "a2", "a3", "b1", "b2", "b3"],
            "cluster_id": [0, 0, 0, 1, 1, 1],
            "category": ["Festival"] * 3 + ["Airlines"] * 3,
        }
    )
    new = assignments({"a1": 2, "a2": 2, "a3": 2, "b1": 1, "b2": 1, "b3": 0, "c1": 0})
    names = {
        c.cluster_id: c for c in name_clusters(clusters(), new, None, previous, 0.5)
    }
    assert names[2].category == "Festival" and names[2].origin == "previous"
    assert names[1].category == "Airlines" and not names[1].is_new
    assert names[0].origin == "terms" and names[0].is_new


def test_carry_over_requires_a_majority() -> None:
    previous = pd.DataFrame(
        {
            "tweet_id": ["a1", "a2", "a3", "a4"],
            "cluster_id": [0, 0, 1, 1],
            "category": ["X", "X", "Y", "Y"],
        }
    )
    new = assignments({"a1": 1, "a3": 1, "a2": 0, "a4": 2})
    names = {
        c.cluster_id: c for c in name_clusters(clusters(), new, None, previous, 0.6)
    }
    assert names[1].origin == "terms"


def test_category_map_file_errors(tmp_path: Path) -> None:
    assert load_category_map(None) is None
    with pytest.raises(CategoryMapError, match="does not exist"):
        load_category_map(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories:\n  - name: X\n")
    with pytest.raises(CategoryMapError, match="invalid"):
        load_category_map(str(bad))
    assert load_category_map("config/categories.yaml").categories
