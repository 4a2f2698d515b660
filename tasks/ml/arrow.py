"""Text columns as Arrow arrays, for the tokeniser and the embedder alike.

A module of its own: a stage's cache key follows the source of what it
imports, so editing the tokeniser does not invalidate the embedding stages.
"""

from __future__ import annotations

from tasks.infra.lazy import pa, pd


def arrow_strings(text: pd.Series) -> pa.LargeStringArray:
    """A text column as one Arrow array of large strings (missing values null)."""
    values = pa.array(text.astype("str").array, pa.large_string())
    if isinstance(values, pa.ChunkedArray):  # e.g. after pd.concat
        values = values.combine_chunks()
    return values
