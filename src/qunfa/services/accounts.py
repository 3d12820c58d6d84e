"""Platform accounts: register (credentials encrypted), list, build adapters, and sync.

Sync itself (resumable, set-based per page, unionids, tags) lives in :mod:`qunfa.services.sync`;
:meth:`AccountService.sync` delegates to it so callers keep one entry point.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from qunfa.channels.base import AccountConfig, Channel, ChannelContext
from qunfa.channels.http import HttpClient
from qunfa.channels.registry import account_channel, channel_class
from qunfa.rules import load as load_rules
from qunfa.services.sync import Progress, SyncError, SyncReport, SyncService
from qunfa.storage.bulk import bulk_cache
from qunfa.storage.models import Account

if TYPE_CHECKING:
    from qunfa.bootstrap import Container


class AccountError(ValueError):
    pass


__all__ = ["AccountError", "AccountService", "Progress", "SyncReport"]


class AccountService:
    def __init__(self, c: Container) -> None:
        self.c = c
        self._configs: dict[tuple[int, str, bytes, str], AccountConfig] = {}

    def add(
        self,
        *,
        channel: str,
        app_id: str,
        secret: str = "",
        name: str | None = None,
        kind: str = "",
        base_url: str | None = None,
        token: str = "",
        encoding_aes_key: str = "",
        credentials: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Account:
        """Register an account (or update it when ``channel`` + ``app_id`` exists).

        ``secret``, ``token`` and ``encoding_aes_key`` are the WeChat names; other channels
        pass their fields in ``credentials`` (see each channel's ``credential_fields``).
        """
        cls = channel_class(channel)  # validates the key
        if account_channel(channel) != channel:
            raise AccountError(
                f"{channel} sends through a {account_channel(channel)} account; add that instead"
            )
        if channel == "wechat_oa":
            kind = kind or "service"
            if kind not in ("subscription", "service"):
                raise AccountError(
                    f"kind must be 'subscription' (公众号) or 'service' (服务号), not {kind!r}"
                )
        if encoding_aes_key and len(encoding_aes_key) != 43:
            raise AccountError("EncodingAESKey must be exactly 43 characters (from the console)")
        creds = {"secret": secret, "token": token, "encoding_aes_key": encoding_aes_key}
        creds.update(credentials or {})
        missing = [f for f in cls.credential_fields if not creds.get(f)]
        if missing:
            raise AccountError(f"a {channel} account needs {', '.join(missing)}")
        rules = (settings or {}).get("rules", {})
        load_rules(cls.rules_name).with_overrides(rules)  # validates the rule names
        enc = self.c.keyring.encrypt(json.dumps(creds))
        prefix = cls.sandbox_prefix or channel
        base = base_url or f"{self.c.settings.sandbox_url.rstrip('/')}/{prefix}"
        with self.c.sessions() as s:
            acc = s.scalars(
                select(Account).where(Account.channel == channel, Account.app_id == app_id)
            ).one_or_none()
            if acc is None:
                acc = Account(channel=channel, app_id=app_id, created_at=time.time())
                s.add(acc)
            acc.name = name or app_id
            acc.kind = kind
            acc.base_url = base
            acc.credentials_enc = enc
            acc.settings = settings or {}
            s.commit()
            return acc

    def all(self) -> list[Account]:
        with self.c.sessions() as s:
            return list(s.scalars(select(Account).order_by(Account.id)))

    def get(self, ref: int | str) -> Account:
        """An account by app id (appid, corpid, SdkAppId …) or, failing that, by row id.

        The app id wins: an all-digit SdkAppId must not be mistaken for a row id.
        """
        with self.c.sessions() as s:
            acc = None
            if not isinstance(ref, int):
                acc = s.scalars(select(Account).where(Account.app_id == str(ref))).first()
            if acc is None and str(ref).isdigit():
                acc = s.get(Account, int(ref))
            if acc is None:
                raise AccountError(f"no account {ref!r}; see `qunfa accounts list`")
            return acc

    def credentials(self, acc: Account) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.c.keyring.decrypt(acc.credentials_enc))
        return data

    def config(self, acc: Account, channel: str | None = None) -> AccountConfig:
        """The account as adapters see it, cached per (account, channel, credentials, settings):
        every batch needs it, and decrypting and rebuilding the rules each time adds up."""
        key = channel or acc.channel
        cache_key = (
            acc.id,
            key,
            acc.credentials_enc,
            json.dumps(acc.settings or {}, sort_keys=True),
        )
        cached = self._configs.get(cache_key)
        if cached is None:
            cached = self._configs[cache_key] = self._build_config(acc, key)
        return cached

    def _build_config(self, acc: Account, key: str) -> AccountConfig:
        rules = load_rules(channel_class(key).rules_name)
        overrides = dict((acc.settings or {}).get("rules", {}))
        return AccountConfig(
            id=acc.id,
            channel=key,
            app_id=acc.app_id,
            kind=acc.kind,
            base_url=acc.base_url,
            credentials=self.credentials(acc),
            rules=rules.with_overrides(overrides) if overrides else rules,
            settings=acc.settings or {},
        )

    def adapter(self, acc: Account, http: HttpClient, channel: str | None = None) -> Channel:
        cfg = self.config(acc, channel)
        ctx = ChannelContext(http=http, tokens=self.c.tokens, limiter=self.c.limiter)
        return channel_class(cfg.channel)(cfg, ctx)

    # -- sync (services/sync.py) -----------------------------------------------------------------
    @cached_property
    def syncer(self) -> SyncService:
        return SyncService(self.c)

    async def sync(
        self, ref: int | str, progress: Progress | None = None, *, profiles: bool = True
    ) -> SyncReport:
        """Pull followers (Official Account) or customers (WeCom) and their tags; resumes an
        unfinished run from its last committed page (see :mod:`qunfa.services.sync`)."""
        acc = self.get(ref)
        try:
            return await self.syncer.sync(acc, progress, profiles=profiles)
        except SyncError as exc:
            raise AccountError(str(exc)) from None

    def has_identities(self, account_id: int, kind: str) -> bool:
        return self.syncer.has_identities(account_id, kind)

    def upsert_identities(
        self, account_id: int, kind: str, values: list[str], now: float, known: bool = True
    ) -> int:
        """Upsert one page of ids of ``kind`` set-based (imports); returns how many were new."""
        with self.c.engine.begin() as conn, bulk_cache(conn):
            return self.syncer.upsert_page(conn, account_id, kind, values, now, known).new
