"""Per-row work on every core: chunks mapped over a small thread pool.

The per-row stages spend their time in Arrow and NumPy kernels (regexes over a
column, splitting, hashing words, sparse products), which release the
interpreter lock, so threads run them side by side without copying data to
other processes. Results come back in input order and only a few chunks are in
flight at once, so memory stays bounded; each call runs in a copy of the
caller's context (the same Prefect run and progress report).
"""

from __future__ import annotations

import contextvars
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def map_ordered(
    fn: Callable[[T], R],
    parts: Iterable[T],
    threads: int | None = None,
    in_flight: int | None = None,
) -> Iterator[R]:
    """``fn`` over ``parts`` on ``threads`` threads (default: every core), the
    results in input order; at most ``in_flight`` parts taken and not yet
    yielded (default two per thread; one per thread keeps memory lowest)."""
    threads = cores() if threads is None else max(1, threads)
    limit = 2 * threads if in_flight is None else max(threads, in_flight)
    if threads == 1:
        yield from map(fn, parts)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="tweetflow-part") as pool:
        for part in parts:
            context = contextvars.copy_context()
            pending.append(pool.submit(context.run, fn, part))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
