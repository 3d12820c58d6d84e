"""The review workflow and the send gate (issue 5, item 6): check, submit, approve, reject, edit,
schedule — and the gate that ``plan``, ``start`` and the dispatcher call.

Every step writes a row to the campaign's review log (``campaign_reviews``) and one to the global
audit log (``audit_log``, target ``campaign:<id>``). The rules themselves are pure and live in
:mod:`qunfa.domain.review`; this service reads what they need and records what they decide.

Audience size for the approval threshold: the planned recipient count once the campaign is
planned; before that an estimate — the subscribed identities of the channel's recipient kind on
the account (``all``), those carrying the tag (``tag:``), the number of ids (``openids:``), and for
segment audiences the account's subscribed identities as an upper bound (so a large account's
segment campaign asks for approval rather than slipping under the threshold).
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, func, select, update

from qunfa.channels.base import ContentError
from qunfa.channels.registry import channel_class
from qunfa.domain.audience import AudienceError, parse_audience
from qunfa.domain.review import (
    GateInput,
    ReviewAction,
    ReviewError,
    ReviewState,
    check_actor,
    content_digest,
    dispatch_refusal,
    gate,
    material_ref,
    may_approve,
    text_fields,
    worst_verdict,
)
from qunfa.domain.states import CampaignState
from qunfa.services import links
from qunfa.services.campaigns import CampaignError
from qunfa.services.personalise import person_fields
from qunfa.storage.models import (
    Account,
    AuditLog,
    Campaign,
    CampaignReview,
    Identity,
    IdentityTag,
    Material,
    MaterialVersion,
    Tag,
)

if TYPE_CHECKING:
    from qunfa.bootstrap import Container
    from qunfa.compliance import Report
    from qunfa.compliance.qr import QrCode

log = logging.getLogger("qunfa.review")

SYSTEM = "system"
# Review steps make sense only before or between sends; a finished campaign is history.
REVIEWABLE = frozenset(
    {CampaignState.DRAFT, CampaignState.PLANNING, CampaignState.PLANNED, CampaignState.PAUSED}
)
EDITABLE = REVIEWABLE | {CampaignState.SENDING}  # the dispatcher refuses the changed content
SCHEDULABLE = frozenset({CampaignState.DRAFT, CampaignState.PLANNED})


class GateClosed(CampaignError):
    """``plan``/``start`` refused by the gate; ``rule`` names which part (gate.check, …)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass
class CheckResult:
    """One campaign check: the stored summary plus the engine's reports for rendering."""

    campaign_id: int
    digest: str
    verdict: str
    summary: dict[str, Any]
    reports: list[tuple[str, Report]] = field(default_factory=list)
    lint: list[dict[str, Any]] = field(default_factory=list)


