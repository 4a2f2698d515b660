"""One pandera schema per stage boundary.

Text columns are declared as ``str`` (pandas 3 stores text with the ``str`` dtype).
Row-level checks (nullability, lengths, value sets, uniqueness) are what the
quarantine helper can split off; column presence and dtypes are frame-level and
fail the stage. The schemas are built on first use, so importing the project
does not import pandera (about half a second).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandera.pandas as pa

SPLITS = ("discovery", "validation", "evaluation")
MAX_TEXT_CHARS = 2000


@lru_cache(maxsize=1)
def contracts() -> dict[str, pa.DataFrameSchema]:
    """Every contract by name (built once)."""
    import pandera.pandas as pa

    RAW = pa.DataFrameSchema(
        {
            "tweet_id": pa.Column(
                str, pa.Check.str_length(min_value=1), nullable=False
            ),
            "author_id": pa.Column(str, nullable=True),
            "created_at": pa.Column(str, nullable=True),
            "text": pa.Column(str, nullable=False),
            "source": pa.Column(str, nullable=False),
            "source_row": pa.Column("int64", pa.Check.ge(0)),
            # Customer-support files: the brand replies answering the tweet.
            "context": pa.Column(str, nullable=True),
            "n_replies": pa.Column("int64", pa.Check.ge(0)),
        },
        strict=True,
        ordered=False,
        name="raw",
    )

    PREPARED = pa.DataFrameSchema(
        {
            "tweet_id": pa.Column(str, unique=True, nullable=False),
            "text": pa.Column(
                str,
                pa.Check.str_length(min_value=1, max_value=MAX_TEXT_CHARS),
                nullable=False,
            ),
            "split": pa.Column(str, pa.Check.isin(SPLITS)),
            "source": pa.Column(str),
            "source_row": pa.Column("int64", pa.Check.ge(0)),
            "context": pa.Column(str, nullable=True),
            "n_replies": pa.Column("int64", pa.Check.ge(0)),
        },
        strict=True,
        name="prepared",
    )

    PREPROCESSED = pa.DataFrameSchema(
        {
            "tweet_id": pa.Column(str, unique=True, nullable=False),
            "split": pa.Column(str, pa.Check.isin(SPLITS)),
            "tokens": pa.Column(str, nullable=False),
            "n_tokens": pa.Column("int64", pa.Check.ge(0)),
            "context_tokens": pa.Column(str, nullable=False),
            "n_replies": pa.Column("int64", pa.Check.ge(0)),
        },
        strict=True,
        name="preprocessed",
    )

    FEATURES = pa.DataFrameSchema(
        {
            "tweet_id": pa.Column(str, unique=True, nullable=False),
            "split": pa.Column(str, pa.Check.isin(SPLITS)),
            "n_known": pa.Column("int64", pa.Check.ge(0)),
            r"^f\d{3}$": pa.Column(
                "float32", pa.Check(lambda s: s.notna() & s.abs().lt(1e6)), regex=True
            ),
        },
        strict=True,
        name="features",
    )

    # The conversation view: the mean vector of each tweet's replies (tweets whose
    # replies have a known word only), in the tweets' order, with the tweet's row
    # in the features frame.
    CONTEXT_FEATURES = pa.DataFrameSchema(
        {
            "tweet_id": pa.Column(str, unique=True, nullable=False),
            "row": pa.Column("int64", [pa.Check.ge(0)], unique=True),
            r"^r\d{3}$": pa.Column(
                "float32", pa.Check(lambda s: s.notna() & s.abs().lt(1e6)), regex=True
            ),
        },
        strict=True,
        name="context_features",
    )

    CLUSTER_ASSIGNMENTS = pa.DataFrameSchema(
        {
            "tweet_id": pa.Column(str, unique=True, nullable=False),
            "split": pa.Column(str, pa.Check.isin(SPLITS)),
            "cluster_id": pa.Column("int64", pa.Check.ge(-1)),
            "distance": pa.Column("float64", pa.Check.ge(0), nullable=True),
        },
        strict=True,
        name="cluster_assignments",
    )

    PSEUDO_LABELS = pa.DataFrameSchema(
        {
            "tweet_id": pa.Column(str, unique=True, nullable=False),
            "split": pa.Column(str, pa.Check.isin(SPLITS)),
            "text": pa.Column(str, pa.Check.str_length(min_value=1)),
            "cluster_id": pa.Column("int64", pa.Check.ge(-1)),
            "category": pa.Column(str, pa.Check.str_length(min_value=1)),
        },
        strict=True,
        name="pseudo_labels",
    )

    PREDICTIONS = pa.DataFrameSchema(
        {
            "tweet_id": pa.Column(str, unique=True, nullable=False),
            "text": pa.Column(str),
            "category": pa.Column(str, pa.Check.str_length(min_value=1)),
            "cluster_id": pa.Column("int64", pa.Check.ge(-1)),
            "confidence": pa.Column("float64", pa.Check.in_range(0.0, 1.0)),
            "model_version": pa.Column(str, pa.Check.str_length(min_value=1)),
        },
        strict=True,
        name="predictions",
    )
    return {
        schema.name: schema
        for schema in (
            RAW,
            PREPARED,
            PREPROCESSED,
            FEATURES,
            CONTEXT_FEATURES,
            CLUSTER_ASSIGNMENTS,
            PSEUDO_LABELS,
            PREDICTIONS,
        )
    }


def get_contract(name: str) -> pa.DataFrameSchema:
    """Return the schema registered under ``name``."""
    try:
        return contracts()[name]
    except KeyError:
        raise KeyError(
            f"unknown contract {name!r}; known: {', '.join(sorted(contracts()))}"
        ) from None
