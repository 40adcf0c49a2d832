"""The job model: the transition table, lease tokens, and NewJob validation."""

from __future__ import annotations

from collections import deque

import pytest

from gotask._errors import IllegalTransition
from gotask._job import (
    STORED_STATES,
    TERMINAL,
    TRANSITIONS,
    JobRecord,
    JobState,
    LeaseToken,
    NewJob,
    check_transition,
)
from gotask.runtime.message import REGISTRY

S = JobState


def reachable(start: JobState) -> set[JobState]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in TRANSITIONS[todo.popleft()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert all(targets <= STORED_STATES for targets in TRANSITIONS.values())


def test_failed_is_never_stored() -> None:
    assert S.FAILED not in STORED_STATES
    assert TRANSITIONS[S.FAILED] == frozenset()
    assert not any(S.FAILED in targets for targets in TRANSITIONS.values())


def test_terminal_states_are_left_only_by_a_dlq_retry() -> None:
    assert {S.SUCCEEDED, S.DEAD, S.CANCELLED} == TERMINAL
    for state in TERMINAL:
        expected = {S.QUEUED} if state is S.DEAD else set()
        assert TRANSITIONS[state] == expected


def test_every_stored_state_is_reachable_from_enqueue() -> None:
    assert reachable(S.QUEUED) | reachable(S.SCHEDULED) == STORED_STATES


def test_every_live_state_can_end() -> None:
    for state in STORED_STATES - TERMINAL:
        assert reachable(state) & TERMINAL, state


@pytest.mark.parametrize(
    ("old", "new"),
    [(S.QUEUED, S.ACTIVE), (S.ACTIVE, S.SCHEDULED), (S.ACTIVE, S.QUEUED), (S.DEAD, S.QUEUED)],
)
def test_check_transition_accepts_table_edges(old: JobState, new: JobState) -> None:
    check_transition(old, new)


def test_check_transition_names_the_illegal_edge() -> None:
    with pytest.raises(IllegalTransition, match=r"^illegal job state transition: queued -> succ"):
        check_transition(S.QUEUED, S.SUCCEEDED)
    with pytest.raises(IllegalTransition, match=r"^job j1: illegal .*: succeeded -> queued$"):
        check_transition(S.SUCCEEDED, S.QUEUED, "j1")
    with pytest.raises(RuntimeError):
        check_transition(S.ACTIVE, S.FAILED)


def test_state_values_compare_as_plain_strings() -> None:
    plain: str = "queued"
    assert plain == S.QUEUED
    assert "dead" in TERMINAL
    assert {str(s) for s in JobState} == {s.value for s in JobState}


def test_record_token_and_counted_attempts() -> None:
    record = JobRecord("j1", "t", "q", b"\x92\x90\x80", 0, "active", 1.0, 1.0, 3, 60.0,
                       attempt=5, releases=1, attempt_base=2)  # fmt: skip
    assert record.token == LeaseToken("j1", 5)
    assert record.attempts_counted == 2
    assert not record.is_terminal
    assert JobRecord("j", "t", "q", b"", 0, "dead", 1.0, 1.0, 3, 60.0).is_terminal


def test_job_messages_are_registered() -> None:
    assert REGISTRY["job"] is JobRecord
    assert REGISTRY["newjob"] is NewJob
    assert REGISTRY["token"] is LeaseToken


def test_new_job_defaults() -> None:
    job = NewJob("j1", "t", "q", b"\x92\x90\x80")
    assert (job.priority, job.delay_s, job.max_attempts) == (0, 0.0, 3)
    assert (job.timeout_s, job.result_ttl_s, job.idempotency_key) == (None, 86_400.0, None)
