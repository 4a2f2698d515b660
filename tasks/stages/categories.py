"""Category names for discovered clusters, stable across retrains.

Precedence: the human-curated category map (YAML under version control), then
the previous run's category for the same tweets, then the cluster's own most
distinctive words (class-based TF-IDF, 2-4 words, no handles). Matching is
one-to-one (Hungarian assignment) in both cases. A curated name goes only to a
cluster it fits: enough of its terms among the cluster's top words, and most of
the tweets that use its terms inside that cluster (so a map written for one
corpus does not name the clusters of another).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.infra.caching import stage_task
from tasks.infra.errors import InputError
from tasks.infra.lazy import np, pd
from tasks.infra.store import ArtifactRef, ArtifactStore
from tasks.ml.bundle import (
    CLUSTERS_FILE,
    NO_WORDS_CATEGORY,
    NO_WORDS_CLUSTER,
    Category,
)
from tasks.ml.embedding import word_codes

STAGE = "categories"


class CategoryMapError(InputError):
    """The curated category map cannot be read."""


class CuratedCategory(BaseModel):
    """One human-named category and the words that identify it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="The category's name.")
    terms: list[str] = Field(min_length=1, description="Words that identify it.")


class CategoryMap(BaseModel):
    """The curated category map file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_hits: int = Field(
        2, ge=1, description="Identifying words a cluster's top words must contain."
    )
    min_concentration: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Share of the discovery tweets using any of a category's words "
        "that must sit in the cluster it names.",
    )
    categories: list[CuratedCategory] = Field(default_factory=list)


def load_category_map(path: str | None) -> CategoryMap | None:
    """Read and validate a category map YAML file (None when no path is given)."""
    if not path:
        return None
    file = Path(path)
    if not file.is_file():
        raise CategoryMapError(f"category map {path} does not exist")
    try:
        return CategoryMap.model_validate(yaml.safe_load(file.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise CategoryMapError(f"category map {path} is invalid: {first}") from None


class CategoriesConfig(BaseModel):
    """Naming settings: how names carry over from the previous run."""

    model_config = ConfigDict(extra="forbid")

    carry_over_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A cluster inherits a previous category's name when at least "
        "this share of its tweets had that category in the previous run.",
    )


def name_words(cluster: dict) -> list[str]:
    """The words a cluster's name is made of: its TF-IDF terms, else top words."""
    words = cluster.get("name_terms") or [
        t for t in cluster.get("top_terms", []) if not t.startswith("@")
    ]
    return list(dict.fromkeys(words))


def term_name(terms: list[str], width: int = 3) -> str:
    """A readable name from a cluster's most distinctive words (2-4 of them)."""
    return " / ".join(terms[: max(2, min(width, 4))]) if terms else "misc"


def term_concentration(
    tokens: pd.Series,
    labels: np.ndarray,
    k: int,
    cmap: CategoryMap,
    chunk: int = 200_000,
) -> np.ndarray:
    """Per cluster and curated category: the cluster's share of the tweets that
    use any of the category's words (clusters x categories)."""
    shares = np.zeros((k, len(cmap.categories)))
    uses = np.zeros((len(labels), len(cmap.categories)), dtype=bool)
    terms = [pd.Index([t.lower() for t in entry.terms]) for entry in cmap.categories]
    for start in range(0, len(tokens), chunk):
        split = word_codes(tokens.iloc[start : start + chunk])
        row = start + np.repeat(np.arange(split.rows), np.diff(split.offsets))
        for j, wanted in enumerate(terms):
            hit = wanted.get_indexer(split.distinct) >= 0
            uses[row[hit[split.codes]], j] = True
    valid = labels >= 0
    for j in range(len(cmap.categories)):
        per_cluster = np.bincount(labels[uses[:, j] & valid], minlength=k)[:k]
        if per_cluster.sum():
            shares[:, j] = per_cluster / per_cluster.sum()
    return shares


def curated_match(
    clusters: list[dict], cmap: CategoryMap, concentration: np.ndarray | None = None
) -> dict[int, str]:
    """Assign curated names to the clusters they fit.

    A name fits a cluster whose top words contain ``min_hits`` of its terms and,
    when ``concentration`` (clusters x categories, see ``term_concentration``) is
    given, that holds ``min_concentration`` of the tweets using its terms.
    """
    from scipy.optimize import linear_sum_assignment  # 0.4 s to import: only here

    if not cmap.categories or not clusters:
        return {}
    scores = np.zeros((len(clusters), len(cmap.categories)))
    fits = np.zeros_like(scores, dtype=bool)
    for i, cluster in enumerate(clusters):
        weight = dict(zip(cluster["top_terms"], cluster["term_scores"]))
        for j, entry in enumerate(cmap.categories):
            found = [t for t in entry.terms if t.lower() in weight]
            scores[i, j] = sum(weight[t.lower()] for t in found)
            fits[i, j] = len(found) >= cmap.min_hits
            if concentration is not None:
                cid = int(cluster["cluster_id"])
                fits[i, j] &= concentration[cid, j] >= cmap.min_concentration
    rows, cols = linear_sum_assignment(-np.where(fits, scores, 0.0))
    return {
        int(clusters[i]["cluster_id"]): cmap.categories[j].name
        for i, j in zip(rows, cols)
        if fits[i, j]
    }


