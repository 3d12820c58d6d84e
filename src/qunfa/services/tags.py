"""Tags: groups, tags, membership, rule tags and the two-way sync with the platforms.

A tag with an account is that platform's tag (an Official Account tag id, a WeCom corp tag id)
and hangs on identities (``identity_tags``); one without is qunfa's own and hangs on people
(``contact_tags``). ``source`` says where it came from: ``synced`` (pulled from the platform),
``manual`` (made in qunfa) or ``rule`` (members computed from a segment expression).

Two-way sync. A change made in qunfa to an account tag is written locally at once and queued
in the ``tag_ops`` outbox; :meth:`TagService.push` (from the sweeper, and first thing in every
sync) sends it: Official Account ``tags/members/batchtagging`` / ``batchuntagging`` with ≤ 50
openids a call, WeCom ``externalcontact/mark_tag`` per customer as the member who follows them
(a removal as every member whose own mark carries the tag: see :func:`plan_mark_calls`). A
refused call is retried with backoff; a chunk the platform refuses as a whole (40003,
45059) is retried one openid at a time so one bad member does not block 49 good ones. Changes
made on the platform come back with the next sync (pull).

Limits are the platforms' (``rules/wechat_oa.toml``, ``rules/wecom.toml``), checked here before
any call so the operator gets the rule's name and what to do, and enforced again by the
platform (and the sandbox) with the real errcodes.

Rule tags are re-evaluated every ``rule_every_minutes`` (sweeper): one ``INSERT … SELECT`` adds
the segment's new members and one ``DELETE`` removes the leavers; for an account tag the same
selections first write the outbox rows that carry the change to the platform.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Connection,
    Select,
    Table,
    and_,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)

from qunfa.channels.errcode_api import ApiCallError
from qunfa.channels.http import HttpClient, TransportError
from qunfa.channels.registry import channel_class
from qunfa.channels.wechat_oa import WechatOA
from qunfa.channels.wecom_customer import WecomCustomer
from qunfa.domain.outcomes import ErrorClass
from qunfa.domain.segments import SegmentError, parse_segment
from qunfa.storage.models import (
    Account,
    ContactTag,
    Identity,
    IdentityTag,
    Tag,
    TagGroup,
    TagOp,
)
from qunfa.storage.segment_sql import compile_segment, segment_identities

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

TAGS = cast(Table, Tag.__table__)
ITAGS = cast(Table, IdentityTag.__table__)
CTAGS = cast(Table, ContactTag.__table__)
OPS = cast(Table, TagOp.__table__)
IDS = cast(Table, Identity.__table__)
CHUNK = 5000  # ids per IN list (well under SQLite's and PostgreSQL's parameter limits)
OP_MAX_ATTEMPTS = 8
OP_BACKOFF_SECONDS = 5.0  # an op is retried 5 s, 10 s, 20 s … after it was queued
# SQLAlchemy 2.1 reports rowcount -1 for INSERT … SELECT on psycopg unless asked to keep it.
COUNTED: dict[str, Any] = {"preserve_rowcount": True}
SYNCABLE = ("wechat_oa", "wecom_customer")
DEFAULT_WECOM_GROUP = "qunfa"


class TagError(ValueError):
    """A tag request refused before reaching the platform: names the rule and the fix."""


@dataclass(frozen=True)
class Membership:
    added: int
    removed: int
    skipped: int = 0  # people over the platform's tags-per-user limit


@dataclass(frozen=True)
class MarkCall:
    """One ``externalcontact/mark_tag`` call: as ``userid``, on one customer."""

    userid: str
    add: list[str]
    remove: list[str]


def plan_mark_calls(
    marks: Mapping[str, AbstractSet[str]], add: Sequence[str], remove: Sequence[str]
) -> list[MarkCall]:
    """The fewest ``mark_tag`` calls that bring one WeCom customer's tags where qunfa wants
    them, given ``marks``: every member following the customer → the corp tags that member
    marked (``externalcontact/get``), in the platform's order.

    The sync reads a customer's tags as the *union* of their members' marks, and the platform
    keeps marks per member. So an added tag needs one member's mark (none when a member already
    carries it), but a removed tag must go from every member whose mark carries it: one left
    brings it back with the next sync. The adding member is one that removes too when there is
    one, so a customer with one member costs at most one call; nothing to change costs none.
    """
    removing = [
        MarkCall(userid, [], [t for t in remove if t in tags])
        for userid, tags in marks.items()
        if any(t in tags for t in remove)
    ]
    carried = set().union(*marks.values()) if marks else set()
    adding = [t for t in dict.fromkeys(add) if t not in carried]
    if adding and marks:
        if removing:
            removing[0].add.extend(adding)
        else:
            removing.append(MarkCall(next(iter(marks)), adding, []))
    return removing


class TagService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- lookups ----------------------------------------------------------------------------------
    def _account(self, ref: int | str | None) -> Account | None:
        if ref is None:
            return None
        acc: Account = self.c.accounts.get(ref)
        if acc.channel not in SYNCABLE:
            raise TagError(
                f"{acc.channel} has no platform tags; use a qunfa tag (no --account) instead"
            )
        return acc

    def get(self, ref: int | str, account: int | str | None = None) -> Tag:
        """A tag by id, or by name (with ``account``: that account's tag; else qunfa's own)."""
        with self.c.sessions() as s:
            tag = None
            if isinstance(ref, int) or str(ref).isdigit():
                tag = s.get(Tag, int(ref))
            if tag is None:
                acc = self._account(account)
                tag = s.scalars(
                    select(Tag).where(
                        Tag.name == str(ref),
                        Tag.account_id.is_(None) if acc is None else Tag.account_id == acc.id,
                    )
                ).one_or_none()
            if tag is None:
                raise TagError(f"no tag {ref!r}; see `qunfa tags list`")
            s.expunge(tag)
            return tag

    def list_tags(
        self, account: int | str | None = None, *, all_accounts: bool = False
    ) -> list[Tag]:
        with self.c.sessions() as s:
            q = select(Tag).order_by(Tag.account_id, Tag.group_id, Tag.id)
            if not all_accounts:
                acc = self._account(account)
                q = q.where(Tag.account_id.is_(None) if acc is None else Tag.account_id == acc.id)
            rows = list(s.scalars(q))
            s.expunge_all()
            return rows

    # -- groups -----------------------------------------------------------------------------------
    def create_group(self, name: str, account: int | str | None = None) -> TagGroup:
        """A group. On WeCom the platform creates it with its first tag (empty groups are not
        allowed there), so it gets its platform id then."""
        acc = self._account(account)
        if acc is not None and acc.channel == "wechat_oa":
            raise TagError("Official Account tags have no groups; group qunfa tags instead")
        self._check_name(acc, name)
        with self.c.sessions() as s:
            scope = TagGroup.account_id.is_(None) if acc is None else TagGroup.account_id == acc.id
            if s.scalars(select(TagGroup).where(scope, TagGroup.name == name)).first():
                raise TagError(f"a tag group named {name!r} already exists")
            group = TagGroup(account_id=acc.id if acc else None, name=name, created_at=time.time())
            s.add(group)
            s.commit()
            s.refresh(group)
            s.expunge(group)
            return group

    def groups(self, account: int | str | None = None) -> list[TagGroup]:
        acc = self._account(account)
        with self.c.sessions() as s:
            scope = TagGroup.account_id.is_(None) if acc is None else TagGroup.account_id == acc.id
            rows = list(s.scalars(select(TagGroup).where(scope).order_by(TagGroup.id)))
            s.expunge_all()
            return rows

    def _group(self, acc: Account | None, ref: int | str | None) -> TagGroup | None:
        if ref is None:
            return None
        with self.c.sessions() as s:
            scope = TagGroup.account_id.is_(None) if acc is None else TagGroup.account_id == acc.id
            group = s.scalars(
                select(TagGroup).where(
                    scope,
                    TagGroup.id == int(ref) if str(ref).isdigit() else TagGroup.name == str(ref),
                )
            ).first()
            if group is None:
                raise TagError(f"no tag group {ref!r} here; create it with `qunfa tags group-add`")
            s.expunge(group)
            return group

    async def rename_group(self, group_id: int, name: str) -> None:
        with self.c.sessions() as s:
            group = s.get(TagGroup, group_id)
            if group is None:
                raise TagError(f"no tag group {group_id}")
            acc = self._account(group.account_id)
            self._check_name(acc, name)
            if acc is not None and group.platform_group_id:
                async with HttpClient(self.c.settings.http_timeout) as http:
                    adapter = self._adapter(acc, http)
                    assert isinstance(adapter, WecomCustomer)
                    await self._platform(adapter.edit_corp_tag(group.platform_group_id, name))
            group.name = name
            s.commit()

    async def delete_group(self, group_id: int) -> int:
        """Delete a group and its tags (on the platform too); returns how many tags went."""
        with self.c.sessions() as s:
            group = s.get(TagGroup, group_id)
            if group is None:
                raise TagError(f"no tag group {group_id}")
            acc = self._account(group.account_id)
            if acc is not None and group.platform_group_id:
                async with HttpClient(self.c.settings.http_timeout) as http:
                    adapter = self._adapter(acc, http)
                    assert isinstance(adapter, WecomCustomer)
                    await self._platform(adapter.del_corp_tag(group_ids=[group.platform_group_id]))
            n = s.execute(delete(Tag).where(Tag.group_id == group_id))
            s.delete(group)
            s.commit()
            return int(n.rowcount)  # type: ignore[attr-defined]

    # -- tags -------------------------------------------------------------------------------------
    def _check_name(self, acc: Account | None, name: str) -> None:
        if not name.strip():
            raise TagError("a tag name cannot be empty")
        if acc is None:
            return
        rules = self.c.accounts.config(acc).rules
        rule = "tag_name_max_chars" if acc.channel == "wechat_oa" else "corp_tag_name_max_chars"
        if len(name) > rules[rule]:
            raise TagError(
                f"tag name {name!r} has {len(name)} characters; {acc.channel} allows "
                f"{rules[rule]} (rule {rule}): choose a shorter name"
            )

    def _check_room(self, acc: Account, adding: int = 1) -> None:
        rules = self.c.accounts.config(acc).rules
        rule = "tags_per_account" if acc.channel == "wechat_oa" else "corp_tags_max"
        with self.c.engine.connect() as conn:
            have = conn.execute(
                select(func.count()).select_from(TAGS).where(TAGS.c.account_id == acc.id)
            ).scalar_one()
        if have + adding > rules[rule]:
            raise TagError(
                f"{acc.name} already has {have} tags; {acc.channel} allows {rules[rule]} "
                f"(rule {rule}): delete unused tags first (`qunfa tags delete`)"
            )

    async def create(
        self,
        name: str,
        *,
        account: int | str | None = None,
        group: int | str | None = None,
        rule: str | None = None,
        every_minutes: int | None = None,
    ) -> Tag:
        """Create a tag; an account tag is created on the platform first (its id kept).

        ``rule`` (a segment expression) makes it a rule tag, evaluated now and then every
        ``every_minutes`` (default 60) by the sweeper.
        """
        acc = self._account(account)
        self._check_name(acc, name)
        try:
            grp = self._group(acc, group)
        except TagError:
            if acc is None or acc.channel != "wecom_customer" or str(group).isdigit():
                raise
            grp = self.create_group(str(group), acc.id)  # on WeCom, made with its first tag
        if rule is not None:
            self._compile(rule, acc)
        with self.c.sessions() as s:
            scope = Tag.account_id.is_(None) if acc is None else Tag.account_id == acc.id
            if s.scalars(select(Tag).where(scope, Tag.name == name)).first():
                raise TagError(f"a tag named {name!r} already exists here")
        platform_id: int | None = None
        platform_ref: str | None = None
        if acc is not None:
            self._check_room(acc)
            async with HttpClient(self.c.settings.http_timeout) as http:
                adapter = self._adapter(acc, http)
                if isinstance(adapter, WechatOA):
                    platform_id = await self._platform(adapter.create_tag(name))
                else:
                    assert isinstance(adapter, WecomCustomer)
                    if grp is None:
                        grp = self._group_named(acc, DEFAULT_WECOM_GROUP)
                    made = await self._platform(
                        adapter.add_corp_tag([name], group_id=grp.platform_group_id,
                                             group_name=grp.name)
                    )  # fmt: skip
                    platform_ref = str(made["tag"][0]["id"])
                    with self.c.sessions() as s:
                        s.execute(
                            update(TagGroup)
                            .where(TagGroup.id == grp.id)
                            .values(platform_group_id=str(made["group_id"]))
                        )
                        s.commit()
        with self.c.sessions() as s:
            tag = Tag(
                account_id=acc.id if acc else None, group_id=grp.id if grp else None, name=name,
                platform_tag_id=platform_id, platform_ref=platform_ref,
                source="rule" if rule else "manual", rule=rule,
                rule_every_minutes=(every_minutes or 60) if rule else None,
            )  # fmt: skip
            s.add(tag)
            s.commit()
            s.refresh(tag)
            s.expunge(tag)
        if rule is not None:
            self.evaluate(tag.id)
            tag = self.get(tag.id)  # with the members the first evaluation found
        return tag

    def _group_named(self, acc: Account, name: str) -> TagGroup:
        with self.c.sessions() as s:
            group = s.scalars(
                select(TagGroup).where(TagGroup.account_id == acc.id, TagGroup.name == name)
            ).first()
        return group or self.create_group(name, acc.id)

    async def rename(self, tag_id: int, name: str) -> None:
        tag = self.get(tag_id)
        acc = self._account(tag.account_id)
        self._check_name(acc, name)
        if acc is not None:
            async with HttpClient(self.c.settings.http_timeout) as http:
                adapter = self._adapter(acc, http)
                if isinstance(adapter, WechatOA) and tag.platform_tag_id is not None:
                    await self._platform(adapter.rename_tag(tag.platform_tag_id, name))
                elif isinstance(adapter, WecomCustomer) and tag.platform_ref:
                    await self._platform(adapter.edit_corp_tag(tag.platform_ref, name))
        with self.c.sessions() as s:
            s.execute(update(Tag).where(Tag.id == tag_id).values(name=name))
            s.commit()

    async def delete(self, tag_id: int) -> None:
        """Delete a tag here and on its platform (members and pending ops go with it)."""
        tag = self.get(tag_id)
        acc = self._account(tag.account_id)
        if acc is not None:
            async with HttpClient(self.c.settings.http_timeout) as http:
                adapter = self._adapter(acc, http)
                if isinstance(adapter, WechatOA) and tag.platform_tag_id is not None:
                    await self._platform(adapter.delete_tag(tag.platform_tag_id))
                elif isinstance(adapter, WecomCustomer) and tag.platform_ref:
                    await self._platform(adapter.del_corp_tag(tag_ids=[tag.platform_ref]))
        with self.c.engine.begin() as conn:
            for table in (OPS, ITAGS, CTAGS):
                conn.execute(delete(table).where(table.c.tag_id == tag_id))
            conn.execute(delete(TAGS).where(TAGS.c.id == tag_id))

    async def _platform(self, call: Any) -> Any:
        """Await a platform call; a refusal becomes a :class:`TagError` with the errcode."""
        try:
            return await call
        except ApiCallError as exc:
            raise TagError(f"the platform refused: {exc.error.describe()}") from None

    def _adapter(self, acc: Account, http: HttpClient) -> Any:
        return self.c.accounts.adapter(acc, http)

    # -- membership -------------------------------------------------------------------------------
    def apply(
        self,
        tag_id: int,
        *,
        contact_ids: Sequence[int] = (),
        identity_ids: Sequence[int] = (),
        remove: bool = False,
    ) -> Membership:
        """Put the tag on (or take it off) people or identities, in bulk.

        qunfa tags take contacts; account tags take identities of their account (or contacts,
        meaning their identities on that account). Account changes are queued for the platform.
        """
        tag = self.get(tag_id)
        with self.c.engine.begin() as conn:
            if tag.account_id is None:
                if identity_ids:
                    raise TagError("a qunfa tag (no account) goes on people: pass contact ids")
                return self._apply_contacts(conn, tag, list(contact_ids), remove)
            ids = self._account_identities(conn, tag, list(identity_ids), list(contact_ids))
            return self._apply_identities(conn, tag, ids, remove)

    def _apply_contacts(
        self, conn: Connection, tag: Tag, contact_ids: list[int], remove: bool
    ) -> Membership:
        done = 0
        for i in range(0, len(contact_ids), CHUNK):
            part = contact_ids[i : i + CHUNK]
            if remove:
                done += conn.execute(
                    delete(CTAGS).where(CTAGS.c.tag_id == tag.id, CTAGS.c.contact_id.in_(part))
                ).rowcount
                continue
            from qunfa.storage.models import Contact

            contacts = cast(Table, Contact.__table__)
            picked = select(literal(tag.id), contacts.c.id).where(
                contacts.c.id.in_(part),
                ~select(CTAGS.c.tag_id)
                .where(CTAGS.c.tag_id == tag.id, CTAGS.c.contact_id == contacts.c.id)
                .exists(),
            )
            done += conn.execute(
                insert(CTAGS).from_select(["tag_id", "contact_id"], picked),
                execution_options=COUNTED,
            ).rowcount
        self._recount(conn, tag.id)
        return Membership(added=0 if remove else done, removed=done if remove else 0)

    def _account_identities(
        self, conn: Connection, tag: Tag, identity_ids: list[int], contact_ids: list[int]
    ) -> list[int]:
        acc = self.c.accounts.get(int(tag.account_id or 0))
        kind = channel_class(acc.channel).recipient_kind
        out: list[int] = []
        for ids, col in ((identity_ids, IDS.c.id), (contact_ids, IDS.c.contact_id)):
            for i in range(0, len(ids), CHUNK):
                out += conn.execute(
                    select(IDS.c.id).where(
                        col.in_(ids[i : i + CHUNK]),
                        IDS.c.account_id == tag.account_id,
                        IDS.c.kind == kind,
                    )
                ).scalars()
        return sorted(set(out))

    def _per_user_limit(self, tag: Tag) -> tuple[str, int] | None:
        acc = self.c.accounts.get(int(tag.account_id or 0))
        if acc.channel != "wechat_oa":
            return None
        return "tags_per_user", int(self.c.accounts.config(acc).rules["tags_per_user"])

    def _tag_count(self, tag: Tag, identity: Any) -> Any:
        """How many of this account's tags an identity carries (a correlated subquery)."""
        return (
            select(func.count())
            .select_from(ITAGS.join(TAGS, TAGS.c.id == ITAGS.c.tag_id))
            .where(ITAGS.c.identity_id == identity, TAGS.c.account_id == tag.account_id)
            .scalar_subquery()
        )

    def _apply_identities(
        self, conn: Connection, tag: Tag, ids: list[int], remove: bool
    ) -> Membership:
        limit = self._per_user_limit(tag)
        if limit is not None and not remove:
            full = 0
            for i in range(0, len(ids), CHUNK):
                full += conn.execute(
                    select(func.count())
                    .select_from(IDS)
                    .where(
                        IDS.c.id.in_(ids[i : i + CHUNK]),
                        self._tag_count(tag, IDS.c.id) >= limit[1],
                        ~self._member(tag.id, IDS.c.id),
                    )
                ).scalar_one()
            if full:
                raise TagError(
                    f"{full} of these people already carry {limit[1]} tags on this account, "
                    f"the platform's maximum (rule {limit[0]}): remove a tag from them first"
                )
        now = time.time()
        done = 0
        for i in range(0, len(ids), CHUNK):
            part = IDS.c.id.in_(ids[i : i + CHUNK])
            changing = self._member(tag.id, IDS.c.id) if remove else ~self._member(tag.id, IDS.c.id)
            picked: Select[Any] = select(IDS.c.id).where(part, changing)
            done += self._queue(conn, tag.id, picked, "remove" if remove else "add", now)
            if remove:
                conn.execute(
                    delete(ITAGS).where(
                        ITAGS.c.tag_id == tag.id, ITAGS.c.identity_id.in_(ids[i : i + CHUNK])
                    )
                )
            else:
                conn.execute(
                    insert(ITAGS).from_select(
                        ["tag_id", "identity_id"], select(literal(tag.id), picked.subquery().c[0])
                    )
                )
        self._recount(conn, tag.id)
        return Membership(added=0 if remove else done, removed=done if remove else 0)

    @staticmethod
    def _member(tag_id: int, identity: Any) -> Any:
        return (
            select(ITAGS.c.tag_id)
            .where(ITAGS.c.tag_id == tag_id, ITAGS.c.identity_id == identity)
            .exists()
        )

    @staticmethod
    def _queue(conn: Connection, tag_id: int, picked: Select[Any], op: str, now: float) -> int:
        """Queue ``op`` for the identities ``picked`` selects, superseding their pending ops
        on this tag (so at most one op per identity and tag is ever pending)."""
        conn.execute(
            delete(OPS).where(
                OPS.c.tag_id == tag_id,
                OPS.c.done_at.is_(None),
                OPS.c.identity_id.in_(picked.scalar_subquery()),
            )
        )
        sub = picked.subquery()
        rows = select(literal(tag_id), sub.c[0], literal(op), literal(now), literal(0))
        return int(
            conn.execute(
                insert(OPS).from_select(
                    ["tag_id", "identity_id", "op", "created_at", "attempts"], rows
                ),
                execution_options=COUNTED,
            ).rowcount
        )

    @staticmethod
    def _recount(conn: Connection, tag_id: int) -> None:
        table = ITAGS if conn.execute(
            select(TAGS.c.account_id).where(TAGS.c.id == tag_id)
        ).scalar() is not None else CTAGS  # fmt: skip
        n = select(func.count()).select_from(table).where(table.c.tag_id == tag_id)
        conn.execute(
            update(TAGS).where(TAGS.c.id == tag_id).values(member_count=n.scalar_subquery())
        )

    # -- rule tags --------------------------------------------------------------------------------
    def _compile(self, rule: str, acc: Account | None) -> Any:
        try:
            ast = parse_segment(rule)
            if acc is None:
                return compile_segment(ast, account_id=None)
            kind = channel_class(acc.channel).recipient_kind
            return segment_identities(ast, account_id=acc.id, kind=kind)
        except SegmentError as exc:
            raise TagError(f"rule {rule!r}: {exc}") from None

    def evaluate(self, tag_id: int, now: float | None = None) -> Membership:
        """Re-evaluate one rule tag set-based: new members in, leavers out (and queued)."""
        tag = self.get(tag_id)
        if not tag.rule:
            raise TagError(f"tag {tag.name!r} has no rule; set one with `qunfa tags create --rule`")
        now = time.time() if now is None else now
        acc = self._account(tag.account_id)
        segment = self._compile(tag.rule, acc).order_by(None)
        with self.c.engine.begin() as conn:
            if acc is None:
                members = segment.subquery()
                inside = select(members.c.id)
                added = conn.execute(
                    insert(CTAGS).from_select(
                        ["tag_id", "contact_id"],
                        select(literal(tag.id), members.c.id).where(
                            ~select(CTAGS.c.tag_id)
                            .where(CTAGS.c.tag_id == tag.id, CTAGS.c.contact_id == members.c.id)
                            .exists()
                        ),
                    ),
                    execution_options=COUNTED,
                ).rowcount
                removed = conn.execute(
                    delete(CTAGS).where(CTAGS.c.tag_id == tag.id, CTAGS.c.contact_id.not_in(inside))
                ).rowcount
                skipped = 0
            else:
                added, removed, skipped = self._evaluate_account(conn, tag, segment, now)
            self._recount(conn, tag.id)
            conn.execute(update(TAGS).where(TAGS.c.id == tag.id).values(evaluated_at=now))
        return Membership(int(added), int(removed), int(skipped))

    def _evaluate_account(
        self, conn: Connection, tag: Tag, segment: Any, now: float
    ) -> tuple[int, int, int]:
        members = segment.subquery()
        limit = self._per_user_limit(tag)
        joining = select(members.c.id).where(~self._member(tag.id, members.c.id))
        skipped = 0
        if limit is not None:
            room = self._tag_count(tag, members.c.id) < limit[1]
            skipped = conn.execute(
                select(func.count()).select_from(joining.where(~room).subquery())
            ).scalar_one()
            joining = joining.where(room)
        leaving = select(ITAGS.c.identity_id).where(
            ITAGS.c.tag_id == tag.id, ITAGS.c.identity_id.not_in(select(members.c.id))
        )
        self._queue(conn, tag.id, leaving, "remove", now)
        removed = conn.execute(
            delete(ITAGS).where(
                ITAGS.c.tag_id == tag.id, ITAGS.c.identity_id.not_in(select(members.c.id))
            )
        ).rowcount
        added = self._queue(conn, tag.id, joining, "add", now)
        # The same selection again: nothing changed identity_tags since the outbox insert.
        conn.execute(
            insert(ITAGS).from_select(
                ["tag_id", "identity_id"], select(literal(tag.id), joining.subquery().c[0])
            )
        )
        return int(added), int(removed), int(skipped)

    def evaluate_due(self, now: float | None = None) -> int:
        """Re-evaluate every rule tag whose ``rule_every_minutes`` has passed (sweeper)."""
        now = time.time() if now is None else now
        with self.c.engine.connect() as conn:
            due = conn.execute(
                select(TAGS.c.id).where(
                    TAGS.c.rule.is_not(None),
                    (TAGS.c.evaluated_at.is_(None))
                    | (TAGS.c.evaluated_at + func.coalesce(TAGS.c.rule_every_minutes, 60) * 60
                       <= now),
                )
            ).scalars().all()  # fmt: skip
        for tag_id in due:
            self.evaluate(int(tag_id), now)
        return len(due)

    # -- push (the outbox) ------------------------------------------------------------------------
    def push_tag_ops(self, account_id: int | None = None) -> int:
        """Send due outbox ops to the platforms (synchronous entry for the sweeper)."""
        return asyncio.run(self.push(account_id=account_id))

    async def push(self, *, account_id: int | None = None, http: HttpClient | None = None) -> int:
        """Send due pending ops; returns how many the platforms accepted."""
        now = time.time()
        q = (
            select(OPS.c.id, OPS.c.tag_id, OPS.c.identity_id, OPS.c.op, TAGS.c.account_id,
                   TAGS.c.platform_tag_id, TAGS.c.platform_ref, IDS.c.value_enc)
            .select_from(OPS.join(TAGS, TAGS.c.id == OPS.c.tag_id)
                         .join(IDS, IDS.c.id == OPS.c.identity_id))
            .where(OPS.c.done_at.is_(None), OPS.c.attempts < OP_MAX_ATTEMPTS,
                   OPS.c.created_at + OP_BACKOFF_SECONDS * (func.power(2, OPS.c.attempts) - 1)
                   <= now)
            .order_by(TAGS.c.account_id, OPS.c.tag_id, OPS.c.op, OPS.c.id)
        )  # fmt: skip
        if account_id is not None:
            q = q.where(TAGS.c.account_id == account_id)
        with self.c.engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            return 0
        by_account: dict[int, list[Any]] = {}
        for r in rows:
            by_account.setdefault(int(r.account_id), []).append(r)
        owned = http is None
        client = http or HttpClient(self.c.settings.http_timeout)
        done = 0
        try:
            if owned:
                await client.__aenter__()
            for acc_id, ops in by_account.items():
                adapter = self._adapter(self.c.accounts.get(acc_id), client)
                if isinstance(adapter, WechatOA):
                    done += await self._push_oa(adapter, ops)
                elif isinstance(adapter, WecomCustomer):
                    done += await self._push_wecom(adapter, ops)
        finally:
            if owned:
                await client.__aexit__(None, None, None)
        return done

    async def _push_oa(self, oa: WechatOA, ops: list[Any]) -> int:
        step = oa.rules["batchtagging_max_per_call"]
        ring = self.c.keyring
        groups: dict[tuple[int, str], list[Any]] = {}
        for r in ops:
            groups.setdefault((int(r.platform_tag_id or 0), str(r.op)), []).append(r)
        done = 0
        for (platform_id, op), items in groups.items():
            if not platform_id:
                self._failed([r.id for r in items], "the tag has no platform id (not created)")
                continue
            for i in range(0, len(items), step):
                chunk = items[i : i + step]
                openids = [ring.decrypt(r.value_enc) for r in chunk]
                error = await self._try(oa.tag_users(platform_id, openids, add=op == "add"))
                if error is None:
                    self._done([r.id for r in chunk])
                    done += len(chunk)
                elif error[1] and len(chunk) > 1:
                    # The platform refuses a whole chunk for one member (40003, 45059): find
                    # them one at a time so the others go through.
                    for r, openid in zip(chunk, openids, strict=True):
                        one = await self._try(oa.tag_users(platform_id, [openid], add=op == "add"))
                        if one is None:
                            self._done([r.id])
                            done += 1
                        else:
                            self._failed([r.id], one[0], final=one[1])
                else:
                    self._failed([r.id for r in chunk], error[0], final=error[1])
        return done

    async def _push_wecom(self, wc: WecomCustomer, ops: list[Any]) -> int:
        """One customer at a time: read who follows them with what each member marked
        (``externalcontact/get``), then ``mark_tag`` with all the customer's due ops as the
        members :func:`plan_mark_calls` picks (a removal as every member carrying the tag).
        An op is done when every call carrying its tag succeeded; a retry reads the marks
        again, so only the members still carrying the tag are called then."""
        ring = self.c.keyring
        per_customer: dict[int, list[Any]] = {}
        for r in ops:
            per_customer.setdefault(int(r.identity_id), []).append(r)
        done = 0
        for items in per_customer.values():
            if unmade := [r.id for r in items if not r.platform_ref]:
                self._failed(unmade, "the tag has no platform id (not created)")
                items = [r for r in items if r.platform_ref]
                if not items:
                    continue
            ext = ring.decrypt(items[0].value_enc)
            marks: dict[str, set[str]] = {}
            follow = await self._try(self._follow_marks(wc, ext, marks))
            if follow is not None or not marks:
                why = follow or ("no member follows this customer any more", True)
                self._failed([r.id for r in items], why[0], final=why[1])
                continue
            add = [str(r.platform_ref) for r in items if r.op == "add"]
            rem = [str(r.platform_ref) for r in items if r.op == "remove"]
            # At most one pending op per tag and identity: a tag id names one op here.
            errors: dict[str, tuple[str, bool]] = {}
            for call in plan_mark_calls(marks, add, rem):
                error = await self._try(wc.mark_tag(call.userid, ext, call.add, call.remove))
                if error is not None:
                    for t in call.add + call.remove:
                        errors.setdefault(t, error)
            ok = [r.id for r in items if str(r.platform_ref) not in errors]
            if ok:
                self._done(ok)
                done += len(ok)
            failed: dict[tuple[str, bool], list[int]] = {}
            for r in items:
                if (error := errors.get(str(r.platform_ref))) is not None:
                    failed.setdefault(error, []).append(r.id)
            for (text, final), ids in failed.items():
                self._failed(ids, text, final=final)
        return done

    @staticmethod
    async def _follow_marks(wc: WecomCustomer, ext: str, out: dict[str, set[str]]) -> None:
        """mark_tag acts as one member: ask the platform who follows the customer and what
        each of them marked (qunfa keeps only the union, from the sync)."""
        out.update(await wc.follow_marks_of(ext))

    @staticmethod
    async def _try(call: Any) -> tuple[str, bool] | None:
        """None on success, else (error text, final: the platform will never accept it)."""
        try:
            await call
        except ApiCallError as exc:
            final = exc.error.klass in (ErrorClass.BATCH, ErrorClass.RECIPIENT)
            return exc.error.describe(), final
        except TransportError as exc:
            return f"transport: {exc}", False
        return None

    def _done(self, op_ids: list[int]) -> None:
        with self.c.engine.begin() as conn:
            conn.execute(
                update(OPS)
                .where(OPS.c.id.in_(op_ids))
                .values(done_at=time.time(), attempts=OPS.c.attempts + 1, last_error=None)
            )

    def _failed(self, op_ids: list[int], error: str, *, final: bool = True) -> None:
        """Count a failed attempt; a final refusal stops retrying (attempts = the maximum)."""
        attempts = literal(OP_MAX_ATTEMPTS) if final else OPS.c.attempts + 1
        with self.c.engine.begin() as conn:
            conn.execute(
                update(OPS)
                .where(OPS.c.id.in_(op_ids))
                .values(attempts=attempts, last_error=error[:500])
            )

    def pending(self, account_id: int | None = None) -> dict[str, int]:
        """Outbox counts: pending (will be retried), failed (gave up), done."""
        with self.c.engine.connect() as conn:
            q = select(
                func.count().filter(and_(OPS.c.done_at.is_(None),
                                         OPS.c.attempts < OP_MAX_ATTEMPTS)),
                func.count().filter(and_(OPS.c.done_at.is_(None),
                                         OPS.c.attempts >= OP_MAX_ATTEMPTS)),
                func.count().filter(OPS.c.done_at.is_not(None)),
            ).select_from(OPS.join(TAGS, TAGS.c.id == OPS.c.tag_id))  # fmt: skip
            if account_id is not None:
                q = q.where(TAGS.c.account_id == account_id)
            pending, failed, done = conn.execute(q).one()
        return {"pending": int(pending), "failed": int(failed), "done": int(done)}

    # -- sweeper hook -----------------------------------------------------------------------------
    def sweep(self) -> dict[str, int]:
        """One sweeper pass: re-evaluate due rule tags, then push the outbox."""
        return {"rule_tags": self.evaluate_due(), "tag_ops": self.push_tag_ops()}
