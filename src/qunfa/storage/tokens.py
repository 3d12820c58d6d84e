"""The database-backed :class:`~qunfa.channels.tokens.TokenStore` (tokens encrypted at rest)."""

from __future__ import annotations

import time

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qunfa.channels.tokens import CachedToken
from qunfa.crypto.fields import Keyring
from qunfa.storage.models import AccessToken


class DbTokenStore:
    def __init__(self, sessions: sessionmaker[Session], keyring: Keyring) -> None:
        self._sessions = sessions
        self._keyring = keyring

    def load(self, account_id: int) -> CachedToken | None:
        with self._sessions() as s:
            row = s.get(AccessToken, account_id)
            if row is None:
                return None
            return CachedToken(self._keyring.decrypt(row.token_enc), row.expires_at, row.generation)

    def swap(
        self, account_id: int, token: str, expires_at: float, expected_generation: int
    ) -> CachedToken:
        enc = self._keyring.encrypt(token)
        now = time.time()
        with self._sessions() as s:
            if expected_generation == 0:
                s.add(
                    AccessToken(
                        account_id=account_id,
                        token_enc=enc,
                        expires_at=expires_at,
                        fetched_at=now,
                        generation=1,
                    )
                )
                try:
                    s.commit()
                    return CachedToken(token, expires_at, 1)
                except IntegrityError:
                    s.rollback()  # another process stored one first: use theirs
            else:
                # Compare-and-swap on the generation: only one refresh wins per generation.
                result = s.execute(
                    update(AccessToken)
                    .where(
                        AccessToken.account_id == account_id,
                        AccessToken.generation == expected_generation,
                    )
                    .values(
                        token_enc=enc,
                        expires_at=expires_at,
                        fetched_at=now,
                        generation=expected_generation + 1,
                    )
                )
                s.commit()
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return CachedToken(token, expires_at, expected_generation + 1)
            row = s.scalars(select(AccessToken).where(AccessToken.account_id == account_id)).one()
            return CachedToken(self._keyring.decrypt(row.token_enc), row.expires_at, row.generation)
