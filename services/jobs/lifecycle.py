"""The job lifecycle: JobState, its table, the pure job_transition() and `advance`, the one way a
job changes state."""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from services.core.errors import Conflict
from services.core.events import Event, JobFinished, JobStateChanged, OutputFile
from services.core.outcome import Outcome

if TYPE_CHECKING:
    from services.models import Job


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


def job_transition(current: JobState, target: JobState) -> Outcome:
    """Whether `current -> target` is allowed; a repeat of the current state is harmless."""
    if current == target:
        return Outcome.ALREADY
    if target in _JOB_TRANSITIONS.get(current, frozenset()):
        return Outcome.APPLIED
    return Outcome.INVALID


def advance(
    job: Job, target: JobState, *, detail: str | None = None, **changes: Any
) -> tuple[Job, list[Event]] | None:
    """The one place a job's state changes: the new job and its event, or None if already there.

    Raises Conflict for a transition the lifecycle does not allow.
    """
    outcome = job_transition(job.state, target)
    if outcome is Outcome.ALREADY:
        return None
    if outcome is Outcome.INVALID:
        raise Conflict(f"job {job.name} is {job.state.value}; it cannot become {target.value}")
    moved = replace(job, state=target, **changes)
    event = JobStateChanged(
        job_id=job.id, cluster=job.cluster, old=job.state.value, new=target.value, detail=detail
    )
    return moved, [event]


def finished_event(job: Job, outputs: tuple[OutputFile, ...]) -> JobFinished:
    return JobFinished(
        job_id=job.id,
        cluster=job.cluster,
        state=job.state.value,
        exit_code=job.exit_code,
        detail=job.error,
        outputs=outputs,
    )
