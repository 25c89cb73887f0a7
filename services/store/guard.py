"""The one check every state write passes: a transition built by a lifecycle module, for the row."""

from __future__ import annotations

from services.clusters.lifecycle import ClusterTransition
from services.core.errors import Conflict
from services.jobs.lifecycle import JobTransition
from services.spend.approvals.lifecycle import ApprovalTransition


def check_moved(state: object, new: object, transition: object) -> None:
    """Only a transition built by a lifecycle module, and the row it moves, may be written."""
    kinds = (JobTransition, ClusterTransition, ApprovalTransition)
    if not isinstance(transition, kinds):
        raise TypeError("state changes take a transition built by a lifecycle module")
    if state != new:
        raise Conflict(f"the row is {state}, its transition says {new}")