class ReviewService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- reading --------------------------------------------------------------------------------
    def _campaign(self, campaign_id: int) -> Campaign:
        camp: Campaign = self.c.campaigns.get(campaign_id)
        return camp

    def _material(self, content: dict[str, Any], channel: str) -> tuple[int | None, Any]:
        """The material version the content references (resolved to the current one if the
        content names none) and the body variant for this channel."""
        ref = material_ref(content)
        if ref is None:
            return None, None
        mid, version = ref
        with self.c.sessions() as s:
            if version is None:
                version = s.scalar(select(Material.current_version).where(Material.id == mid))
                if version is None:
                    raise CampaignError(
                        f"the content references material {mid}, which does not exist: "
                        "pick one from the material library"
                    )
            body = s.scalar(
                select(MaterialVersion.body).where(
                    MaterialVersion.material_id == mid, MaterialVersion.version == version
                )
            )
        variant = None
        if isinstance(body, dict):
            variant = body.get(channel, body.get("default"))
        return version, variant

    def digest(self, camp: Campaign) -> str:
        """The digest of what this campaign would send now (content + material version)."""
        version, _ = self._material(camp.content, camp.channel)
        return content_digest(camp.content, version)

    def threshold(self, account: Account) -> int:
        """The largest audience sent without approval: the account's override, else Settings."""
        own = (account.settings or {}).get("review_audience_threshold")
        if isinstance(own, int) and not isinstance(own, bool):
            return own
        return int(self.c.settings.review_audience_threshold)

    def audience_size(self, camp: Campaign) -> int:
        """Planned count once planned, else an estimate (see the module docstring)."""
        if camp.state != CampaignState.DRAFT and camp.planned_count:
            return int(camp.planned_count)
        try:
            aud = parse_audience(camp.audience)
        except AudienceError:
            aud = None
        if aud is not None and aud.kind == "openids":
            return len(set(aud.openids))
        kind = channel_class(camp.channel).recipient_kind
        base = (
            select(func.count())
            .select_from(Identity)
            .where(
                Identity.account_id == camp.account_id,
                Identity.kind == kind,
                Identity.subscribed.is_(True),
            )
        )
        if aud is not None and aud.kind == "tag":
            base = base.join(IdentityTag, IdentityTag.identity_id == Identity.id).join(
                Tag, Tag.id == IdentityTag.tag_id
            )
            base = base.where(Tag.account_id == camp.account_id, Tag.name == aud.tag)
        with self.c.sessions() as s:
            return int(s.scalar(base) or 0)

    def history(self, campaign_id: int) -> list[dict[str, Any]]:
        """The campaign's review log, oldest first."""
        self._campaign(campaign_id)  # a clear error for an unknown id
        with self.c.sessions() as s:
            rows = s.scalars(
                select(CampaignReview)
                .where(CampaignReview.campaign_id == campaign_id)
                .order_by(CampaignReview.at, CampaignReview.id)
            ).all()
            return [
                {
                    "action": r.action,
                    "actor": r.actor,
                    "comment": r.comment,
                    "content_hash": r.content_hash,
                    "at": r.at,
                }
                for r in rows
            ]

    def summary(self, campaign_id: int) -> dict[str, Any]:
        """Review state, what the gate says now, and the log (the API's GET …/review)."""
        camp = self._campaign(campaign_id)
        g = self._gate_input(camp, self.digest(camp))
        refusal = gate(g)
        report = camp.check_report or {}
        return {
            "id": camp.id,
            "state": camp.state,
            "review_state": camp.review_state,
            "created_by": camp.created_by,
            "approved_by": camp.approved_by,
            "approved_at": camp.approved_at,
            "scheduled_at": camp.scheduled_at,
            "digest": g.digest,
            "checked": camp.checked_hash == g.digest,
            "verdict": report.get("verdict"),
            "audience_size": g.audience_size,
            "threshold": g.threshold,
            "needs_approval": bool(
                g.audience_size > g.threshold
                or (camp.checked_hash == g.digest and g.review_findings)
            ),
            "gate": None if refusal is None else {"rule": refusal.rule, "message": str(refusal)},
            "check": report or None,
            "log": self.history(campaign_id),
        }

    # -- recording ------------------------------------------------------------------------------
    def _record(
        self,
        s: Any,
        camp: Campaign,
        action: ReviewAction,
        actor: str,
        *,
        comment: str = "",
        digest: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        now = time.time()
        s.add(
            CampaignReview(
                campaign_id=camp.id,
                action=str(action),
                actor=actor,
                comment=comment,
                content_hash=digest,
                at=now,
            )
        )
        s.add(
            AuditLog(
                at=now,
                actor=actor,
                action=f"campaign.{action}",
                target=f"campaign:{camp.id}",
                detail={
                    **({"comment": comment} if comment else {}),
                    **({"content_hash": digest} if digest else {}),
                    **(detail or {}),
                },
            )
        )

    # -- check ----------------------------------------------------------------------------------
    def check(self, campaign_id: int, actor: str = SYSTEM) -> CheckResult:
        """Run the compliance engine (and the channel lint, when present) on every text field.

        Stores the summary in ``check_report`` and the digest it saw in ``checked_hash``; the
        verdict is the strictest of all fields: ``block`` makes the campaign unsendable,
        ``review`` requires approval, warnings pass.
        """
        actor = check_actor(actor)
        camp = self._campaign(campaign_id)
        version, variant = self._material(camp.content, camp.channel)
        digest = content_digest(camp.content, version)
        # Links as the operator wrote them: a tracked short link is judged by its original URL.
        fields = list(text_fields(links.original_content(camp.content, camp.options)))
        if variant is not None:
            fields += [(f"material.{p}", t) for p, t in text_fields(variant)]
        # The compliance engine (lexicons, pinyin, OpenCC: ~80 MB) is imported here, not at
        # module import: workers start campaigns that were checked elsewhere and never load it.
        from qunfa.compliance import default_checker
        from qunfa.compliance.qr import finding as qr_finding
        from qunfa.services.value_check import check_values

        checker = default_checker()
        try:
            reports = [(path, checker.check(text, camp.channel)) for path, text in fields]
        except ValueError as exc:  # a channel the policy does not know
            raise CampaignError(
                f"cannot check campaign {campaign_id}: {exc}; add the channel to "
                "compliance/data/policy.toml"
            ) from None
        resolved, media = self._resolved(camp)
        lint = self._lint(camp, resolved, media)
        # QR codes in the image the campaign sends: a review finding each, and a decoded link
        # is checked like any link in the text (compliance/qr.py).
        for path, code in self._qr_codes(camp):
            lint.append(qr_finding(code, path))
            if code.text:
                reports.append((f"{path}.text", checker.check(code.text, camp.channel)))
        # What the templates will insert per person, by distinct value (services/value_check.py).
        values = check_values(
            self.c, camp, resolved, checker, channel_class(camp.channel).recipient_kind
        )
        verdicts = [r.verdict for _, r in reports] + [lf["verdict"] for lf in lint]
        verdicts += [v["verdict"] for v in values.fields]
        verdict = worst_verdict(verdicts)
        counts = {"block": 0, "review": 0, "warn": 0}
        for _, r in reports:
            for f in r.findings:
                counts[f.action] += 1
        for lf in lint:
            counts[lf["action"]] += 1
        for v in values.fields:
            for vf in v["findings"]:
                counts[vf["action"]] += 1
        summary: dict[str, Any] = {
            "verdict": verdict,
            "digest": digest,
            "channel": camp.channel,
            "checked_at": time.time(),
            "checked_by": actor,
            "counts": counts,
            "fields": [
                {"path": path, "text": r.text, "verdict": r.verdict, **_findings(r)}
                for path, r in reports
            ]
            + values.fields,
            "lint": lint,
            **({"values": values.summary()} if values.variables else {}),
        }
        with self.c.sessions() as s:
            row = s.get(Campaign, campaign_id)
            assert row is not None
            row.check_report = summary
            row.checked_hash = digest
            self._record(
                s, row, ReviewAction.CHECK, actor, digest=digest, detail={"verdict": verdict}
            )
            s.commit()
        return CheckResult(campaign_id, digest, verdict, summary, reports, lint)

    def _qr_codes(self, camp: Campaign) -> list[tuple[str, QrCode]]:
        """QR codes in the image file of the material the campaign sends, if any."""
        from qunfa.compliance.qr import ImageError, scan_image

        ref = material_ref(camp.content)
        if ref is None:
            return []
        try:
            version = self.c.materials.version(*ref)
        except Exception:  # a missing material is reported by the lint
            return []
        if not version.file_path or not (version.mime or "").startswith("image/"):
            return []
        try:
            codes = scan_image(self.c.materials.file_bytes(version))
        except ImageError as exc:
            log.info("campaign %s: image not scanned for QR codes: %s", camp.id, exc)
            return []
        return [(f"material.media.qr[{i}]", code) for i, code in enumerate(codes)]

    def _resolved(self, camp: Campaign) -> tuple[dict[str, Any], list[Any]]:
        """The content as the channel will get it — a material reference resolved for the
        channel — and its file's media facts (pixels, duration, size) for the lint."""
        if material_ref(camp.content) is None:
            return dict(camp.content), []
        try:
            resolved, version = self.c.materials.resolve(camp.content, camp.channel)
        except Exception as exc:  # a variant missing for the channel: the lint says so below
            log.info("campaign %s: material not resolved for the lint: %s", camp.id, exc)
            return dict(camp.content), []
        media = self.c.materials.media_facts(version) if version is not None else []
        return resolved, list(media)

    def _lint(
        self, camp: Campaign, content: dict[str, Any] | None = None, media: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Channel lint and template checks, as findings with ``action`` block or warn.

        ``content`` is what the channel will get (a material reference resolved, so its text
        and file are linted, with ``media`` facts); default: the campaign's content as stored.

        - Templates (``qunfa.content.templating.check_content``): a syntax error, an unknown
          or misspelt variable, or a per-person variable on a channel that cannot personalise
          is a block — it would be an error or a blank in a sent message.
        - HOOK (issue 5, item 3): per-channel lint from ``qunfa.content.lint.lint(content,
          channel, rules)`` when that module exists; a finding whose action/level is ``block``
          (a hard platform limit) blocks, anything else warns. Without it: no lint findings.
        Both are imported by name so this room works before (and without) them.
        """
        out: list[dict[str, Any]] = []
        content = camp.content if content is None else content
        templating = _optional("qunfa.content.templating")
        if templating is not None:
            variables = camp.content.get("variables")
            names = list(variables) if isinstance(variables, dict) else []
            if (
                person_fields(content, camp.channel)
                and not channel_class(camp.channel).personalises
            ):
                out.append(
                    {
                        "rule": "template.per_person_unsupported",
                        "message": f"{camp.channel} does not send per-recipient content yet, "
                        "but the content uses per-person variables",
                        "path": "",
                        "suggestion": "remove the per-person variables, or send through SMS, "
                        "e-mail or the WeCom app, which render per recipient",
                        "action": "block",
                        "verdict": "block",
                    }
                )
            for issue in templating.check_content(content, camp.channel, variables=names):
                out.append(
                    {
                        "rule": issue.rule_id,
                        "message": issue.message,
                        "path": issue.field,
                        "suggestion": issue.suggestion or "",
                        "action": "block",
                        "verdict": "block",
                    }
                )
        lint_mod = _optional("qunfa.content.lint")
        if lint_mod is not None:
            acc = self.c.accounts.get(camp.account_id)
            rules = self.c.accounts.config(acc, camp.channel).rules
            for item in lint_mod.lint(content, camp.channel, rules, media=media or ()):
                raw = _as_dict(item)
                level = str(raw.get("action") or raw.get("level") or raw.get("severity") or "")
                action = "block" if level in ("block", "error", "hard") else "warn"
                out.append(
                    {
                        "rule": str(raw.get("rule") or raw.get("rule_id") or "lint"),
                        "message": str(raw.get("message") or raw.get("detail") or raw),
                        "path": str(raw.get("path") or raw.get("field") or ""),
                        "suggestion": str(raw.get("suggestion") or ""),
                        "action": action,
                        "verdict": "block" if action == "block" else "pass_with_warnings",
                    }
                )
        return out

    # -- the gate -------------------------------------------------------------------------------
    def _gate_input(self, camp: Campaign, digest: str, *, estimate: bool = True) -> GateInput:
        """What the gate decides on. ``estimate=False`` leaves the audience size at 0 (not
        counted): only for a caller that knows the gate's answer does not depend on it."""
        report = camp.check_report or {}
        current = camp.checked_hash == digest
        counts = report.get("counts") or {}
        block_example = "a block finding"
        for f in report.get("fields", []):
            hit = next((x for x in f.get("findings", []) if x["action"] == "block"), None)
            if hit:
                block_example = f"{hit['rule_id']} in {f['path']}: “{hit['text']}”"
                break
        else:
            hit_lint = next((x for x in report.get("lint", []) if x["action"] == "block"), None)
            if hit_lint:
                block_example = f"lint {hit_lint['rule']}: {hit_lint['message']}"
        rejected_by = None
        if camp.review_state == ReviewState.REJECTED:
            rejected_by = next(
                (r["actor"] for r in reversed(self.history(camp.id)) if r["action"] == "reject"),
                None,
            )
        acc = self.c.accounts.get(camp.account_id)
        return GateInput(
            campaign_id=camp.id,
            author=camp.created_by,
            digest=digest,
            checked_hash=camp.checked_hash,
            verdict=report.get("verdict") if current else None,
            block_example=block_example,
            review_findings=int(counts.get("review", 0)) if current else 0,
            audience_size=self.audience_size(camp) if estimate else 0,
            threshold=self.threshold(acc),
            review_state=camp.review_state,
            approved_hash=camp.approved_hash,
            approved_by=camp.approved_by,
            rejected_by=rejected_by,
        )

    def require(self, campaign_id: int, *, actor: str | None = None, auto_check: bool) -> None:
        """Raise :class:`GateClosed` unless the campaign may be planned or sent now.

        ``auto_check`` runs the check first when none covers the current content (``start``
        and ``schedule`` do; ``plan`` does not, so planning stays an explicit, checked step).
        """
        camp = self._campaign(campaign_id)
        digest = self.digest(camp)
        if auto_check and camp.checked_hash != digest:
            self.check(campaign_id, actor or SYSTEM)
            camp = self._campaign(campaign_id)
        # An approval of this very content opens the gate whatever the audience size (see
        # ``domain.review.gate``): the size estimate, a count of the account's identities (~0.2 s
        # per million, and ``start`` then ``plan`` each pass here), is only made when it matters.
        approved = camp.review_state == ReviewState.APPROVED and camp.approved_hash == digest
        refusal = gate(self._gate_input(camp, digest, estimate=not approved))
        if refusal is not None:
            raise GateClosed(refusal.rule, str(refusal))

    def refuse_batch(self, camp: Campaign) -> str | None:
        """The dispatcher's call before a platform send: the reason to refuse, or None.

        A refused batch stays pending (it was not leased) and the campaign is paused with the
        reason, so `qunfa campaign send` resumes it once the new content passes the gate.
        """
        try:
            digest = self.digest(camp)
        except CampaignError as exc:
            reason = f"{exc} [rule gate.content_changed]"
        else:
            found = dispatch_refusal(camp.id, digest, camp.checked_hash, camp.approved_hash)
            if found is None:
                return None
            reason = found
        with self.c.sessions() as s:
            paused = cast(
                CursorResult[Any],
                s.execute(
                    update(Campaign)
                    .where(Campaign.id == camp.id, Campaign.state == CampaignState.SENDING)
                    .values(state=CampaignState.PAUSED, last_error=reason)
                ),
            ).rowcount
            if paused:  # one audit row per pause, not one per refused batch
                s.add(
                    AuditLog(
                        at=time.time(),
                        actor=SYSTEM,
                        action="campaign.gate_refused_batch",
                        target=f"campaign:{camp.id}",
                        detail={"reason": reason},
                    )
                )
            s.commit()
        log.warning("batch of campaign %s refused: %s", camp.id, reason)
        return "refused: content changed"

    # -- workflow -------------------------------------------------------------------------------
    def _reviewable(self, camp: Campaign, step: str) -> None:
        if camp.state not in REVIEWABLE:
            raise ReviewError(
                "review.state",
                f"campaign {camp.id} is {camp.state}; {step} applies only before or between "
                "sends (draft, planned or paused)",
            )

    def submit(self, campaign_id: int, actor: str, comment: str = "") -> Campaign:
        """Ask for approval. Runs the check if the current content has none; a block refuses."""
        actor = check_actor(actor)
        camp = self._campaign(campaign_id)
        self._reviewable(camp, "submitting")
        digest = self.digest(camp)
        if camp.review_state == ReviewState.SUBMITTED:
            raise ReviewError(
                "review.state",
                f"campaign {campaign_id} is already submitted: a reviewer runs "
                f"`qunfa campaign approve {campaign_id}` or `reject`",
            )
        if camp.review_state == ReviewState.APPROVED and camp.approved_hash == digest:
            raise ReviewError(
                "review.state",
                f"campaign {campaign_id} is already approved for its current content: "
                f"send it with `qunfa campaign send {campaign_id}`",
            )
        if camp.checked_hash != digest:
            self.check(campaign_id, actor)
            camp = self._campaign(campaign_id)
        if (camp.check_report or {}).get("verdict") == "block":
            g = self._gate_input(camp, digest)
            refusal = gate(g)
            raise ReviewError(
                "gate.block", str(refusal.message if refusal else "the check blocks it")
            )
        with self.c.sessions() as s:
            row = s.get(Campaign, campaign_id)
            assert row is not None
            row.review_state = ReviewState.SUBMITTED
            row.approved_by = row.approved_at = row.approved_hash = None
            self._record(s, row, ReviewAction.SUBMIT, actor, comment=comment, digest=digest)
            s.commit()
            return row

    def approve(self, campaign_id: int, actor: str, comment: str = "") -> Campaign:
        """Approve the current content. Not by the author; only a submitted, checked campaign."""
        camp = self._campaign(campaign_id)
        may_approve(actor, camp.created_by)
        actor = actor.strip()
        self._reviewable(camp, "approval")
        if camp.review_state != ReviewState.SUBMITTED:
            raise ReviewError(
                "review.state",
                f"campaign {campaign_id} is {camp.review_state!s} for review; only a submitted "
                f"campaign can be approved: its author runs `qunfa campaign submit {campaign_id}`",
            )
        digest = self.digest(camp)
        if camp.checked_hash != digest:
            raise ReviewError(
                "gate.check",
                f"campaign {campaign_id}'s content changed since its last check: run "
                f"`qunfa campaign check {campaign_id}` and review what it finds before approving",
            )
        if (camp.check_report or {}).get("verdict") == "block":
            raise ReviewError(
                "gate.block",
                f"campaign {campaign_id} has block findings; approval cannot override a block: "
                f"the author changes it with `qunfa campaign edit {campaign_id}`",
            )
        with self.c.sessions() as s:
            row = s.get(Campaign, campaign_id)
            assert row is not None
            row.review_state = ReviewState.APPROVED
            row.approved_by, row.approved_at, row.approved_hash = actor, time.time(), digest
            self._record(s, row, ReviewAction.APPROVE, actor, comment=comment, digest=digest)
            s.commit()
            return row

    def reject(self, campaign_id: int, actor: str, comment: str) -> Campaign:
        """Send it back to the author; a comment saying why is required."""
        actor = check_actor(actor)
        if not comment.strip():
            raise ReviewError(
                "review.comment",
                "a rejection needs a comment telling the author what to change: "
                'pass --comment \'…\' (CLI) or {"comment": "…"} (API)',
            )
        camp = self._campaign(campaign_id)
        self._reviewable(camp, "rejection")
        if camp.review_state not in (ReviewState.SUBMITTED, ReviewState.APPROVED):
            raise ReviewError(
                "review.state",
                f"campaign {campaign_id} is {camp.review_state!s} for review; only a submitted "
                "or approved campaign can be rejected",
            )
        with self.c.sessions() as s:
            row = s.get(Campaign, campaign_id)
            assert row is not None
            row.review_state = ReviewState.REJECTED
            row.approved_by = row.approved_at = row.approved_hash = None
            row.scheduled_at = None  # a rejected campaign must not start on its own
            self._record(
                s, row, ReviewAction.REJECT, actor, comment=comment.strip(), digest=self.digest(row)
            )
            s.commit()
            return row

    def comment(self, campaign_id: int, actor: str, comment: str) -> None:
        """A note in the review log (no state change)."""
        actor = check_actor(actor)
        if not comment.strip():
            raise ReviewError("review.comment", "the comment is empty")
        camp = self._campaign(campaign_id)
        with self.c.sessions() as s:
            self._record(s, camp, ReviewAction.COMMENT, actor, comment=comment.strip())
            s.commit()

    def edit(self, campaign_id: int, content: dict[str, Any], actor: str) -> Campaign:
        """Replace the content. An approval (and a schedule) of the old content is voided."""
        actor = check_actor(actor)
        camp = self._campaign(campaign_id)
        if camp.state not in EDITABLE:
            raise CampaignError(
                f"campaign {campaign_id} is {camp.state}; its content can no longer change "
                "(create a new campaign instead)"
            )
        acc = self.c.accounts.get(camp.account_id)
        # Links become tracked short links before anything judges the content (docs/compliance.md)
        content, options = links.track(
            self.c, camp.id, camp.channel, content, dict(camp.options or {}), acc.settings
        )
        try:
            channel_class(camp.channel).validate_content(
                content, self.c.accounts.config(acc, camp.channel).rules
            )
        except ContentError as exc:
            raise CampaignError(str(exc)) from exc
        old = self.digest(camp)
        version, _ = self._material(content, camp.channel)
        new = content_digest(content, version)
        if new == old:
            return camp
        with self.c.sessions() as s:
            row = s.get(Campaign, campaign_id)
            assert row is not None
            row.content = content
            row.options = options  # the tracked-link mapping, old codes kept
            unscheduled = row.scheduled_at
            row.scheduled_at = None
            self._record(
                s,
                row,
                ReviewAction.EDIT,
                actor,
                digest=new,
                detail={
                    "previous_hash": old,
                    **({"unscheduled": unscheduled} if unscheduled else {}),
                },
            )
            if row.review_state == ReviewState.APPROVED:
                row.review_state = ReviewState.NONE
                by = row.approved_by
                row.approved_by = row.approved_at = row.approved_hash = None
                self._record(
                    s,
                    row,
                    ReviewAction.VOID,
                    actor,
                    comment=f"content edited after approval by {by}; submit it again",
                    digest=new,
                    detail={"approved_hash": old},
                )
            s.commit()
            return row

    # -- scheduling -----------------------------------------------------------------------------
    def schedule(self, campaign_id: int, at: float, actor: str) -> Campaign:
        """Start the campaign at ``at`` (epoch seconds); it must pass the gate now."""
        actor = check_actor(actor)
        camp = self._campaign(campaign_id)
        if camp.state not in SCHEDULABLE:
            raise ReviewError(
                "review.state",
                f"campaign {campaign_id} is {camp.state}; only a draft or planned campaign "
                "can be scheduled",
            )
        if at <= time.time():
            raise ReviewError(
                "schedule.past",
                "the scheduled time is in the past: give a later --at, or send it now with "
                f"`qunfa campaign send {campaign_id}`",
            )
        self.require(campaign_id, actor=actor, auto_check=True)
        with self.c.sessions() as s:
            row = s.get(Campaign, campaign_id)
            assert row is not None
            row.scheduled_at = at
            self._record(
                s, row, ReviewAction.SCHEDULE, actor, digest=self.digest(row), detail={"at": at}
            )
            s.commit()
            return row

    def start_due(self, now: float | None = None) -> int:
        """Start scheduled campaigns whose time has come (the sweeper calls this every pass).

        The schedule is claimed with one UPDATE, so two sweepers never start one campaign
        twice. A campaign the gate refuses at its time is not retried: it keeps its reason in
        ``last_error`` and an audit row, and an operator reschedules it.
        """
        now = time.time() if now is None else now
        with self.c.sessions() as s:
            due = list(
                s.scalars(
                    select(Campaign.id).where(
                        Campaign.scheduled_at.is_not(None),
                        Campaign.scheduled_at <= now,
                        Campaign.state.in_((CampaignState.DRAFT, CampaignState.PLANNED)),
                    )
                )
            )
        started = 0
        for cid in due:
            with self.c.sessions() as s:
                claimed = cast(
                    CursorResult[Any],
                    s.execute(
                        update(Campaign)
                        .where(Campaign.id == cid, Campaign.scheduled_at.is_not(None))
                        .values(scheduled_at=None)
                    ),
                ).rowcount
                s.commit()
            if not claimed:
                continue
            try:
                self.c.campaigns.start(cid, actor="scheduler")
            except CampaignError as exc:
                with self.c.sessions() as s:
                    row = s.get(Campaign, cid)
                    assert row is not None
                    row.last_error = f"scheduled start refused: {exc}"
                    s.add(
                        AuditLog(
                            at=time.time(),
                            actor="scheduler",
                            action="campaign.schedule_failed",
                            target=f"campaign:{cid}",
                            detail={"reason": str(exc)},
                        )
                    )
                    s.commit()
                continue
            with self.c.sessions() as s:
                s.add(
                    AuditLog(
                        at=time.time(),
                        actor="scheduler",
                        action="campaign.scheduled_start",
                        target=f"campaign:{cid}",
                        detail={},
                    )
                )
                s.commit()
            started += 1
        return started


def _findings(report: Report) -> dict[str, Any]:
    findings = report.to_dict()["findings"]
    return {"findings": findings}


def _optional(name: str) -> Any:
    """The module ``name`` if it is installed (content rooms built by other work), else None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    if hasattr(item, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(item)
    return {k: getattr(item, k) for k in dir(item) if not k.startswith("_")}
