"""Channel registry: every :class:`Channel` subclass in ``qunfa.channels``, by its key.

Adding a channel is adding ``channels/<key>.py`` with a ``Channel`` subclass; discovery finds
it, so the registry needs no edit (and parallel work on channels never collides here).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from qunfa.channels.base import Channel


def _subclasses(cls: type[Channel]) -> list[type[Channel]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


@cache
def channels() -> dict[str, type[Channel]]:
    import qunfa.channels as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    found = {c.key: c for c in _subclasses(Channel) if "key" in c.__dict__}  # type: ignore[type-abstract]
    return dict(sorted(found.items()))


def channel_class(key: str) -> type[Channel]:
    try:
        return channels()[key]
    except KeyError:
        known = ", ".join(channels())
        raise ValueError(f"unknown channel {key!r}; known channels: {known}") from None


def account_channel(key: str) -> str:
    """The channel whose accounts ``key`` sends through."""
    return channel_class(key).account_channel or key
