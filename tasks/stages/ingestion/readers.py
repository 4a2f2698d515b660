"""Reading one source file (CSV, JSONL, Parquet; local or S3) into a frame."""

from __future__ import annotations

import io
from typing import Any

from tasks.infra import storage
from tasks.infra.lazy import pa, pd
from tasks.infra.progress import current
from tasks.stages.ingestion.config import SourceError
from tasks.stages.ingestion.sources import SourceFile

PREVIEW_BYTES = 1 << 20  # what the pre-flight check reads of a CSV/JSONL file
CSV_CHUNK_ROWS = 500_000  # rows parsed between two progress updates (pandas reader)
CSV_BLOCK_BYTES = 16 << 20  # bytes Arrow's CSV reader parses per block and thread
MAX_PREVIEW_BYTES = 64 << 20  # the most the pre-flight reads for one row
MAX_COLUMNS = 1000  # a tweet file has a handful; more is a mangled file
SNIFF_BYTES = 4096  # what the binary-content check looks at
# Byte-order marks, longest first (UTF-32 LE starts with UTF-16 LE's mark).
BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
AUTO_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


def bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark at the start of ``head`` names, if any."""
    return next((name for bom, name in BOMS if head.startswith(bom)), None)


def _candidates(head: bytes, encoding: str) -> list[str]:
    """The encodings to try, in order: the given one, else the byte-order mark's,
    else UTF-8, Windows-1252 and Latin-1."""
    if encoding != "auto":
        return [encoding]
    bom = bom_encoding(head)
    return [bom] if bom else list(AUTO_ENCODINGS)


def _check_text_like(head: bytes, encoding: str, name: str) -> None:
    """Refuse content that is plainly not text: many control bytes (random or
    binary data, a compressed file with a text extension, UTF-16 without a mark)."""
    if encoding != "auto" or bom_encoding(head) in ("utf-16", "utf-32"):
        return
    sample = head[:SNIFF_BYTES]
    if len(sample) < 256:
        return
    control = sum(sample.count(bytes([b])) for b in range(32) if b not in (9, 10, 13))
    if control / len(sample) > 0.10:
        raise SourceError(
            f"{name} does not look like text ({control / len(sample):.0%} control "
            f"bytes in its first {len(sample)}): a binary or compressed file with a "
            "text extension? (UTF-16 without a byte-order mark: --ingestion.encoding "
            "utf-16)"
        )


def _check_head(head: bytes, encoding: str, name: str) -> None:
    """Refuse an empty file, or one that is plainly not text."""
    if not head:
        raise SourceError(f"{name} is empty (0 bytes)")
    _check_text_like(head, encoding, name)


def _decode(raw: bytes, encoding: str, path: str, final: bool = True) -> str:
    """``raw`` as text in the first candidate encoding that decodes it; with
    ``final`` False a character cut at the end is left out (a preview)."""
    import codecs

    for candidate in _candidates(raw, encoding):
        try:
            return codecs.getincrementaldecoder(candidate)().decode(raw, final=final)
        except UnicodeDecodeError as exc:
            if encoding == "auto" and candidate != _candidates(raw, encoding)[-1]:
                continue
            raise SourceError(
                f"cannot decode {path} as {candidate}: {exc}{_hint(candidate)}"
            ) from None
        except LookupError:
            raise SourceError(f"unknown encoding {candidate!r} for {path}") from None
    raise AssertionError("latin-1 decodes any byte string")  # pragma: no cover


def _hint(encoding: str) -> str:
    """What to try when ``encoding`` was given and does not decode the file."""
    if encoding.replace("-", "").replace("_", "").lower() in ("utf8", "utf8sig"):
        return (
            "; if the file is Windows-1252, use --ingestion.encoding cp1252 "
            "(or auto, the default)"
        )
    return ""


def _decompress(source: SourceFile, data: bytes, limit: int | None) -> bytes:
    """Gzip or bzip2 content decompressed (its first ``limit`` bytes, if given;
    ``data`` is then the file's first bytes, or all of them when shorter)."""
    import bz2
    import gzip
    import zlib

    try:
        if limit is None:
            if source.compression == "gzip":
                return gzip.decompress(data)
            return bz2.decompress(data)
        decompressor: Any = (
            zlib.decompressobj(wbits=31)
            if source.compression == "gzip"
            else bz2.BZ2Decompressor()
        )
        out: bytes = decompressor.decompress(data, limit)
        if len(out) < limit and len(data) < limit and not decompressor.eof:
            raise EOFError("the compressed file is truncated")
        return out
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise SourceError(
            f"cannot decompress {source.uri} as {source.compression}: {exc}"
        ) from None


def _unzip(source: SourceFile, limit: int | None) -> bytes:
    """The zip archive's data file (its first ``limit`` bytes, if given)."""
    import zipfile
    import zlib

    with storage.open_binary(source.uri) as fh:
        try:
            with zipfile.ZipFile(fh) as archive, archive.open(source.member or "") as f:
                return f.read() if limit is None else f.read(limit)
        except (zipfile.BadZipFile, KeyError, EOFError, zlib.error) as exc:
            raise SourceError(f"cannot unzip {source.uri}: {exc}") from None
        except NotImplementedError as exc:  # a compression method zipfile lacks
            raise SourceError(f"cannot unzip {source.uri}: {exc}") from None


def content(source: SourceFile) -> bytes:
    """The file's whole content, decompressed."""
    if source.compression == "zip":
        return _unzip(source, None)
    data = storage.read_bytes(source.uri)
    return data if source.compression is None else _decompress(source, data, None)


def content_head(source: SourceFile, size: int) -> bytes:
    """The first ``size`` bytes of the file's decompressed content (fewer if shorter)."""
    if source.compression == "zip":
        return _unzip(source, size)
    if source.compression is None:
        return storage.read_head(source.uri, size)
    # A compressed prefix of ``size`` bytes decompresses to at least as much text.
    return _decompress(source, storage.read_head(source.uri, size), size)


def _preview(source: SourceFile, encoding: str, size: int) -> tuple[str, bool]:
    """The first ``size`` bytes of a text file decoded, cut after its last whole
    line; and whether that is less than the whole file."""
    data = content_head(source, size + 1)
    _check_head(data, encoding, source.uri)
    if len(data) <= size:
        return _decode(data, encoding, source.uri), False
    text = _decode(data[:size], encoding, source.uri, final=False)
    cut = text.rfind("\n")
    return (text[: cut + 1] if cut >= 0 else text), True


def _odd_quotes(data: Any) -> bool:
    """Whether a CSV (an Arrow input file) holds an odd number of quote bytes:
    a quoted field left open, which Arrow's reader would run on to the end of
    the file (the pandas reader names the row instead)."""
    data.seek(0)
    count = 0
    while chunk := data.read(64 << 20):
        count += chunk.count(b'"')
    data.seek(0)
    return count % 2 == 1


def _first_record(text: str) -> list[str]:
    """The first CSV record of ``text`` (the header), parsed like ``csv`` does."""
    import csv

    try:
        return next(csv.reader(io.StringIO(text)), [])
    except csv.Error:
        return []


def _check_columns(names: list[str], name: str) -> None:
    if len(names) > MAX_COLUMNS:
        raise SourceError(
            f"{name} has {len(names):,} columns in its header (at most "
            f"{MAX_COLUMNS:,} are read): a wrong delimiter or a mangled file?"
        )


def _read_csv_in_chunks(text: str, name: str) -> pd.DataFrame:
    """The whole CSV, ``CSV_CHUNK_ROWS`` rows at a time: the progress report
    moves on between chunks (the parser holds the interpreter while it works)."""
    progress = current()
    progress.phase(f"reading {name}", 1)
    parts = []
    with pd.read_csv(
        io.StringIO(text),
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        chunksize=CSV_CHUNK_ROWS,
    ) as reader:
        for part in reader:
            parts.append(part)
            progress.update(0, f"{sum(len(p) for p in parts):,} rows")
    return parts[0] if len(parts) == 1 else pd.concat(parts)


class _Unnamed(Exception):
    """The header row cannot name the columns plainly (empty, repeated names)."""


def _csv_columns(head: bytes, encoding: str) -> list[str] | None:
    """The header row's column names; None when it does not decode as ``encoding``.

    Raises ``_Unnamed`` when the names are empty or repeated.
    """
    import codecs
    import csv
    import re

    try:
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except (UnicodeDecodeError, LookupError):
        return None
    first = re.split(r"\r\n?|\n", text.removeprefix("\ufeff"), maxsplit=1)[0]
    try:
        names = next(csv.reader([first]), [])
    except csv.Error:
        raise _Unnamed from None
    if not names or len(set(names)) != len(names):
        raise _Unnamed
    return names


def _read_csv_arrow(
    source: SourceFile, encoding: str, head: bytes
) -> pd.DataFrame | None:
    """The whole CSV parsed by Arrow's multi-threaded reader, every column text.

    Same reading as ``_read_csv_in_chunks`` (empty fields missing, quoted
    newlines kept, a UTF-8 byte-order mark dropped) several times faster and
    without a decoded copy of the file. Returns None for what it does not read
    the same way (ragged rows, a header it cannot name); the caller then uses
    the pandas reader, and its messages. ``head`` is the file's first bytes.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    candidates = [
        "utf-8" if c == "utf-8-sig" else c for c in _candidates(head, encoding)
    ]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    data: Any = None
    for candidate in candidates:
        try:
            columns = _csv_columns(head, candidate)
        except _Unnamed:
            return None
        if columns is None:
            continue
        _check_columns(columns, source.uri)
        if data is None:
            data = (
                pa.BufferReader(content(source))
                if storage.is_remote(source.uri) or source.compression
                else pa.memory_map(str(storage.local_path(source.uri)))
            )
            if _odd_quotes(data):
                return None
        data.seek(0)
        try:
            table = pacsv.read_csv(
                data,
                read_options=pacsv.ReadOptions(
                    encoding=candidate, block_size=CSV_BLOCK_BYTES
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in columns},
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
        except UnicodeDecodeError:
            if encoding != "auto":
                raise
            continue
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc) and encoding == "auto":
                continue  # not UTF-8: the next encoding
            if "UTF8" in str(exc):
                raise UnicodeDecodeError(
                    encoding, b"", 0, 1, str(exc).splitlines()[0]
                ) from None
            return None
        if table.column_names != columns:
            return None
        return table.to_pandas()
    return None


def _read_jsonl(text: str, name: str, nrows: int | None) -> pd.DataFrame:
    """JSON Lines into a frame; a line that is not a JSON object is named."""
    import json

    try:
        return pd.read_json(io.StringIO(text), lines=True, dtype=False, nrows=nrows)
    except ValueError as exc:
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as err:
                raise SourceError(f"{name} line {number} is not JSON: {err}") from None
            if not isinstance(value, dict):
                raise SourceError(
                    f"{name} line {number} is JSON but not an object "
                    f"({type(value).__name__})"
                ) from None
        raise SourceError(f"cannot read {name} as jsonl: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_preview(source: SourceFile, encoding: str, nrows: int) -> pd.DataFrame:
    """The first ``nrows`` rows of a CSV or JSONL file, from its first megabyte;
    more (up to 64 MB) when no whole row fits in that (a very long field)."""
    size = PREVIEW_BYTES
    while True:
        text, truncated = _preview(source, encoding, size)
        if source.suffix == ".jsonl":
            frame = _read_jsonl(text, source.uri, nrows)
        else:
            _check_columns(_first_record(text[: 1 << 24]), source.uri)
            try:
                frame = pd.read_csv(
                    io.StringIO(text),
                    dtype=str,
                    keep_default_na=False,
                    na_values=[""],
                    nrows=nrows,
                )
            except pd.errors.ParserError:
                if not truncated or size >= MAX_PREVIEW_BYTES:
                    raise
                frame = None  # the preview ends inside a quoted field
        if frame is not None and (len(frame) or not truncated):
            return frame
        if size >= MAX_PREVIEW_BYTES:
            raise SourceError(
                f"{source.uri}: no whole row in its first "
                f"{MAX_PREVIEW_BYTES >> 20} MB"
            )
        size *= 8


def read_file(
    source: SourceFile, encoding: str = "auto", nrows: int | None = None
) -> pd.DataFrame:
    """Read one source file (or its first ``nrows`` rows) into a frame."""
    name = source.uri
    encoding = source.encoding or encoding
    try:
        if source.suffix == ".parquet":
            data = io.BytesIO(content(source))
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(data)
            _check_columns(parquet.schema_arrow.names, name)
            if nrows is not None:
                return next(parquet.iter_batches(batch_size=nrows)).to_pandas()
            data.seek(0)
            return pd.read_parquet(data)
        if nrows is not None:
            return _read_preview(source, encoding, nrows)
        raw: bytes | None = None
        if source.suffix == ".csv":
            current().phase(f"reading {name}", 1)
            head = content_head(source, 1 << 16)
            _check_head(head, encoding, name)
            try:
                frame = _read_csv_arrow(source, encoding, head)
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"cannot decode {name} as {encoding}: {exc}{_hint(encoding)}"
                ) from None
            if frame is not None:
                return frame
        else:
            raw = content(source)
            _check_head(raw[:SNIFF_BYTES], encoding, name)
        text = _decode(raw if raw is not None else content(source), encoding, name)
        if source.suffix == ".jsonl":
            return _read_jsonl(text, name, nrows)
        _check_columns(_first_record(text[: 1 << 24]), name)
        return _read_csv_in_chunks(text, name)
    except SourceError:
        raise
    except StopIteration:
        raise SourceError(f"{name} holds no rows") from None
    except FileNotFoundError:
        raise SourceError(f"source {name} disappeared while being read") from None
    except (ValueError, pd.errors.ParserError, pa.ArrowException) as exc:
        raise SourceError(
            f"cannot read {name} as {source.suffix[1:]}: {_first_line(exc)}"
        ) from None
    except OSError as exc:
        if storage.is_remote(source.uri):
            raise  # network and service errors: the task's retries decide
        raise SourceError(f"cannot read {name}: {exc}") from None
