"""Validate frames against contracts, splitting row-level failures into quarantine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.infra.lazy import pd

if TYPE_CHECKING:
    import pandera.pandas as pa

QUARANTINE_COLUMNS = [
    "tweet_id",
    "text",
    "source",
    "source_row",
    "n_replies",
    "stage",
    "reason",
]


class ContractViolation(Exception):
    """A frame broke its contract in a way that no quarantine can absorb."""

    def __init__(self, stage: str, contract: str, failure_cases: pd.DataFrame) -> None:
        self.stage = stage
        self.contract = contract
        self.failure_cases = failure_cases.reset_index(drop=True)
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        grouped = self.failure_cases.groupby(
            [self.failure_cases["column"].fillna("<frame>"), "check"], sort=True
        )
        for (column, check), group in grouped:
            examples = ", ".join(repr(v) for v in group["failure_case"].head(3))
            parts.append(
                f"column {column!r} failed {check} ({len(group)} cases, e.g. {examples})"
            )
        detail = "; ".join(parts) or "unknown failure"
        return (
            f"contract {self.contract!r} violated by the output of stage "
            f"{self.stage!r}: {detail}"
        )

    def as_table(self, limit: int = 50) -> list[dict[str, str]]:
        """Failure cases as rows of strings, for a Prefect table artifact."""
        rows = self.failure_cases.head(limit)
        return [
            {
                "column": str(r.get("column")),
                "check": str(r.get("check")),
                "failure_case": str(r.get("failure_case")),
                "index": str(r.get("index")),
            }
            for r in rows.to_dict("records")
        ]


def _without_geopandas() -> None:
    """Let pandera's dtype checks skip geopandas quickly when it is not installed.

    For a dtype it has not registered (NumPy's float32, every vector column)
    pandera tries ``from geopandas.array import GeometryDtype`` on every check;
    a failed import is not remembered, so each one searches every folder of
    ``sys.path`` again (about 0.1 ms per column per chunk). ``None`` in
    ``sys.modules`` is Python's own record of a module known to be absent.
    """
    import importlib.util
    import sys

    if "geopandas" not in sys.modules and importlib.util.find_spec("geopandas") is None:
        sys.modules["geopandas"] = None  # type: ignore[assignment]


def _failure_cases(schema: pa.DataFrameSchema, df: pd.DataFrame) -> pd.DataFrame:
    from pandera.errors import SchemaError, SchemaErrors

    _without_geopandas()
    try:
        schema.validate(df, lazy=True)
    except SchemaErrors as exc:
        return exc.failure_cases
    except SchemaError as exc:  # pragma: no cover - lazy mode collects instead
        return pd.DataFrame(
            [{"column": None, "check": str(exc), "failure_case": None, "index": None}]
        )
    return pd.DataFrame(columns=["column", "check", "failure_case", "index"])


def validate_frame(df: pd.DataFrame, schema: pa.DataFrameSchema, stage: str) -> None:
    """Raise ContractViolation if ``df`` breaks ``schema`` in any way."""
    cases = _failure_cases(schema, df)
    if len(cases):
        raise ContractViolation(stage, schema.name or "unnamed", cases)


def split_quarantine(
    df: pd.DataFrame, schema: pa.DataFrameSchema, stage: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into rows that pass ``schema`` and quarantined rows with reasons.

    Frame-level failures (missing or unexpected columns, wrong dtypes) cannot be
    pinned on rows and raise ContractViolation. The returned quarantine frame has
    the columns in ``QUARANTINE_COLUMNS``.
    """
    cases = _failure_cases(schema, df)
    if not len(cases):
        return df, empty_quarantine()
    frame_level = cases[cases["index"].isna()]
    if len(frame_level):
        raise ContractViolation(stage, schema.name or "unnamed", frame_level)
    reasons = (
        cases.assign(reason=cases["column"].astype(str) + ": " + cases["check"])
        .groupby("index")["reason"]
        .agg(lambda r: "; ".join(sorted(set(r))))
    )
    bad = df.index.isin(reasons.index)
    quarantined = df.loc[bad]
    quarantine = make_quarantine(
        quarantined, stage, reasons.reindex(quarantined.index).to_numpy()
    )
    return df.loc[~bad], quarantine


def empty_quarantine() -> pd.DataFrame:
    """An empty quarantine frame with the standard columns and dtypes."""
    return pd.DataFrame(
        {
            "tweet_id": pd.Series([], dtype="str"),
            "text": pd.Series([], dtype="str"),
            "source": pd.Series([], dtype="str"),
            "source_row": pd.Series([], dtype="int64"),
            "n_replies": pd.Series([], dtype="int64"),
            "stage": pd.Series([], dtype="str"),
            "reason": pd.Series([], dtype="str"),
        }
    )


def make_quarantine(rows: pd.DataFrame, stage: str, reasons: object) -> pd.DataFrame:
    """Build quarantine records for ``rows`` with one reason each (or a shared one)."""
    if not len(rows):
        return empty_quarantine()
    out = pd.DataFrame(
        {
            "tweet_id": rows["tweet_id"].astype("str"),
            "text": rows["text"].astype("str"),
            "source": rows["source"].astype("str"),
            "source_row": rows["source_row"].astype("int64"),
            # The brand replies that answered a set-aside tweet go with it.
            "n_replies": (
                rows["n_replies"].fillna(0).astype("int64")
                if "n_replies" in rows
                else 0
            ),
        }
    ).reset_index(drop=True)
    out["stage"] = stage
    out["reason"] = reasons if isinstance(reasons, str) else list(reasons)  # type: ignore[call-overload]
    return out[QUARANTINE_COLUMNS].astype(
        {"stage": "str", "reason": "str", "tweet_id": "str", "text": "str"}
    )


def check_row_accounting(counts: dict[str, int], kept: str) -> None:
    """Nothing lost: ``rows_read`` must equal ``kept`` + quarantined + duplicates.

    When the counts hold brand replies, ``replies_read`` must equal linked +
    unlinked, and the linked ones must sit with accepted or quarantined tweets.
    Raises RuntimeError (a bug, not bad input) naming every count otherwise.
    """
    parts = counts[kept] + counts["quarantined"] + counts["duplicates_removed"]
    if parts != counts["rows_read"]:
        raise RuntimeError(f"row accounting does not add up: {counts}")
    if "replies_read" not in counts:
        return
    linked = counts["replies_linked"]
    if counts["replies_read"] != linked + counts["replies_unlinked"] or linked != (
        counts["replies_with_accepted"] + counts["replies_with_quarantined"]
    ):
        raise RuntimeError(f"reply accounting does not add up: {counts}")
