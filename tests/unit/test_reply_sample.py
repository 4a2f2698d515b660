"""The conversation view's bounded sample: which tweets' replies are tokenised."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.stages.preprocessing import (
    PreprocessingConfig,
    preprocess_frame,
    reply_views,
    tokenise_in_chunks,
)


def _prepared(n: int, with_replies: int) -> pd.DataFrame:
    context = [f"sorry for the delay on flight {i}, dm us" for i in range(with_replies)]
    context += [None] * (n - with_replies)
    return pd.DataFrame(
        {
            "tweet_id": pd.Series([f"t{i}" for i in range(n)], dtype="str"),
            "text": pd.Series(
                [f"my bag is lost again {i}" for i in range(n)], dtype="str"
            ),
            "split": pd.Series(["discovery"] * n, dtype="str"),
            "context": pd.Series(context, dtype="str"),
            "n_replies": np.array([1] * with_replies + [0] * (n - with_replies)),
        }
    )


def test_every_tweet_with_replies_gets_its_view_below_the_limit() -> None:
    prepared = _prepared(50, 30)
    assert reply_views(prepared, 30).sum() == 30
    assert reply_views(prepared, 0).sum() == 30  # 0: no limit
    assert (reply_views(prepared, 100) == prepared["n_replies"].gt(0)).all()


def test_the_sample_is_bounded_fixed_and_a_function_of_the_ids() -> None:
    prepared = _prepared(400, 300)
    view = reply_views(prepared, 100)
    assert view.sum() == 100
    assert not view[300:].any()  # only tweets that have replies
    # Same tweets whatever the row order: chosen by their ids.
    shuffled = prepared.sample(frac=1.0, random_state=3).reset_index(drop=True)
    chosen = set(prepared["tweet_id"][view])
    assert set(shuffled["tweet_id"][reply_views(shuffled, 100)]) == chosen


def test_tweets_outside_the_sample_keep_their_rows_without_context() -> None:
    prepared = _prepared(400, 300)
    config = PreprocessingConfig(reply_sample=100)
    out = tokenise_in_chunks(prepared, config, chunk=64)
    assert len(out) == 400 and out["tweet_id"].tolist() == prepared["tweet_id"].tolist()
    assert out["context_tokens"].str.len().gt(0).sum() == 100
    assert out["n_replies"].tolist() == prepared["n_replies"].tolist()  # counted still
    whole = preprocess_frame(prepared, PreprocessingConfig(reply_sample=0))
    view = reply_views(prepared, 100)
    kept = out["context_tokens"].to_numpy()[view]
    assert (kept == whole["context_tokens"].to_numpy()[view]).all()
