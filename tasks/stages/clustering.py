"""Clustering: discover categories (pseudo-labels) and describe them.

The discovery tweets' vectors are clustered hierarchically: a sample is first
cut into many small KMeans groups, the groups are merged pairwise by Ward's
criterion (the merge that adds least within-cluster variance first), and the
merged groups at k seed a KMeans refinement on every discovery tweet. The
merge tree gives every candidate k a deterministic start, so the choice of k
does not depend on KMeans restarts, and it gives the criterion for choosing k:
the *Ward merge-cost ratio*, how much more it costs to merge k categories into
k - 1 than it cost to reach k from k + 1. Where categories are distinct, merging
two of them is suddenly expensive; the k with the largest jump (averaged over a
few trees on different samples) is chosen between 5 and 24. Below 5, support
tweets split into a handful of broad groups (thanks, bookings, delays, bags)
that merge intents a team must tell apart.

In customer-support files a tweet that has replies is clustered on its own
vector combined with its replies' vector (the conversation view, weight
``reply_weight``); the classifier later learns from the tweet alone.

Each cluster is described by its most distinctive words (for the curated map)
and by class-based TF-IDF terms (for readable names: stems shown by their most
common form, no handles).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.infra.caching import stage_task
from tasks.infra.errors import InsufficientDataError
from tasks.infra.lazy import np, pd
from tasks.infra.parallel import cores, map_ordered
from tasks.infra.progress import current
from tasks.infra.store import ArtifactRef, ArtifactStore
from tasks.ml.bundle import CENTROIDS_FILE, CLUSTERS_FILE, NO_WORDS_CLUSTER
from tasks.ml.embedding import (
    doc_term_matrix,
    stem_words,
    vector_columns,
    vectors_of_batch,
    word_codes,
)

if TYPE_CHECKING:
    from sklearn.cluster import KMeans

STAGE = "clustering"
PROJECTION_PLOT = "clusters_2d.png"  # drawn by publishing, with names
PROJECTION_FILE = "projection_2d.npz"  # the sample's 2-D points and clusters
K_SELECTION_PLOT = "k_selection.png"
CRITERION = "Ward merge-cost ratio"
MIN_NAME_LIFT = 1.5
VIEW_CHUNK = 100_000  # tweets read, viewed and assigned at a time


class ClusteringConfig(BaseModel):
    """Category discovery settings."""

    model_config = ConfigDict(extra="forbid")

    n_clusters: int | Literal["auto"] = Field(
        "auto",
        description="Number of categories, or 'auto' to choose it between k_min "
        "and k_max by the Ward merge-cost ratio (the k where merging categories "
        "further jumps in cost).",
    )
    k_min: int = Field(5, ge=2, le=100, description="Smallest k tried when automatic.")
    k_max: int = Field(24, ge=2, le=100, description="Largest k tried when automatic.")
    selection_sample: int = Field(
        6000,
        ge=50,
        description="Discovery tweets sampled to build the merge tree that seeds "
        "and chooses k.",
    )
    overclusters: int = Field(
        50,
        ge=3,
        le=500,
        description="Small KMeans groups the sample is first cut into before Ward "
        "merging (raised to k_max + 1 when smaller).",
    )
    fit_sample: int = Field(
        200_000,
        ge=1000,
        description="Discovery tweets the final KMeans is fitted on and the clusters "
        "are described from (a seeded sample when there are more); every tweet is "
        "then assigned to its nearest category.",
    )
    silhouette_sample: int = Field(
        4000,
        ge=50,
        description="Tweets of that sample scored by silhouette (quadratic cost).",
    )
    selection_trees: int = Field(
        3,
        ge=2,
        le=20,
        description="Merge trees, each on its own sample and seed, whose criterion "
        "curves are averaged to choose k (the second also measures stability).",
    )
    n_init: int = Field(
        1, ge=1, le=50, description="Restarts of the first small-group KMeans."
    )
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description="BLAS/OpenMP threads for KMeans; on small fits one is fastest.",
    )
    keep_k_tolerance: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="When k is automatic, the previous run's k is kept if its "
        "criterion is within this share of the best, so categories stay put "
        "across retrains where the criterion cannot tell two k apart.",
    )
    reply_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Weight of a tweet's replies in the vector clustered (the "
        "conversation view of customer-support files); 0 clusters tweets alone. "
        "The classifier always learns from the tweet alone.",
    )
    center_replies: bool = Field(
        False,
        description="Subtract the mean reply vector before combining, so what every "
        "reply says ('sorry', 'DM us') adds nothing. Off: on the real support "
        "threads it lowered the ARI of the categories reaching the airline "
        "complaints (0.186 to 0.183 with k auto, 0.180 to 0.157 with k = 9).",
    )
    top_terms: int = Field(
        10, ge=1, le=50, description="Distinctive words kept per cluster."
    )
    min_term_count: int = Field(
        5, ge=1, description="Words rarer than this in a cluster are not distinctive."
    )

    @model_validator(mode="after")
    def _range(self) -> ClusteringConfig:
        if self.k_min > self.k_max:
            raise ValueError("k_min must not exceed k_max")
        return self


# The merge tree -----------------------------------------------------------------
def ward_merges(
    centroids: np.ndarray, sizes: np.ndarray
) -> list[tuple[int, int, float]]:
    """Merge weighted centroids pairwise by Ward's criterion down to one group.

    Returns the merges in order as (kept group, absorbed group, cost), where the
    cost is the within-group sum of squares the merge adds:
    n_a n_b / (n_a + n_b) * |c_a - c_b|^2.
    """
    c = centroids.astype(np.float64).copy()
    n = sizes.astype(np.float64).copy()
    active = list(range(len(c)))
    merges = []
    while len(active) > 1:
        ids = np.array(active)
        x, w = c[ids], n[ids]
        squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
        cost = w[:, None] * w[None, :] / (w[:, None] + w[None, :]) * squared
        np.fill_diagonal(cost, np.inf)
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        a, b = int(ids[i]), int(ids[j])
        merges.append((a, b, float(cost[i, j])))
        c[a] = (n[a] * c[a] + n[b] * c[b]) / (n[a] + n[b])
        n[a] += n[b]
        active.remove(b)
    return merges


def groups_at(
    merges: list[tuple[int, int, float]], n_groups: int, k: int
) -> np.ndarray:
    """Which of k merged groups each of the ``n_groups`` first groups belongs to."""
    parent = np.arange(n_groups)
    for a, b, _ in merges[: n_groups - k]:
        parent[parent == b] = a
    _, merged = np.unique(parent, return_inverse=True)
    return merged


def merge_cost_ratios(
    merges: list[tuple[int, int, float]], n_groups: int, k_min: int, k_max: int
) -> dict[int, float]:
    """The criterion per k: cost of merging k groups into k-1 over k+1 into k."""
    cost_to = {n_groups - 1 - i: cost for i, (_, _, cost) in enumerate(merges)}
    ratios = {}
    for k in range(max(k_min, 2), min(k_max, n_groups - 1) + 1):
        ratios[k] = float(cost_to[k - 1] / max(cost_to[k], 1e-12))
    return ratios


class MergeTree:
    """Small KMeans groups of a sample and their Ward merge order."""

    def __init__(
        self, sample: np.ndarray, n_groups: int, seed: int, n_init: int
    ) -> None:
        """Cut ``sample`` into ``n_groups`` KMeans groups and merge them by Ward."""
        from sklearn.cluster import KMeans  # imported when used: ~1 s

        self.n_groups = n_groups
        fine = KMeans(n_groups, n_init=n_init, random_state=seed).fit(sample)
        self.centroids = fine.cluster_centers_
        self.sizes = np.bincount(fine.labels_, minlength=n_groups).astype(np.float64)
        self.merges = ward_merges(self.centroids, self.sizes)

    def centres(self, k: int) -> np.ndarray:
        """Size-weighted centres of the k merged groups (KMeans seeds)."""
        merged = groups_at(self.merges, self.n_groups, k)
        return np.vstack(
            [
                np.average(
                    self.centroids[merged == g], axis=0, weights=self.sizes[merged == g]
                )
                for g in range(k)
            ]
        )

    def ratios(self, k_min: int, k_max: int) -> dict[int, float]:
        """The merge-cost ratio for every k in range."""
        return merge_cost_ratios(self.merges, self.n_groups, k_min, k_max)


@dataclass
class Discovery:
    """The partition of the discovery tweets and how it was reached."""

    model: KMeans
    ratios: dict[int, float]  # criterion per candidate k (empty when k is given)
    sample: np.ndarray  # rows of the first merge tree's sample
    stability: float


def merge_trees(
    vectors: np.ndarray, config: ClusteringConfig, seed: int, wanted_groups: int
) -> list[tuple[MergeTree, np.ndarray]]:
    """``selection_trees`` merge trees, each on its own seeded sample."""
    n = min(len(vectors), config.selection_sample)
    trees = []
    progress = current()
    progress.phase(f"merge trees on samples of {n:,}", config.selection_trees)
    for i in range(config.selection_trees):
        progress.update(i, f"tree {i + 1}/{config.selection_trees}")
        rng = np.random.default_rng(seed + 1000 * i)
        rows = np.sort(rng.choice(len(vectors), size=n, replace=False))
        sample = vectors[rows]
        distinct = len(np.unique(sample.round(6), axis=0))
        n_groups = min(wanted_groups, distinct)
        if n_groups < 3:
            raise InsufficientDataError(
                f"clustering: {distinct} distinct discovery tweets are too few to "
                "find categories"
            )
        trees.append(
            (MergeTree(sample, n_groups, seed + 1000 * i, config.n_init), rows)
        )
    return trees


def discover(
    vectors: np.ndarray,
    k: int | None,
    config: ClusteringConfig,
    seed: int,
    keep_k: int | None = None,
) -> Discovery:
    """KMeans on ``vectors`` seeded by merge trees of samples; k chosen if None.

    The criterion per k is the merge-cost ratio averaged over the trees (one
    sample's curve is noisy where categories shade into each other). ``keep_k``
    (the previous run's k) is kept when its criterion is within
    ``keep_k_tolerance`` of the best. The final KMeans starts from the first
    tree's groups at k; stability compares it with the partition the second
    tree leads to, on every tweet.
    """
    low, high = config.k_min, config.k_max
    trees = merge_trees(
        vectors, config, seed, max(config.overclusters, (k or high) + 1)
    )
    n_groups = min(tree.n_groups for tree, _ in trees)
    if k is not None and k >= n_groups:
        raise InsufficientDataError(
            f"clustering: too few distinct discovery tweets ({n_groups} groups) to "
            f"find {k} categories"
        )
    ratios: dict[int, float] = {}
    if k is None:
        curves = [tree.ratios(low, min(high, n_groups - 1)) for tree, _ in trees]
        ratios = {
            key: float(np.mean([curve[key] for curve in curves])) for key in curves[0]
        }
        if not ratios:
            raise InsufficientDataError(
                f"clustering: too few distinct tweets ({n_groups} groups) to choose k"
            )
        k = max(ratios, key=ratios.__getitem__)
        if keep_k in ratios and ratios[keep_k] >= (1 - config.keep_k_tolerance) * (
            ratios[k]
        ):
            k = int(keep_k)
    first, rows = trees[0]
    progress = current()
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    progress.phase(f"KMeans k={k} on {len(vectors):,} tweets", 2)
    model = KMeans(k, init=first.centres(k), n_init=1, random_state=seed).fit(vectors)
    stability = 1.0
    progress.update(1, "stability")
    if len(trees) > 1:
        second, other_rows = trees[1]
        other = KMeans(k, init=second.centres(k), n_init=1, random_state=seed + 1)
        other.fit(vectors[other_rows])
        stability = float(adjusted_rand_score(model.labels_, other.predict(vectors)))
    return Discovery(model, ratios, rows, stability)


# Describing clusters -------------------------------------------------------------
def cluster_word_counts(
    tokens: pd.Series, labels: np.ndarray, k: int, chunk: int = 200_000
) -> tuple[pd.Index, np.ndarray]:
    """Vocabulary of ``tokens`` (in order of first use) and each word's count per
    cluster (k x V)."""
    seen = [
        word_codes(tokens.iloc[start : start + chunk]).distinct
        for start in range(0, len(tokens), chunk)
    ]
    vocab = pd.Index(pd.unique(np.concatenate(seen)) if seen else [], dtype=object)
    vocab = vocab[vocab != ""]
    counts = doc_term_matrix(tokens, vocab, chunk=chunk).tocsc()
    onehot = np.zeros((len(labels), k), dtype=np.float32)
    valid = labels >= 0
    onehot[np.flatnonzero(valid), labels[valid]] = 1.0
    return vocab, np.asarray((counts.T @ onehot).T)


def distinctive_terms(
    tokens: pd.Series,
    labels: np.ndarray,
    k: int,
    min_count: int,
    top: int,
    counted: tuple[pd.Index, np.ndarray] | None = None,
) -> list[list[tuple[str, float]]]:
    """Per cluster, the words most over-represented in it (pointwise KL score).

    ``counted`` is ``cluster_word_counts`` of the same tweets, if already known.
    """
    vocab, per_cluster = counted or cluster_word_counts(tokens, labels, k)
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


def name_terms(
    tokens: pd.Series,
    labels: np.ndarray,
    k: int,
    min_count: int,
    top: int = 4,
    counted: tuple[pd.Index, np.ndarray] | None = None,
) -> list[list[str]]:
    """Per cluster, its most distinctive words by class-based TF-IDF.

    Each cluster is one document: score = tf(word, cluster) * log(1 + A / f(word)),
    A the mean number of words per cluster, f the word's count in all clusters.
    Only words over-represented in the cluster (``MIN_NAME_LIFT`` times their
    share of all words) qualify, so a word every cluster uses ("flight") names
    none. Word forms are pooled by stem and shown in their most common form;
    handles are never names.
    """
    vocab, per_cluster = counted or cluster_word_counts(tokens, labels, k)
    plain = ~np.asarray(vocab.str.startswith("@"), dtype=bool)
    vocab, per_cluster = vocab[plain], per_cluster[:, plain]
    if not len(vocab):
        return [[] for _ in range(k)]
    stems, stem_of = np.unique(
        stem_words(np.asarray(vocab, dtype=object)).astype(str), return_inverse=True
    )
    pooled = np.zeros((k, len(stems)))
    np.add.at(pooled.T, stem_of, per_cluster.T)
    # The most common surface form of each stem names it.
    totals = per_cluster.sum(axis=0)
    order = np.lexsort((-totals, stem_of))
    first = np.unique(stem_of[order], return_index=True)[1]
    shown = np.asarray(vocab)[order][first]
    tf = pooled / np.maximum(pooled.sum(axis=1, keepdims=True), 1.0)
    mean_words = pooled.sum() / max(k, 1)
    idf = np.log(1.0 + mean_words / np.maximum(pooled.sum(axis=0), 1.0))
    lift = tf / np.maximum(pooled.sum(axis=0) / max(pooled.sum(), 1.0), 1e-12)
    score = np.where((pooled >= min_count) & (lift >= MIN_NAME_LIFT), tf * idf, 0.0)
    return [
        [str(shown[i]) for i in np.argsort(-score[c])[:top] if score[c, i] > 0]
        for c in range(k)
    ]


def conversation_view(
    vectors: np.ndarray,
    reply_rows: np.ndarray,
    reply_vectors: np.ndarray,
    weight: float,
    center: bool = False,
    mean: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tweet vectors combined with their replies' (weight ``weight``), normalised.

    ``reply_rows`` are the positions in ``vectors`` of the tweets with a reply
    view, ``reply_vectors`` those views. Returns the vectors to cluster and which
    tweets got their own replies' view. A tweet without replies takes the mean
    reply vector as its second view (the missing view imputed by its mean), so
    every tweet is moved the same way by what all replies share: tweets with and
    without replies are not told apart by that alone. Tweets without a known
    word of their own keep their (zero) vector and their replies are not used.
    With ``center`` the mean reply vector is subtracted first, so only what a
    reply says beyond every reply moves its tweet. ``mean`` is the mean reply
    vector of the whole set when ``vectors`` are a part of it (default: the mean
    of the replies given, see ``reply_sum``).
    """
    with_replies = np.zeros(len(vectors), dtype=bool)
    has_own = row_norms(vectors) > 0
    own = has_own[reply_rows]
    rows, reply_vectors = reply_rows[own], reply_vectors[own]
    if mean is None and len(rows):
        mean = reply_vectors.mean(axis=0, dtype=np.float64)
    if weight <= 0 or mean is None:
        return vectors, with_replies
    if center:
        reply_vectors = reply_vectors - mean.astype(reply_vectors.dtype)
        mean = np.zeros_like(mean)
    with_replies[rows] = True
    # In the vectors' own precision (float32): rows without a word of their own
    # stay zero, as nothing is added to them and 0 / 1e-12 is 0.
    combined = vectors * vectors.dtype.type(1.0 - weight)
    combined[has_own & ~with_replies] += (weight * mean).astype(vectors.dtype)
    combined[rows] += vectors.dtype.type(weight) * reply_vectors
    combined /= np.maximum(row_norms(combined), 1e-12)[:, np.newaxis]
    return combined, with_replies


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row (one pass, no squared copy of the matrix)."""
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors))


def reply_sum(
    vectors: np.ndarray, reply_rows: np.ndarray, reply_vectors: np.ndarray
) -> tuple[np.ndarray, int]:
    """Sum and number of the reply views ``conversation_view`` averages into its
    default ``mean`` (tweets with a known word of their own), to add up parts."""
    own = row_norms(vectors)[reply_rows] > 0
    summed = reply_vectors.sum(axis=0, dtype=np.float64, where=own[:, np.newaxis])
    return summed, int(own.sum())


def describe_fit(
    train: np.ndarray,
    tokens: pd.Series,
    config: ClusteringConfig,
    seed: int,
    keep_k: int | None = None,
) -> tuple[KMeans, dict]:
    """Discover the categories on ``train`` (clustering view vectors of discovery
    tweets, ``tokens`` theirs) and describe them.

    Returns the fitted model and the description: k and how it was chosen,
    silhouette, stability and the distinctive words and names of each cluster.
    ``keep_k`` is the previous run's k, kept when automatic choice finds it as
    good as the best (see ``discover``).
    """
    if len(train) < 10:
        raise InsufficientDataError(
            f"clustering: only {len(train)} discovery tweets have known words; "
            "at least 10 are needed"
        )
    given = None if config.n_clusters == "auto" else int(config.n_clusters)
    if given is not None and given > len(train):
        raise InsufficientDataError(
            f"clustering: k={given} exceeds {len(train)} discovery tweets"
        )
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    with threadpool_limits(config.threads):
        found = discover(train, given, config, seed, keep_k)
        model, ratios = found.model, found.ratios
        scored = found.sample[: config.silhouette_sample]
        silhouette = float(silhouette_score(train[scored], model.labels_[scored]))
    k = model.n_clusters
    current().phase("describing the clusters", 1)
    tokens = tokens.reset_index(drop=True)
    counted = cluster_word_counts(tokens, model.labels_, k)
    terms = distinctive_terms(
        tokens, model.labels_, k, config.min_term_count, config.top_terms, counted
    )
    names = name_terms(tokens, model.labels_, k, config.min_term_count, counted=counted)
    description = {
        "k": k,
        "k_selection": {str(key): value for key, value in ratios.items()},
        "k_criterion": CRITERION if ratios else None,
        "k_best": max(ratios, key=ratios.__getitem__) if ratios else k,
        "k_kept_from_previous_run": bool(ratios) and keep_k == k,
        "silhouette": silhouette,
        "stability_ari": found.stability,
        "inertia": float(model.inertia_),
        "clusters": [
            {
                "cluster_id": c,
                "top_terms": [t for t, _ in terms[c]],
                "term_scores": [round(s, 6) for _, s in terms[c]],
                "name_terms": names[c],
            }
            for c in range(k)
        ],
    }
    return model, description


def fit_sample_rows(eligible: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Positions of the discovery tweets the KMeans is fitted on: every eligible
    one, or a seeded sample of ``size`` in their order."""
    rows = np.flatnonzero(eligible)
    if len(rows) <= size:
        return rows
    rng = np.random.default_rng(seed)
    return rows[np.sort(rng.choice(len(rows), size=size, replace=False))]


def projection_rows(has_words: np.ndarray, seed: int, size: int = 4000) -> np.ndarray:
    """The tweets the 2-D projection plot shows: a seeded sample with words."""
    rows = np.flatnonzero(has_words)
    rng = np.random.default_rng(seed)
    return rows[rng.choice(len(rows), size=min(len(rows), size), replace=False)]


@dataclass
class ViewChunk:
    """A run of consecutive tweets: ids, split, known words, own vectors, and the
    positions (in this chunk) and vectors of their reply views."""

    start: int
    frame: pd.DataFrame  # tweet_id, split, n_known
    own: np.ndarray
    reply_rows: np.ndarray
    reply_vectors: np.ndarray


def tweet_chunks(
    store: ArtifactStore, features: ArtifactRef, replies: ArtifactRef | None
) -> Iterator[ViewChunk]:
    """The tweets ``VIEW_CHUNK`` at a time with their reply views.

    Reply views are stored in the tweets' order with each tweet's row, so the
    two are read side by side, never whole; vectors go from Arrow straight into
    NumPy.
    """
    reply_batches = (
        store.iter_batches(replies, rows=VIEW_CHUNK)
        if replies is not None
        else iter(())
    )
    pending_rows = np.zeros(0, dtype=np.int64)
    pending_vectors = np.zeros((0, 0), dtype=np.float32)
    start = 0
    for batch in store.iter_batches(features, rows=VIEW_CHUNK):
        stop = start + batch.num_rows
        own = vectors_of_batch(batch)
        rows_taken, vectors_taken = [], []
        while True:
            if not len(pending_rows):
                reply_batch = next(reply_batches, None)
                if reply_batch is None:
                    break
                pending_rows = reply_batch.column("row").to_numpy().astype(np.int64)
                pending_vectors = vectors_of_batch(reply_batch, "r")
                continue
            cut = int(np.searchsorted(pending_rows, stop))
            rows_taken.append(pending_rows[:cut])
            vectors_taken.append(pending_vectors[:cut])
            pending_rows, pending_vectors = pending_rows[cut:], pending_vectors[cut:]
            if len(pending_rows):
                break
        rows = (
            np.concatenate(rows_taken) - start
            if rows_taken
            else np.zeros(0, dtype=np.int64)
        )
        if len(rows) and (rows.min() < 0 or not np.all(np.diff(rows) > 0)):
            raise ValueError("clustering: reply views are not in the tweets' order")
        reply_vectors = (
            np.concatenate(vectors_taken)
            if vectors_taken
            else np.zeros((0, own.shape[1]), dtype=np.float32)
        )
        frame = batch.select(["tweet_id", "split", "n_known"]).to_pandas()
        yield ViewChunk(start, frame, own, rows, reply_vectors)
        start = stop
    if len(pending_rows) or next(reply_batches, None) is not None:
        raise ValueError("clustering: reply views are not in the tweets' order")


# Plots ---------------------------------------------------------------------------
def k_selection_plot(
    ratios: dict[int, float],
    chosen: int,
    path: Path,
    kept: bool = False,
    tolerance: float = 0.0,
) -> None:
    """Save the criterion per candidate k, with the chosen k marked.

    When the previous run's k was kept, the band it had to be in is drawn.
    """
    from matplotlib.figure import Figure  # no pyplot: safe beside other threads

    fig = Figure(figsize=(7, 3.6), dpi=100)
    ax = fig.subplots()
    if ratios:
        ks = sorted(ratios)
        values = [ratios[k] for k in ks]
        ax.plot(ks, values, marker="o", markersize=4, color="#4477aa")
        ax.plot([chosen], [ratios[chosen]], marker="o", markersize=10, color="#cc3311")
        if kept:
            floor = (1 - tolerance) * max(values)
            ax.axhline(floor, color="#cc3311", linestyle="--", linewidth=0.8)
            ax.annotate(
                f"within {tolerance:.0%} of the best",
                (ks[0], floor),
                textcoords="offset points",
                xytext=(0, 4),
                color="#cc3311",
                fontsize=8,
            )
        ax.annotate(
            f"chosen k = {chosen}" + (" (the previous run's)" if kept else ""),
            (chosen, ratios[chosen]),
            textcoords="offset points",
            xytext=(8, -4),
            color="#cc3311",
        )
        ax.set_xticks(ks[:: max(1, len(ks) // 15)])
        ax.set_title("Choosing k: jump in merge cost per k (higher = more distinct)")
    else:
        ax.text(0.5, 0.5, f"k = {chosen} was given", ha="center", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("Choosing k")
    ax.set_xlabel("number of categories k")
    ax.set_ylabel(CRITERION)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def projection_2d(points: np.ndarray, seed: int) -> np.ndarray:
    """The sampled tweets' vectors projected on their first two principal axes."""
    from sklearn.decomposition import PCA

    if len(points) < 2:
        return np.zeros((len(points), 2), dtype=np.float32)
    return PCA(2, random_state=seed).fit_transform(points).astype(np.float32)


class ClusteringOutput(BaseModel):
    """References and figures produced by the clustering stage."""

    model_config = ConfigDict(frozen=True)

    assignments: ArtifactRef
    model: ArtifactRef
    k: int
    silhouette: float
    stability_ari: float
    k_selection: dict[int, float] = Field(default_factory=dict)


def keeps_previous_k(
    found: ClusteringOutput, config: ClusteringConfig, previous_k: int | None
) -> bool:
    """Whether the previous run's k is as good as the k chosen (within tolerance).

    Then the flow asks the stage to keep it (a separate, equally cached run), so
    categories do not change number between retrains for nothing.
    """
    if config.n_clusters != "auto" or previous_k in (None, found.k):
        return False
    best = max(found.k_selection.values(), default=0.0)
    return (
        found.k_selection.get(int(previous_k), 0.0)
        >= (1 - config.keep_k_tolerance) * best
    )


def _assign(
    store: ArtifactStore,
    features: ArtifactRef,
    use_replies: ArtifactRef | None,
    model: KMeans,
    mean: np.ndarray | None,
    n: int,
    config: ClusteringConfig,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every tweet's nearest category and its distance (``NO_WORDS_CLUSTER`` and
    NaN without a known word), and how many were viewed with their replies."""
    labels = np.full(n, NO_WORDS_CLUSTER, dtype=np.int64)
    distance = np.full(n, np.nan)
    with_views = 0
    current().phase("assigning every tweet", n, "rows")
    from threadpoolctl import threadpool_limits

    def assign(part: ViewChunk) -> tuple[int, int, np.ndarray, np.ndarray, int]:
        """A chunk's first row and size, which tweets have words, their distances
        to every centre and how many have a reply view (not the vectors: chunks
        waiting to be collected stay small)."""
        view, with_replies = conversation_view(
            part.own,
            part.reply_rows,
            part.reply_vectors,
            config.reply_weight,
            config.center_replies,
            mean,
        )
        words = part.frame["n_known"].to_numpy() > 0
        distances = model.transform(view[words])
        return part.start, len(words), words, distances, int(with_replies.sum())

    # Chunks are read here while earlier ones are viewed and assigned on every
    # core (NumPy kernels), each with ``config.threads`` BLAS threads.
    with threadpool_limits(config.threads):
        # One chunk per core in flight: each holds its vectors, reply views
        # and their mix (about 200 MB per 100,000 tweets).
        for start, size, words, distances, views in map_ordered(
            assign, tweet_chunks(store, features, use_replies), in_flight=cores()
        ):
            with_views += views
            rows = start + np.flatnonzero(words)
            labels[rows] = distances.argmin(axis=1)
            distance[rows] = distances.min(axis=1)
            current().advance(size)
    return labels, distance, with_views


@stage_task(STAGE)
def cluster(
    features: ArtifactRef,
    preprocessed: ArtifactRef,
    config: ClusteringConfig,
    seed: int,
    replies: ArtifactRef | None = None,
    keep_k: int | None = None,
    *,
    artifacts_dir: str,
) -> ClusteringOutput:
    """Pseudo-label tweets and describe each cluster (keeping ``keep_k`` if as good).

    The KMeans learns from at most ``fit_sample`` discovery tweets; every tweet is
    then assigned, the vectors read ``VIEW_CHUNK`` tweets at a time.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    frame = store.get_frame(features, columns=["tweet_id", "split", "n_known"])
    tokens = store.get_frame(preprocessed, columns=["tweet_id", "tokens"])
    if not tokens["tweet_id"].equals(frame["tweet_id"]):
        raise ValueError("clustering: features and preprocessed tweets are not aligned")
    has_words = frame["n_known"].to_numpy() > 0
    discovery = frame["split"].eq("discovery").to_numpy() & has_words
    fit_rows = fit_sample_rows(discovery, config.fit_sample, seed)
    shown = projection_rows(has_words, seed)
    use_replies = replies if config.reply_weight > 0 else None
    dim = len(vector_columns(store.open_frame(features).schema_arrow.names))
    # Pass 1: the fitted tweets' vectors and reply views, the mean reply view.
    train = np.zeros((len(fit_rows), dim), dtype=np.float32)
    points = np.zeros((len(shown), dim), dtype=np.float32)
    train_reply_rows, train_reply_vectors = [], []
    total, count = np.zeros(dim), 0
    current().phase("reading the tweets and their reply views", len(frame), "rows")
    for part in tweet_chunks(store, features, use_replies):
        stop = part.start + len(part.frame)
        inside = (fit_rows >= part.start) & (fit_rows < stop)
        train[inside] = part.own[fit_rows[inside] - part.start]
        at = np.searchsorted(fit_rows, part.start + part.reply_rows)
        sampled = (at < len(fit_rows)) & (
            fit_rows[np.minimum(at, len(fit_rows) - 1)] == part.start + part.reply_rows
        )
        train_reply_rows.append(at[sampled])
        train_reply_vectors.append(part.reply_vectors[sampled])
        inside = (shown >= part.start) & (shown < stop)
        points[inside] = part.own[shown[inside] - part.start]
        summed, n = reply_sum(part.own, part.reply_rows, part.reply_vectors)
        total, count = total + summed, count + n
        current().advance(len(part.frame))
    mean = total / count if count else None
    train, _ = conversation_view(
        train,
        np.concatenate(train_reply_rows),
        np.concatenate(train_reply_vectors),
        config.reply_weight,
        config.center_replies,
        mean,
    )
    del train_reply_vectors
    model, description = describe_fit(
        train, tokens["tokens"].iloc[fit_rows], config, seed, keep_k
    )
    del train
    # Pass 2: every tweet assigned to its nearest category, while a thread draws
    # the k-selection plot (the assignment is NumPy work that leaves the
    # interpreter free).
    from concurrent.futures import ThreadPoolExecutor

    staging = store.staging_dir(STAGE)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="tweetflow-plot") as plotter:
            plotted = plotter.submit(
                k_selection_plot,
                {int(k): v for k, v in description["k_selection"].items()},
                description["k"],
                staging / K_SELECTION_PLOT,
                kept=description["k_kept_from_previous_run"],
                tolerance=config.keep_k_tolerance,
            )
            labels, distance, with_views = _assign(
                store, features, use_replies, model, mean, len(frame), config
            )
            plotted.result()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    k = model.n_clusters
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    for c, cluster_info in enumerate(description["clusters"]):
        cluster_info["size"] = int(sizes[c])
    description.update(
        reply_weight=config.reply_weight,
        tweets_with_reply_view=with_views,
        no_known_words=int((~has_words).sum()),
        fitted_on=len(fit_rows),
    )
    np.save(
        staging / CENTROIDS_FILE,
        model.cluster_centers_.astype(np.float32),
        allow_pickle=False,
    )
    (staging / CLUSTERS_FILE).write_text(json.dumps(description, indent=2) + "\n")
    np.savez(
        staging / PROJECTION_FILE,
        points=projection_2d(points, seed),
        cluster_id=labels[shown],
    )
    model_ref = store.commit_dir(staging, STAGE)
    assignments = pd.DataFrame(
        {
            "tweet_id": frame["tweet_id"].astype("str").to_numpy(),
            "split": frame["split"].astype("str").to_numpy(),
            "cluster_id": labels,
            "distance": distance,
        }
    ).astype({"tweet_id": "str", "split": "str"})
    ref = store.put_frame(
        assignments,
        STAGE,
        "cluster_assignments",
        unique_as={"tweet_id": frame["tweet_id"]},  # the features', row for row
    )
    logger.info(
        "clustering: %d tweets in (%d clustered with their replies, weight %.2f), "
        "k=%d (%s; KMeans on %d discovery tweets), silhouette %.3f, stability ARI "
        "%.3f, sizes %s, %d tweets with no known words (%.2fs)",
        len(frame),
        with_views,
        config.reply_weight,
        k,
        (
            "given"
            if config.n_clusters != "auto"
            else (
                f"the previous run's, as good as the best k={description['k_best']}"
                if description["k_kept_from_previous_run"]
                else f"chosen by the {CRITERION}"
            )
        ),
        len(fit_rows),
        description["silhouette"],
        description["stability_ari"],
        sizes.tolist(),
        description["no_known_words"],
        time.perf_counter() - started,
    )
    if description["k_selection"]:
        logger.debug(
            "clustering: %s per k %s",
            CRITERION,
            {k: round(v, 3) for k, v in description["k_selection"].items()},
        )
    return ClusteringOutput(
        assignments=ref,
        model=model_ref,
        k=k,
        silhouette=description["silhouette"],
        stability_ari=description["stability_ari"],
        k_selection={int(k): v for k, v in description["k_selection"].items()},
    )
