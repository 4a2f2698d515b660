"""How many discovery tweets the word vectors need: quality against sample size.

For each ``features.train_sample`` value, runs the real retrain flow (one
Word2Vec thread, seed 42) on every labelled corpus of ``make quality`` (k
automatic) and the support threads -> airline complaints transfer, and, with
``--scale N``, on the generated N-tweet support file of ``make bench-scale``
(NMI against the generator's subjects). Prints one table: the sample size, the
corpus, k, NMI, ARI, F1 and seconds. The labelled corpora are smaller than the
larger samples: a sample at least their size learns from all their tweets.

Usage: ``python -m bench.sample_size [--sizes 10000,25000,0] [--scale N]``
(0: every discovery tweet).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from sklearn.metrics import normalized_mutual_info_score

from bench import quality, scale_bench, scale_data


def scale_row(n: int, size: int, seed: int = 42) -> dict:
    """The retrain flow on the generated N-tweet file; NMI against its subjects."""
    source = scale_bench.scale_file(n)
    corpus = quality.Corpus(f"generated support file, N = {n:,}", str(source), 6, len)
    artifacts = Path(tempfile.mkdtemp(prefix="tweetflow-sample-"))
    try:
        result, seconds = quality.run_retrain(
            corpus, "auto", artifacts, seed, features={"train_sample": size}
        )
        labels = pd.read_parquet(Path(result.local_run_dir) / "pseudo_labels.parquet")
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    subjects = pd.read_parquet(scale_data.subjects_path(source))
    scored = labels.merge(subjects, on="tweet_id")
    scored = scored[scored["cluster_id"] >= 0]
    return {
        "corpus": corpus.name,
        "k": result.k,
        "nmi": float(
            normalized_mutual_info_score(scored["subject"], scored["cluster_id"])
        ),
        "ari": float("nan"),
        "f1": float("nan"),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,25000,50000,0")
    parser.add_argument("--scale", type=int, default=0, help="generated file size N")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    from bench.retrain_bench import start_api

    start_api()
    airline = quality.airline_corpus()
    corpora = [quality.bundled_corpus()] + ([airline] if airline else [])
    rows = []
    print("| word-vector sample | corpus | k | NMI | ARI | F1 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        settings = {"features": {"train_sample": size}}
        found = [
            quality.evaluate(c, "auto", args.seed, settings=settings) for c in corpora
        ]
        if airline is not None:
            transfer = quality.evaluate_transfer(
                airline, 0.5, args.seed, settings=settings
            )
            found += [transfer] if transfer else []
        if args.scale:
            found.append(scale_row(args.scale, size, args.seed))
        for row in found:
            row["train_sample"] = size or "all"
            print(
                f"| {row['train_sample']} | {row['corpus']} | {row['k']} | "
                f"{row['nmi']:.3f} | {row['ari']:.3f} | {row['f1']:.1f} | "
                f"{row['seconds']:.1f} |",
                flush=True,
            )
        rows += found
    out = quality.REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "sample_size.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
