"""Cache keys and retry rules shared by every stage task.

A stage's cache key is its name, a hash of its code, and the canonical JSON of
its inputs (artifact references by content hash, configuration models). Prefect
never hashes frames or models here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

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


class TransientStorageError(OSError):
    """A storage or network failure worth retrying (timeout, throttling, 5xx)."""


@cache
def code_version(*module_names: str) -> str:
    """sha256 over the source files of the named modules (the code version)."""
    digest = hashlib.sha256()
    for name in sorted(module_names):
        module = sys.modules.get(name)
        if module is None or not getattr(module, "__file__", None):
            raise RuntimeError(f"module {name!r} must be imported to version it")
        digest.update(name.encode())
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def canonical(value: Any) -> Any:
    """Turn parameters into plain JSON-able values with a stable layout."""
    if isinstance(value, BaseModel):
        return canonical(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"cannot build a cache key from {type(value).__name__}; pass refs or configs"
    )


def stage_key(stage: str, code: str, inputs: dict[str, Any]) -> str:
    """The cache key of one stage run."""
    payload = json.dumps(
        {"stage": stage, "code": code, "inputs": canonical(inputs)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()}"


def stage_cache_key_fn(
    stage: str, modules: Iterable[str]
) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn`` keyed on content, config and code of ``stage``."""
    module_names = tuple(
        sorted(set(modules) | {"tasks.infra.caching", "tasks.infra.store"})
    )

    def key_fn(_context: Any, parameters: dict[str, Any]) -> str:
        return stage_key(stage, code_version(*module_names), parameters)

    key_fn.__name__ = f"{stage}_cache_key"
    return key_fn


def stage_task(
    stage: str, modules: Iterable[str], retries: int = 2
) -> Callable[[Callable[..., Any]], Any]:
    """The ``@task`` every stage uses.

    Named after the stage, cached on content, config and code (results persisted
    so they survive across flow runs), retried with exponential backoff and
    jitter, but only when the failure is transient.
    """
    from prefect import task

    return task(
        name=stage,
        **transient_retries(retries),
        cache_key_fn=stage_cache_key_fn(stage, modules),
        persist_result=True,
    )


def uncached_task(name: str, retries: int = 2) -> Callable[[Callable[..., Any]], Any]:
    """A ``@task`` for steps that must run every time (registry, inference).

    Same retry policy as the stages (backoff, jitter, transient errors only); no
    cache and no persisted result (its values are models and live objects).
    """
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(
        name=name,
        **transient_retries(retries),
        cache_policy=NO_CACHE,
        persist_result=False,
    )


def transient_retries(retries: int) -> dict[str, Any]:
    """The retry policy of every task: exponential backoff with jitter, and only
    for transient failures."""
    from prefect.tasks import exponential_backoff

    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=2),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_only_transient,
    }


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (TransientStorageError, TimeoutError, ConnectionError)):
        return True
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


def call_with_retries(
    fn: Callable[..., Any],
    *args: Any,
    attempts: int = 3,
    base_delay: float = 1.0,
    **kwargs: Any,
) -> Any:  # noqa: ANN401 - whatever ``fn`` returns
    """Call ``fn``, retrying transient failures with exponential backoff and jitter.

    For the storage calls a flow makes outside its tasks (pre-flight checks);
    any other error is raised at once.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = base_delay * 2 ** (attempt - 1) * (1 + random.uniform(-0.5, 0.5))
            logging.getLogger(__name__).warning(
                "%s failed (%s); retry %d of %d in %.1fs",
                getattr(fn, "__name__", "call"),
                exc,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
