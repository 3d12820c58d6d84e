"""Benchmark: ``qunfa keys rotate`` over N encrypted fields, online, against a raw floor.

    python bench/keys.py --fields 1000000 [--json]

Setup (not timed): a fresh SQLite database with N identities (phone numbers, encrypted under
key k1, blind-indexed), written with the bulk path.

* **qunfa** — ``KeyService.rotate()``: a new key k2, then every ``*_enc`` column re-encrypted
  page by page, while a reader thread holding a keyring loaded *before* the rotation (like a
  running worker) keeps decrypting random pages. Every read must succeed.
* **floor** — plain ``sqlite3`` + the same AES-GCM calls: read every (id, blob), decrypt,
  encrypt under a new key, ``executemany`` the UPDATE by id, in pages of the same size. No
  concurrency guard, no reader.

Target: 1,000,000 fields in ≤ 60 s, with zero failed reads.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb

PAGE = 10_000


def seed(n: int, work: Path) -> Any:
    from qunfa.bootstrap import Container
    from qunfa.settings import Settings
    from qunfa.storage.bulk import bulk_cache, insert_rows, insert_rows_returning_ids

    c = Container(Settings(data_dir=work / "qunfa"))
    c.migrate()
    ring = c.keyring
    now = time.time()
    with c.engine.begin() as conn, bulk_cache(conn):
        for start in range(0, n, 50_000):
            size = min(50_000, n - start)
            ids = insert_rows_returning_ids(
                conn, "contacts", ["created_at", "updated_at", "attrs"], [(now, now, "{}")] * size
            )
            phones = [f"+86138{start + i:08d}" for i in range(size)]
            insert_rows(
                conn,
                "identities",
                ["contact_id", "kind", "value_enc", "value_bi", "subscribed", "updated_at"],
                zip(
                    ids,
                    ["phone"] * size,
                    ring.encrypt_many(phones),
                    [ring.blind(p) for p in phones],
                    [True] * size,
                    [now] * size,
                    strict=True,
                ),
            )
    return c


class Reader(threading.Thread):
    """A worker's view during the rotation: its own keyring, loaded before the new key."""

    def __init__(self, db: Path, keyring_path: Path, n: int) -> None:
        super().__init__(daemon=True)
        from qunfa.crypto.fields import Keyring

        self.ring = Keyring.load(keyring_path)
        self.db, self.n = db, n
        self.stop = threading.Event()
        self.reads = self.failures = 0
        self.errors: list[str] = []

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30)
        while not self.stop.is_set():
            start = random.randint(1, max(1, self.n - 500))
            rows = conn.execute(
                "SELECT value_enc FROM identities WHERE id >= ? ORDER BY id LIMIT 500", (start,)
            ).fetchall()
            for (blob,) in rows:
                try:
                    self.ring.decrypt(bytes(blob))
                    self.reads += 1
                except Exception as exc:  # counting every failure is the point
                    self.failures += 1
                    if len(self.errors) < 3:
                        self.errors.append(repr(exc))
            time.sleep(0.005)
        conn.close()


def floor(db: Path) -> float:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from qunfa.crypto.fields import Keyring

    ring = Keyring.load(db.parent / "keys.json")
    new = AESGCM(AESGCM.generate_key(256))
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    after = 0
    while True:
        rows = conn.execute(
            "SELECT id, value_enc FROM identities WHERE id > ? ORDER BY id LIMIT ?", (after, PAGE)
        ).fetchall()
        if not rows:
            break
        out = []
        for rid, blob in rows:
            plain = ring.decrypt(bytes(blob))
            nonce = random.randbytes(12)
            out.append((b"\x01\x02kf" + nonce + new.encrypt(nonce, plain.encode(), b"kf"), rid))
        conn.executemany("UPDATE identities SET value_enc = ? WHERE id = ?", out)
        conn.commit()
        after = rows[-1][0]
    conn.close()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qunfa-bench-keys-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        c = seed(args.fields, work)
        seeded = time.perf_counter() - t
        db = work / "qunfa" / "qunfa.db"
        reader = Reader(db, c.settings.keyring_path, args.fields)
        reader.start()
        time.sleep(0.2)
        report = c.keys.rotate()
        reader.stop.set()
        reader.join()
        qunfa_s = report.seconds
        c.close()
        floor_s = floor(db)
        result = {
            "fields": report.fields,
            "seed_seconds": round(seeded, 1),
            "qunfa_seconds": round(qunfa_s, 2),
            "qunfa_fields_per_s": round(report.fields / qunfa_s),
            "floor_seconds": round(floor_s, 2),
            "ratio": round(qunfa_s / floor_s, 2),
            "reads_during_rotation": reader.reads,
            "failed_reads": reader.failures,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    if args.json:
        print(json.dumps(result))
        return
    print(f"rotated {result['fields']:,} fields in {result['qunfa_seconds']} s "
          f"({result['qunfa_fields_per_s']:,}/s; target ≤60 s for 1M)")  # fmt: skip
    print(f"raw floor (sqlite3 + AES-GCM, no guard, no reader): {result['floor_seconds']} s")
    print(f"ratio qunfa/floor: {result['ratio']}×")
    print(f"reads during rotation: {result['reads_during_rotation']:,}, "
          f"failed: {result['failed_reads']}  {reader.errors}")  # fmt: skip
    print(f"peak RSS: {result['peak_rss_mb']} MB (seed {result['seed_seconds']} s)")
    if result["failed_reads"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
