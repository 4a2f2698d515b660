"""Features: learn word vectors and term weights on discovery, embed every tweet.

Word vectors come from gensim (Word2Vec or FastText) trained on the discovery
tweets and, in customer-support files, the brand replies that answer them (the
conversation view). Terms are Snowball stems, so word forms share one vector.

A tweet's vector is a weighted mean of its terms' vectors. The default
weighting is *specificity*: a pilot KMeans groups the discovery tweets by their
content words, and each term weighs ``1 + strength * s``, where ``s`` is how
unevenly the term spreads over the pilot groups (Kullback-Leibler divergence of
its group distribution from the groups' sizes, shrunk towards zero for rare
terms, scaled to 1 for the most specific word). "bag" or "cancelled" weigh
several times what "flight" or "today" do. An @handle weighs ``strength * s``
only: a brand that every kind of tweet addresses (the addressee in support
data) spreads evenly and falls to about zero, while a handle that names a
subject (``@coachella``) weighs like a specific word. Handles of the
conversation's participants in a customer-support file are known addressees
and weigh zero.

Embedding is per row: on a Dask cluster the tweets are embedded in partitions
(``embed_partition``, each worker loading the stored embedder once) and the
stage's frames are assembled from their parts, byte for byte what the
in-process path writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from tasks.infra.caching import source_version, stage_task, uncached_task
from tasks.infra.errors import InsufficientDataError
from tasks.infra.lazy import np, pd
from tasks.infra.parallel import map_ordered
from tasks.infra.partitioned import (
    ClusterSpec,
    PartOutput,
    PartStore,
    RowRange,
    check_rows,
    fixed_sizes,
    logged,
    map_on_cluster,
    on_worker,
    part_tables,
    plan_ranges,
    rebatch,
)
from tasks.infra.progress import Progress, current
from tasks.infra.store import ArtifactRef, ArtifactStore, CheckedChunk
from tasks.ml.embedding import (
    EMBED_CHUNK,
    DocumentEmbedder,
    common_components,
    sif_weights,
    term_lists,
)

if TYPE_CHECKING:
    import scipy.sparse as sp

STAGE = "features"
MAX_EPOCHS = 40


class FeaturesConfig(BaseModel):
    """Word-vector training and document-embedding settings."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["word2vec", "fasttext"] = Field(
        "word2vec", description="gensim model that learns the word vectors."
    )
    vector_size: int = Field(100, ge=8, le=1000, description="Word vector dimensions.")
    window: int = Field(
        10, ge=1, le=50, description="Context window; wide windows capture topic."
    )
    min_count: int = Field(
        3, ge=1, description="Terms seen fewer times in discovery are ignored."
    )
    skip_gram: bool = Field(
        False, description="Skip-gram (True) or CBOW (False, faster and as good here)."
    )
    epochs: int | Literal["auto"] = Field(
        "auto",
        description="Passes over the discovery text, or 'auto': as many as reach "
        "about target_words words, between min_epochs and 40 (small corpora need "
        "more passes).",
    )
    target_words: int = Field(
        4_000_000,
        ge=1,
        description="Words processed in training when epochs is 'auto'.",
    )
    min_epochs: int = Field(
        10, ge=1, le=MAX_EPOCHS, description="Fewest passes when epochs is 'auto'."
    )
    negative: int = Field(5, ge=1, le=50, description="Negative samples per word.")
    sample: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Down-sampling threshold for frequent words; 0 keeps them all "
        "(the specificity weighting already discounts the unspecific ones).",
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="Word2Vec training threads: 'auto' uses every core this process "
        "may run on; 1 makes training reproducible bit for bit (slower: on 2 cores "
        "Word2Vec takes about 1.7 times as long).",
    )
    train_sample: int = Field(
        50_000,
        ge=0,
        description="Discovery tweets word vectors and term weights learn from "
        "(with their replies): a seeded sample when there are more; 0 learns from "
        "all. Every tweet is embedded either way. Measured (bench/sample_size.py): "
        "every labelled corpus is as good from 50,000 as from all its tweets; the "
        "generated 1M-tweet file gives NMI 0.984 / 0.986 / 0.987 from 50k / 100k "
        "/ 200k, and word vectors take half as long from 50k as from 100k.",
    )
    stem: bool = Field(
        True,
        description="Look words up by their Snowball stem, so 'cancelled', "
        "'canceled' and 'cancel' share a vector.",
    )
    weighting: Literal["specificity", "mean", "sif"] = Field(
        "specificity",
        description="Tweet vector = mean of term vectors weighted by how specific "
        "each term is to one kind of tweet (specificity), a plain mean, or "
        "SIF-weighted (a/(a+p(w))).",
    )
    pilot_clusters: int = Field(
        16,
        ge=2,
        le=200,
        description="Groups of the pilot KMeans that term specificity is measured "
        "against (weighting=specificity).",
    )
    pilot_sample: int = Field(
        20000,
        ge=100,
        description="Discovery tweets the pilot KMeans is fitted on (a seeded "
        "sample when there are more).",
    )
    specificity_strength: float = Field(
        4.0,
        ge=0.0,
        le=100.0,
        description="Weight of the most specific term above an unspecific one "
        "(weighting=specificity): a word weighs 1 + strength * s, a handle "
        "strength * s, with s in [0, 1].",
    )
    specificity_prior: float = Field(
        10.0,
        ge=0.0,
        description="Pseudo-counts that pull a rare term's group distribution "
        "towards the group sizes, so a handful of uses is not 'specific'.",
    )
    use_replies: bool = Field(
        True,
        description="Learn word vectors from the brand replies too (customer-"
        "support files), and embed each tweet's replies as its conversation view.",
    )
    sif_a: float = Field(
        1e-3, gt=0.0, description="SIF smoothing a in a/(a+p(w)) (weighting=sif)."
    )
    remove_components: int = Field(
        0, ge=0, le=10, description="Common components removed from tweet vectors."
    )


