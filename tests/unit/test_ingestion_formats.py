"""Unit tests of the ingestion helpers for compressed files, encodings and
hostile headers (the whole cases run in tests/reliability/test_hostile_inputs.py)."""

from __future__ import annotations

import bz2
import gzip
import zipfile
from pathlib import Path

import pytest

from tasks.stages.ingestion import IngestionConfig, SourceError, ingest_frame
from tasks.stages.ingestion.readers import bom_encoding, content, content_head
from tasks.stages.ingestion.schema import shown_columns
from tasks.stages.ingestion.sources import SourceFile, resolve_source

CSV = "tweet_id,text\n1,my bag is lost\n2,refund please\n"


@pytest.mark.parametrize(
    ("name", "compression", "suffix"),
    [
        ("a.csv", None, ".csv"),
        ("a.csv.gz", "gzip", ".csv"),
        ("a.jsonl.bz2", "bz2", ".jsonl"),
        ("A.CSV.GZ", "gzip", ".csv"),
    ],
)
def test_source_file_names_its_format_inside_the_compression(
    name: str, compression: str | None, suffix: str
) -> None:
    source = SourceFile(f"/data/{name}")
    assert (source.compression, source.suffix) == (compression, suffix)


def test_byte_order_marks() -> None:
    assert bom_encoding("x".encode("utf-16")) == "utf-16"
    assert bom_encoding("x".encode("utf-32")) == "utf-32"
    assert bom_encoding("x".encode("utf-8-sig")) == "utf-8-sig"
    assert bom_encoding(b"tweet_id") is None


def test_compressed_files_read_like_plain_ones(tmp_path: Path) -> None:
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(CSV.encode()))
    (tmp_path / "b.csv.bz2").write_bytes(bz2.compress(CSV.replace("1,", "3,").encode()))
    with zipfile.ZipFile(tmp_path / "twcs.zip", "w") as archive:
        archive.writestr("__MACOSX/._twcs.csv", b"\x00junk")
        archive.writestr("twcs/twcs.csv", CSV.replace("2,", "4,"))
    (tmp_path / "ignored.txt").write_text("not data")
    files = resolve_source(str(tmp_path))
    assert [f.name for f in files] == ["a.csv.gz", "b.csv.bz2", "twcs.zip"]
    assert files[2].member == "twcs/twcs.csv"
    assert content(files[0]) == CSV.encode()
    assert content_head(files[2], 8) == CSV.encode()[:8]
    result = ingest_frame(str(tmp_path), IngestionConfig())
    assert result.rows_read == 6 and len(result.raw) == 6


def test_zip_without_exactly_one_data_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(SourceError, match="holds 0 .* exactly one"):
        resolve_source(str(path))
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(SourceError, match="not a readable zip"):
        resolve_source(str(tmp_path / "bad.zip"))


def test_shown_columns_stay_on_one_short_line() -> None:
    shown = shown_columns([f"c{i}" for i in range(50)] + ["a\nb"])
    assert shown.endswith("... (51 columns)") and "\n" not in shown
    assert shown_columns(["a\nb", "x" * 100]) == "a\\nb, " + "x" * 37 + "..."
    assert shown_columns([]) == "none"
