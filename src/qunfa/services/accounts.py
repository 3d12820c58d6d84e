"""Platform accounts: register (credentials encrypted), list, build adapters, and sync.

Sync pulls followers page by page (``user/get``, 10,000 a page) and tag membership
(``user/tag/get``), upserting identities set-based per page: one ``IN`` lookup by blind index,
one bulk insert of new contacts and identities, one bulk update of the rest. Followers not
seen in a full sync are marked unsubscribed in one statement.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, delete, func, insert, select, update

from qunfa.channels.base import AccountConfig, Channel, ChannelContext
from qunfa.channels.http import HttpClient
from qunfa.channels.registry import account_channel, channel_class
from qunfa.channels.wechat_oa import WechatOA
from qunfa.rules import load as load_rules
from qunfa.storage.bulk import bulk_cache, insert_rows, insert_rows_returning_ids
from qunfa.storage.models import Account, Identity, IdentityTag, Tag

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

Progress = Callable[[str, int, int | None], None]  # (what, done, total)


class AccountError(ValueError):
    pass


@dataclass(frozen=True)
class SyncReport:
    followers: int
    new: int
    unsubscribed: int
    tags: int
    tagged: int
    seconds: float


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

    # -- sync ------------------------------------------------------------------------------------
    async def sync(self, ref: int | str, progress: Progress | None = None) -> SyncReport:
        """Pull followers and tags of an Official Account into contacts/identities/tags."""
        acc = self.get(ref)
        if acc.channel == "wecom_customer":
            return await self._sync_wecom_customers(acc, progress)
        if acc.channel != "wechat_oa":
            raise AccountError(
                f"{acc.channel} has no contact-list API to sync from; import its recipients "
                "with `qunfa contacts import FILE --account …`"
            )
        started = time.time()
        report = {"followers": 0, "new": 0, "tags": 0, "tagged": 0}
        async with HttpClient(self.c.settings.http_timeout) as http:
            oa = self.adapter(acc, http)
            assert isinstance(oa, WechatOA)
            known = self.has_identities(acc.id, "openid")
            async for page in oa.followers():
                report["new"] += self.upsert_identities(acc.id, "openid", page, started, known)
                report["followers"] += len(page)
                if progress:
                    progress("followers", report["followers"], None)
            unsubscribed = self._mark_unsubscribed(acc.id, started)
            for tag in await oa.tags():
                report["tags"] += 1
                tag_row = self._upsert_tag(acc.id, int(tag["id"]), str(tag["name"]))
                async for page in oa.tag_members(int(tag["id"])):
                    report["tagged"] += self._add_tag_members(acc.id, tag_row, page)
                    if progress:
                        progress(f"tag {tag['name']}", report["tagged"], None)
                self._count_tag(tag_row)
        with self.c.sessions() as s:
            s.execute(update(Account).where(Account.id == acc.id).values(synced_at=time.time()))
            s.commit()
        return SyncReport(
            followers=report["followers"],
            new=report["new"],
            unsubscribed=unsubscribed,
            tags=report["tags"],
            tagged=report["tagged"],
            seconds=time.time() - started,
        )

    async def _sync_wecom_customers(self, acc: Account, progress: Progress | None) -> SyncReport:
        """WeCom customers: every member with customer-contact rights, their customers paged."""
        started = time.time()
        total = new = 0
        async with HttpClient(self.c.settings.http_timeout) as http:
            adapter: Any = self.adapter(acc, http)
            staff = list(await adapter.follow_users())
            known = self.has_identities(acc.id, "external_userid")
            async for page in adapter.customers(staff):
                ids = [str(item["external_userid"]) for item in page]
                new += self.upsert_identities(acc.id, "external_userid", ids, started, known)
                total += len(ids)
                if progress:
                    progress("customers", total, None)
        unsubscribed = self._mark_unsubscribed(acc.id, started, "external_userid")
        with self.c.sessions() as s:
            s.execute(update(Account).where(Account.id == acc.id).values(synced_at=time.time()))
            s.commit()
        return SyncReport(total, new, unsubscribed, 0, 0, time.time() - started)

    def _identity_ids(
        self, account_id: int, blinds: list[bytes], kind: str = "openid"
    ) -> dict[bytes, int]:
        """Identity ids of this account's ids of ``kind``, by blind index (one IN query)."""
        t = cast(Table, Identity.__table__)
        with self.c.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.value_bi, t.c.id).where(
                    t.c.account_id == account_id, t.c.kind == kind, t.c.value_bi.in_(blinds)
                )
            )
            return {bytes(bi): int(iid) for bi, iid in rows}

    def has_identities(self, account_id: int, kind: str) -> bool:
        with self.c.engine.connect() as conn:
            t = cast(Table, Identity.__table__)
            found = conn.execute(
                select(t.c.id).where(t.c.account_id == account_id, t.c.kind == kind).limit(1)
            ).first()
            return found is not None

    def upsert_identities(
        self, account_id: int, kind: str, values: list[str], now: float, known: bool = True
    ) -> int:
        """Upsert one page of ids of ``kind`` set-based: one lookup, two bulk inserts, one update.

        New ids get a new contact each (merging identities into one person is the audience
        work's job); known ones are marked subscribed and touched (``updated_at = now``), which
        is how a full sync finds the ones that disappeared. Core statements on the tables
        (executemany), not the ORM's bulk path, which costs ~10× more per row here; each
        value's blind index is computed once. Returns how many were new.
        """
        ring = self.c.keyring
        values = list(dict.fromkeys(values))
        blinds = [ring.blind(v) for v in values]
        # known=False (a first sync or import: none of this kind yet) skips the lookup.
        existing = self._identity_ids(account_id, blinds, kind) if known else {}
        fresh = [(o, bi) for o, bi in zip(values, blinds, strict=True) if bi not in existing]
        ids = cast(Table, Identity.__table__)
        with self.c.engine.begin() as conn, bulk_cache(conn):
            if existing:
                conn.execute(
                    update(ids)
                    .where(ids.c.id.in_(list(existing.values())))
                    .values(subscribed=True, updated_at=now)
                )
            if fresh:
                # Recipient-scale insert: the DBAPI's executemany / COPY (storage/bulk.py).
                contact_ids = insert_rows_returning_ids(
                    conn, "contacts", ("created_at", "updated_at"), [(now, now)] * len(fresh)
                )
                insert_rows(
                    conn,
                    "identities",
                    ("contact_id", "account_id", "kind", "value_enc", "value_bi", "subscribed",
                     "subscribed_at", "updated_at"),
                    [
                        (cid, account_id, kind, enc, bi, True, now, now)
                        for cid, enc, (_, bi) in zip(
                            contact_ids, ring.encrypt_many([o for o, _ in fresh]), fresh,
                            strict=True,
                        )
                    ],
                )  # fmt: skip
        return len(fresh)

    def _mark_unsubscribed(self, account_id: int, sync_started: float, kind: str = "openid") -> int:
        with self.c.sessions() as s:
            result = s.execute(
                update(Identity)
                .where(
                    Identity.account_id == account_id,
                    Identity.kind == kind,
                    Identity.subscribed.is_(True),
                    Identity.updated_at < sync_started,
                )
                .values(subscribed=False, updated_at=time.time())
            )
            s.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]

    def _upsert_tag(self, account_id: int, platform_id: int, name: str) -> int:
        with self.c.sessions() as s:
            tag = s.scalars(
                select(Tag).where(Tag.account_id == account_id, Tag.name == name)
            ).one_or_none()
            if tag is None:
                tag = Tag(account_id=account_id, name=name, source="synced")
                s.add(tag)
            tag.platform_tag_id = platform_id
            s.flush()
            s.execute(delete(IdentityTag).where(IdentityTag.tag_id == tag.id))
            s.commit()
            return tag.id

    def _add_tag_members(self, account_id: int, tag_id: int, openids: list[str]) -> int:
        ring = self.c.keyring
        ids = self._identity_ids(account_id, [ring.blind(o) for o in openids])
        if not ids:
            return 0
        with self.c.engine.begin() as conn:
            conn.execute(
                insert(cast(Table, IdentityTag.__table__)),
                [{"tag_id": tag_id, "identity_id": iid} for iid in ids.values()],
            )
        return len(ids)

    def _count_tag(self, tag_id: int) -> None:
        with self.c.sessions() as s:
            count = s.scalar(
                select(func.count()).select_from(IdentityTag).where(IdentityTag.tag_id == tag_id)
            )
            s.execute(update(Tag).where(Tag.id == tag_id).values(member_count=count or 0))
            s.commit()
