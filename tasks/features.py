"""Features: learn word vectors on the discovery split and embed every tweet."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pandas as pd
from gensim.models import FastText, Word2Vec
from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from tasks.caching import stage_task
from tasks.embedding import DocumentEmbedder, common_components, sif_weights
from tasks.errors import InsufficientDataError
from tasks.store import ArtifactRef, ArtifactStore

STAGE = "features"


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
        3, ge=1, description="Words seen fewer times in discovery are ignored."
    )
    skip_gram: bool = Field(
        False, description="Skip-gram (True) or CBOW (False, faster and as good here)."
    )
    epochs: int = Field(
        10, ge=1, le=200, description="Passes over the discovery split."
    )
    negative: int = Field(5, ge=1, le=50, description="Negative samples per word.")
    sample: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Down-sampling threshold for frequent words; 0 keeps them all "
        "(in tweets the most frequent words often name the subject).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=32,
        description="Training threads; 1 makes training reproducible bit for bit.",
    )
    weighting: Literal["mean", "sif"] = Field(
        "mean",
        description="Tweet vector = plain mean of word vectors, or SIF-weighted "
        "(a/(a+p(w))), which down-weights frequent words.",
    )
    sif_a: float = Field(
        1e-3, gt=0.0, description="SIF smoothing a in a/(a+p(w)) (weighting=sif)."
    )
    remove_components: int = Field(
        0, ge=0, le=10, description="Common components removed from tweet vectors."
    )


def train_word_vectors(
    token_lists: list[list[str]], config: FeaturesConfig, seed: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Train gensim word vectors. Returns (vocab, vectors, training counts)."""
    cls = FastText if config.algorithm == "fasttext" else Word2Vec
    model = cls(
        sentences=token_lists,
        vector_size=config.vector_size,
        window=config.window,
        min_count=config.min_count,
        sg=int(config.skip_gram),
        epochs=config.epochs,
        negative=config.negative,
        sample=config.sample,
        workers=config.workers,
        seed=seed,
    )
    wv = model.wv
    vocab = list(wv.index_to_key)
    counts = np.array([wv.get_vecattr(w, "count") for w in vocab], dtype=np.float64)
    return vocab, np.asarray(wv.vectors, dtype=np.float32), counts


def fit_embedder(
    tokens: pd.Series, config: FeaturesConfig, seed: int
) -> DocumentEmbedder:
    """Fit word vectors and embedding weights on the discovery tweets' tokens."""
    nonempty = tokens[tokens.str.len() > 0]
    token_lists = [t.split() for t in nonempty]
    frequent = int(
        nonempty.str.split(" ").explode().value_counts().ge(config.min_count).sum()
    )
    if frequent < 2:
        raise InsufficientDataError(
            f"features: {len(token_lists)} discovery tweets hold {frequent} distinct "
            f"words seen {config.min_count}+ times; word vectors need more tweets "
            "(or a lower features.min_count)"
        )
    vocab, vectors, counts = train_word_vectors(token_lists, config, seed)
    embedder = DocumentEmbedder(
        vocab=pd.Index(vocab),
        vectors=vectors,
        weights=(
            sif_weights(counts, config.sif_a)
            if config.weighting == "sif"
            else np.ones(len(vocab), dtype=np.float32)
        ),
        components=np.zeros((0, vectors.shape[1]), dtype=np.float32),
    )
    means, n_known = embedder.weighted_means(tokens)
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


def vectors_of(features: pd.DataFrame) -> np.ndarray:
    """The f000.. columns of a features frame as a float32 matrix."""
    columns = [c for c in features.columns if c.startswith("f") and c[1:].isdigit()]
    return features[columns].to_numpy(dtype=np.float32)


class FeaturesOutput(BaseModel):
    """References and figures produced by the features stage."""

    model_config = ConfigDict(frozen=True)

    features: ArtifactRef
    embedder: ArtifactRef
    vocabulary_size: int
    no_known_words: int


@stage_task(STAGE, ["tasks.features", "tasks.embedding"])
def build_features(
    preprocessed: ArtifactRef, config: FeaturesConfig, seed: int, artifacts_dir: str
) -> FeaturesOutput:
    """Train word vectors on discovery and embed every tweet."""
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    frame = store.get_frame(preprocessed)
    discovery = frame.loc[frame["split"].eq("discovery"), "tokens"]
    embedder = fit_embedder(discovery, config, seed)
    trained = time.perf_counter()
    vectors, n_known = embedder.embed(frame["tokens"])
    staging = store.staging_dir(STAGE)
    embedder.save(staging, {"config": config.model_dump(mode="json"), "seed": seed})
    embedder_ref = store.commit_dir(staging, STAGE)
    features = store.put_frame(
        feature_frame(frame, vectors, n_known), STAGE, "features"
    )
    no_known = int((n_known == 0).sum())
    logger.info(
        "features: %s on %d discovery tweets -> %d words x %d dims in %.2fs; "
        "embedded %d tweets (%d with no known word) in %.2fs",
        config.algorithm,
        len(discovery),
        len(embedder.vocab),
        embedder.dim,
        trained - started,
        len(frame),
        no_known,
        time.perf_counter() - trained,
    )
    return FeaturesOutput(
        features=features,
        embedder=embedder_ref,
        vocabulary_size=len(embedder.vocab),
        no_known_words=no_known,
    )
