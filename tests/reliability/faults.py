"""The reliability suite's table: each test records what it tried and how it ended.

``record(fault, tried=..., recovered=..., refused=..., rows_lost=...,
corrupted_reads=...)`` adds to one row per fault; ``make test-reliability``
prints the table at the end of the session (``pytest_terminal_summary`` in
``conftest.py``) and writes it to ``bench/results/reliability.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HEADER = (
    "fault",
    "cases tried",
    "recovered",
    "refused cleanly",
    "rows lost",
    "corrupted reads",
)


@dataclass
class FaultRow:
    """Totals for one kind of fault."""

    tried: int = 0
    recovered: int = 0
    refused: int = 0
    rows_lost: int = 0
    corrupted_reads: int = 0
    notes: list[str] = field(default_factory=list)


TABLE: dict[str, FaultRow] = {}


def record(
    fault: str,
    *,
    tried: int = 1,
    recovered: int = 0,
    refused: int = 0,
    rows_lost: int = 0,
    corrupted_reads: int = 0,
    note: str | None = None,
) -> None:
    """Add one test's cases to the row of ``fault``."""
    row = TABLE.setdefault(fault, FaultRow())
    row.tried += tried
    row.recovered += recovered
    row.refused += refused
    row.rows_lost += rows_lost
    row.corrupted_reads += corrupted_reads
    if note:
        row.notes.append(note)


def markdown() -> str:
    """The table as Markdown, one row per fault in the order first recorded."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for fault, row in TABLE.items():
        cells = (
            fault,
            row.tried,
            row.recovered,
            row.refused,
            row.rows_lost,
            row.corrupted_reads,
        )
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def write(path: Path) -> None:
    """Write the table (and the notes) to ``path``."""
    notes = [f"- {fault}: {n}" for fault, row in TABLE.items() for n in row.notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown() + ("\n\n" + "\n".join(notes) if notes else "") + "\n")
