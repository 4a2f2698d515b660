"""Clustering: discover categories (pseudo-labels) with KMeans and name them.

The number of clusters is chosen by silhouette over a range unless given. Each
cluster is described by its most distinctive words; names come, in order of
precedence, from the human-curated category map, from the previous run's
categories of the same tweets (Hungarian matching on the contingency table, since
two Word2Vec spaces are arbitrarily rotated and centroids cannot be compared), or
from the cluster's own top words.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from threadpoolctl import threadpool_limits

from tasks.caching import stage_task
from tasks.embedding import doc_term_matrix
from tasks.errors import InsufficientDataError
from tasks.features import vectors_of
from tasks.store import ArtifactRef, ArtifactStore

STAGE = "clustering"
NO_WORDS_CLUSTER = -1
NO_WORDS_CATEGORY = "unknown (no known words)"
CLUSTERS_FILE = "clusters.json"
CENTROIDS_FILE = "centroids.npy"
PROJECTION_PLOT = "clusters_2d.png"


class ClusteringConfig(BaseModel):
    """KMeans pseudo-labelling settings."""

    model_config = ConfigDict(extra="forbid")

    n_clusters: int | Literal["auto"] = Field(
        "auto",
        description="Number of categories, or 'auto' to choose it by silhouette "
        "between k_min and k_max.",
    )
    k_min: int = Field(2, ge=2, le=50, description="Smallest k tried when automatic.")
    k_max: int = Field(12, ge=2, le=50, description="Largest k tried when automatic.")
    selection_sample: int = Field(
        6000,
        ge=50,
        description="Discovery tweets sampled to fit each candidate k.",
    )
    silhouette_sample: int = Field(
        4000,
        ge=50,
        description="Tweets of that sample scored by silhouette (quadratic cost).",
    )
    n_init: int = Field(
        10, ge=1, le=50, description="KMeans restarts; the best is kept."
    )
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description="BLAS/OpenMP threads for KMeans; on small fits one is fastest.",
    )
    top_terms: int = Field(
        10, ge=1, le=50, description="Distinctive words kept per cluster."
    )
    min_term_count: int = Field(
        5, ge=1, description="Words rarer than this in a cluster are not distinctive."
    )
    carry_over_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A cluster inherits a previous category's name when at least "
        "this share of its tweets had that category in the previous run.",
    )

    @model_validator(mode="after")
    def _range(self) -> ClusteringConfig:
        if self.k_min > self.k_max:
            raise ValueError("k_min must not exceed k_max")
        return self


def choose_k(
    vectors: np.ndarray, config: ClusteringConfig, seed: int
) -> tuple[int, dict[int, float], dict[int, np.ndarray], np.ndarray]:
    """Pick k by the best silhouette, fitting each candidate on a sample.

    Returns (k, silhouette per k, centroids per k, sample row indices). Each
    candidate gets ``n_init`` restarts: with few restarts KMeans sometimes
    settles in a poor partition at the right k and the choice goes astray.
    """
    rng = np.random.default_rng(seed)
    n = len(vectors)
    rows = rng.choice(n, size=min(n, config.selection_sample), replace=False)
    sample = vectors[rows]
    scored = rng.choice(
        len(sample), size=min(len(sample), config.silhouette_sample), replace=False
    )
    scores: dict[int, float] = {}
    centroids: dict[int, np.ndarray] = {}
    for k in range(config.k_min, min(config.k_max, len(sample) - 1) + 1):
        model = KMeans(k, n_init=config.n_init, random_state=seed).fit(sample)
        labels = model.labels_[scored]
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(sample[scored], labels))
        centroids[k] = model.cluster_centers_
    if not scores:
        raise InsufficientDataError(
            f"clustering: too few distinct tweets ({n}) to choose k"
        )
    return max(scores, key=scores.__getitem__), scores, centroids, rows


def distinctive_terms(
    tokens: pd.Series, labels: np.ndarray, k: int, min_count: int, top: int
) -> list[list[tuple[str, float]]]:
    """Per cluster, the words most over-represented in it (pointwise KL score)."""
    vocab = pd.Index(pd.unique(tokens.str.split(" ").explode().dropna()))
    vocab = vocab[vocab != ""]
    counts = doc_term_matrix(tokens, vocab).tocsc()
    onehot = np.zeros((len(labels), k), dtype=np.float32)
    valid = labels >= 0
    onehot[np.flatnonzero(valid), labels[valid]] = 1.0
    per_cluster = np.asarray((counts.T @ onehot).T)  # (k, V)
    total = per_cluster.sum(axis=0) + 1e-9
    p_w = total / total.sum()
    p_wc = per_cluster / (per_cluster.sum(axis=1, keepdims=True) + 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(
            per_cluster >= min_count, p_wc * np.log(np.maximum(p_wc, 1e-12) / p_w), 0.0
        )
    result = []
    for c in range(k):
        order = np.argsort(-score[c])[:top]
        result.append(
            [(str(vocab[i]), float(score[c, i])) for i in order if score[c, i] > 0]
        )
    return result


def fit_clusters(
    features: pd.DataFrame, tokens: pd.Series, config: ClusteringConfig, seed: int
) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """KMeans on discovery tweets; returns (assignments, description, centroids)."""
    vectors = vectors_of(features)
    has_words = features["n_known"].to_numpy() > 0
    discovery = features["split"].eq("discovery").to_numpy() & has_words
    train = vectors[discovery]
    if len(train) < 10:
        raise InsufficientDataError(
            f"clustering: only {len(train)} discovery tweets have known words; "
            "at least 10 are needed"
        )
    with threadpool_limits(config.threads):
        if config.n_clusters == "auto":
            k, scores, centroids, rows = choose_k(train, config, seed)
            # Refine the sample's partition on every discovery tweet.
            model = KMeans(k, init=centroids[k], n_init=1, random_state=seed).fit(train)
        else:
            k, scores = int(config.n_clusters), {}
            if k > len(train):
                raise InsufficientDataError(
                    f"clustering: k={k} exceeds {len(train)} discovery tweets"
                )
            rows = np.random.default_rng(seed).choice(
                len(train), size=min(len(train), config.selection_sample), replace=False
            )
            model = KMeans(k, n_init=config.n_init, random_state=seed).fit(train)
        labels = np.full(len(features), NO_WORDS_CLUSTER, dtype=np.int64)
        distance = np.full(len(features), np.nan)
        all_distances = model.transform(vectors[has_words])
        labels[has_words] = all_distances.argmin(axis=1)
        distance[has_words] = all_distances.min(axis=1)
        scored = rows[: config.silhouette_sample]
        silhouette = float(silhouette_score(train[scored], model.labels_[scored]))
        # Stability: an independent KMeans (other seed, other sample) at the same
        # k, compared with this partition on every discovery tweet.
        other = np.random.default_rng(seed + 1).choice(
            len(train), size=len(rows), replace=False
        )
        rerun = KMeans(k, n_init=config.n_init, random_state=seed + 1).fit(train[other])
        stability = float(adjusted_rand_score(model.labels_, rerun.predict(train)))
    terms = distinctive_terms(
        tokens[discovery].reset_index(drop=True),
        model.labels_,
        k,
        config.min_term_count,
        config.top_terms,
    )
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    description = {
        "k": k,
        "k_selection": {str(key): value for key, value in scores.items()},
        "silhouette": silhouette,
        "stability_ari": stability,
        "inertia": float(model.inertia_),
        "clusters": [
            {
                "cluster_id": c,
                "size": int(sizes[c]),
                "top_terms": [t for t, _ in terms[c]],
                "term_scores": [round(s, 6) for _, s in terms[c]],
            }
            for c in range(k)
        ],
        "no_known_words": int((~has_words).sum()),
    }
    assignments = pd.DataFrame(
        {
            "tweet_id": features["tweet_id"].astype("str").to_numpy(),
            "split": features["split"].astype("str").to_numpy(),
            "cluster_id": labels,
            "distance": distance,
        }
    ).astype({"tweet_id": "str", "split": "str"})
    return assignments, description, model.cluster_centers_.astype(np.float32)


def projection_plot(
    vectors: np.ndarray,
    labels: np.ndarray,
    path: Path,
    seed: int,
    names: dict[int, str] | None = None,
) -> None:
    """Save a 2-D PCA projection of a sample of tweets, coloured by cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(vectors), size=min(len(vectors), 4000), replace=False)
    points = PCA(2, random_state=seed).fit_transform(vectors[idx])
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    present = np.unique(labels[idx])
    palette = plt.get_cmap("tab10" if len(present) <= 10 else "tab20")
    for i, cluster_id in enumerate(present):
        members = labels[idx] == cluster_id
        label = f"{cluster_id}: {(names or {}).get(int(cluster_id), '')}".rstrip(": ")
        ax.scatter(*points[members].T, s=4, color=palette(i % palette.N), label=label)
    ax.legend(title="cluster: top words", loc="best", fontsize=7, markerscale=3)
    ax.set_title("Tweets by discovered cluster (PCA of document vectors)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class ClusteringOutput(BaseModel):
    """References and figures produced by the clustering stage."""

    model_config = ConfigDict(frozen=True)

    assignments: ArtifactRef
    model: ArtifactRef
    k: int
    silhouette: float
    stability_ari: float


@stage_task(STAGE, ["tasks.clustering", "tasks.embedding", "tasks.features"])
def cluster(
    features: ArtifactRef,
    preprocessed: ArtifactRef,
    config: ClusteringConfig,
    seed: int,
    artifacts_dir: str,
) -> ClusteringOutput:
    """Pseudo-label tweets with KMeans and describe each cluster."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    frame = store.get_frame(features)
    tokens = store.get_frame(preprocessed, columns=["tweet_id", "tokens"])
    if not tokens["tweet_id"].equals(frame["tweet_id"]):
        raise ValueError("clustering: features and preprocessed tweets are not aligned")
    assignments, description, centroids = fit_clusters(
        frame, tokens["tokens"], config, seed
    )
    staging = store.staging_dir(STAGE)
    np.save(staging / CENTROIDS_FILE, centroids, allow_pickle=False)
    (staging / CLUSTERS_FILE).write_text(json.dumps(description, indent=2) + "\n")
    has_words = assignments["cluster_id"].to_numpy() >= 0
    projection_plot(
        vectors_of(frame)[has_words],
        assignments["cluster_id"].to_numpy()[has_words],
        staging / PROJECTION_PLOT,
        seed,
        {
            c["cluster_id"]: " / ".join(c["top_terms"][:3])
            for c in description["clusters"]
        },
    )
    model = store.commit_dir(staging, STAGE)
    ref = store.put_frame(assignments, STAGE, "cluster_assignments")
    logger.info(
        "clustering: %d tweets in, k=%d (%s), silhouette %.3f, stability ARI %.3f, "
        "sizes %s, %d tweets with no known words (%.2fs)",
        len(frame),
        description["k"],
        "chosen by silhouette" if config.n_clusters == "auto" else "given",
        description["silhouette"],
        description["stability_ari"],
        [c["size"] for c in description["clusters"]],
        description["no_known_words"],
        time.perf_counter() - started,
    )
    if description["k_selection"]:
        logger.debug("clustering: silhouette per k %s", description["k_selection"])
    return ClusteringOutput(
        assignments=ref,
        model=model,
        k=description["k"],
        silhouette=description["silhouette"],
        stability_ari=description["stability_ari"],
    )
