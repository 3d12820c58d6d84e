"""The campaign and batch state machines refuse every transition they do not list."""

from __future__ import annotations

import pytest

from qunfa.domain.states import (
    BATCH_TRANSITIONS,
    CAMPAIGN_TRANSITIONS,
    TERMINAL_BATCH_STATES,
    BatchState,
    CampaignState,
    InvalidTransition,
    batch_transition,
    campaign_transition,
)


def test_campaign_happy_path() -> None:
    state = CampaignState.DRAFT
    for target in ("planning", "planned", "sending", "done"):
        state = campaign_transition(state, target)
    assert state is CampaignState.DONE


@pytest.mark.parametrize("terminal", ["done", "failed", "cancelled"])
def test_terminal_campaign_states_are_final(terminal: str) -> None:
    for target in CampaignState:
        if target != terminal:
            with pytest.raises(InvalidTransition):
                campaign_transition(terminal, target)


def test_cannot_send_a_draft_without_planning() -> None:
    with pytest.raises(InvalidTransition, match="draft"):
        campaign_transition("draft", "sending")


def test_paused_campaign_resumes() -> None:
    assert campaign_transition("sending", "paused") is CampaignState.PAUSED
    assert campaign_transition("paused", "sending") is CampaignState.SENDING


def test_every_state_has_a_transition_table() -> None:
    assert set(CAMPAIGN_TRANSITIONS) == set(CampaignState)
    assert set(BATCH_TRANSITIONS) == set(BatchState)


def test_terminal_batch_states_cannot_be_resent() -> None:
    for terminal in (BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED):
        assert terminal in TERMINAL_BATCH_STATES
        with pytest.raises(InvalidTransition):
            batch_transition(terminal, BatchState.SENDING)


def test_unknown_batch_is_settled_by_an_operator_not_resent() -> None:
    with pytest.raises(InvalidTransition):
        batch_transition("unknown", "sending")
    assert batch_transition("unknown", "done") is BatchState.DONE


def test_accepted_batch_waits_for_its_result() -> None:
    with pytest.raises(InvalidTransition):
        batch_transition("accepted", "sending")
    assert batch_transition("accepted", "done") is BatchState.DONE


def test_expired_lease_can_be_taken_over() -> None:
    assert batch_transition("sending", "sending") is BatchState.SENDING
