"""The one way a job changes state: `advance` (through the table in services/states.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from services.core.errors import Conflict
from services.core.events import Event, JobFinished, JobStateChanged, OutputFile
from services.models import Job
from services.states import JobState, Outcome, job_transition


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
