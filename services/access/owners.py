"""Who may act on a job (stop it, keep it running, extend it): its requester and admins."""

from __future__ import annotations

from services.core.errors import NotOwner
from services.models import Actor, Job


def may_act_on(job: Job, actor: Actor) -> bool:
    return actor.is_admin or actor.user == job.requester


def check_owner(job: Job, actor: Actor, verb: str) -> None:
    """NotOwner unless `actor` may `verb` the job ("stop", "keep")."""
    if not may_act_on(job, actor):
        raise NotOwner(job.requester, f"{verb} job {job.name}")
