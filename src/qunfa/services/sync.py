"""Platform sync: Official Account followers and WeCom customers into contacts and identities.

Resumable. Where a sync stands lives in ``sync_state`` (one row per account and kind): the
platform's cursor after the last *committed* page, when the run started, how many ids it has
seen. Each page is written in one transaction together with the new cursor, so a sync killed
anywhere resumes from the page after the last one it committed, never from scratch. Only a run
that reached the end marks the followers it did not see as unsubscribed (identities it touched
carry ``updated_at = run_started_at``, so a resumed run finds the same set).

Per page, set-based: one ``IN`` lookup of the page's ids and one of their unionids by blind
index, bulk inserts (``storage/bulk.py``) of new contacts and identities, one ``UPDATE`` of the
known ones. A unionid is an account-less identity (kind ``unionid``, ``account_id`` NULL) of
the same contact: a new openid whose unionid is already known (another Official Account, a
WeCom customer) joins that person instead of creating one. A known openid whose unionid belongs
to another person is a merge, handed to ``services/people.py`` when it exists.

Official Account pages: ``user/get`` (10,000 openids), then ``user/info/batchget`` in chunks of
100, a few in flight at once, for unionid and subscribe time; then tags (``tags/get``) and their
members (``user/tag/get``), each members page committed with its cursor too, so the tag phase
resumes mid-tag (:meth:`SyncService._pull_oa_tags`). WeCom: corp tags first
(``get_corp_tag_list``), then every follow user's customers (``batch/get_by_user``,
cursor-paged), whose tag ids come with each page (a customer of several members comes once per
member: :meth:`SyncService._replace_tags`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, delete, func, select, update

from qunfa.channels.http import HttpClient
from qunfa.channels.wechat_oa import WechatOA
from qunfa.channels.wecom_customer import WecomCustomer
from qunfa.storage.bulk import bulk_cache, insert_rows, insert_rows_returning_ids
from qunfa.storage.models import Account, Identity, IdentityTag, SyncState, Tag, TagGroup

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

Progress = Callable[[str, int, int | None], None]  # (what, done, total)
PROFILE_CONCURRENCY = 8  # batchget calls in flight per page
IDS = cast(Table, Identity.__table__)
ITAGS = cast(Table, IdentityTag.__table__)


class SyncError(ValueError):
    pass


@dataclass(frozen=True)
class SyncReport:
    followers: int
    new: int
    unsubscribed: int
    tags: int
    tagged: int
    seconds: float
    resumed: bool = False
    unionids: int = 0
    merges: int = 0


@dataclass
class PageResult:
    new: int = 0
    unionids: int = 0
    ids: dict[str, int] = field(default_factory=dict)  # value → identity id
    merges: list[tuple[int, int]] = field(default_factory=list)  # (survivor, absorbed)


class SyncService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- entry ------------------------------------------------------------------------------------
    async def sync(
        self, acc: Account, progress: Progress | None = None, *, profiles: bool = True
    ) -> SyncReport:
        """Sync one account, resuming an unfinished run. ``profiles=False`` skips
        ``user/info/batchget`` (no unionids, about half the platform calls)."""
        if acc.channel == "wecom_customer":
            return await self._sync_wecom(acc, progress)
        if acc.channel != "wechat_oa":
            raise SyncError(
                f"{acc.channel} has no contact-list API to sync from; import its recipients "
                "with `qunfa contacts import FILE --account …`"
            )
        return await self._sync_oa(acc, progress, profiles)

    # -- sync_state -------------------------------------------------------------------------------
    def _begin(self, account_id: int, kind: str) -> SyncState:
        """The run to continue (unfinished) or a new one."""
        now = time.time()
        with self.c.sessions() as s:
            st = s.get(SyncState, (account_id, kind))
            if st is None:
                st = SyncState(account_id=account_id, kind=kind, updated_at=now)
                s.add(st)
            if st.run_started_at is None or st.finished_at is not None:
                st.cursor, st.run_started_at, st.finished_at, st.seen = None, now, None, 0
                st.detail = {"phase": "ids", "new": 0, "unionids": 0, "resumes": 0}
            else:
                st.detail = {**st.detail, "resumes": int(st.detail.get("resumes", 0)) + 1}
            st.updated_at = now
            s.commit()
            s.refresh(st)
            s.expunge(st)
            return st

    @staticmethod
    def _save(conn: Connection, st: SyncState) -> None:
        """Persist the cursor in the caller's transaction (the page's own)."""
        t = cast(Table, SyncState.__table__)
        conn.execute(
            update(t)
            .where(t.c.account_id == st.account_id, t.c.kind == st.kind)
            .values(
                cursor=st.cursor,
                seen=st.seen,
                detail=st.detail,
                updated_at=time.time(),
                finished_at=st.finished_at,
            )
        )

    def _finish(self, st: SyncState) -> None:
        st.finished_at, st.cursor = time.time(), None
        st.detail = {**st.detail, "phase": "done"}
        with self.c.engine.begin() as conn:
            self._save(conn, st)
            acc = cast(Table, Account.__table__)
            conn.execute(update(acc).where(acc.c.id == st.account_id).values(synced_at=time.time()))

    def state(self, account_id: int, kind: str) -> SyncState | None:
        with self.c.sessions() as s:
            st = s.get(SyncState, (account_id, kind))
            if st is not None:
                s.expunge(st)
            return st

    # -- Official Account -------------------------------------------------------------------------
    async def _sync_oa(self, acc: Account, progress: Progress | None, profiles: bool) -> SyncReport:
        st = self._begin(acc.id, "followers")
        resumed = bool(st.detail.get("resumes"))
        run_started = float(st.run_started_at or time.time())
        merges: list[tuple[int, int]] = []
        tags = tagged = 0
        async with HttpClient(self.c.settings.http_timeout) as http:
            oa = self.c.accounts.adapter(acc, http)
            assert isinstance(oa, WechatOA)
            if st.detail.get("phase") == "ids":
                known = self.has_identities(acc.id, "openid")
                async for openids, nxt in oa.follower_pages(st.cursor or ""):
                    info = await self._profiles(oa, openids) if profiles else {}
                    unionids = {o: i.get("unionid") for o, i in info.items()}
                    since = {o: float(i["subscribe_time"]) for o, i in info.items()
                             if i.get("subscribe_time")}  # fmt: skip
                    with self.c.engine.begin() as conn, bulk_cache(conn):
                        page = self.upsert_page(
                            conn, acc.id, "openid", openids, run_started, known, unionids, since
                        )
                        st.cursor, st.seen = nxt, st.seen + len(openids)
                        st.detail = {**st.detail, "new": st.detail["new"] + page.new,
                                     "unionids": st.detail["unionids"] + page.unionids}  # fmt: skip
                        self._save(conn, st)
                    known = True
                    merges += page.merges
                    if progress:
                        progress("followers", st.seen, None)
                st.detail = {**st.detail, "phase": "tags"}
                with self.c.engine.begin() as conn:
                    self._save(conn, st)
            # Tags: qunfa's pending changes go out first, so the pull does not undo them.
            await self.c.tags.push(account_id=acc.id, http=http)
            tags, tagged = await self._pull_oa_tags(acc, oa, st, progress)
        unsubscribed = self.mark_unsubscribed(acc.id, run_started, "openid")
        self._finish(st)
        merged = self._merge(merges)
        return SyncReport(
            followers=st.seen, new=int(st.detail["new"]), unsubscribed=unsubscribed, tags=tags,
            tagged=tagged, seconds=time.time() - run_started, resumed=resumed,
            unionids=int(st.detail["unionids"]), merges=merged,
        )  # fmt: skip

    async def _profiles(self, oa: WechatOA, openids: list[str]) -> dict[str, dict[str, Any]]:
        """user/info/batchget over the page, ≤ 100 openids a call, a few calls in flight."""
        step = oa.rules["batchget_max_per_call"]
        gate = asyncio.Semaphore(PROFILE_CONCURRENCY)

        async def one(chunk: list[str]) -> list[dict[str, Any]]:
            async with gate:
                return await oa.user_info(chunk)

        chunks = [openids[i : i + step] for i in range(0, len(openids), step)]
        results = await asyncio.gather(*(one(ch) for ch in chunks))
        return {str(u["openid"]): u for part in results for u in part}

    async def _pull_oa_tags(
        self, acc: Account, oa: WechatOA, st: SyncState, progress: Progress | None
    ) -> tuple[int, int]:
        """The platform's tags replace the account's: new ones added, renamed ones renamed,
        vanished ones deleted; then each tag's members are replaced from ``user/tag/get``.

        Resumable like the follower pages. Each members page is written in its own transaction
        together with ``sync_state.detail["tags"]``: ``done`` (platform tag id → members, the
        tags finished in this run) and, for the tag in progress, ``at`` (its platform id),
        ``next`` (the ``next_openid`` after the last committed page) and ``n`` (members so far).
        A tag's old members are deleted in the transaction of its *first* page (or of its end
        when it has no members), so a run that continues a tag after its cursor never deletes
        what the crashed run already wrote, and a tag whose first page never committed still has
        its old members. A resumed run fetches ``tags/get`` again (one call) and skips the
        finished tags.
        """
        remote = await oa.tags()
        ring = self.c.keyring
        with self.c.sessions() as s:
            local = {t.platform_tag_id: t for t in s.scalars(select(Tag).where(
                Tag.account_id == acc.id, Tag.platform_tag_id.is_not(None)))}  # fmt: skip
            ids: dict[int, int] = {}
            for r in remote:
                tag = local.pop(int(r["id"]), None)
                if tag is None:
                    clash = s.scalars(
                        select(Tag).where(Tag.account_id == acc.id, Tag.name == str(r["name"]))
                    ).one_or_none()
                    tag = clash or Tag(account_id=acc.id, name=str(r["name"]), source="synced")
                    s.add(tag)
                tag.name, tag.platform_tag_id = str(r["name"]), int(r["id"])
                s.flush()
                ids[int(r["id"])] = tag.id
            for gone in local.values():  # deleted on the platform
                s.delete(gone)
            s.commit()
        t = cast(Table, Tag.__table__)
        prog: dict[str, Any] = dict(st.detail.get("tags") or {})
        done: dict[str, int] = {str(k): int(v) for k, v in (prog.get("done") or {}).items()}
        tagged = sum(done.get(str(r["id"]), 0) for r in remote)
        for r in remote:
            pid, tag_id = int(r["id"]), ids[int(r["id"])]
            if str(pid) in done:
                continue
            # Continuing the tag the crashed run was paging: its old members are gone already.
            cleared = prog.get("at") == pid
            cursor = str(prog.get("next") or "") if cleared else ""
            n = int(prog.get("n") or 0) if cleared else 0
            exhausted = cleared and not cursor  # its last page committed, its end did not
            pages = oa.tag_member_pages(pid, cursor) if not exhausted else _no_pages()
            async for page, nxt in pages:
                with self.c.engine.begin() as conn, bulk_cache(conn):
                    if not cleared:
                        conn.execute(delete(ITAGS).where(ITAGS.c.tag_id == tag_id))
                        cleared = True
                    found = self.identity_ids(conn, acc.id, "openid", [ring.blind(o) for o in page])
                    insert_rows(conn, "identity_tags", ("tag_id", "identity_id"),
                                [(tag_id, iid) for iid, _ in found.values()])  # fmt: skip
                    n += len(found)
                    prog = {"done": done, "at": pid, "next": nxt, "n": n}
                    st.detail = {**st.detail, "tags": prog}
                    self._save(conn, st)
                if progress:
                    progress(f"tag {r['name']}", tagged + n, None)
            with self.c.engine.begin() as conn:
                if not cleared:  # no members on the platform: none here either
                    conn.execute(delete(ITAGS).where(ITAGS.c.tag_id == tag_id))
                conn.execute(update(t).where(t.c.id == tag_id).values(member_count=n))
                done = {**done, str(pid): n}
                prog = {"done": done, "at": None, "next": "", "n": 0}
                st.detail = {**st.detail, "tags": prog}
                self._save(conn, st)
            tagged += n
        return len(remote), tagged

    # -- WeCom customers --------------------------------------------------------------------------
    async def _sync_wecom(self, acc: Account, progress: Progress | None) -> SyncReport:
        st = self._begin(acc.id, "customers")
        resumed = bool(st.detail.get("resumes"))
        run_started = float(st.run_started_at or time.time())
        merges: list[tuple[int, int]] = []
        async with HttpClient(self.c.settings.http_timeout) as http:
            adapter = self.c.accounts.adapter(acc, http)
            assert isinstance(adapter, WecomCustomer)
            await self.c.tags.push(account_id=acc.id, http=http)
            refs = await self._pull_corp_tags(acc, adapter)
            staff = await adapter.follow_users()
            known = self.has_identities(acc.id, "external_userid")
            chunk, cursor = json.loads(st.cursor) if st.cursor else (0, "")
            async for items, (nxt_chunk, nxt_cursor) in adapter.customer_pages(
                staff, (int(chunk), str(cursor))
            ):
                values = [str(i["external_userid"]) for i in items]
                unionids = {str(i["external_userid"]): i.get("unionid") for i in items}
                with self.c.engine.begin() as conn, bulk_cache(conn):
                    seen = self._touched(conn, acc.id, "external_userid", values, run_started)
                    page = self.upsert_page(
                        conn, acc.id, "external_userid", values, run_started, known, unionids
                    )
                    self._replace_tags(conn, page.ids, items, refs, seen)
                    st.cursor = json.dumps([nxt_chunk, nxt_cursor])
                    # Customers, not follows: one several members follow is counted on the
                    # first page of the run that meets them (``seen``: met before this page).
                    st.seen += len(set(page.ids.values()) - seen)
                    st.detail = {**st.detail, "new": st.detail["new"] + page.new,
                                 "unionids": st.detail["unionids"] + page.unionids}  # fmt: skip
                    self._save(conn, st)
                known = True
                merges += page.merges
                if progress:
                    progress("customers", st.seen, None)
        self._count_tags(list(refs.values()))
        unsubscribed = self.mark_unsubscribed(acc.id, run_started, "external_userid")
        self._finish(st)
        merged = self._merge(merges)
        with self.c.engine.connect() as conn:
            tagged = conn.execute(
                select(func.count()).select_from(ITAGS).where(ITAGS.c.tag_id.in_(refs.values()))
            ).scalar_one()
        return SyncReport(
            followers=st.seen, new=int(st.detail["new"]), unsubscribed=unsubscribed,
            tags=len(refs), tagged=int(tagged), seconds=time.time() - run_started,
            resumed=resumed, unionids=int(st.detail["unionids"]), merges=merged,
        )  # fmt: skip

    async def _pull_corp_tags(self, acc: Account, adapter: WecomCustomer) -> dict[str, int]:
        """Corp tag groups and tags replace the account's; returns platform tag id → tag id."""
        groups = await adapter.corp_tags()
        now = time.time()
        refs: dict[str, int] = {}
        with self.c.sessions() as s:
            local_groups = {g.platform_group_id: g for g in s.scalars(
                select(TagGroup).where(TagGroup.account_id == acc.id))}  # fmt: skip
            synced = select(Tag).where(Tag.account_id == acc.id, Tag.platform_ref.is_not(None))
            local_tags = {t.platform_ref: t for t in s.scalars(synced)}
            for g in groups:
                if g.get("deleted"):
                    continue
                group = local_groups.pop(str(g["group_id"]), None) or TagGroup(
                    account_id=acc.id, platform_group_id=str(g["group_id"]), created_at=now
                )
                group.name = str(g["group_name"])
                s.add(group)
                s.flush()
                for t in g.get("tag") or []:
                    if t.get("deleted"):
                        continue
                    tag = local_tags.pop(str(t["id"]), None) or Tag(
                        account_id=acc.id, platform_ref=str(t["id"]), source="synced"
                    )
                    tag.name, tag.group_id = str(t["name"]), group.id
                    s.add(tag)
                    s.flush()
                    refs[str(t["id"])] = tag.id
            for gone_tag in local_tags.values():
                s.delete(gone_tag)
            for gone_group in local_groups.values():
                if gone_group.platform_group_id is not None:
                    s.delete(gone_group)
            s.commit()
        return refs

    def _touched(
        self, conn: Connection, account_id: int, kind: str, values: Sequence[str], since: float
    ) -> set[int]:
        """Identities among ``values`` this run already wrote (``updated_at`` ≥ its start),
        on an earlier page or before a crash."""
        ring = self.c.keyring
        rows = conn.execute(
            select(IDS.c.id).where(
                IDS.c.account_id == account_id, IDS.c.kind == kind,
                IDS.c.value_bi.in_([ring.blind(v) for v in values]), IDS.c.updated_at >= since,
            )
        )  # fmt: skip
        return {int(i) for (i,) in rows}

    @staticmethod
    def _replace_tags(
        conn: Connection,
        ids: dict[str, int],
        items: Sequence[dict[str, Any]],
        refs: dict[str, int],
        seen: set[int],
    ) -> None:
        """This page's customers carry exactly the corp tags the platform lists for them.

        A customer followed by several members comes once per member, each time with the tags
        *that* member marked (``follow_info.tag_id``), on different pages. So the first time a
        run meets a customer (not in ``seen``) their corp tags are replaced; a later page of
        the same run (also after a resume) only adds the ones not there yet.
        """
        if not ids or not refs:
            return
        first = [iid for iid in ids.values() if iid not in seen]
        if first:
            conn.execute(
                delete(ITAGS).where(
                    ITAGS.c.identity_id.in_(first), ITAGS.c.tag_id.in_(refs.values())
                )
            )
        rows = {(refs[str(t)], ids[str(i["external_userid"])])
                for i in items for t in i.get("tag_ids") or [] if str(t) in refs}  # fmt: skip
        again = [iid for iid in ids.values() if iid in seen]
        if again and rows:
            have = conn.execute(
                select(ITAGS.c.tag_id, ITAGS.c.identity_id).where(
                    ITAGS.c.identity_id.in_(again), ITAGS.c.tag_id.in_(refs.values())
                )
            )
            rows -= {(int(t), int(i)) for t, i in have}
        insert_rows(conn, "identity_tags", ("tag_id", "identity_id"), sorted(rows))

    def _count_tags(self, tag_ids: list[int]) -> None:
        if not tag_ids:
            return
        t = cast(Table, Tag.__table__)
        counted = (
            select(func.count())
            .select_from(ITAGS)
            .where(ITAGS.c.tag_id == t.c.id)
            .scalar_subquery()
        )
        with self.c.engine.begin() as conn:
            conn.execute(update(t).where(t.c.id.in_(tag_ids)).values(member_count=counted))

    # -- the page writer --------------------------------------------------------------------------
    def identity_ids(
        self, conn: Connection, account_id: int | None, kind: str, blinds: list[bytes]
    ) -> dict[bytes, tuple[int, int]]:
        """(identity id, contact id) by blind index of ids of ``kind`` (one IN query);
        ``account_id`` None: the account-less identities (unionid, phone …)."""
        if not blinds:
            return {}
        scope = IDS.c.account_id.is_(None) if account_id is None else IDS.c.account_id == account_id
        rows = conn.execute(
            select(IDS.c.value_bi, IDS.c.id, IDS.c.contact_id).where(
                scope, IDS.c.kind == kind, IDS.c.value_bi.in_(blinds)
            )
        )
        return {bytes(bi): (int(iid), int(cid)) for bi, iid, cid in rows}

    def has_identities(self, account_id: int, kind: str) -> bool:
        with self.c.engine.connect() as conn:
            found = conn.execute(
                select(IDS.c.id).where(IDS.c.account_id == account_id, IDS.c.kind == kind).limit(1)
            ).first()
            return found is not None

    def upsert_page(
        self,
        conn: Connection,
        account_id: int,
        kind: str,
        values: Sequence[str],
        now: float,
        known: bool = True,
        unionids: dict[str, Any] | None = None,
        subscribed_at: dict[str, float] | None = None,
    ) -> PageResult:
        """Upsert one page of ids of ``kind`` (and their unionids) in the caller's transaction.

        New ids get the contact of their unionid when that is known, else a new contact; known
        ones are marked subscribed and touched (``updated_at = now``), which is how a full sync
        finds the ones that disappeared. ``known=False`` (none of this kind on the account yet)
        skips the lookup. Returns the counts and every value's identity id.
        """
        ring = self.c.keyring
        values = list(dict.fromkeys(values))
        blinds = [ring.blind(v) for v in values]
        existing = self.identity_ids(conn, account_id, kind, blinds) if known else {}
        union_of = {v: str(u) for v, u in (unionids or {}).items() if u}
        ublind = {u: ring.blind(u) for u in dict.fromkeys(union_of.values())}
        known_u = self.identity_ids(conn, None, "unionid", list(ublind.values()))
        out = PageResult()
        fresh = [(v, bi) for v, bi in zip(values, blinds, strict=True) if bi not in existing]
        if existing:
            conn.execute(
                update(IDS)
                .where(IDS.c.id.in_([iid for iid, _ in existing.values()]))
                .values(subscribed=True, updated_at=now)
            )
        # Contacts: a fresh id joins its unionid's person, or gets a new one.
        joins = {v: known_u[ublind[union_of[v]]][1] for v, _ in fresh
                 if v in union_of and ublind[union_of[v]] in known_u}  # fmt: skip
        alone = [v for v, _ in fresh if v not in joins]
        new_contacts = insert_rows_returning_ids(
            conn, "contacts", ("created_at", "updated_at"), [(now, now)] * len(alone)
        )
        contact_of = {**joins, **dict(zip(alone, new_contacts, strict=True))}
        since = subscribed_at or {}
        if fresh:
            insert_rows(
                conn,
                "identities",
                ("contact_id", "account_id", "kind", "value_enc", "value_bi", "subscribed",
                 "subscribed_at", "updated_at"),
                [(contact_of[v], account_id, kind, enc, bi, True, since.get(v, now), now)
                 for (v, bi), enc in zip(fresh, ring.encrypt_many([v for v, _ in fresh]),
                                         strict=True)],
            )  # fmt: skip
        out.new = len(fresh)
        # Unionids: new ones become account-less identities of the id's person; a known one
        # on another person means the two are one (a merge).
        existing_contact = {v: existing[bi][1] for v, bi in zip(values, blinds, strict=True)
                            if bi in existing}  # fmt: skip
        contact_of.update(existing_contact)
        # A unionid already on another person: the id's person gets the unionid too (so the
        # two share a merge key) and is handed to the merge (services/people.py) after commit.
        new_unions: list[tuple[str, int]] = []
        fresh_u: set[str] = set()
        for v, u in union_of.items():
            if v not in contact_of:
                continue
            if ublind[u] in known_u:
                owner = known_u[ublind[u]][1]
                if owner != contact_of[v]:
                    out.merges.append((owner, contact_of[v]))
                    new_unions.append((u, contact_of[v]))
            elif u not in fresh_u:
                fresh_u.add(u)
                new_unions.append((u, contact_of[v]))
        if new_unions:
            insert_rows(
                conn,
                "identities",
                ("contact_id", "account_id", "kind", "value_enc", "value_bi", "subscribed",
                 "subscribed_at", "updated_at"),
                [(cid, None, "unionid", enc, ublind[u], True, now, now)
                 for (u, cid), enc in zip(new_unions,
                                          ring.encrypt_many([u for u, _ in new_unions]),
                                          strict=True)],
            )  # fmt: skip
        out.unionids = len(fresh_u)
        if fresh:
            found = self.identity_ids(conn, account_id, kind, [bi for _, bi in fresh])
            out.ids = {v: found[bi][0] for v, bi in fresh}
        out.ids.update(
            {values[i]: existing[bi][0] for i, bi in enumerate(blinds) if bi in existing}
        )
        return out

    def mark_unsubscribed(self, account_id: int, run_started: float, kind: str) -> int:
        """Identities of ``kind`` not touched by the run that started at ``run_started``."""
        with self.c.engine.begin() as conn:
            result = conn.execute(
                update(IDS)
                .where(
                    IDS.c.account_id == account_id,
                    IDS.c.kind == kind,
                    IDS.c.subscribed.is_(True),
                    IDS.c.updated_at < run_started,
                )
                .values(subscribed=False, updated_at=time.time())
            )
            return int(result.rowcount)

    def _merge(self, pairs: list[tuple[int, int]]) -> int:
        """People found to be one (same unionid) go to the merge service, after the pages
        committed (a merge moves identities; it must not race the page that added them)."""
        if not pairs:
            return 0
        people: Any = getattr(self.c, "people", None)
        if people is None or not hasattr(people, "merge_for"):
            return 0
        contacts = {cid for pair in pairs for cid in pair}
        return len(people.merge_for(contacts, actor="sync"))


async def _no_pages() -> AsyncIterator[tuple[list[str], str]]:
    """An empty page stream (a tag whose pages were all committed before the crash)."""
    return
    yield  # pragma: no cover  (makes this an async generator)
