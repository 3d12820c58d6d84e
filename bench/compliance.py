"""Benchmark: the compliance check against the raw ``ahocorasick_rs`` matcher, in the same run.

    python bench/compliance.py [--messages 200000] [--lexicon 10000] [--million] [--json]

Setup (not timed): a 10,000-entry random lexicon (2–5 Han characters from the whole basic block)
on top of the built-ins; N seventy-character messages mixing common characters, Chinese
punctuation, some Latin and digits, a few lexicon violations and a few links.

* **check** — ``Checker.check(text, "wechat_oa")`` per message: normalisation, automaton, links,
  findings with offsets in the original, verdicts.
* **raw** — the same automaton (same patterns) on the *un-normalised* messages: the floor.

Rates are CPU seconds of this process (one core), best of 5, floor and check interleaved.

``--million`` also checks 1,000,000 distinct (personalised) messages with ``check_many``.
Target: check ≥ 200,000 messages/s on one core (about half the raw matcher); 1M in ≤ 10 s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from qunfa.compliance import Checker, Lexicon
from qunfa.compliance.lexicon import Entry

COMMON = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说"
    "产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使"
    "点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明"
    "看原又么利比或但质气向道命此变条只没结解问意建月公无系军很情者立代想已通并提直题党程展五果料象员"
)
PUNCT = "，。！？、：；"
VIOLATIONS = ["全网最低价", "转发到朋友圈", "稳赚不赔", "震惊", "根治", "集 赞", "國家級"]
LINKS = ["https://mp.weixin.qq.com/s/abc", "example.com/a", "t.cn/A6x"]


def make_messages(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        chars = [rng.choice(COMMON) for _ in range(70)]
        for _ in range(4):
            chars[rng.randrange(70)] = rng.choice(PUNCT)
        if i % 10 == 0:
            chars[rng.randrange(60) : rng.randrange(60) + 3] = list("VIP")
        msg = "".join(chars)
        if i % 50 == 0:
            v = rng.choice(VIOLATIONS)
            msg = msg[: 70 - len(v)] + v
        if i % 200 == 0:
            link = rng.choice(LINKS)
            msg = msg[: 70 - len(link)] + link
        out.append(msg[:70])
    return out


def personalised(n: int, seed: int = 11) -> list[str]:
    """N distinct messages: one template with a per-recipient name and coupon code."""
    rng = random.Random(seed)
    names = ["".join(rng.choice(COMMON) for _ in range(2)) for _ in range(5000)]
    template = "{name}您好，本周会员日全场八折，凭券码{code}到店使用，详情见公众号菜单，退订回T"
    return [template.format(name=names[i % 5000], code=f"Q{i:07d}") for i in range(n)]


def random_lexicon(n: int, seed: int = 3) -> Lexicon:
    rng = random.Random(seed)
    terms: set[str] = set()
    while len(terms) < n:
        terms.add("".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(rng.randint(2, 5))))
    entries = tuple(Entry(t, "custom", "medium", "bench") for t in sorted(terms))
    return Lexicon("bench", entries, source="random")


def rate(fn: object, msgs: list[str], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for m in msgs:
            fn(m)  # type: ignore[operator]
        best = min(best, time.process_time() - t0)
    return len(msgs) / best


def rates(fns: dict[str, object], msgs: list[str], repeat: int = 5) -> dict[str, float]:
    """Best-of-``repeat`` msgs/s of each function, the runs interleaved.

    CPU time of this process (``process_time``), not wall time: "one core" is what the target
    says, and on a shared machine wall time measures the neighbours. Interleaving gives the
    floor and the check the same conditions.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.process_time()
            for m in msgs:
                fn(m)  # type: ignore[operator]
            best[name] = min(best[name], time.process_time() - t0)
    return {name: len(msgs) / t for name, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--lexicon", type=int, default=10_000)
    ap.add_argument("--million", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    checker = Checker(custom=[random_lexicon(args.lexicon)])
    build = time.perf_counter() - t0
    msgs = make_messages(args.messages)
    raw_find = checker.matcher.find_raw
    measured = rates({"raw": raw_find, "check": lambda m: checker.check(m, "wechat_oa")}, msgs)
    raw, full = measured["raw"], measured["check"]
    flagged = sum(1 for m in msgs if checker.check(m, "wechat_oa").findings)
    result = {
        "patterns": len(checker.matcher),
        "build_s": round(build, 2),
        "messages": len(msgs),
        "flagged": flagged,
        "raw_msgs_per_s": round(raw),
        "check_msgs_per_s": round(full),
        "check_over_raw": round(full / raw, 2),
    }
    if args.million:
        million = personalised(1_000_000)
        t0 = time.process_time()
        reports = checker.check_many(million, "sms_tencent")
        result["million_check_s"] = round(time.process_time() - t0, 2)
        result["million_flagged"] = sum(1 for r in reports if r.findings)
    if args.json:
        print(json.dumps(result))
        return
    print(f"patterns in automaton      {result['patterns']:>12,} (built in {build:.2f} s)")
    print(f"messages (70 chars)        {len(msgs):>12,} ({flagged:,} with findings)")
    print(f"raw ahocorasick_rs         {raw:>12,.0f} msgs/s")
    print(f"full check                 {full:>12,.0f} msgs/s   (target ≥ 200,000)")
    print(f"check / raw                {full / raw:>12.2f}      (target ≈ 0.5)")
    if args.million:
        print(
            f"1,000,000 personalised     {result['million_check_s']:>12} s        (target ≤ 10 s)"
        )


if __name__ == "__main__":
    main()