def epochs_for(config: FeaturesConfig, words: int) -> int:
    """Training passes: the configured number, or enough to see ~target_words."""
    if config.epochs != "auto":
        return int(config.epochs)
    wanted = int(np.ceil(config.target_words / max(words, 1)))
    return int(np.clip(wanted, config.min_epochs, MAX_EPOCHS))


def worker_count(config: FeaturesConfig) -> int:
    """Training threads: the configured number, or the cores this process may use."""
    if config.workers != "auto":
        return int(config.workers)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def train_word_vectors(
    token_lists: list[list[str]], config: FeaturesConfig, seed: int
) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Train gensim word vectors. Returns (vocab, vectors, counts, epochs).

    Progress is reported per training pass (``tasks.infra.progress``).
    """
    from gensim.models import FastText, Word2Vec  # imported when used: ~1 s
    from gensim.models.callbacks import CallbackAny2Vec

    class EpochProgress(CallbackAny2Vec):
        """Moves the progress report on at the end of each training pass."""

        def __init__(self, progress: Progress) -> None:
            self.progress = progress
            self.epoch = 0

        def on_epoch_end(self, model: Any) -> None:
            self.epoch += 1
            self.progress.update(self.epoch, f"epoch {self.epoch}/{model.epochs}")

    cls = FastText if config.algorithm == "fasttext" else Word2Vec
    words = sum(len(t) for t in token_lists)
    epochs = epochs_for(config, words)
    model = cls(
        vector_size=config.vector_size,
        window=config.window,
        min_count=config.min_count,
        sg=int(config.skip_gram),
        negative=config.negative,
        sample=config.sample,
        workers=worker_count(config),
        seed=seed,
    )
    progress = current()
    progress.phase(f"word vectors: vocabulary of {len(token_lists):,} texts", 1)
    model.build_vocab(token_lists)
    progress.phase(
        f"word vectors, {len(token_lists):,} texts x {epochs} passes", epochs
    )
    model.train(
        token_lists,
        total_examples=model.corpus_count,
        total_words=model.corpus_total_words,
        epochs=epochs,
        callbacks=[EpochProgress(progress)],
    )
    wv = model.wv
    vocab = list(wv.index_to_key)
    counts = np.array([wv.get_vecattr(w, "count") for w in vocab], dtype=np.float64)
    return vocab, np.asarray(wv.vectors, dtype=np.float32), counts, epochs


def specificity(
    counts: sp.csr_matrix, groups: np.ndarray, n_groups: int, prior: float
) -> np.ndarray:
    """How unevenly each term spreads over groups of tweets (KL divergence, nats).

    ``counts`` is the doc-term matrix of the grouped tweets and ``groups`` their
    group; a term's group distribution is shrunk towards the group sizes by
    ``prior`` pseudo-counts before it is compared with them.
    """
    import scipy.sparse as sp

    onehot = sp.csr_matrix(
        (np.ones(len(groups)), (np.arange(len(groups)), groups)),
        shape=(len(groups), n_groups),
    )
    per_group = np.asarray((counts.T @ onehot).todense())  # terms x groups
    sizes = np.bincount(groups, minlength=n_groups) / max(len(groups), 1)
    p = (per_group + prior * sizes) / (per_group.sum(axis=1, keepdims=True) + prior)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * np.log(p / np.maximum(sizes, 1e-12)), 0.0)
    return kl.sum(axis=1)


def specificity_weights(
    embedder: DocumentEmbedder,
    counts: sp.csr_matrix,
    config: FeaturesConfig,
    seed: int,
) -> np.ndarray:
    """Term weights from a pilot clustering of the tweets' content words.

    ``counts`` are the discovery tweets' doc-term counts. Handles do not take part
    in the pilot (it groups tweets by what they say), and are weighed afterwards
    by how specific they turn out to be.
    """
    handle = np.asarray(embedder.vocab.str.startswith("@"), dtype=bool)
    content = np.where(handle, 0.0, 1.0).astype(np.float32)
    means, n_known = embedder.means_of_counts(counts, content)
    rows = np.flatnonzero(n_known > 0)
    vectors = embedder.finish(means[rows], np.ones(len(rows), dtype=bool))
    distinct = len(np.unique(vectors.round(6), axis=0)) if len(rows) else 0
    k = min(config.pilot_clusters, distinct - 1)
    if k < 2:
        return np.ones(len(embedder.vocab), dtype=np.float32)
    rng = np.random.default_rng(seed)
    fit = rng.choice(len(rows), size=min(len(rows), config.pilot_sample), replace=False)
    from sklearn.cluster import KMeans  # imported when used: ~1 s
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        pilot = KMeans(k, n_init=3, random_state=seed).fit(vectors[np.sort(fit)])
        groups = pilot.predict(vectors)
    score = specificity(counts[rows], groups, k, config.specificity_prior)
    top = score[~handle].max() if (~handle).any() else 0.0
    s = score / top if top > 0 else np.zeros_like(score)
    s = np.clip(s, 0.0, 1.0)
    strength = config.specificity_strength
    return np.where(handle, strength * s, 1.0 + strength * s).astype(np.float32)


def training_sample(index: pd.Index, size: int, seed: int) -> pd.Index:
    """The tweets word vectors learn from: all, or a seeded sample of ``size``
    (kept in their original order)."""
    if size <= 0 or len(index) <= size:
        return index
    rng = np.random.default_rng(seed)
    return index[np.sort(rng.choice(len(index), size=size, replace=False))]


def fit_embedder(
    tokens: pd.Series,
    config: FeaturesConfig,
    seed: int,
    context: pd.Series | None = None,
    addressees: Iterable[str] = (),
) -> DocumentEmbedder:
    """Fit word vectors and term weights on the discovery tweets' tokens.

    ``context`` holds the tokens of the replies to those tweets (same index,
    empty when none): they are more text to learn word vectors from.
    ``addressees`` are handles known to address a participant (weight 0).
    """
    nonempty = tokens[tokens.str.len() > 0]
    learn = training_sample(nonempty.index, config.train_sample, seed)
    # Term weights and common components are measured on a sample as bounded.
    measured = tokens.loc[training_sample(tokens.index, config.train_sample, seed)]
    lists = term_lists(nonempty.loc[learn], config.stem)
    if context is not None and config.use_replies:
        replies = context.loc[learn]
        lists += term_lists(replies[replies.str.len() > 0], config.stem)
    distinct = pd.Series([w for t in lists for w in t]).value_counts()
    frequent = int(distinct.ge(config.min_count).sum()) if len(distinct) else 0
    if frequent < 2:
        raise InsufficientDataError(
            f"features: {len(nonempty)} discovery tweets hold {frequent} distinct "
            f"words seen {config.min_count}+ times; word vectors need more tweets "
            "(or a lower features.min_count)"
        )
    vocab, vectors, counts, _ = train_word_vectors(lists, config, seed)
    embedder = DocumentEmbedder(
        vocab=pd.Index(vocab),
        vectors=vectors,
        weights=np.ones(len(vocab), dtype=np.float32),
        components=np.zeros((0, vectors.shape[1]), dtype=np.float32),
        stem=config.stem,
    )
    current().phase("term weights (pilot KMeans)", 1)
    discovery_counts = embedder.counts(measured)
    if config.weighting == "sif":
        embedder.weights = sif_weights(counts, config.sif_a)
    elif config.weighting == "specificity":
        embedder.weights = specificity_weights(embedder, discovery_counts, config, seed)
    known_addressees = embedder.vocab.get_indexer(list(addressees))
    embedder.weights[known_addressees[known_addressees >= 0]] = 0.0
    means, n_known = embedder.means_of_counts(discovery_counts)
    embedder.components = common_components(
        means[n_known > 0], config.remove_components
    )
    return embedder


def feature_frame(
    preprocessed: pd.DataFrame, vectors: np.ndarray, n_known: np.ndarray
) -> pd.DataFrame:
    """Frame in the features contract: ids, split, known-word count, f000.. columns."""
    columns = {f"f{i:03d}": vectors[:, i] for i in range(vectors.shape[1])}
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "tweet_id": preprocessed["tweet_id"].to_numpy(),
                    "split": preprocessed["split"].to_numpy(),
                    "n_known": n_known.astype(np.int64),
                }
            ).astype({"tweet_id": "str", "split": "str"}),
            pd.DataFrame(columns),
        ],
        axis=1,
    )


def context_frame(
    tweet_ids: pd.Series, vectors: np.ndarray, rows: np.ndarray
) -> pd.DataFrame:
    """Frame in the context_features contract: tweet id, the tweet's row in the
    features frame, and r000.. columns."""
    columns = {f"r{i:03d}": vectors[:, i] for i in range(vectors.shape[1])}
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "tweet_id": tweet_ids.to_numpy(),
                    "row": np.asarray(rows, dtype=np.int64),
                }
            ),
            pd.DataFrame(columns, dtype=np.float32),
        ],
        axis=1,
    )
    return frame.astype({"tweet_id": "str"})


def embed_frame(
    embedder: DocumentEmbedder, frame: pd.DataFrame, start: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The features frame of preprocessed tweets, and their replies' vectors.

    The second frame holds one row per tweet whose replies have a known word,
    in the tweets' order, with the tweet's row in the features frame (``frame``
    starts at row ``start`` of it).
    """
    vectors, n_known = embedder.embed(frame["tokens"], report=True)
    features = feature_frame(frame, vectors, n_known)
    context = frame["context_tokens"]
    has_context = context.str.len().gt(0).to_numpy()
    reply_vectors, reply_known = embedder.embed(context[has_context], report=True)
    keep = reply_known > 0
    rows = start + np.flatnonzero(has_context)[keep]
    replies = context_frame(
        frame["tweet_id"][has_context][keep], reply_vectors[keep], rows
    )
    return features, replies


