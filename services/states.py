"""The job and cluster lifecycles: one enum, one table and one pure transition() each."""

from __future__ import annotations

from enum import Enum, StrEnum


class JobState(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    TERMINATING = "terminating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TERMINATED = "terminated"
    DENIED = "denied"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def active(self) -> bool:
        """Holds (or is about to hold) nodes on its cluster."""
        return self in (JobState.PREPARING, JobState.RUNNING, JobState.TERMINATING)


FINISHED = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TERMINATED, JobState.DENIED, JobState.EXPIRED}
)

# DESIGN.md §3. `failed` is reachable from every live state: a launch error, a lost node or a
# job whose backend disappeared must be recordable wherever the job was.
_JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING_APPROVAL: frozenset({JobState.QUEUED, JobState.DENIED, JobState.EXPIRED}),
    JobState.QUEUED: frozenset({JobState.PREPARING, JobState.TERMINATING, JobState.FAILED}),
    JobState.PREPARING: frozenset({JobState.RUNNING, JobState.TERMINATING, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.TERMINATING, JobState.TERMINATED}
    ),
    JobState.TERMINATING: frozenset({JobState.TERMINATED, JobState.FAILED, JobState.SUCCEEDED}),
}


class Outcome(Enum):
    APPLIED = "applied"
    ALREADY = "already"
    INVALID = "invalid"


def job_transition(current: JobState, target: JobState) -> Outcome:
    """Whether `current -> target` is allowed; a repeat of the current state is harmless."""
    if current == target:
        return Outcome.ALREADY
    if target in _JOB_TRANSITIONS.get(current, frozenset()):
        return Outcome.APPLIED
    return Outcome.INVALID


class ClusterState(StrEnum):
    """Batch AI's allocationState, with the provisioning ends folded in."""

    CREATING = "creating"
    STEADY = "steady"
    RESIZING = "resizing"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


_CLUSTER_TRANSITIONS: dict[ClusterState, frozenset[ClusterState]] = {
    ClusterState.CREATING: frozenset(
        {ClusterState.STEADY, ClusterState.FAILED, ClusterState.DELETING}
    ),
    ClusterState.STEADY: frozenset({ClusterState.RESIZING, ClusterState.DELETING}),
    ClusterState.RESIZING: frozenset(
        {ClusterState.STEADY, ClusterState.FAILED, ClusterState.DELETING}
    ),
    ClusterState.FAILED: frozenset({ClusterState.RESIZING, ClusterState.DELETING}),
    ClusterState.DELETING: frozenset({ClusterState.DELETED}),
}


def cluster_transition(current: ClusterState, target: ClusterState) -> Outcome:
    """Whether `current -> target` is allowed for a cluster's allocation state."""
    if current == target:
        return Outcome.ALREADY
    if target in _CLUSTER_TRANSITIONS.get(current, frozenset()):
        return Outcome.APPLIED
    return Outcome.INVALID
