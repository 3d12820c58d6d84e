"""``wecom_customer``: WeCom customer-contact mass send (客户群发) to external contacts.

Reference §3.3. ``externalcontact/add_msg_template`` takes ≤ 10,000 ``external_userid`` and does
*not* send: it creates a task per member (staff) who owns targeted customers, and each member
confirms it in the WeCom client — or never does. So a batch is accepted with the task's
``msgid`` and settled by polling (``get_groupmsg_task`` per member, ``get_groupmsg_send_result``
per customer: 0 not sent, 1 sent, 2 not a friend, 3 receive limit hit). A member who has not
confirmed after ``customer_give_up_seconds`` is taken as never sending.

Idempotency: the platform has no dedupe id for this call and returns nothing we could tag, so
``idempotent = False`` — an in-doubt batch becomes *unknown* and is never re-sent blindly.
:meth:`WecomCustomer.find_task` helps settle such a batch by matching content, time and
recipients against ``get_groupmsg_list_v2`` (limits in ``docs/channels/wecom_customer.md``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

from qunfa import rules as rules_module
from qunfa.channels.base import (
    AccountConfig,
    Channel,
    ChannelContext,
    ContentError,
    OutboundBatch,
    RecipientOutcome,
    Settlement,
)
from qunfa.channels.http import TransportError
from qunfa.channels.wecom_common import WECOM_ERRORS, WecomApi, WecomApiError, utf8_len
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.rules import RuleSet

E = ErrorClass
CUSTOMER_ERRORS: Mapping[int | str, ErrorClass] = {
    **WECOM_ERRORS,
    41048: E.BATCH,  # no sendable customer: every target is over the receive limit
    40096: E.RECIPIENT,  # invalid external userid (every listed one: fail_list holds them)
    84061: E.RECIPIENT,  # not an external contact of the corp
}
# Per-customer status of get_groupmsg_send_result → what the ledger should say.
RESULT_REASONS = {2: "customer is not a friend (2)", 3: "customer receive limit hit (3)"}
NEVER_SENT = "staff never sent (member did not confirm)"
ATTACHMENT_TYPES = ("image", "link", "miniprogram", "video", "file")
_RULES = rules_module.load("wecom")


def _text(content: Mapping[str, Any]) -> str:
    text = content.get("text")
    if isinstance(text, Mapping):
        return str(text.get("content", ""))
    return "" if text is None else str(text)


def _check_attachment(att: Any, rules: RuleSet) -> None:
    if not isinstance(att, Mapping) or att.get("msgtype") not in ATTACHMENT_TYPES:
        raise ContentError(f"each attachment needs msgtype in {', '.join(ATTACHMENT_TYPES)}")
    kind = str(att["msgtype"])
    body = att.get(kind)
    if not isinstance(body, Mapping):
        raise ContentError(f"a {kind} attachment needs a {kind!r} object")
    limits: dict[str, dict[str, str]] = {
        "link": {"title": "link_title_max_bytes", "desc": "link_desc_max_bytes",
                 "url": "link_url_max_bytes"},
        "miniprogram": {"title": "miniprogram_title_max_bytes"},
    }  # fmt: skip
    required = {
        "link": ("title", "url"),
        "miniprogram": ("title", "pic_media_id", "appid", "page"),
        "video": ("media_id",),
        "file": ("media_id",),
    }
    for name in required.get(kind, ()):
        if not body.get(name):
            raise ContentError(f"a {kind} attachment needs {name}")
    if kind == "image" and not (body.get("media_id") or body.get("pic_url")):
        raise ContentError("an image attachment needs media_id or pic_url")
    for name, rule in limits.get(kind, {}).items():
        if name in body and utf8_len(body[name]) > rules[rule]:
            raise ContentError(
                f"{kind} {name} is {utf8_len(body[name])} bytes; at most {rules[rule]} (UTF-8)"
            )


class WecomCustomer(Channel):
    key: ClassVar[str] = "wecom_customer"
    title: ClassVar[str] = "WeCom customer mass send (企业微信客户群发)"
    rules_name: ClassVar[str] = "wecom"
    recipient_kind: ClassVar[str] = "external_userid"
    modes: ClassVar[frozenset[str]] = frozenset({"single"})
    errors = CUSTOMER_ERRORS
    credential_fields: ClassVar[tuple[str, ...]] = ("corpid", "secret")  # 客户联系 secret
    sandbox_prefix: ClassVar[str] = "wecom"
    idempotent: ClassVar[bool] = False  # no platform dedupe: in doubt → unknown
    poll_interval: ClassVar[float | None] = float(_RULES["customer_poll_interval_seconds"])

    def __init__(self, account: AccountConfig, ctx: ChannelContext) -> None:
        super().__init__(account, ctx)
        self.api = WecomApi(account, ctx, self.errors)
        # qunfa's clock, against which a task's age (platform create_time) is judged.
        self.clock: Callable[[], float] = time.time

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        return rules["customer_max_per_call"]

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        text = _text(content)
        attachments = content.get("attachments") or []
        if not text.strip() and not attachments:
            raise ContentError("a customer mass send needs text or at least one attachment")
        if utf8_len(text) > rules["customer_text_max_bytes"]:
            raise ContentError(
                f"text is {utf8_len(text)} bytes; WeCom takes at most "
                f"{rules['customer_text_max_bytes']} bytes (UTF-8, a Chinese character is 3)"
            )
        if not isinstance(attachments, Sequence) or isinstance(attachments, str):
            raise ContentError("attachments must be a list")
        if len(attachments) > rules["customer_attachments_max"]:
            raise ContentError(
                f"{len(attachments)} attachments; at most {rules['customer_attachments_max']}"
            )
        for att in attachments:
            _check_attachment(att, rules)

    def classify(self, code: int | str, message: str) -> PlatformError:
        return self.api.classify(int(code), message)

    @staticmethod
    def message_body(content: Mapping[str, Any]) -> dict[str, Any]:
        """The content part of add_msg_template (also what get_groupmsg_list_v2 returns)."""
        body: dict[str, Any] = {}
        text = _text(content)
        if text:
            body["text"] = {"content": text}
        if content.get("attachments"):
            body["attachments"] = [dict(a) for a in content["attachments"]]
        return body

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        body: dict[str, Any] = {
            "chat_type": "single",
            "external_userid": list(batch.recipients),
            "allow_select": bool(batch.content.get("allow_select", False)),
            **self.message_body(batch.content),
        }
        if batch.content.get("sender"):
            body["sender"] = str(batch.content["sender"])
        try:
            await self.api.api_limit("add_msg_template")
            data = await self.api.call("POST", "externalcontact/add_msg_template", body)
        except TransportError as exc:
            error = PlatformError("transport", str(exc), ErrorClass.RETRYABLE)
            return BatchOutcome(accepted=False, error=error, in_doubt=exc.in_doubt)
        except WecomApiError as exc:
            return BatchOutcome(accepted=False, error=exc.error)
        code = int(data.get("errcode", 0))
        fail_list = [str(u) for u in data.get("fail_list") or []]
        if code == 0:
            bad = PlatformError("fail_list", "invalid or unsendable external_userid", E.RECIPIENT)
            return BatchOutcome(
                accepted=True,
                platform_msg_id=str(data["msgid"]),
                recipient_failures={u: bad for u in fail_list},
            )
        error = self.classify(code, str(data.get("errmsg", "")))
        failures = {}
        if error.klass is E.RECIPIENT:  # nobody in the list can be sent to
            failures = {u: error for u in (fail_list or batch.recipients)}
        return BatchOutcome(accepted=False, error=error, recipient_failures=failures)

    # -- results ----------------------------------------------------------------------------------
    async def staff_status(self, msgid: str) -> list[tuple[str, int, int | None]]:
        """(userid, status 0 not sent / 2 sent, send_time) for every member of the task."""
        out: list[tuple[str, int, int | None]] = []
        cursor = ""
        while True:
            body = {"msgid": msgid, "limit": self.rules["groupmsg_result_page_max"],
                    "cursor": cursor}  # fmt: skip
            data = await self.api.call_ok("POST", "externalcontact/get_groupmsg_task", body)
            for t in data.get("task_list") or []:
                send_time = t.get("send_time")
                out.append((str(t["userid"]), int(t["status"]), send_time and int(send_time)))
            cursor = str(data.get("next_cursor") or "")
            if not cursor:
                return out

    async def send_results(self, msgid: str, userid: str) -> list[dict[str, Any]]:
        """One member's per-customer rows (external_userid, status 0/1/2/3, send_time)."""
        out: list[dict[str, Any]] = []
        cursor = ""
        while True:
            body = {"msgid": msgid, "userid": userid, "cursor": cursor,
                    "limit": self.rules["groupmsg_result_page_max"]}  # fmt: skip
            data = await self.api.call_ok("POST", "externalcontact/get_groupmsg_send_result", body)
            out.extend(data.get("send_list") or [])
            cursor = str(data.get("next_cursor") or "")
            if not cursor:
                return out

    async def settle(self, platform_msg_id: str) -> Settlement | None:
        """Per-customer outcomes so far; final when every member sent or the task is too old.

        Customers of members who have sent are reported at once (1 → sent, 2/3 → failed); those
        of members still at status 0 stay pending until the give-up time, then fail.
        """
        staff = await self.staff_status(platform_msg_id)
        pending = [u for u, status, _ in staff if status != 2]
        give_up = bool(pending) and await self._too_old(platform_msg_id)
        final = not pending or give_up
        recipients: dict[str, RecipientOutcome] = {}
        total = 0
        for userid, status, _ in staff:
            if status != 2 and not give_up:
                continue
            for row in await self.send_results(platform_msg_id, userid):
                total += 1
                rid, code = (
                    str(row.get("external_userid") or row.get("chat_id")),
                    int(row["status"]),
                )
                if code == 1:
                    recipients[rid] = RecipientOutcome("sent")
                elif code in RESULT_REASONS:
                    recipients[rid] = RecipientOutcome("failed", RESULT_REASONS[code])
                elif final:  # 0 at the end: the member never sent it to this customer
                    recipients[rid] = RecipientOutcome("failed", NEVER_SENT)
        sent = sum(1 for o in recipients.values() if o.status == "sent")
        failed = sum(1 for o in recipients.values() if o.status == "failed")
        done_staff = len(staff) - len(pending)
        label = "SENT" if not pending else ("GAVE_UP" if give_up else "WAITING_FOR_STAFF")
        return Settlement(
            final=final,
            ok=final and sent > 0,  # every customer refused (2/3) or never sent: failed
            status=f"{label} {done_staff}/{len(staff)} staff",
            recipients=recipients,
            counts={"sent": sent, "error": failed, **({"total": total} if final else {})},
        )

    async def _list_tasks(self, start: float, end: float) -> AsyncIterator[dict[str, Any]]:
        """Company-created single-chat tasks created within [start, end] (get_groupmsg_list_v2)."""
        cursor = ""
        while True:
            body = {"chat_type": "single", "start_time": int(start), "end_time": int(end) + 1,
                    "filter_type": 0, "limit": self.rules["groupmsg_list_page_max"],
                    "cursor": cursor}  # fmt: skip
            data = await self.api.call_ok("POST", "externalcontact/get_groupmsg_list_v2", body)
            for item in data.get("group_msg_list") or []:
                yield item
            cursor = str(data.get("next_cursor") or "")
            if not cursor:
                return

    async def _too_old(self, msgid: str) -> bool:
        """True when the task is not among those created in the last give-up period."""
        now = self.clock()
        start = now - min(self.rules["customer_give_up_seconds"],
                          self.rules["groupmsg_list_max_range_seconds"])  # fmt: skip
        async for item in self._list_tasks(start, now):
            if str(item.get("msgid")) == msgid:
                return False
        return True

    async def find_task(self, batch: OutboundBatch, since: float | None = None) -> str | None:
        """The msgid of the task an in-doubt ``batch`` created, or None when not sure.

        The platform keeps no key of ours, so a task matches when it was created since
        ``since`` (qunfa's first attempt; default: the longest list window) with exactly this
        text and attachments, and every customer it targets is one of the batch's recipients.
        Two matching tasks (a double send, or another campaign with the same content and
        audience) make the answer ambiguous: None.
        """
        now = self.clock()
        window = self.rules["groupmsg_list_max_range_seconds"]
        start = max(now - window + 1, (since if since is not None else now - window) - 60)
        wanted = self.message_body(batch.content)
        recipients = set(batch.recipients)
        found: list[str] = []
        async for item in self._list_tasks(start, now):
            got = {k: item[k] for k in ("text", "attachments") if item.get(k)}
            if json.dumps(got, sort_keys=True) != json.dumps(wanted, sort_keys=True):
                continue
            msgid = str(item["msgid"])
            customers = {
                str(row.get("external_userid"))
                for userid, _, _ in await self.staff_status(msgid)
                for row in await self.send_results(msgid, userid)
            }
            if customers and customers <= recipients:
                found.append(msgid)
        return found[0] if len(found) == 1 else None

    # -- operator calls ---------------------------------------------------------------------------
    async def remind(self, msgid: str) -> None:
        """Remind members who have not sent (the platform allows 3 reminders per 24 h)."""
        await self.api.call_ok("POST", "externalcontact/remind_groupmsg_send", {"msgid": msgid})

    async def cancel(self, msgid: str) -> None:
        """Stop the task: members who have not confirmed can no longer send it."""
        await self.api.call_ok("POST", "externalcontact/cancel_groupmsg_send", {"msgid": msgid})

    # -- account sync -----------------------------------------------------------------------------
    async def follow_users(self) -> list[str]:
        """Members with customer-contact rights (get_follow_user_list)."""
        data = await self.api.call_ok("GET", "externalcontact/get_follow_user_list")
        return [str(u) for u in data.get("follow_user") or []]

    async def customers(self, userids: Sequence[str]) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of the members' customers, flattened for the sync (see :meth:`customer_pages`)."""
        async for page, _ in self.customer_pages(userids):
            yield page

    async def customer_pages(
        self, userids: Sequence[str], start: tuple[int, str] = (0, "")
    ) -> AsyncIterator[tuple[list[dict[str, Any]], tuple[int, str]]]:
        """Pages of the members' customers (``batch/get_by_user``, ≤ 100 userids a call), each
        flattened to external_userid, name, unionid, type, userid (the member), remark, tag_ids
        and paired with the position that continues after it: (index of the first userid of
        the chunk, cursor). A resumable sync persists that position and passes it back."""
        step = self.rules["contacts_page_max"]
        first, cursor = start
        for i in range(first - first % step, len(userids), step):
            while True:
                body = {"userid_list": list(userids[i : i + step]), "cursor": cursor,
                        "limit": step}  # fmt: skip
                data = await self.api.call_ok("POST", "externalcontact/batch/get_by_user", body)
                page = []
                for item in data.get("external_contact_list") or []:
                    contact, follow = item.get("external_contact", {}), item.get("follow_info", {})
                    page.append(
                        {"external_userid": contact.get("external_userid"),
                         "name": contact.get("name"), "unionid": contact.get("unionid"),
                         "type": contact.get("type"), "userid": follow.get("userid"),
                         "remark": follow.get("remark", ""),
                         "tag_ids": list(follow.get("tag_id") or [])}
                    )  # fmt: skip
                cursor = str(data.get("next_cursor") or "")
                nxt = (i, cursor) if cursor else (i + step, "")
                if page:
                    yield page, nxt
                if not cursor:
                    break

    async def follow_user_of(self, external_userid: str) -> list[str]:
        """The members who have this customer as a friend (``externalcontact/get``)."""
        data = await self.api.call_ok(
            "GET", "externalcontact/get", params={"external_userid": external_userid}
        )
        return [str(f.get("userid")) for f in data.get("follow_user") or []]

    async def follow_marks_of(self, external_userid: str) -> dict[str, set[str]]:
        """Every member who has this customer as a friend → the corp tag ids *that* member
        marked on them (``externalcontact/get``: ``follow_user[].tags``), in the platform's
        order. ``follow_user`` pages on with ``next_cursor`` beyond 500 members."""
        marks: dict[str, set[str]] = {}
        cursor = ""
        while True:
            params = {"external_userid": external_userid}
            if cursor:
                params["cursor"] = cursor
            data = await self.api.call_ok("GET", "externalcontact/get", params=params)
            for f in data.get("follow_user") or []:
                tags = marks.setdefault(str(f.get("userid")), set())
                # Personal tags (type 2) carry no tag_id: only corp tags can be marked.
                tags.update(str(t["tag_id"]) for t in f.get("tags") or [] if t.get("tag_id"))
            cursor = str(data.get("next_cursor") or "")
            if not cursor:
                return marks

    async def add_corp_tag(
        self, names: Sequence[str], *, group_id: str | None = None, group_name: str | None = None
    ) -> dict[str, Any]:
        """``add_corp_tag``: new tags in a group (by id, or by name: created when new)."""
        body: dict[str, Any] = {"tag": [{"name": n} for n in names]}
        if group_id:
            body["group_id"] = group_id
        else:
            body["group_name"] = group_name
        data = await self.api.call_ok("POST", "externalcontact/add_corp_tag", body)
        group: dict[str, Any] = data["tag_group"]
        return group

    async def edit_corp_tag(self, ident: str, name: str) -> None:
        body = {"id": ident, "name": name}
        await self.api.call_ok("POST", "externalcontact/edit_corp_tag", body)

    async def del_corp_tag(
        self, tag_ids: Sequence[str] = (), group_ids: Sequence[str] = ()
    ) -> None:
        body = {"tag_id": list(tag_ids), "group_id": list(group_ids)}
        await self.api.call_ok("POST", "externalcontact/del_corp_tag", body)

    async def corp_tags(self) -> list[dict[str, Any]]:
        """Corp tag groups with their tags (get_corp_tag_list, everything)."""
        data = await self.api.call_ok("POST", "externalcontact/get_corp_tag_list", {})
        return list(data.get("tag_group") or [])

    async def mark_tag(
        self, userid: str, external_userid: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> None:
        body = {"userid": userid, "external_userid": external_userid,
                "add_tag": list(add), "remove_tag": list(remove)}  # fmt: skip
        await self.api.call_ok("POST", "externalcontact/mark_tag", body)
