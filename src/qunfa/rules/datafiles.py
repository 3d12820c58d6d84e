"""Reference data that is not a platform's limits: calendars, send windows, regions, advisor.

These files live in ``rules/data/`` (not beside the platform files) because
:func:`qunfa.rules.platforms` lists every ``rules/*.toml`` as a platform rule set, and these
files are not shaped like one. Each file carries its own sources and ``checked`` date.
Loading is the only I/O; the domain modules take the parsed mapping.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_data(name: str) -> dict[str, Any]:
    """Parse ``rules/data/<name>.toml`` shipped with the package (cached: files never change)."""
    path = resources.files(__package__).joinpath("data", f"{name}.toml")
    if not path.is_file():
        raise FileNotFoundError(f"no reference data file rules/data/{name}.toml")
    return tomllib.loads(path.read_text(encoding="utf-8"))
