"""The job lifecycle: JobState, its table, the pure job_transition() and `advance`, the one way a
job changes state."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from services.core.errors import Conflict
from services.core.events import Event, JobFinished, JobRequeued, JobStateChanged, OutputFile
from services.core.outcome import Outcome, Transition, by_table, seal

if TYPE_CHECKING:
    from services.models import Attempt, Job


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
        return self in ACTIVE_STATES


FINISHED = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TERMINATED, JobState.DENIED, JobState.EXPIRED}
)
# Holding (or about to hold) nodes on its cluster.
ACTIVE_STATES = (JobState.PREPARING, JobState.RUNNING, JobState.TERMINATING)
# Not finished and past approval: waiting for nodes or holding them.
LIVE_STATES = (JobState.QUEUED, *ACTIVE_STATES)

# DESIGN.md §3. `failed` is reachable from every live state: a launch error, a lost node or a
# job whose backend disappeared must be recordable wherever the job was. A job whose nodes were
# lost (Spot eviction) goes back to `queued` for its next attempt (see requeue()), or to
# `pending_approval` when that attempt needs approval first; a retry that is denied or expires
# ends `failed`, since the job did run.
_JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING_APPROVAL: frozenset(
        {JobState.QUEUED, JobState.DENIED, JobState.EXPIRED, JobState.FAILED}
    ),
    JobState.QUEUED: frozenset({JobState.PREPARING, JobState.TERMINATING, JobState.FAILED}),
    JobState.PREPARING: frozenset(
        {
            JobState.RUNNING,
            JobState.TERMINATING,
            JobState.FAILED,
            JobState.QUEUED,
            JobState.PENDING_APPROVAL,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.TERMINATING,
            JobState.TERMINATED,
            JobState.QUEUED,
            JobState.PENDING_APPROVAL,
        }
    ),
    JobState.TERMINATING: frozenset({JobState.TERMINATED, JobState.FAILED, JobState.SUCCEEDED}),
}


def job_transition(current: JobState, target: JobState) -> Outcome:
    """Whether `current -> target` is allowed; a repeat of the current state is harmless."""
    return by_table(_JOB_TRANSITIONS, current, target)


@dataclass(frozen=True)
class JobTransition(Transition[JobState]):
    """A guarded state change of a job, built only here."""

    @property
    def requeues(self) -> bool:
        """A lost attempt going back to the queue (or to an approval): the store also clears
        what belonged to that attempt (its layout, its wall-clock warning)."""
        return self.old in ACTIVE_STATES and self.new in (
            JobState.QUEUED,
            JobState.PENDING_APPROVAL,
        )

    def after(self, first: JobTransition) -> JobTransition:
        """`first` then this one, as one write (e.g. preparing -> running -> succeeded)."""
        if first.new is not self.old:
            raise Conflict(f"{first.new.value} then {self.old.value} is no chain")
        return JobTransition(first.old, self.new, _TOKEN)


_TOKEN = seal(JobTransition)


@dataclass(frozen=True)
class Step:
    """What advance() decided: the moved job, its events and the guarded transition."""

    job: Job
    events: list[Event]
    transition: JobTransition


def advance(
    job: Job, target: JobState, *, detail: str | None = None, **changes: Any
) -> Step | None:
    """The one place a job's state changes: the new job and its event, or None if already there.

    Raises Conflict for a transition the lifecycle does not allow.
    """
    outcome = job_transition(job.state, target)
    if outcome is Outcome.ALREADY:
        return None
    if outcome is Outcome.INVALID:
        raise Conflict(f"job {job.name} is {job.state.value}; it cannot become {target.value}")
    if "state" in changes:
        raise TypeError("advance() sets the state itself")
    moved = replace(job, state=target, **changes)
    event = JobStateChanged(
        job_id=job.id, cluster=job.cluster, old=job.state.value, new=target.value, detail=detail
    )
    return Step(moved, [event], JobTransition(job.state, target, _TOKEN))


def requeue(
    job: Job,
    lost: Attempt,
    *,
    now: datetime,
    spent: Decimal | None,
    approval: bool = False,
) -> Step:
    """A job whose nodes were lost goes back to the queue for its next attempt (or waits for
    an approval of it): `lost` is the attempt that ended, `spent` what all attempts cost so
    far. Same job, same outputs; the next attempt gets nodes, logs and a deadline of its own."""
    if not job.state.active or job.state is JobState.TERMINATING:
        raise Conflict(f"job {job.name} is {job.state.value}; only a running job is requeued")
    if lost.number != job.attempt or job.retries_left < 1:
        raise Conflict(f"job {job.name} has no retry left for attempt {lost.number}")
    target = JobState.PENDING_APPROVAL if approval else JobState.QUEUED
    moved = replace(
        job,
        state=target,
        attempts=(*job.attempts, lost),
        queued_at=None if approval else now,
        started_at=None,
        ended_at=None,
        exit_code=None,
        error=None,
        nodes=(),
        layout=None,
        wall_clock_warned_at=None,
        gpu=None,  # the next attempt is watched (and warned) from its own first reading
    )
    events: list[Event] = [
        JobStateChanged(
            job_id=job.id,
            cluster=job.cluster,
            old=job.state.value,
            new=target.value,
            detail=lost.reason,
        ),
        JobRequeued(
            job_id=job.id,
            cluster=job.cluster,
            attempt=moved.attempt,
            of=job.max_retries + 1,
            reason=lost.reason,
            attempt_usd=None if lost.usd is None else str(lost.usd),
            spent_usd=None if spent is None else str(spent),
            waits_for_approval=approval,
        ),
    ]
    return Step(moved, events, JobTransition(job.state, target, _TOKEN))


def held_for_approval(job: Job) -> Job:
    """A new, not yet stored job that waits for an approval before it may queue."""
    if job.state is not JobState.QUEUED:
        raise Conflict(f"job {job.name} is {job.state.value}; only a new job waits for approval")
    return replace(job, state=JobState.PENDING_APPROVAL, queued_at=None)


def finished_event(job: Job, outputs: tuple[OutputFile, ...]) -> JobFinished:
    return JobFinished(
        job_id=job.id,
        cluster=job.cluster,
        state=job.state.value,
        exit_code=job.exit_code,
        detail=job.error,
        outputs=outputs,
    )
