"""Mapping a source frame onto the raw schema: text, ids, and brand replies apart."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tasks.infra.lazy import np, pd
from tasks.stages.ingestion.config import IngestionConfig, SourceError
from tasks.stages.ingestion.threads import REPLY_COLUMNS

CUSTOMER_SUPPORT_COLUMNS = {"tweet_id", "author_id", "inbound", "text"}
DEFAULT_TEXT_COLUMNS = ("text", "tweet", "content", "body")
DEFAULT_ID_COLUMNS = ("tweet_id", "id", "id_str")


def shown_columns(columns: object, limit: int = 10) -> str:
    """Column names for a one-line message: at most ``limit``, non-printable
    characters escaped, long names cut."""
    names = [str(c) for c in columns]  # type: ignore[attr-defined]
    shown = []
    for name in names[:limit]:
        text = name if name.isprintable() else ascii(name)[1:-1]
        shown.append(text if len(text) <= 40 else text[:37] + "...")
    more = f", ... ({len(names):,} columns)" if len(names) > limit else ""
    return (", ".join(shown) + more) or "none"


def derive_ids(texts: pd.Series) -> pd.Series:
    """Deterministic ids from the text (blake2b), for sources without ids."""
    return pd.Series(
        [
            "h" + hashlib.blake2b(str(t).encode("utf-8"), digest_size=8).hexdigest()
            for t in texts
        ],
        index=texts.index,
        dtype="str",
    )


def _as_str(series: pd.Series) -> pd.Series:
    """Strings with missing values kept missing (ids like 1.0 from JSON become 1)."""
    if pd.api.types.is_float_dtype(series) and series.dropna().mod(1).eq(0).all():
        series = series.astype("Int64")
    return series.astype("str").where(series.notna(), None).astype("str")


REPLY_SOURCE_COLUMNS = ["tweet_id", "in_response_to_tweet_id", "author_id", "text"]
TWEET_SOURCE_COLUMNS = ["tweet_id", "author_id", "created_at", "text"]


def _rows(df: pd.DataFrame, keep: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The ``keep`` rows of the ``columns`` that ``df`` has, index kept.

    Filtered in Arrow: a million-row text frame is not copied through pandas
    (whose row selection holds several copies at once).
    """
    import pyarrow as pa

    present = [c for c in dict.fromkeys(columns) if c in df.columns]
    try:
        table = pa.Table.from_pandas(df[present], preserve_index=False)
    except (pa.ArrowException, ValueError):  # mixed objects (JSON): pandas does it
        return df.loc[keep, present]
    frame = table.filter(pa.array(keep)).to_pandas()
    frame.index = df.index[keep]
    return frame


@dataclass(frozen=True)
class NormalisedFile:
    """One source file in the raw schema: its tweets and any brand replies."""

    tweets: pd.DataFrame
    replies: pd.DataFrame  # REPLY_COLUMNS plus source, source_row
    outbound: int


def no_replies() -> pd.DataFrame:
    """An empty frame of brand replies."""
    return pd.DataFrame(
        {c: pd.Series([], dtype="str") for c in REPLY_COLUMNS}
        | {"source": pd.Series([], dtype="str")}
        | {"source_row": pd.Series([], dtype="int64")}
    )


def normalise_frame(
    df: pd.DataFrame, config: IngestionConfig, source_name: str
) -> NormalisedFile:
    """Map a source frame onto the raw schema, setting brand replies apart."""
    columns = set(df.columns)
    replies = no_replies()
    outbound = 0
    text_col: str | None
    id_col: str | None
    if config.text_column is None and columns >= CUSTOMER_SUPPORT_COLUMNS:
        inbound = (
            df["inbound"].astype("str").str.strip().str.lower().isin(["true", "1"])
        )
        outbound = int((~inbound).sum())
        if outbound:
            brand = _rows(df, ~inbound.to_numpy(), REPLY_SOURCE_COLUMNS)
            parent = (
                _as_str(brand["in_response_to_tweet_id"])
                if "in_response_to_tweet_id" in columns
                else pd.Series(None, index=brand.index, dtype="str")
            )
            replies = pd.DataFrame(
                {
                    "reply_id": _as_str(brand["tweet_id"]),
                    "in_response_to": parent.str.strip().replace("", None),
                    "author_id": _as_str(brand["author_id"]),
                    "text": _as_str(brand["text"]).fillna(""),
                    "source": source_name,
                    "source_row": brand.index.to_numpy().astype("int64"),
                }
            ).reset_index(drop=True)
            for column in REPLY_COLUMNS:
                replies[column] = replies[column].astype("str")
        df = _rows(
            df, inbound.to_numpy(), TWEET_SOURCE_COLUMNS + [config.id_column or ""]
        )
        text_col, id_col = "text", config.id_column or "tweet_id"
    else:
        text_col = config.text_column or next(
            (c for c in DEFAULT_TEXT_COLUMNS if c in columns), None
        )
        if text_col is None or text_col not in columns:
            wanted = config.text_column or "text"
            raise SourceError(
                f"{source_name}: no text column {wanted!r} "
                f"(columns: {shown_columns(df.columns)}); "
                "name it with --text-column"
            )
        id_col = config.id_column or next(
            (c for c in DEFAULT_ID_COLUMNS if c in columns), None
        )
        if config.id_column and config.id_column not in columns:
            raise SourceError(f"{source_name}: no id column {config.id_column!r}")
    text = _as_str(df[text_col])
    ids = derive_ids(text.fillna("")) if id_col is None else _as_str(df[id_col])
    missing_id = ids.isna() | ids.eq("")
    if missing_id.any():
        ids = ids.where(~missing_id, derive_ids(text.fillna("")))
    out = pd.DataFrame(
        {
            "tweet_id": ids.astype("str"),
            "author_id": _as_str(df["author_id"]) if "author_id" in columns else None,
            "created_at": (
                _as_str(df["created_at"]) if "created_at" in columns else None
            ),
            "text": text,
            "source": source_name,
            "source_row": df.index.to_numpy().astype("int64"),
        }
    )
    out["author_id"] = out["author_id"].astype("str")
    out["created_at"] = out["created_at"].astype("str")
    return NormalisedFile(out.reset_index(drop=True), replies, outbound)
