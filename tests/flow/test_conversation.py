"""Flow test of the conversation view on real customer-support threads.

A slice of ``twcs_airline_threads.csv`` (customer tweets and the airline's
replies) goes through the real retrain flow: the replies are counted and linked,
word vectors learn from them, clustering uses them, and the classifier (and so
batch inference) does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.quality import SHARED_DATA, THREADS_FILE
from tests.conftest import run_retrain as run
from tests.conftest import small_params

pytestmark = pytest.mark.flow

THREADS = SHARED_DATA / THREADS_FILE
ROWS = 4000


@pytest.fixture(scope="module")
def threads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The first conversations of the file, and the same tweets without replies."""
    if not THREADS.is_file():
        pytest.skip(f"{THREADS} is absent")
    frame = pd.read_csv(THREADS, dtype=str, nrows=ROWS, keep_default_na=False)
    folder = tmp_path_factory.mktemp("threads")
    frame.to_csv(folder / "threads.csv", index=False)
    customers = frame[frame["inbound"].str.lower().eq("true")]
    customers.to_csv(folder / "customers.csv", index=False)
    return folder / "threads.csv", folder / "customers.csv"


@pytest.fixture(scope="module")
def runs(prefect_api, threads, tmp_path_factory):
    source, _ = threads
    artifacts = tmp_path_factory.mktemp("artifacts")
    settings = {"clustering": {"k_min": 3, "k_max": 8, "selection_sample": 1500}}
    with_replies, _ = run(small_params(source, artifacts, **settings))
    alone, states = run(
        small_params(
            source, artifacts, clustering={**settings["clustering"], "reply_weight": 0}
        )
    )
    return artifacts, with_replies, alone, states


def test_replies_are_counted_and_linked(runs, threads) -> None:
    _, result, _, _ = runs
    frame = pd.read_csv(threads[0], dtype=str, keep_default_na=False)
    c = result.counts
    assert c["rows_read"] == int(frame["inbound"].str.lower().eq("true").sum())
    assert c["replies_read"] == len(frame) - c["rows_read"]
    assert c["replies_read"] == c["replies_linked"] + c["replies_unlinked"]
    assert (
        c["replies_linked"]
        == c["replies_with_accepted"] + c["replies_with_quarantined"]
    )
    assert c["replies_linked"] > 0.95 * c["replies_read"]
    report = (Path(result.local_run_dir) / "report.md").read_text()
    assert f"brand replies read: {c['replies_read']}" in report


def test_word_vectors_learn_from_the_replies(runs, threads) -> None:
    from tasks.ml.embedding import DocumentEmbedder, stem_words
    from tasks.ml.text import tokenise

    _, result, _, _ = runs
    frame = pd.read_csv(threads[0], dtype=str, keep_default_na=False)
    inbound = frame["inbound"].str.lower().eq("true")

    def stems(texts: pd.Series) -> pd.Series:
        words = tokenise(texts).str.split(" ").explode().dropna()
        words = words[words.ne("")]
        return pd.Series(stem_words(words.to_numpy()))

    replies_only = set(
        stems(frame.loc[~inbound, "text"]).value_counts().loc[lambda n: n >= 10].index
    ) - set(stems(frame.loc[inbound, "text"]))
    assert replies_only, "the slice should hold words only the airline uses"
    embedder = DocumentEmbedder.load(Path(result.local_run_dir) / "model")
    assert replies_only <= set(embedder.vocab)


def test_clustering_uses_the_replies(runs) -> None:
    artifacts, with_replies, alone, states = runs
    # Only clustering and what follows it re-ran for the reply weight.
    assert states["features"] == "Cached" and states["clustering"] == "Completed"
    assert with_replies.counts["tweets_clustered_with_replies"] > 0
    assert alone.counts["tweets_clustered_with_replies"] == 0
    a = pd.read_parquet(Path(with_replies.local_run_dir) / "pseudo_labels.parquet")
    b = pd.read_parquet(Path(alone.local_run_dir) / "pseudo_labels.parquet")
    assert a["tweet_id"].equals(b["tweet_id"])
    assert not a["cluster_id"].equals(b["cluster_id"])
    clusters = json.loads((Path(with_replies.local_run_dir) / "run.json").read_text())
    assert clusters["counts"]["tweets_clustered_with_replies"] == (
        with_replies.counts["tweets_clustered_with_replies"]
    )


def test_the_classifier_learns_from_the_customer_tweet_alone(
    runs, threads, tmp_path
) -> None:
    from flows.batch_inference import batch_inference
    from tasks.serving.model import TweetClassifier

    artifacts, result, _, _ = runs
    bundle = Path(result.local_run_dir) / "model"
    model = TweetClassifier.load(bundle)
    assert model.classifier.n_features_in_ == model.embedder.dim
    written = {}
    for source in threads:
        out = tmp_path / f"{source.stem}.parquet"
        batch_inference(
            source=str(source),
            output=str(out),
            model=str(bundle),
            artifacts_dir=str(artifacts),
        )
        written[source.stem] = pd.read_parquet(out)
    # The same customer tweets get the same categories with or without the
    # airline's replies in the file: the replies never reach the classifier.
    full, alone = written["threads"], written["customers"]
    assert full["tweet_id"].equals(alone["tweet_id"])
    assert full["category"].equals(alone["category"])
    assert np.allclose(full["confidence"], alone["confidence"])
