"""Platform rules as data: one TOML file per platform, each rule with its source and date.

The adapters, the sandbox and the planner all read limits through :func:`load`, so changing a
number in ``rules/<platform>.toml`` changes all three. Per-account overrides are applied with
:meth:`RuleSet.with_overrides`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Rule:
    name: str
    value: int | float | str
    unit: str
    source: str
    effective: str


@dataclass(frozen=True)
class RuleSet:
    """The rules of one platform file, optionally with per-account overrides on top."""

    platform: str
    checked: str
    rules: dict[str, Rule] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        value = self.rules[name].value
        if not isinstance(value, int):
            raise TypeError(f"rule {name!r} of {self.platform} is not an integer")
        return value

    def with_overrides(self, overrides: dict[str, Any]) -> RuleSet:
        """A copy where each ``name: value`` in ``overrides`` replaces the file's value."""
        unknown = set(overrides) - set(self.rules)
        if unknown:
            raise KeyError(f"unknown {self.platform} rule(s): {', '.join(sorted(unknown))}")
        rules = dict(self.rules)
        for name, value in overrides.items():
            old = rules[name]
            rules[name] = Rule(name, value, old.unit, "per-account override", old.effective)
        return RuleSet(self.platform, self.checked, rules)


@cache
def load(name: str) -> RuleSet:
    """Load ``rules/<name>.toml`` shipped with the package (cached: files never change at run)."""
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    rules = {
        key: Rule(key, r["value"], r.get("unit", ""), r["source"], r["effective"])
        for key, r in data["rules"].items()
    }
    return RuleSet(data.get("platform", name), data.get("checked", ""), rules)


def platforms() -> list[str]:
    """Every rule file shipped with the package (``rules/<name>.toml``)."""
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in resources.files(__package__).iterdir()
        if entry.name.endswith(".toml")
    )
