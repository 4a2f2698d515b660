"""One way to reach files: local paths, ``file://`` URIs and ``s3://`` URIs (fsspec).

The one storage layer: sources, the artifact store, batch outputs, run folders
and the frozen evaluation set all go through it, so a laptop directory and an
S3 bucket behave the same. S3 is reached with s3fs,
which honours the usual AWS settings (``AWS_ENDPOINT_URL``, credentials, region).

Atomicity, in one place: a local write goes to a synced temporary file renamed
into place (``write_bytes``, ``write_new``), a folder is assembled aside and
renamed (``move_into_place``); an S3 object written with one PUT is only
visible once complete. No reader ever sees half of anything.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from tasks.infra.caching import TransientStorageError, is_transient

REMOTE_SCHEMES = ("s3",)


@dataclass(frozen=True)
class FileInfo:
    """A file found under a URI: where it is and what identifies its content."""

    uri: str
    size: int
    version: str  # S3: the ETag; local: size and modification time


def scheme_of(uri: str) -> str:
    """The URI's scheme ('' for a plain local path)."""
    parsed = urlparse(str(uri))
    return parsed.scheme if len(parsed.scheme) > 1 else ""


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store location (``s3://``)."""
    return scheme_of(uri) in REMOTE_SCHEMES


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The local path of a plain path or ``file://`` URI."""
    text = str(uri)
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return Path(text).expanduser()


def normalise_root(uri: str | os.PathLike[str]) -> str:
    """An absolute local path, or the ``s3://`` URI without a trailing slash."""
    text = str(uri)
    if is_remote(text):
        return text.rstrip("/")
    return str(local_path(text).resolve())


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local path or a remote URI."""
    if is_remote(root):
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
    if root.startswith("file://"):
        return Path(local_path(root), *parts).as_uri()
    return str(Path(root, *parts))


# One retry layer: the Prefect task around a storage call retries transient
# failures with backoff, so neither botocore nor s3fs retries on its own.
# s3fs's timeouts stay (connect 5 s, read 15 s per request).
BOTOCORE_CONFIG = {"retries": {"total_max_attempts": 1, "mode": "standard"}}


def s3() -> Any:  # s3fs.S3FileSystem
    """The S3 filesystem (created on first use; fsspec caches the instance)."""
    import fsspec

    fs = fsspec.filesystem("s3", config_kwargs=BOTOCORE_CONFIG)
    fs.retries = 1  # s3fs's own loop: one attempt
    return fs


def _key(uri: str) -> str:
    return uri.split("://", 1)[1]


F = TypeVar("F", bound=Callable[..., Any])


def _aws_reason(exc: BaseException) -> str:
    """'SlowDown, HTTP 503' from the botocore error behind an exception, if any."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code", "")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return ", ".join(str(p) for p in (code, status and f"HTTP {status}") if p)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def names_the_object(fn: F) -> F:
    """A transient failure on a remote object becomes a ``TransientStorageError``
    naming the object and the server's answer (still retried as transient), so a
    storm longer than the retries ends in one readable line."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TransientStorageError:
            raise
        except Exception as exc:
            uri = next((a for a in args if isinstance(a, str) and is_remote(a)), None)
            if uri is None or not is_transient(exc):
                raise
            raise TransientStorageError(
                f"{uri}: storage unavailable ({_aws_reason(exc)}: {exc})"
            ) from exc

    return call  # type: ignore[return-value]


@names_the_object
def read_bytes(uri: str) -> bytes:
    """The whole content of a file or object."""
    if is_remote(uri):
        return s3().cat_file(_key(uri))
    return local_path(uri).read_bytes()


@names_the_object
def read_head(uri: str, size: int) -> bytes:
    """The first ``size`` bytes of a file or object (fewer if it is shorter)."""
    if is_remote(uri):
        return s3().cat_file(_key(uri), start=0, end=size)
    with open(local_path(uri), "rb") as fh:
        return fh.read(size)


@names_the_object
def open_binary(uri: str) -> Any:
    """A seekable binary file object reading a file or object (a context manager)."""
    if is_remote(uri):
        return s3().open(_key(uri), "rb")
    return open(local_path(uri), "rb")


@names_the_object
def write_bytes(uri: str, data: bytes) -> None:
    """Write a complete file or object; readers never see it half-written."""
    if is_remote(uri):
        s3().pipe_file(_key(uri), data)
        return
    _write_local(local_path(uri), data, exclusive=False)


@names_the_object
def write_new(uri: str, data: bytes) -> bool:
    """Write a complete file or object only if there is none yet.

    Returns False (and writes nothing) when one already exists. Locally the
    check and the write are one step (a hard link fails on an existing name), so
    of two concurrent writers exactly one wins; on S3 the object is checked, then
    written with one PUT.
    """
    if is_remote(uri):
        if exists(uri):
            return False
        s3().pipe_file(_key(uri), data)
        return True
    return _write_local(local_path(uri), data, exclusive=True)


def _write_local(path: Path, data: bytes, exclusive: bool) -> bool:
    """The one atomic local write: a synced temporary file renamed (or linked) in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails if another writer got there first
        except FileExistsError:
            return False
        except OSError:  # filesystems without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


