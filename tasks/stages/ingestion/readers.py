"""Reading one source file (CSV, JSONL, Parquet; local or S3) into a frame."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
from pyarrow import ArrowException

from tasks.infra import storage
from tasks.infra.progress import current
from tasks.stages.ingestion.config import SourceError
from tasks.stages.ingestion.sources import SourceFile

PREVIEW_BYTES = 1 << 20  # what the pre-flight check reads of a CSV/JSONL file
CSV_CHUNK_ROWS = 500_000  # rows parsed between two progress updates (pandas reader)
CSV_BLOCK_BYTES = 16 << 20  # bytes Arrow's CSV reader parses per block and thread


def _decode(raw: bytes, encoding: str, path: str) -> str:
    if encoding != "auto":
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise SourceError(f"cannot decode {path} as {encoding}: {exc}") from None
    for candidate in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return raw.decode(candidate)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any byte string")  # pragma: no cover


def _head(uri: str, size: int = PREVIEW_BYTES) -> bytes:
    """The first ``size`` bytes of a text file, cut after its last whole line."""
    data = storage.read_head(uri, size + 1)
    if len(data) <= size:
        return data
    return data[: data.rfind(b"\n", 0, size) + 1] or data[:size]


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
    import csv

    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        names = next(csv.reader([first.decode(encoding)]), [])
    except (UnicodeDecodeError, LookupError):
        return None
    except csv.Error:
        raise _Unnamed from None
    if not names or len(set(names)) != len(names):
        raise _Unnamed
    return names


def _read_csv_arrow(source: SourceFile, encoding: str) -> pd.DataFrame | None:
    """The whole CSV parsed by Arrow's multi-threaded reader, every column text.

    Same reading as ``_read_csv_in_chunks`` (empty fields missing, quoted
    newlines kept, a UTF-8 byte-order mark dropped) several times faster and
    without a decoded copy of the file. Returns None for what it does not read
    the same way (ragged rows, a header it cannot name); the caller then uses
    the pandas reader, and its messages.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    candidates = ["utf-8", "cp1252", "latin-1"] if encoding == "auto" else [encoding]
    head = storage.read_head(source.uri, 1 << 16)
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
        if data is None:
            data = (
                pa.BufferReader(storage.read_bytes(source.uri))
                if storage.is_remote(source.uri)
                else pa.memory_map(str(storage.local_path(source.uri)))
            )
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


def read_file(
    source: SourceFile, encoding: str = "auto", nrows: int | None = None
) -> pd.DataFrame:
    """Read one source file (or its first ``nrows`` rows) into a frame."""
    name = source.uri
    try:
        if source.suffix == ".parquet":
            data = io.BytesIO(storage.read_bytes(source.uri))
            if nrows is not None:
                import pyarrow.parquet as pq

                return next(
                    pq.ParquetFile(data).iter_batches(batch_size=nrows)
                ).to_pandas()
            return pd.read_parquet(data)
        if nrows is None and source.suffix == ".csv":
            current().phase(f"reading {name}", 1)
            try:
                frame = _read_csv_arrow(source, source.encoding or encoding)
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"cannot decode {name} as {source.encoding or encoding}: {exc}"
                ) from None
            if frame is not None:
                return frame
        raw = storage.read_bytes(source.uri) if nrows is None else _head(source.uri)
        text = _decode(raw, source.encoding or encoding, name)
        if source.suffix == ".jsonl":
            return pd.read_json(io.StringIO(text), lines=True, dtype=False, nrows=nrows)
        if nrows is not None:
            return pd.read_csv(
                io.StringIO(text),
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                nrows=nrows,
            )
        return _read_csv_in_chunks(text, name)
    except SourceError:
        raise
    except StopIteration:
        raise SourceError(f"{name} holds no rows") from None
    except FileNotFoundError:
        raise SourceError(f"source {name} disappeared while being read") from None
    except (ValueError, pd.errors.ParserError, ArrowException) as exc:
        first = (
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        )
        raise SourceError(
            f"cannot read {name} as {source.suffix[1:]}: {first}"
        ) from None
    except OSError as exc:
        if storage.is_remote(source.uri):
            raise  # network and service errors: the task's retries decide
        raise SourceError(f"cannot read {name}: {exc}") from None
