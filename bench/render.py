"""Benchmark: personalisation (``render_many``) against a raw ``str.format`` floor, same run.

    python bench/render.py [--contexts 1000000] [--json]

Setup (not timed): N contact contexts as :func:`qunfa.content.templating.contact_context`
builds them (name, city, province, gender, birthday, ``attrs.level``, ``attrs.points`` and the
campaign variable ``coupon``). Two typical templates:

* **sms** — ``{{ name|default('会员', true) }}您好，{{ city }}门店{{ attrs.level }}会员专享：
  券码{{ coupon }}，积分{{ attrs.points }}，回T退订`` (one filter, two attribute lookups);
* **email** — a subject-and-body text with an ``{% if %}`` on the city and five fields.

* **render_many** — the sandboxed Jinja2 template, compiled once, rendered per context;
* **floor** — the same output with ``str.format`` on the same dictionaries (no sandbox, no
  filters, the ``if`` as a Python conditional): what any templating must at least cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from qunfa.content.templating import contact_context, render, render_many

SMS = (
    "{{ name|default('会员', true) }}您好，{{ city }}门店{{ attrs.level }}会员专享："
    "券码{{ coupon }}，积分{{ attrs.points }}，回T退订"
)
SMS_FMT = (
    "{n}您好，{c[city]}门店{c[attrs][level]}会员专享：券码{c[coupon]}，积分{c[attrs][points]}，"
    "回T退订"
)

EMAIL = (
    "{{ name }}，您好！\n{% if city == '上海' %}上海旗舰店{% else %}{{ city }}门店{% endif %}"
    "本周会员日：{{ attrs.level }}会员凭券码 {{ coupon }} 享 8 折，"
    "积分 {{ attrs.points }} 可抵现。\n生日 {{ birthday }} 当月加赠好礼。"
)
EMAIL_FMT = (
    "{c[name]}，您好！\n{store}本周会员日：{c[attrs][level]}会员凭券码 {c[coupon]} 享 8 折，"
    "积分 {c[attrs][points]} 可抵现。\n生日 {c[birthday]} 当月加赠好礼。"
)

CITIES = ("上海", "北京", "杭州", "成都", "广州", "深圳")
LEVELS = ("金卡", "银卡", "普通")


def contexts(n: int) -> list[dict[str, Any]]:
    return [
        contact_context(
            name="" if i % 10 == 0 else f"会员{i}",
            city=CITIES[i % 6],
            province="省",
            gender="female" if i % 2 else "male",
            birthday=f"1990-{i % 12 + 1:02d}-01",
            attrs={"level": LEVELS[i % 3], "points": i % 5000},
            variables={"coupon": f"Q{i:07d}"},
        )
        for i in range(n)
    ]


def sms_floor(c: dict[str, Any]) -> str:
    return SMS_FMT.format(n=c["name"] or "会员", c=c)


def email_floor(c: dict[str, Any]) -> str:
    store = "上海旗舰店" if c["city"] == "上海" else f"{c['city']}门店"
    return EMAIL_FMT.format(c=c, store=store)


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def measure(
    template: str, floor: Callable[[dict[str, Any]], str], ctxs: list[dict[str, Any]]
) -> dict[str, Any]:
    # the two must agree, or the floor is not the same work
    for c in ctxs[:100]:
        assert render(template, c) == floor(c), (render(template, c), floor(c))
    jinja_s, _ = timed(lambda: sum(1 for _ in render_many(template, ctxs)))
    floor_s, _ = timed(lambda: sum(1 for _ in map(floor, ctxs)))
    n = len(ctxs)
    return {
        "contexts": n,
        "render_many_per_s": round(n / jinja_s),
        "floor_per_s": round(n / floor_s),
        "render_many_seconds": round(jinja_s, 2),
        "floor_seconds": round(floor_s, 2),
        "ratio_floor_over_render": round(jinja_s / floor_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ctxs = contexts(args.contexts)
    results = {"sms": measure(SMS, sms_floor, ctxs), "email": measure(EMAIL, email_floor, ctxs)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(
            f"{name:5}  render_many {r['render_many_per_s']:>10,}/s ({r['render_many_seconds']} s)"
            f"   str.format floor {r['floor_per_s']:>10,}/s ({r['floor_seconds']} s)"
            f"   render_many is {r['ratio_floor_over_render']}× the floor's time"
        )


if __name__ == "__main__":
    main()
