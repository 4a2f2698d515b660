"""Reading one source file (CSV, JSONL, Parquet; local or S3) into a frame."""

from __future__ import annotations

import io

import pandas as pd
from pyarrow import ArrowException

from tasks.infra import storage
from tasks.infra.progress import current
from tasks.stages.ingestion.config import SourceError
from tasks.stages.ingestion.sources import SourceFile

PREVIEW_BYTES = 1 << 20  # what the pre-flight check reads of a CSV/JSONL file
CSV_CHUNK_ROWS = 500_000  # rows parsed between two progress updates


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
