"""Giving freed memory back to the system between stages.

A stage frees its frames when it ends, but the C allocators (glibc's malloc,
Arrow's pool) keep freed pages for reuse, so the process would carry one
stage's peak into the next. Returning them after each stage keeps the peak of
a run the peak of its largest stage.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def release_memory() -> None:
    """Hand freed allocator pages back to the system.

    The stage's frames are freed when its function returns (reference counts);
    no garbage collection is forced (a full collection of this process's heap
    takes a tenth of a second or more, every stage).
    """
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception:  # never fail a stage over housekeeping
        pass
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
