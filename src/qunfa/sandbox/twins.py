"""Discovery of the platform twins: every module of ``qunfa.sandbox`` that sets ``TWIN``.

A twin module provides ``TWIN = "<url prefix>"`` (e.g. ``"wechat"``, ``"wecom"``), and any of:
``SCHEMA`` (SQL run at start-up), ``add_routes(app)``, ``complete_due(state) -> int`` (called
every tick by the job loop to settle asynchronous jobs). Adding a platform is adding a module;
the server needs no edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType


@cache
def discover() -> tuple[ModuleType, ...]:
    import qunfa.sandbox as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(module, "TWIN"):
            found.append(module)
    return tuple(sorted(found, key=lambda m: m.__name__))