@names_the_object
def put_file(path: Path, uri: str, keep: bool = False) -> bool:
    """Move (or, with ``keep``, copy) a complete local file to ``uri`` if nothing
    is there yet; returns whether it was written.

    Content-addressed targets are never rewritten. Locally the file is synced
    and renamed in (never half visible); to S3 it is uploaded in one PUT (a
    multipart upload for large files, visible only once complete).
    """
    if is_remote(uri):
        written = False
        if not exists(uri):
            s3().put_file(str(path), _key(uri))
            written = True
        if not keep:
            path.unlink(missing_ok=True)
        return written
    target = local_path(uri)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    if keep:
        staged = aside(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, staged)
        path = staged
    return move_into_place(path, target)


@names_the_object
def replace_with_file(path: Path, uri: str) -> None:
    """Move a complete local file to ``uri``, replacing what is there (outputs
    such as batch predictions); readers see the old file or the new one."""
    if is_remote(uri):
        try:
            s3().put_file(str(path), _key(uri))
        finally:
            path.unlink(missing_ok=True)
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    try:
        os.replace(path, target)
    except OSError:  # another filesystem: copy beside the target, then rename
        staged = aside(target)
        try:
            shutil.copyfile(path, staged)
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
            path.unlink(missing_ok=True)


def aside(target: Path) -> Path:
    """A hidden name beside ``target`` for writing it before the rename, unique
    to this call (two threads or processes may be writing the same target)."""
    unique = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return target.with_name(f".{target.name}.{unique}.tmp")


@names_the_object
def download_file(uri: str, path: Path) -> None:
    """Copy a remote object to a local file (written aside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = aside(path)
    try:
        s3().get_file(_key(uri), str(staged))
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def move_into_place(staging: Path, final: Path) -> bool:
    """Rename a completely written local folder (or file) to ``final``.

    Content-addressed targets are never rewritten: when ``final`` already exists
    (another run or process got there first) the staged copy is dropped and
    False returned.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        try:
            os.replace(staging, final)
            return True
        except OSError:  # a concurrent writer filled it meanwhile
            if not final.exists():
                raise
    if staging.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.unlink(missing_ok=True)
    return False


@names_the_object
def exists(uri: str) -> bool:
    """Whether a file or object exists at ``uri``."""
    if is_remote(uri):
        fs = s3()
        fs.invalidate_cache(_key(uri))
        return fs.exists(_key(uri))
    return local_path(uri).exists()


def remove(uri: str) -> None:
    """Delete a file or a directory (prefix); a directory's manifest goes first,
    so that no reader trusts what is left while the rest is deleted."""
    if is_remote(uri):
        fs = s3()
        key = _key(uri)
        if fs.exists(f"{key}/manifest.json"):
            fs.rm_file(f"{key}/manifest.json")
        fs.rm(key, recursive=True)
        fs.invalidate_cache(key)
        return
    path = local_path(uri)
    if path.is_dir():
        (path / "manifest.json").unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@names_the_object
def is_dir(uri: str) -> bool:
    """Whether ``uri`` is a directory (local) or a prefix holding objects (S3)."""
    if is_remote(uri):
        fs = s3()
        fs.invalidate_cache(_key(uri))
        return fs.isdir(_key(uri))
    return local_path(uri).is_dir()


@names_the_object
def list_files(uri: str) -> list[FileInfo]:
    """Every file under a directory or prefix, sorted by URI, with content versions."""
    if is_remote(uri):
        fs = s3()
        prefix = _key(uri).rstrip("/")
        fs.invalidate_cache(prefix)
        found = fs.find(prefix, detail=True)
        return [
            FileInfo(
                uri=f"s3://{name}",
                size=int(info.get("size") or 0),
                version=str(info.get("ETag") or info.get("etag") or "").strip('"'),
            )
            for name, info in sorted(found.items())
            if info.get("type") == "file"
        ]
    root = local_path(uri)
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        files.append(
            FileInfo(str(path), stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")
        )
    return files


@names_the_object
def file_info(uri: str) -> FileInfo:
    """Size and content version of one file or object."""
    if is_remote(uri):
        fs = s3()
        fs.invalidate_cache(_key(uri))
        info = fs.info(_key(uri))
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return FileInfo(uri, int(info.get("size") or 0), etag)
    stat = local_path(uri).stat()
    return FileInfo(
        str(local_path(uri)), stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}"
    )


def upload_tree(directory: Path, uri: str, last: str | None = None) -> None:
    """Copy a local directory to a remote prefix; the file named ``last`` goes last.

    Readers look for ``last`` (a manifest or run record) before trusting the rest,
    so a crash part-way leaves an incomplete prefix that nobody reads.
    """
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)
    for path in files:
        write_bytes(join(uri, str(path.relative_to(directory))), path.read_bytes())


def download_tree(uri: str, directory: Path) -> None:
    """Copy every object under a remote prefix into a local directory."""
    prefix = uri.rstrip("/") + "/"
    for info in list_files(uri):
        relative = info.uri[len(prefix) :]
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(info.uri))
