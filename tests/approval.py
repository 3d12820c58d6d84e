"""Test helper: take a campaign through the review workflow (docs/review.md) before sending."""

from __future__ import annotations

from qunfa.bootstrap import Container


def approve(c: Container, campaign_id: int, reviewer: str = "reviewer") -> None:
    """Check, submit (as the campaign's author) and approve (as ``reviewer``).

    For tests whose campaign legitimately needs approval: an audience above the review
    threshold, or content with a finding whose policy is ``review`` (an SMS link to a
    domain off the allow-list, for instance).
    """
    camp = c.campaigns.get(campaign_id)
    c.review.check(campaign_id, camp.created_by or "author")
    c.review.submit(campaign_id, camp.created_by or "author")
    c.review.approve(campaign_id, reviewer)
