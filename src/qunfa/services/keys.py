"""Key rotation: a new data key, then every encrypted field re-encrypted with it, online.

Rotation adds a key to the keyring file and makes it active (old keys stay for reading), then
walks each encrypted column in keyset pages, decrypting with whatever key wrote a value and
re-encrypting with the new one, one short transaction per page. Readers never fail meanwhile:
every value is readable under either key, and a process holding the keyring in memory reloads
it when it meets the new key id. Blind indexes use their own key and do not change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text

from qunfa.storage.models import Base

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

Progress = Callable[[str, int, int | None], None]
PAGE = 10_000


def encrypted_columns() -> list[tuple[str, str, str]]:
    """Every encrypted column as (table, primary key, column): each ``*_enc`` column of the
    models, so a new one is rotated without anyone remembering to list it."""
    found = []
    for table in Base.metadata.sorted_tables:
        pk = [c.name for c in table.primary_key.columns]
        for col in table.columns:
            if col.name.endswith("_enc"):
                assert len(pk) == 1, f"{table.name}: rotation needs a single-column primary key"
                found.append((table.name, pk[0], col.name))
    return found


@dataclass(frozen=True)
class RotationReport:
    key_id: str
    fields: int
    seconds: float


class KeyService:
    def __init__(self, c: Container) -> None:
        self.c = c

    def rotate(self, progress: Progress | None = None) -> RotationReport:
        started = time.time()
        ring = self.c.keyring
        kid = ring.add_key()
        ring.save(self.c.settings.keyring_path)  # before any write uses the new key
        done = 0
        for table, pk, column in encrypted_columns():
            done += self._reencrypt(table, pk, column, kid, progress, done)
        return RotationReport(kid, done, time.time() - started)

    def _reencrypt(
        self, table: str, pk: str, column: str, kid: str, progress: Progress | None, before: int
    ) -> int:
        ring = self.c.keyring
        select = text(
            f"SELECT {pk}, {column} FROM {table} WHERE {pk} > :after AND {column} IS NOT NULL "
            f"ORDER BY {pk} LIMIT :n"
        )
        # Guarded by the value we read: a concurrent writer (a token refresh, an account edit)
        # wins, and its value is already under a current key.
        update = text(f"UPDATE {table} SET {column} = :value WHERE {pk} = :id AND {column} = :old")
        after, count = -1, 0
        while True:
            with self.c.engine.begin() as conn:
                rows = conn.execute(select, {"after": after, "n": PAGE}).all()
                if not rows:
                    return count
                changed = [
                    {"id": rid, "old": blob, "value": ring.encrypt(ring.decrypt(bytes(blob)))}
                    for rid, blob in rows
                    if ring.key_id_of(bytes(blob)) != kid
                ]
                if changed:
                    conn.execute(update, changed)
            after = rows[-1][0]
            count += len(changed)
            if progress:
                progress(f"re-encrypting {table}.{column}", before + count, None)
