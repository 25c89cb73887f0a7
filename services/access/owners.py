"""Who may act on a job and on the nodes it runs on (stop it, keep it running, extend it, run a
command beside it): its requester or an admin (one rule)."""

from __future__ import annotations

from collections.abc import Sequence

from services.core.errors import NotAllowed, NotOwner
from services.models import Actor, Job


def may_act_on(job: Job, actor: Actor) -> bool:
    return actor.is_admin or actor.user == job.requester


def check_job_owner(job: Job, actor: Actor, verb: str) -> None:
    """NotOwner unless `actor` may `verb` the job ("terminate", "stop", "keep", "exec on")."""
    if not may_act_on(job, actor):
        raise NotOwner(job.requester, f"{verb} job {job.name}")


check_owner = check_job_owner  # the name the GPU-idle flow calls it by


def check_node_exec(node_id: str, jobs: Sequence[Job], actor: Actor) -> None:
    """A command on a node is a hand on every job running there: whoever may terminate all of
    them (`jobs`) may run it; on a node no job holds, only an admin (as for a resize)."""
    if not jobs:
        if not actor.is_admin:
            raise NotAllowed(
                f"only an admin may run a command on {node_id}: no job of yours runs there"
            )
        return
    for job in jobs:
        check_job_owner(job, actor, f"run a command on node {node_id} of")
