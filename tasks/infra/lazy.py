"""numpy, pandas and pyarrow, imported when first used rather than on import.

Every command imports the flows, and the flows import every stage; a warm
retrain (every stage served from cache) and ``--help`` never touch a frame, so
they should not pay the second it takes to import these libraries. Modules
write ``from tasks.infra.lazy import np, pd`` and use them as usual; type
checkers see the real modules.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any


class LazyModule:
    """A module imported on first attribute access, then read like the module."""

    def __init__(self, name: str) -> None:
        """Stand for module ``name`` (nothing is imported yet)."""
        self.__dict__["_lazy_name"] = name
        self.__dict__["_lazy_lock"] = threading.Lock()

    def _load(self) -> ModuleType:
        with self.__dict__["_lazy_lock"]:
            module = importlib.import_module(self.__dict__["_lazy_name"])
            # Later reads find the module's names directly (as fast as the
            # module's own attributes); names it gains later come through here.
            for key, value in vars(module).items():
                self.__dict__.setdefault(key, value)
            return module

    def __getattr__(self, attr: str) -> Any:
        """The module's attribute (importing the module the first time)."""
        return getattr(self._load(), attr)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled as the name it stands for (a Dask worker that unpickles a
        task's code gets its own stand-in)."""
        return (LazyModule, (self.__dict__["_lazy_name"],))

    def __repr__(self) -> str:
        """Which module this stands for."""
        return f"<lazy module {self.__dict__['_lazy_name']!r}>"


if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
else:
    np = LazyModule("numpy")
    pd = LazyModule("pandas")
    pa = LazyModule("pyarrow")
    pc = LazyModule("pyarrow.compute")

__all__ = ["LazyModule", "np", "pa", "pc", "pd"]
