"""The job and cluster lifecycles: every transition outside the table is refused."""

import itertools

import pytest

from services.clusters.lifecycle import ClusterState, cluster_transition
from services.core.outcome import Outcome
from services.jobs.lifecycle import JobState, job_transition

J = JobState
ALLOWED_JOB = {
    (J.PENDING_APPROVAL, J.QUEUED),
    (J.PENDING_APPROVAL, J.DENIED),
    (J.PENDING_APPROVAL, J.EXPIRED),
    (J.QUEUED, J.PREPARING),
    (J.QUEUED, J.TERMINATING),
    (J.QUEUED, J.FAILED),
    (J.PREPARING, J.RUNNING),
    (J.PREPARING, J.TERMINATING),
    (J.PREPARING, J.FAILED),
    (J.RUNNING, J.SUCCEEDED),
    (J.RUNNING, J.FAILED),
    (J.RUNNING, J.TERMINATING),
    (J.RUNNING, J.TERMINATED),
    (J.TERMINATING, J.TERMINATED),
    (J.TERMINATING, J.FAILED),
    (J.TERMINATING, J.SUCCEEDED),
    # A lost attempt (Spot eviction) requeues, or waits for approval of its retry, which
    # ends the job failed when it is denied or expires.
    (J.PREPARING, J.QUEUED),
    (J.RUNNING, J.QUEUED),
    (J.PREPARING, J.PENDING_APPROVAL),
    (J.RUNNING, J.PENDING_APPROVAL),
    (J.PENDING_APPROVAL, J.FAILED),
}


@pytest.mark.parametrize("current,target", list(itertools.product(JobState, JobState)))
def test_job_transition_table(current: JobState, target: JobState) -> None:
    outcome = job_transition(current, target)
    if current == target:
        assert outcome is Outcome.ALREADY
    elif (current, target) in ALLOWED_JOB:
        assert outcome is Outcome.APPLIED
    else:
        assert outcome is Outcome.INVALID


def test_finished_states_are_terminal() -> None:
    for state in JobState:
        if state.finished:
            assert all(
                job_transition(state, t) is not Outcome.APPLIED for t in JobState if t != state
            )


def test_active_states_hold_nodes() -> None:
    assert {s for s in JobState if s.active} == {J.PREPARING, J.RUNNING, J.TERMINATING}


def test_cluster_transitions() -> None:
    C = ClusterState
    assert cluster_transition(C.CREATING, C.STEADY) is Outcome.APPLIED
    assert cluster_transition(C.STEADY, C.RESIZING) is Outcome.APPLIED
    assert cluster_transition(C.STEADY, C.STEADY) is Outcome.ALREADY
    assert cluster_transition(C.DELETED, C.STEADY) is Outcome.INVALID
    assert cluster_transition(C.DELETING, C.RESIZING) is Outcome.INVALID
    assert cluster_transition(C.CREATING, C.RESIZING) is Outcome.INVALID
