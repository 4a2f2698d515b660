"""One cache mechanism and one retry policy for every task.

Cache: Prefect's ``INPUTS`` policy (artifact references by content hash, the
configuration models, the store's root) plus ``StageCode``, a policy hashing
the source of the task's own module and of every project module it imports,
transitively, read from the import statements. No module list is kept by
hand: a stage re-runs when its code or any helper it uses changes, and only
then. Prefect never hashes frames or models here: stages pass references.

Retries: Prefect retries a task on transient failures only (timeouts,
throttling, 5xx, connection errors, a SQLite store locked by another process),
with exponential backoff and jitter.
Storage clients below do not retry on their own (see ``tasks.infra.storage``),
so attempts never multiply.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRANSIENT_HTTP_STATUS = {408, 429, 500, 502, 503, 504}
TRANSIENT_AWS_CODES = {
    "Throttling",
    "ThrottlingException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "InternalError",
    "TooManyRequestsException",
}
# SQLite's answer when another process holds the store (MLflow's embedded one).
SQLITE_LOCKED = "database is locked"
PROJECT_PACKAGES = ("tasks", "data_contracts", "flows")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
STAGE_RETRIES = 2
# exponential_backoff(2) waits 2, 4, 8 ... s, each +-50% (jitter)
BACKOFF_FACTOR = 2
JITTER = 0.5


class TransientStorageError(OSError):
    """A storage or network failure worth retrying (timeout, throttling, 5xx)."""


# Code versions ------------------------------------------------------------------
def module_file(name: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The source file of a project module (a package's ``__init__.py``), if any."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(name: str, path: Path, root: Path) -> set[str]:
    """Project modules a module's import statements name (with their packages).

    Remembered per file version (size and modification time): every task's
    cache key walks the same modules.
    """
    stat = path.stat()
    return set(_imported_at(name, str(path), str(root), stat.st_size, stat.st_mtime_ns))


# A line that starts an import statement (ruff's E701/E702 keep one statement
# per line, so no import hides after a ``;`` or a ``:``).
_IMPORT_LINE = re.compile(r"^[ \t]*(?:import|from)[ \t]", re.MULTILINE)


def import_statements(source: str) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module's source, each parsed on its own.

    Only the lines that start with ``import`` or ``from`` are parsed (with their
    parenthesised or backslash-continued lines), which is about ten times faster
    than parsing and walking the whole module. A line that is not a statement
    (prose in a docstring) is skipped; one that happens to parse as an import
    can only add a module to the hash, never hide one.
    """
    found: list[ast.Import | ast.ImportFrom] = []
    for match in _IMPORT_LINE.finditer(source):
        end = source.find("\n", match.start())
        end = len(source) if end < 0 else end
        line = source[match.start() : end]
        if line.count("(") > line.count(")"):
            close = source.find(")", end)
            end = len(source) if close < 0 else close + 1
        while source[match.start() : end].endswith("\\"):
            nxt = source.find("\n", end + 1)
            end = len(source) if nxt < 0 else nxt
        try:
            tree = ast.parse(source[match.start() : end].strip())
        except SyntaxError:
            continue
        found.extend(
            node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
        )
    return found


