"""The Official Account twin's tag membership draw: every account, however small, gets about
its share. (An affine hash alone gave some 300-follower accounts no member of a 50% tag, which
made tests that target a tag fail one run in several hundred.)"""

from __future__ import annotations

import sqlite3

from qunfa.sandbox.wechat_accounts import TAG_DRAW_SQL, _tag_hash


def draw(db: sqlite3.Connection, appid: str, share: float) -> int:
    mul, add = _tag_hash(appid, 0, "VIP")
    db.execute("DELETE FROM wx_follower_tags")
    db.execute(
        TAG_DRAW_SQL,
        {"appid": "a", "tag_id": 1, "mul": mul, "add": add % 2147483647,
         "cut": round(share * 65536)},
    )  # fmt: skip
    return int(db.execute("SELECT count(*) FROM wx_follower_tags").fetchone()[0])


def followers(n: int) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE wx_followers(appid TEXT, openid TEXT, idx INTEGER)")
    db.execute("CREATE TABLE wx_follower_tags(appid TEXT, tag_id INTEGER, openid TEXT)")
    db.executemany("INSERT INTO wx_followers VALUES ('a', ?, ?)", [(f"o{i}", i) for i in range(n)])
    return db


def test_small_accounts_never_lose_a_half_share_tag() -> None:
    db = followers(300)
    counts = [draw(db, f"wx{i:016x}", 0.5) for i in range(3000)]
    # Binomial(300, 0.5) has sd 8.7: 100 is more than 5 sd below the mean of 150.
    assert min(counts) >= 100 and max(counts) <= 200
    assert abs(sum(counts) / len(counts) - 150) < 2


def test_large_account_gets_its_share() -> None:
    db = followers(100_000)
    for share in (0.1, 0.3):
        n = draw(db, "wx00000000deadbeef", share)
        assert abs(n - share * 100_000) < 1_000
