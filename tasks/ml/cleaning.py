"""Cleaning tweet texts and setting aside rows nobody can use.

Shared by training (the preparation stage) and batch inference, so both see
the same texts: HTML entities unescaped, mojibake repaired (ftfy, only where
the text betrays it), whitespace and control characters normalised. The two
regexes run as RE2 over the whole column in Arrow.
"""

from __future__ import annotations

import html
import re

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import make_quarantine
from data_contracts.schemas import MAX_TEXT_CHARS
from tasks.infra.lazy import np, pa, pc, pd
from tasks.infra.parallel import map_ordered

STAGE = "preparation"
# Characters that betray mis-decoded UTF-8; only these rows go through ftfy.
MOJIBAKE_HINT = re.compile(r"[\u00c2-\u00c3\u00e2][\u0080-\u00bf]|\u00e2\u20ac")
# C0/C1 control characters, zero-width marks and any run of whitespace.
SPACE_LIKE = re.compile(
    r"[\s\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\ufeff]+"
)
# The same two patterns in RE2 syntax, run by Arrow over the whole column (tests
# check them against the Python ones code point by code point). SPACE_RUN_RE2
# leaves out the runs that are already one " ", so most tweets have no match.
MOJIBAKE_HINT_RE2 = r"[\x{c2}\x{c3}\x{e2}][\x{80}-\x{bf}]|\x{e2}\x{20ac}"
_SPACE_LIKE_NOT_SPACE_RE2 = (
    r"\x00-\x1f\x7f-\xa0\x{1680}\x{2000}-\x{200f}"
    r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}"
)
SPACE_RUN_RE2 = (
    rf"[{_SPACE_LIKE_NOT_SPACE_RE2}][ {_SPACE_LIKE_NOT_SPACE_RE2}]*"
    rf"| [ {_SPACE_LIKE_NOT_SPACE_RE2}]+"
)


class CleaningConfig(BaseModel):
    """Text cleaning settings (training and batch inference share them)."""

    model_config = ConfigDict(extra="forbid")

    fix_mojibake: bool = Field(
        True, description="Repair mis-decoded UTF-8 (mojibake) with ftfy."
    )
    max_chars: int = Field(
        MAX_TEXT_CHARS,
        ge=1,
        le=MAX_TEXT_CHARS,
        description="Texts longer than this after cleaning are quarantined.",
    )


def clean_text(text: pd.Series, fix_mojibake: bool = True) -> pd.Series:
    """Unescape HTML entities, repair mojibake and normalise whitespace.

    Exactly ``_clean_text_reference``, with the two regexes run as RE2 over the
    whole column; html.unescape and ftfy see only the rows that can need them.
    """
    out = text.astype("str")
    has_entity = out.str.contains("&", regex=False)
    if has_entity.any():
        out = out.where(~has_entity, out[has_entity].map(html.unescape))
    if fix_mojibake:
        hint = pc.match_substring_regex(pa.array(out.array), MOJIBAKE_HINT_RE2)
        suspicious = pd.Series(
            hint.fill_null(False).to_numpy(zero_copy_only=False), index=out.index
        )
        if suspicious.any():
            import ftfy  # only when a text needs it

            out = out.where(~suspicious, out[suspicious].map(ftfy.fix_text))
    spaced = pc.replace_substring_regex(pa.array(out.array), SPACE_RUN_RE2, " ")
    return pd.Series(spaced, index=out.index, name=out.name, dtype="str").str.strip()


def clean_column(
    text: pd.Series, fix_mojibake: bool = True, chunk: int = 100_000
) -> pd.Series:
    """``clean_text`` over a long column, ``chunk`` rows at a time on every core
    (its regexes run in Arrow, which releases the interpreter lock)."""
    if len(text) <= chunk:
        return clean_text(text, fix_mojibake)
    parts = (text.iloc[start : start + chunk] for start in range(0, len(text), chunk))
    return pd.concat(map_ordered(lambda part: clean_text(part, fix_mojibake), parts))


def _clean_text_reference(text: pd.Series, fix_mojibake: bool = True) -> pd.Series:
    """The specification of ``clean_text``: one Python regex per row and step."""
    out = text.astype("str")
    has_entity = out.str.contains("&", regex=False)
    out = out.where(~has_entity, out[has_entity].map(html.unescape))
    if fix_mojibake:
        suspicious = out.str.contains(MOJIBAKE_HINT)
        if suspicious.any():
            import ftfy

            out = out.where(~suspicious, out[suspicious].map(ftfy.fix_text))
    return out.str.replace(SPACE_LIKE, " ", regex=True).str.strip()


EMPTY_REASON = "text is empty after cleaning"
CONFLICT_REASON = "tweet_id repeated with a different text"


def too_long_reason(config: CleaningConfig) -> str:
    """The quarantine reason of a text longer than ``config.max_chars``."""
    return f"text longer than {config.max_chars} characters"


def clean_and_check(
    raw: pd.DataFrame, config: CleaningConfig, cleaned: pd.Series | None = None
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Clean the texts and set aside rows nobody can use; shared with inference.

    Returns the usable rows and the quarantine frames (with reasons): texts empty
    after cleaning, texts too long, and ids repeated with different texts.
    ``cleaned``: the texts already cleaned (``clean_column``), row for row.
    """
    text = (
        clean_column(raw["text"], config.fix_mojibake)
        if cleaned is None
        else cleaned.set_axis(raw.index)
    )
    empty = text.eq("").to_numpy()
    too_long = text.str.len().gt(config.max_chars).to_numpy()

    def rows(mask: np.ndarray) -> pd.DataFrame:
        return raw[mask].assign(text=text[mask])

    quarantined = [
        make_quarantine(rows(empty), STAGE, EMPTY_REASON),
        make_quarantine(rows(too_long), STAGE, too_long_reason(config)),
    ]
    # The same id with different texts is a conflict nobody can resolve here.
    ok = np.flatnonzero(~(empty | too_long))
    ids = raw["tweet_id"].iloc[ok]
    shared = ids.duplicated(keep=False).to_numpy()
    conflict = np.zeros(len(raw), dtype=bool)
    if shared.any():
        pairs = pd.DataFrame(
            {"id": ids[shared].to_numpy(), "text": text.iloc[ok[shared]].to_numpy()}
        )
        texts_per_id = pairs.groupby("id")["text"].transform("nunique").to_numpy()
        conflict[ok[shared][texts_per_id > 1]] = True
    quarantined.append(make_quarantine(rows(conflict), STAGE, CONFLICT_REASON))
    return rows(~(empty | too_long | conflict)), quarantined
