"""Tracked links: what the per-recipient link part costs the dispatcher, and code checks.

    python bench/links.py [--recipients 10000]

Figures, each next to a raw floor measured in the same run:
* ``attribute`` (services/links.py): one e-mail batch's content with ``.<r>`` after every
  tracked link, per recipient — floors: a plain copy of the content per recipient (the least a
  per-recipient content costs), and that copy plus one HMAC (the least a signed reference
  costs);
* ``verify_code`` (domain/links.py) per click — floor: one bare HMAC-SHA256.
"""

from __future__ import annotations

import argparse
import hmac
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from qunfa.domain import links as dom
from qunfa.services import links
from qunfa.storage.models import Campaign


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipients", type=int, default=10_000)
    n = ap.parse_args().recipients
    c: Any = SimpleNamespace(keyring=SimpleNamespace(blind_key=os.urandom(32)))
    key = links.link_key(c)
    base = "https://qf.example/l/"
    mapping = {}
    for i, url in enumerate(["https://shop.example/sale", "https://shop.example/faq"]):
        code = dom.make_code(key, 1, i, url + "?utm_source=qunfa")
        mapping[code] = {"i": i, "url": url, "original": url, "short": base + code}
    shorts = [v["short"] for v in mapping.values()]
    content = {
        "subject": "双十一 5 折",
        "text": f"全场 5 折：{shorts[0]} 常见问题 {shorts[1]}",
        "html": f'<p>全场 5 折：<a href="{shorts[0]}">进店</a> <a href="{shorts[1]}">FAQ</a></p>',
    }
    camp = Campaign(id=1, channel="email", options={"links": mapping})
    rows = [(i + 1, f"r{i}@mail.example") for i in range(n)]

    t = time.perf_counter()
    floor = {rid: _copy(content) for _, rid in rows}
    floor_s = time.perf_counter() - t
    t = time.perf_counter()
    signed = {
        rid: (_copy(content), hmac.digest(key, did.to_bytes(8), "sha256")) for did, rid in rows
    }
    signed_s = time.perf_counter() - t
    t = time.perf_counter()
    personal = links.attribute(c, camp, content, rows, None)
    attr_s = time.perf_counter() - t
    assert personal is not None and len(personal.content) == n == len(floor) == len(signed)

    code = next(iter(mapping))
    target = mapping[code]["url"] + "?utm_source=qunfa"
    m = 100_000
    t = time.perf_counter()
    for _ in range(m):
        hmac.digest(key, target.encode(), "sha256")
    hmac_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(m):
        dom.verify_code(key, code, target)
    verify_s = time.perf_counter() - t

    print(f"load {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"attribute   {n / attr_s:>12,.0f} recipients/s   floor (copy) {n / floor_s:>12,.0f}/s"
          f"   ratio {attr_s / floor_s:.1f}×")  # fmt: skip
    print(f"{'':>12}{'':>27}floor (copy+HMAC) {n / signed_s:>8,.0f}/s   ratio "
          f"{attr_s / signed_s:.1f}×")  # fmt: skip
    print(f"verify_code {m / verify_s:>12,.0f} codes/s        floor (HMAC) {m / hmac_s:>12,.0f}/s"
          f"   ratio {verify_s / hmac_s:.1f}×")  # fmt: skip


if __name__ == "__main__":
    main()
