"""psycopg, imported when PostgreSQL is first used (``--state postgresql://…``).

Every gateway builds the shared-state addons (addons/portcullis.py), but only one given
a postgresql:// ``--state`` talks to PostgreSQL; importing psycopg costs about 50 ms of
every start otherwise. ``psycopg`` here is the real module, loaded by the standard
library's lazy loader on its first attribute access (``psycopg.connect``, or an
``except psycopg.Error`` that is reached); ``require()`` imports it at once and says
clearly when it cannot be, before the first connection.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any


def _lazy(name: str) -> ModuleType:
    if name in sys.modules:
        module = sys.modules[name]
        return module if module is not None else _Missing(name)  # None: imports refused
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        # Not installed: a real import fails as it would have, at first use (require()).
        return _Missing(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


class _Missing(ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        importlib.import_module(self.__name__)  # raises ModuleNotFoundError
        raise AssertionError("unreachable")


psycopg = _lazy("psycopg")


def require() -> None:
    """Load psycopg now (a clear ImportError if it cannot be), not deep in a thread."""
    importlib.import_module("psycopg")
    importlib.import_module("psycopg.types.json")


def Jsonb(value: Any) -> Any:  # noqa: N802 - stands for psycopg's class
    """psycopg.types.json.Jsonb(value)."""
    return psycopg.types.json.Jsonb(value)