EMBED_COLUMNS = ["tweet_id", "split", "tokens", "context_tokens"]
_EMBEDDERS: dict[str, DocumentEmbedder] = {}  # per worker process, by digest


def _embedder(store: ArtifactStore, ref: ArtifactRef) -> DocumentEmbedder:
    """The stored embedder, loaded once per process."""
    if ref.sha256 not in _EMBEDDERS:
        _EMBEDDERS.clear()  # one run's embedder at a time
        _EMBEDDERS[ref.sha256] = DocumentEmbedder.load(store.get_dir(ref))
    return _EMBEDDERS[ref.sha256]


def embed_partition_here(
    part: RowRange,
    preprocessed: ArtifactRef,
    embedder: ArtifactRef,
    *,
    artifacts_dir: str,
) -> PartOutput:
    """Embed rows ``part`` of the preprocessed tweets with the stored embedder
    (on whichever worker runs the task): a features part and a reply-view part,
    checked against their contracts; a part complete earlier is read back."""
    store = ArtifactStore(artifacts_dir)
    parts = PartStore(store, STAGE)
    # The reply views name their tweet's row: where the rows start is part of
    # the key too.
    chunks, key, known = parts.rows_of(
        preprocessed,
        part,
        EMBED_COLUMNS,
        EMBED_CHUNK,
        embedder.sha256,
        part.start,
        source_version(__name__),
    )
    if known is not None:
        return known
    model = _embedder(store, embedder)
    embedded = on_worker(lambda item: embed_frame(model, item[1], item[0]), chunks)
    if not embedded:  # an empty input: empty frames of both contracts
        empty = store.get_frame(preprocessed, columns=EMBED_COLUMNS).iloc[:0]
        embedded = [embed_frame(model, empty, 0)]
    features = pd.concat([f for f, _ in embedded], ignore_index=True)
    replies = pd.concat([r for _, r in embedded], ignore_index=True)
    if len(features) != part.rows:
        raise RuntimeError(
            f"{STAGE}: partition {part.number} read {len(features)} of "
            f"{part.rows} rows"
        )
    return parts.save(
        key,
        part,
        {"features": features, "replies": replies},
        {"features": "features", "replies": "context_features"},
        no_known=int(features["n_known"].eq(0).sum()),
        reply_views=len(replies),
    )


