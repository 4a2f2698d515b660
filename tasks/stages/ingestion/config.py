"""Ingestion settings and the error a bad source raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tasks.infra.errors import InputError


class SourceError(InputError):
    """The source cannot be read as tweets (missing, unreadable, wrong columns)."""


class IngestionConfig(BaseModel):
    """How to read the source."""

    model_config = ConfigDict(extra="forbid")

    text_column: str | None = Field(
        None, description="Column holding the tweet text (default: text)."
    )
    id_column: str | None = Field(
        None,
        description="Column holding the tweet id (default: tweet_id or id; "
        "ids are derived from the text when absent).",
    )
    encoding: str = Field(
        "auto",
        description="Text encoding of CSV/JSONL sources; 'auto' follows a "
        "byte-order mark (UTF-8/16/32), else tries UTF-8, then Windows-1252, "
        "then Latin-1.",
    )
    reply_depth: int = Field(
        3,
        ge=1,
        le=20,
        description="Customer-support files: how many brand replies up a thread a "
        "reply may be from the customer tweet it is linked to.",
    )
