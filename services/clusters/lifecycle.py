"""The cluster lifecycle: ClusterState, its table, the pure cluster_transition() and `move`;
the file servers' FileServerState and `move_file_server`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from services.core.errors import Conflict
from services.core.outcome import Outcome, Transition, by_table, seal

if TYPE_CHECKING:
    from services.models import Cluster, FileServer


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
    return by_table(_CLUSTER_TRANSITIONS, current, target)


@dataclass(frozen=True)
class ClusterTransition(Transition[ClusterState]):
    """A guarded state change of a cluster, built only here."""


_TOKEN = seal(ClusterTransition)


def move(
    cluster: Cluster, target: ClusterState, **changes: Any
) -> tuple[Cluster, ClusterTransition]:
    """The one place a cluster's state changes: the moved copy and its guarded transition.

    A repeat of the current state is allowed (the write still checks it); raises Conflict for
    a move the table forbids."""
    if cluster_transition(cluster.state, target) is Outcome.INVALID:
        raise Conflict(f"cluster {cluster.name} is {cluster.state.value}, cannot become {target}")
    if "state" in changes:
        raise TypeError("move() sets the state itself")
    moved = replace(cluster, state=target, **changes)
    return moved, ClusterTransition(cluster.state, target, _TOKEN)


class FileServerState(StrEnum):
    """A file server's provisioning state, as Batch AI named it."""

    CREATING = "creating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DELETING = "deleting"


_FILE_SERVER_TRANSITIONS: dict[FileServerState, frozenset[FileServerState]] = {
    FileServerState.CREATING: frozenset(
        {FileServerState.SUCCEEDED, FileServerState.FAILED, FileServerState.DELETING}
    ),
    FileServerState.SUCCEEDED: frozenset({FileServerState.DELETING}),
    FileServerState.FAILED: frozenset({FileServerState.DELETING}),
    FileServerState.DELETING: frozenset(),
}


def move_file_server(server: FileServer, target: FileServerState, **changes: Any) -> FileServer:
    """The one place a file server's state changes; raises Conflict for a move the table
    forbids (a repeat of the current state is allowed)."""
    current = FileServerState(server.state)
    if by_table(_FILE_SERVER_TRANSITIONS, current, target) is Outcome.INVALID:
        raise Conflict(f"file server {server.name} is {current}, cannot become {target}")
    if "state" in changes:
        raise TypeError("move_file_server() sets the state itself")
    return replace(server, state=target.value, **changes)
