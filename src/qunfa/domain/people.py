"""Merging people: which records are one person, who survives, what the survivor takes.

Pure (no I/O). The service finds the shared blind indexes in SQL and hands the result here:

- :func:`plan_merges` turns "these contacts hold the same unionid / phone / e-mail" into merge
  groups. Contacts linked through a chain (A and B share a phone, B and C an e-mail) are one
  person. The survivor is the oldest record (lowest id): it is the one other systems have seen
  longest. Pairs an operator split before (an undone merge) are never linked again by the same
  evidence.
- :func:`fill` says which of the survivor's empty attributes the absorbed record fills.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Priority when one pair shares several keys: the strongest evidence names the merge.
KIND_RANK = {"unionid": 0, "phone": 1, "email": 2}
FILLABLE = ("name_enc", "city", "province", "gender", "birthday", "timezone", "registered_at")


@dataclass(frozen=True)
class PlannedMerge:
    survivor: int
    absorbed: int
    matched_kind: str


def plan_merges(
    shared: Iterable[tuple[str, Iterable[int]]],
    undone: Iterable[tuple[int, int]] = (),
) -> list[PlannedMerge]:
    """Merges for groups of contacts that share a key: ``shared`` is ``(kind, contact ids)``
    per blind index held by more than one contact; ``undone`` the pairs split before.

    Returns one :class:`PlannedMerge` per absorbed contact, survivors first by id. The
    ``matched_kind`` is the strongest kind linking the absorbed contact to its group.
    """
    split = {frozenset(p) for p in undone}
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    link: dict[int, tuple[int, str]] = {}  # contact → (rank, kind) of its best evidence
    for kind, ids in shared:
        members = sorted(set(ids))
        rank = KIND_RANK.get(kind, len(KIND_RANK))
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                if frozenset((a, b)) in split:
                    continue
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
                for c in (a, b):
                    if c not in link or rank < KIND_RANK.get(link[c][1], 99):
                        link[c] = (rank, kind)
    out = [
        PlannedMerge(find(c), c, link[c][1]) for c in sorted(parent) if find(c) != c and c in link
    ]
    return sorted(out, key=lambda m: (m.survivor, m.absorbed))


def fill(survivor: Mapping[str, Any], absorbed: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes the survivor lacks (None or empty) and the absorbed record has.

    Keys are :data:`FILLABLE` columns plus ``attrs`` (a dict of the custom attribute keys the
    survivor lacks). Values are what to copy.
    """
    filled: dict[str, Any] = {
        col: absorbed[col]
        for col in FILLABLE
        if survivor.get(col) in (None, "") and absorbed.get(col) not in (None, "")
    }
    s_attrs: Mapping[str, Any] = survivor.get("attrs") or {}
    a_attrs: Mapping[str, Any] = absorbed.get("attrs") or {}
    extra = {k: v for k, v in a_attrs.items() if k not in s_attrs}
    if extra:
        filled["attrs"] = extra
    return filled
