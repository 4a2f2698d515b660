"""Unit tests of the conversation view and of reading tweets with their reply
views chunk by chunk (the clustering stage's two passes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.infra.store import ArtifactStore
from tasks.ml.embedding import vectors_of, vectors_of_batch
from tasks.stages import clustering
from tasks.stages.clustering import conversation_view, reply_sum, tweet_chunks


def reference_view(
    vectors: np.ndarray,
    reply_rows: np.ndarray,
    reply_vectors: np.ndarray,
    weight: float,
    mean: np.ndarray,
) -> np.ndarray:
    """The conversation view row by row in float64: (1 - w) own + w replies
    (their mean when a tweet has none), normalised; no own word, no view."""
    out = np.zeros(vectors.shape)
    replies = dict(zip(reply_rows.tolist(), reply_vectors, strict=True))
    for i, own in enumerate(vectors.astype(np.float64)):
        if not np.linalg.norm(own):
            continue
        other = replies.get(i, mean)
        mixed = (1 - weight) * own + weight * np.asarray(other, dtype=np.float64)
        out[i] = mixed / np.linalg.norm(mixed)
    return out


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_conversation_view_mixes_each_tweet_with_its_replies_or_their_mean() -> None:
    rng = np.random.default_rng(7)
    vectors = unit_rows(rng, 40, 6)
    vectors[[3, 17]] = 0.0  # no known word of their own
    reply_rows = np.array([0, 3, 5, 9, 17, 30])
    reply_vectors = unit_rows(rng, len(reply_rows), 6)
    mean = reply_vectors[[0, 2, 3, 5]].mean(axis=0)  # replies of tweets with words
    view, with_replies = conversation_view(vectors, reply_rows, reply_vectors, 0.5)
    assert view.dtype == np.float32
    assert np.flatnonzero(with_replies).tolist() == [0, 5, 9, 30]
    expected = reference_view(vectors, reply_rows, reply_vectors, 0.5, mean)
    np.testing.assert_allclose(view, expected, atol=1e-6)
    assert not view[[3, 17]].any()
    summed, n = reply_sum(vectors, reply_rows, reply_vectors)
    assert n == 4
    np.testing.assert_allclose(summed / n, mean, atol=1e-6)
    # Weight 0: the tweets alone, untouched.
    alone, none = conversation_view(vectors, reply_rows, reply_vectors, 0.0)
    assert alone is vectors and not none.any()


def write_views(
    store: ArtifactStore, n: int, reply_rows: np.ndarray, dim: int = 3
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Store a features frame of ``n`` tweets and reply views of ``reply_rows``,
    in row groups of 7 (so reading crosses their boundaries)."""
    rng = np.random.default_rng(1)
    features = pd.DataFrame(
        {
            "tweet_id": [f"t{i}" for i in range(n)],
            "split": "discovery",
            "n_known": np.ones(n, dtype=np.int64),
            **{f"f{j:03d}": rng.normal(size=n).astype(np.float32) for j in range(dim)},
        }
    ).astype({"tweet_id": "str", "split": "str"})
    replies = pd.DataFrame(
        {
            "tweet_id": [f"t{i}" for i in reply_rows],
            "row": reply_rows.astype(np.int64),
            **{
                f"r{j:03d}": rng.normal(size=len(reply_rows)).astype(np.float32)
                for j in range(dim)
            },
        }
    ).astype({"tweet_id": "str"})
    for frame, contract in ((features, "features"), (replies, "context_features")):
        with store.frame_writer(contract, contract) as writer:
            for start in range(0, len(frame), 7):
                writer.write(frame.iloc[start : start + 7])
        frame.attrs["ref"] = writer.ref
    return features, replies


def test_tweets_are_read_in_chunks_with_exactly_their_reply_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clustering, "VIEW_CHUNK", 10)
    store = ArtifactStore(tmp_path)
    reply_rows = np.array([0, 1, 9, 10, 11, 12, 25, 26, 29, 40, 41])
    features, replies = write_views(store, 42, reply_rows)
    parts = list(tweet_chunks(store, features.attrs["ref"], replies.attrs["ref"]))
    assert [p.start for p in parts] == [0, 10, 20, 30, 40]
    own = np.vstack([p.own for p in parts])
    np.testing.assert_array_equal(own, vectors_of(features))
    rows = np.concatenate([p.start + p.reply_rows for p in parts])
    np.testing.assert_array_equal(rows, reply_rows)
    np.testing.assert_array_equal(
        np.vstack([p.reply_vectors for p in parts]), vectors_of(replies, "r")
    )
    assert pd.concat([p.frame for p in parts])["tweet_id"].tolist() == (
        features["tweet_id"].tolist()
    )


def test_reply_views_out_of_the_tweets_order_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clustering, "VIEW_CHUNK", 10)
    store = ArtifactStore(tmp_path)
    features, replies = write_views(store, 20, np.array([3, 2, 15]))
    with pytest.raises(ValueError, match="not in the tweets' order"):
        list(tweet_chunks(store, features.attrs["ref"], replies.attrs["ref"]))
    features, replies = write_views(store, 20, np.array([3, 25]))  # past the end
    with pytest.raises(ValueError, match="not in the tweets' order"):
        list(tweet_chunks(store, features.attrs["ref"], replies.attrs["ref"]))


def test_vectors_of_a_record_batch_equal_those_of_its_frame(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    features, _ = write_views(store, 30, np.array([1]), dim=5)
    (batch,) = store.iter_batches(features.attrs["ref"], rows=30)
    np.testing.assert_array_equal(vectors_of_batch(batch), vectors_of(features))
    assert vectors_of_batch(batch).dtype == np.float32