@uncached_task("embed-partition", retries=3)
def embed_partition(
    part: RowRange,
    preprocessed: ArtifactRef,
    embedder: ArtifactRef,
    *,
    artifacts_dir: str,
) -> PartOutput:
    """Embed rows ``part`` of the preprocessed tweets, as a task of its own (on
    a cluster's worker): ``embed_partition_here``."""
    started = time.perf_counter()
    out = embed_partition_here(
        part, preprocessed, embedder, artifacts_dir=artifacts_dir
    )
    return logged(STAGE, out, started)


def embed_on_cluster(
    store: ArtifactStore,
    preprocessed: ArtifactRef,
    embedder: ArtifactRef,
    cluster: ClusterSpec,
    logger: Any,
    known_ids: pd.Series,
) -> tuple[ArtifactRef, ArtifactRef, int, int]:
    """Embed every tweet in partitions on the cluster and write the features
    and reply-view frames from their parts, in the in-process path's row
    groups (``EMBED_CHUNK`` tweets, with their replies' rows). Returns both
    refs, the tweets with no known word and the reply views."""
    import pyarrow as pa

    rows = int(preprocessed.rows or 0)
    done = map_on_cluster(
        embed_partition,
        plan_ranges(rows, cluster.partition_rows),
        cluster,
        STAGE,
        logger,
        preprocessed=preprocessed,
        embedder=embedder,
        artifacts_dir=store.root_uri,
    )
    check_rows(STAGE, done, rows)
    current().phase("writing", 1)
    replies = pa.concat_tables(part_tables(store, done, "replies"))
    # Each chunk of tweets is followed by its replies' rows, as embedded.
    row = replies.column("row").to_numpy()
    starts = range(0, max(rows, 1), EMBED_CHUNK)
    cuts = [int(np.searchsorted(row, s)) for s in starts] + [len(row)]
    with (
        store.frame_writer(
            STAGE, "features", unique_as={"tweet_id": known_ids}
        ) as features_out,
        store.frame_writer(STAGE, "context_features") as replies_out,
    ):
        sizes = fixed_sizes(rows, EMBED_CHUNK)
        tables = rebatch(part_tables(store, done, "features"), sizes)
        for i, table in enumerate(tables):
            features_out.write(CheckedChunk(table, features_out))
            piece = replies.slice(cuts[i], cuts[i + 1] - cuts[i])
            replies_out.write(CheckedChunk(piece.combine_chunks(), replies_out))
        if not rows:
            empty = store.get_frame(preprocessed, columns=EMBED_COLUMNS).iloc[:0]
            features_frame, replies_frame = embed_frame(
                _embedder(store, embedder), empty, 0
            )
            features_out.write(features_frame)
            replies_out.write(replies_frame)
    no_known = sum(out.counts["no_known"] for out in done)
    reply_views = sum(out.counts["reply_views"] for out in done)
    return features_out.ref, replies_out.ref, no_known, reply_views