@functools.lru_cache(maxsize=1024)
def _imported_at(
    name: str, file: str, root_dir: str, size: int, mtime_ns: int
) -> frozenset[str]:
    path, root = Path(file), Path(root_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in import_statements(path.read_text()):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # a module runs its packages too
                prefix = ".".join(parts[:i])
                if module_file(prefix, root) is not None:
                    found.add(prefix)
    return frozenset(found)


def project_modules(*names: str, root: Path = PROJECT_ROOT) -> list[str]:
    """The named modules and every project module they import, transitively."""
    seen: set[str] = set()
    todo = [
        ".".join(n.split(".")[:i])  # a module runs its packages' __init__ too
        for n in names
        for i in range(1, len(n.split(".")) + 1)
        if module_file(".".join(n.split(".")[:i]), root) is not None
    ]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        if path is not None:
            todo.extend(_imported(name, path, root) - seen)
    return sorted(seen)


def source_version(*names: str, root: Path = PROJECT_ROOT) -> str:
    """sha256 over the source of the named modules and what they import."""
    digest = hashlib.sha256()
    for name in project_modules(*names, root=root):
        path = module_file(name, root)
        assert path is not None
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _stage_code_policy() -> Any:  # a prefect CachePolicy
    from prefect.cache_policies import INPUTS, CachePolicy

    @dataclass
    class StageCode(CachePolicy):
        """The source of the task's module and of the project modules it imports."""

        def compute_key(
            self,
            task_ctx: Any,
            inputs: dict[str, Any],
            flow_parameters: dict[str, Any],
            **kwargs: Any,
        ) -> str | None:
            fn = task_ctx.task.fn
            return f"{fn.__module__}:{fn.__name__}:{source_version(fn.__module__)}"

    # Where a stage's partitions ran (``cluster``) never changes its output.
    return (INPUTS - "cluster") + StageCode()


# Tasks ---------------------------------------------------------------------------
def stage_task(stage: str, retries: int = STAGE_RETRIES) -> Callable[..., Any]:
    """The ``@task`` every stage uses.

    Named after the stage; cached on its inputs and code (results persisted so
    they survive across flow runs); retried on transient failures only; its
    progress reported every few seconds while it runs. A stage's output
    contract is checked when it stores its frames
    (``ArtifactStore.put_frame``), so a broken output fails the task and is
    never cached; the violation is published as a table artifact.
    """
    from prefect import task

    def decorate(fn: Callable[..., Any]) -> Any:
        return task(
            name=stage,
            **transient_retries(retries),
            cache_policy=_stage_code_policy(),
            persist_result=True,
        )(_stage_body(stage, fn))

    return decorate


def uncached_task(name: str, retries: int = STAGE_RETRIES) -> Callable[..., Any]:
    """A ``@task`` for steps that must run every time (registry, inference).

    Same retry policy and progress reports as the stages; no cache and no
    persisted result (its values are models and live objects).
    """
    import functools

    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def decorate(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            from tasks.infra.progress import Progress

            with Progress(name, "running", 1):
                return fn(*args, **kwargs)

        return task(
            name=name,
            **transient_retries(retries),
            cache_policy=NO_CACHE,
            persist_result=False,
        )(run)

    return decorate


def _stage_body(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a stage: its progress is reported while it runs (``tasks.infra.progress``)
    and a contract violation also becomes a table artifact."""
    import functools

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from data_contracts import ContractViolation
        from tasks.infra.memory import release_memory
        from tasks.infra.progress import Progress

        try:
            with Progress(stage, "running", 1):
                return fn(*args, **kwargs)
        except ContractViolation as exc:
            from prefect.artifacts import create_table_artifact

            create_table_artifact(
                key=f"contract-violation-{stage}",
                table=exc.as_table(),
                description=str(exc),
            )
            raise
        finally:
            release_memory()

    return run


def transient_retries(retries: int) -> dict[str, Any]:
    """The retry policy of every task: exponential backoff with jitter, and only
    for transient failures."""
    from prefect.tasks import exponential_backoff

    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=BACKOFF_FACTOR),
        "retry_jitter_factor": JITTER,
        "retry_condition_fn": retry_only_transient,
    }


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (TransientStorageError, TimeoutError, ConnectionError)):
        return True
    if type(exc).__name__ == "OperationalError" and SQLITE_LOCKED in str(exc):
        return True  # another process holds the SQLite store longer than its wait
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        code = response.get("Error", {}).get("Code", "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in TRANSIENT_AWS_CODES or status in TRANSIENT_HTTP_STATUS
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return status in TRANSIENT_HTTP_STATUS


def is_transient(exc: BaseException) -> bool:
    """Whether an exception is a transient storage/network failure.

    Wrapped errors count by their cause (s3fs turns a botocore 5xx into an
    ``OSError`` whose ``__cause__`` is the original error).
    """
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if _is_transient_one(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_only_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed run only on transient errors."""
    try:
        state.result()
    except Exception as exc:  # classify any failure, then decide
        return is_transient(exc)
    return False


# Running stages from a flow -----------------------------------------------------
def result_storage_for(setting: str, root_uri: str) -> Any:  # storage or a block slug
    """Prefect result storage: beside the artifacts (local folder or S3), or a block.

    'local' keeps cached results next to the artifact store: a folder, or for an
    ``s3://`` store a ``RemoteFileSystem`` on the same bucket (fsspec, the
    mechanism the store uses). Anything else is a saved block's slug.
    """
    from tasks.infra import storage

    if setting != "local":
        return setting
    if storage.is_remote(root_uri):
        from prefect.filesystems import RemoteFileSystem

        # Prefect needs result storage saved server-side; the name is stable
        # per store, so saving again only confirms it.
        name = "tweetflow-results-" + hashlib.sha256(root_uri.encode()).hexdigest()[:16]
        RemoteFileSystem(
            basepath=storage.join(root_uri, "prefect-results"),
            # Another process may have written a result since: never trust a
            # cached listing.
            settings={"use_listings_cache": False},
        ).save(name, overwrite=True)
        return f"remote-file-system/{name}"
    return Path(storage.local_path(root_uri)) / "prefect-results"


class StageRunner:
    """Runs a flow's tasks against one artifact store, and says what happened.

    Tasks that take ``artifacts_dir`` get the store's root; stage results go to
    the flow's result storage. Each call logs whether the task was computed or
    reused from cache, how long it took and where its outputs went; a cached
    result that points at deleted artifacts is computed again. ``seconds``
    collects the time per step; ``on_compute(name)``, if given, is called after
    each step that was computed rather than reused.
    """

    def __init__(
        self,
        root_uri: str,
        result_storage: str,
        logger: Any,
        on_compute: Callable[[str], None] | None = None,
    ) -> None:
        """Run tasks on the store at ``root_uri``, logging to ``logger``."""
        self.root_uri = root_uri
        self.options = {"result_storage": result_storage_for(result_storage, root_uri)}
        self.logger = logger
        self.on_compute = on_compute
        self.seconds: dict[str, float] = {}

    def beside(self, name: str, task: Any, *args: Any, **kwargs: Any) -> Future:
        """Start step ``name`` in a thread of this flow run, beside the steps that
        run meanwhile (it must need none of their outputs); ``result()`` waits
        for it and raises what it raised."""
        import contextvars

        context = contextvars.copy_context()
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"tweetflow-{name}")
        try:
            return pool.submit(context.run, self, name, task, *args, **kwargs)
        finally:
            pool.shutdown(wait=False)

    def __call__(self, name: str, task: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``task(*args, **kwargs)`` as step ``name``; return its result."""
        import inspect
        import time

        from tasks.infra.store import (
            ArtifactStore,
            artifact_refs,
            damaged_artifacts,
            discard,
            missing_artifacts,
        )

        if "artifacts_dir" in inspect.signature(task.fn).parameters:
            kwargs["artifacts_dir"] = self.root_uri
        started = time.perf_counter()
        state = task.with_options(**self.options)(*args, return_state=True, **kwargs)
        out = state.result()
        missing = missing_artifacts(out)
        store = ArtifactStore(self.root_uri)
        damaged = damaged_artifacts(store, out) if state.name == "Cached" else {}
        for uri, problem in damaged.items():
            self.logger.warning("%s: %s; removing it and re-running", name, problem)
            discard(store, uri)
        if missing:
            self.logger.warning(
                "%s: cached result points at deleted artifacts (%s); re-running",
                name,
                ", ".join(missing),
            )
        if missing or damaged:
            state = task.with_options(**self.options, refresh_cache=True)(
                *args, return_state=True, **kwargs
            )
            out = state.result()
        elapsed = time.perf_counter() - started
        self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 3)
        written = "; ".join(
            (
                f"{field} ({ref.rows} rows) -> {ref.uri}"
                if ref.kind == "frame"
                else f"{field} -> {ref.uri}"
            )
            for field, ref in artifact_refs(out).items()
        )
        served = "reused from cache" if state.name == "Cached" else "computed"
        self.logger.info(
            "%s: %s in %.2fs%s",
            name,
            served,
            elapsed,
            f"; {written}" if written else "",
        )
        if self.on_compute is not None and state.name != "Cached":
            self.on_compute(name)
        return out
