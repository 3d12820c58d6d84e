"""plan_mark_calls: which members a WeCom corp tag change must be sent as."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qunfa.services.tags import MarkCall, plan_mark_calls

TAG_IDS = st.sampled_from(["t1", "t2", "t3", "t4"])
MARKS = st.dictionaries(st.sampled_from(["u1", "u2", "u3"]), st.sets(TAG_IDS), min_size=1)


@given(MARKS, st.data())
def test_after_the_calls_the_union_is_what_qunfa_wants(
    marks: dict[str, set[str]], data: st.DataObject
) -> None:
    # One pending op per tag: a tag is added or removed, never both.
    changed = data.draw(st.lists(TAG_IDS, unique=True))
    add = [t for t in changed if data.draw(st.booleans())]
    remove = [t for t in changed if t not in add]
    calls = plan_mark_calls(marks, add, remove)
    after = {u: set(m) for u, m in marks.items()}
    for call in calls:
        assert call.userid in marks and (call.add or call.remove)  # never an empty mark_tag
        after[call.userid] |= set(call.add)
        after[call.userid] -= set(call.remove)
    union = set().union(*after.values())
    assert set(add) <= union and not set(remove) & union
    # Only members whose mark carries a removed tag are called, plus one adder at most.
    carriers = {u for u, m in marks.items() if m & set(remove)}
    assert {c.userid for c in calls} - carriers <= {next(iter(marks))}
    assert len(calls) == len({c.userid for c in calls}) <= max(len(carriers), 1)
    # Each member keeps the marks qunfa did not change.
    for u, m in marks.items():
        assert after[u] - set(add) == m - set(remove) - set(add)


def test_one_member_costs_one_call_and_adds_ride_on_a_removal() -> None:
    assert plan_mark_calls({"u1": {"t1"}}, ["t2"], ["t1"]) == [MarkCall("u1", ["t2"], ["t1"])]
    two = {"u1": {"t3"}, "u2": {"t1", "t3"}}
    assert plan_mark_calls(two, ["t2"], ["t3"]) == [
        MarkCall("u1", ["t2"], ["t3"]),
        MarkCall("u2", [], ["t3"]),
    ]
    assert plan_mark_calls(two, ["t2"], ["t1"]) == [MarkCall("u2", ["t2"], ["t1"])]
    # Already carried by a member, or carried by nobody: nothing to send.
    assert plan_mark_calls(two, ["t1"], ["t4"]) == []
    assert plan_mark_calls(two, ["t2"], []) == [MarkCall("u1", ["t2"], [])]