def embed_here(
    store: ArtifactStore, embedder: DocumentEmbedder, frame: pd.DataFrame
) -> tuple[ArtifactRef, ArtifactRef, int, int]:
    """Embed every tweet of ``frame`` in this process, ``EMBED_CHUNK`` at a
    time on every core, and write the features and reply-view frames. Returns
    both refs, the tweets with no known word and the reply views."""
    no_known = reply_views = 0
    with (
        store.frame_writer(
            STAGE, "features", unique_as={"tweet_id": frame["tweet_id"]}
        ) as features_out,
        store.frame_writer(STAGE, "context_features") as replies_out,
    ):

        def embed_and_check(start: int) -> tuple[CheckedChunk, CheckedChunk, int]:
            """Embed one chunk and check it against the contracts (in a worker:
            the writer thread only writes)."""
            features_frame, replies_frame = embed_frame(
                embedder, frame.iloc[start : start + EMBED_CHUNK], start
            )
            return (
                features_out.check(features_frame),
                replies_out.check(replies_frame),
                int(features_frame["n_known"].eq(0).sum()),
            )

        starts = range(0, len(frame), EMBED_CHUNK)
        for features_chunk, replies_chunk, unknown in map_ordered(
            embed_and_check, starts
        ):
            features_out.write(features_chunk)
            replies_out.write(replies_chunk)
            no_known += unknown
            reply_views += replies_chunk.table.num_rows
    return features_out.ref, replies_out.ref, no_known, reply_views