def carried_match(
    assignments: pd.DataFrame, previous: pd.DataFrame, share: float
) -> dict[int, str]:
    """Carry previous categories over to clusters that hold mostly the same tweets."""
    from scipy.optimize import linear_sum_assignment

    joined = assignments[assignments["cluster_id"] >= 0].merge(
        previous[previous["cluster_id"] >= 0][["tweet_id", "category"]], on="tweet_id"
    )
    if joined.empty:
        return {}
    table = pd.crosstab(joined["cluster_id"], joined["category"])
    rows, cols = linear_sum_assignment(-table.to_numpy())
    totals = table.sum(axis=1).to_numpy()
    return {
        int(table.index[i]): str(table.columns[j])
        for i, j in zip(rows, cols)
        if table.iat[i, j] >= share * totals[i]
    }


def name_clusters(
    clusters: list[dict],
    assignments: pd.DataFrame,
    cmap: CategoryMap | None,
    previous: pd.DataFrame | None,
    share: float,
    concentration: np.ndarray | None = None,
) -> list[Category]:
    """Name every cluster (plus the no-known-words bucket), names unique."""
    curated = curated_match(clusters, cmap, concentration) if cmap else {}
    carried = (
        carried_match(assignments, previous, share) if previous is not None else {}
    )
    previous_names = (
        set(previous["category"].unique()) if previous is not None else set()
    )
    used: set[str] = set(curated.values())
    result = []
    for cluster in clusters:
        cid = int(cluster["cluster_id"])
        terms = list(cluster["top_terms"])
        words = name_words(cluster)
        if cid in curated:
            name, origin = curated[cid], "curated"
        elif cid in carried and carried[cid] not in used:
            name, origin = carried[cid], "previous"
        else:
            name, origin = term_name(words), "terms"
            width = 3
            while name in used and width < min(len(words), 4):
                width += 1
                name = term_name(words, width)
            if name in used:
                name = f"{name} ({cid})"
        used.add(name)
        is_new = previous is not None and name not in previous_names
        result.append(
            Category(
                cluster_id=cid,
                category=name,
                origin=origin,
                is_new=is_new,
                top_terms=terms,
            )
        )
    result.append(
        Category(
            cluster_id=NO_WORDS_CLUSTER,
            category=NO_WORDS_CATEGORY,
            origin="none",
            is_new=False,
            top_terms=[],
        )
    )
    return result


@stage_task(STAGE)
def name_categories(
    clustering_model: ArtifactRef,
    assignments: ArtifactRef,
    category_map: CategoryMap | None,
    previous_labels: ArtifactRef | None,
    config: CategoriesConfig,
    preprocessed: ArtifactRef | None = None,
    *,
    artifacts_dir: str,
) -> list[Category]:
    """Give each discovered cluster a category name."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    clusters = json.loads((store.get_dir(clustering_model) / CLUSTERS_FILE).read_text())
    previous = store.get_frame(previous_labels) if previous_labels else None
    labelled = store.get_frame(assignments, columns=["tweet_id", "split", "cluster_id"])
    concentration = None
    if category_map is not None and preprocessed is not None:
        tokens = store.get_frame(preprocessed, columns=["tweet_id", "tokens"])
        if not tokens["tweet_id"].equals(labelled["tweet_id"]):
            raise ValueError("categories: assignments and tokens are not aligned")
        discovery = labelled["split"].eq("discovery").to_numpy()
        concentration = term_concentration(
            tokens["tokens"][discovery],
            labelled["cluster_id"].to_numpy()[discovery],
            int(clusters["k"]),
            category_map,
        )
    names = name_clusters(
        clusters["clusters"],
        labelled[["tweet_id", "cluster_id"]],
        category_map,
        previous,
        config.carry_over_share,
        concentration,
    )
    for c in names:
        if c.cluster_id >= 0:
            logger.info(
                "categories: cluster %d -> %r (%s%s); top words: %s",
                c.cluster_id,
                c.category,
                c.origin,
                ", new" if c.is_new else "",
                ", ".join(c.top_terms[:6]),
            )
    logger.info(
        "categories: named %d clusters (%.2fs)",
        len(names) - 1,
        time.perf_counter() - started,
    )
    return names
