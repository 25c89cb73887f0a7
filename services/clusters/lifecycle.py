"""The cluster lifecycle: ClusterState, its table and the pure cluster_transition()."""

from __future__ import annotations

from enum import StrEnum

from services.core.outcome import Outcome


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