def save_embedder(
    store: ArtifactStore, embedder: DocumentEmbedder, info: dict
) -> ArtifactRef:
    """Store the embedder (word vectors, weights, components) as a directory."""
    staging = store.staging_dir(STAGE)
    embedder.save(staging, info)
    return store.commit_dir(staging, STAGE)


class FeaturesOutput(BaseModel):
    """References and figures produced by the features stage."""

    model_config = ConfigDict(frozen=True)

    features: ArtifactRef
    replies: ArtifactRef
    embedder: ArtifactRef
    vocabulary_size: int
    no_known_words: int
    tweets_with_replies: int = 0


@stage_task(STAGE)
def build_features(
    preprocessed: ArtifactRef,
    config: FeaturesConfig,
    seed: int,
    addressees: list[str] | None = None,
    *,
    artifacts_dir: str,
    cluster: ClusterSpec | None = None,
) -> FeaturesOutput:
    """Train word vectors and term weights on discovery and embed every tweet.

    Tweets are embedded and written ``EMBED_CHUNK`` at a time (one Parquet row
    group each), so memory does not grow with the vectors of every tweet.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    frame = store.get_frame(
        preprocessed, columns=["tweet_id", "split", "tokens", "context_tokens"]
    )
    discovery = frame["split"].eq("discovery")
    discovery_tokens = frame.loc[discovery, "tokens"]
    embedder = fit_embedder(
        discovery_tokens,
        config,
        seed,
        frame.loc[discovery, "context_tokens"],
        addressees or [],
    )
    learned = min(
        int(discovery_tokens.str.len().gt(0).sum()), config.train_sample or len(frame)
    )
    del discovery_tokens
    trained = time.perf_counter()
    with_context = frame["context_tokens"].str.len().gt(0)
    current().phase(
        "embedding tweets and replies", len(frame) + int(with_context.sum()), "rows"
    )
    info = {"config": config.model_dump(mode="json"), "seed": seed}
    if cluster is not None:
        embedder_ref = save_embedder(store, embedder, info)
        features_ref, replies_ref, no_known, reply_views = embed_on_cluster(
            store, preprocessed, embedder_ref, cluster, logger, frame["tweet_id"]
        )
    else:
        features_ref, replies_ref, no_known, reply_views = embed_here(
            store, embedder, frame
        )
        embedder_ref = save_embedder(store, embedder, info)
    weights = pd.Series(embedder.weights, index=embedder.vocab)
    logger.info(
        "features: %s on %s discovery tweets%s -> %d terms x %d dims in %.2fs; "
        "embedded %d tweets (%d with no known word, %d with a reply view) in %.2fs",
        config.algorithm,
        (
            f"a sample of {learned} of {int(discovery.sum())}"
            if learned < int(discovery.sum())
            else str(int(discovery.sum()))
        ),
        " and their replies" if config.use_replies and with_context.any() else "",
        len(embedder.vocab),
        embedder.dim,
        trained - started,
        len(frame),
        no_known,
        reply_views,
        time.perf_counter() - trained,
    )
    if config.weighting == "specificity":
        handles = weights[weights.index.str.startswith("@")]
        logger.info(
            "features: most specific terms %s; least %s; handles weighed as "
            "addressees (weight < 0.5): %d of %d",
            ", ".join(weights.nlargest(8).index),
            ", ".join(weights[~weights.index.str.startswith("@")].nsmallest(5).index),
            int((handles < 0.5).sum()),
            len(handles),
        )
    return FeaturesOutput(
        features=features_ref,
        replies=replies_ref,
        embedder=embedder_ref,
        vocabulary_size=len(embedder.vocab),
        no_known_words=no_known,
        tweets_with_replies=reply_views,
    )
