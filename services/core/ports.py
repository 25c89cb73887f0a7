"""The ports: what services need from the world, as Protocols. Backends implement them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

from services.core.events import Event
from services.models import (
    Approval,
    Cluster,
    Conversation,
    DownloadLink,
    FileEntry,
    FileLocation,
    Job,
    JobLayout,
    MetricPoint,
    Node,
)

if TYPE_CHECKING:
    from services.jobspec import JobSpec


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one job on nodes the dispatcher reserved for it."""

    job_id: str
    job_name: str
    experiment: str
    resource_group: str
    workspace: str
    cluster: Cluster
    spec: JobSpec  # placeholders already substituted
    nodes: tuple[int, ...]  # node indices on the cluster, len == nodeCount


@dataclass(frozen=True)
class LaunchResult:
    layout: JobLayout
    notes: tuple[str, ...] = ()  # told to the user in the job's thread (e.g. "no container engine")


RunPhase = Literal["preparing", "running", "exited", "lost"]


@dataclass(frozen=True)
class RunStatus:
    phase: RunPhase
    exit_code: int | None = None
    detail: str | None = None  # why it ended, when not a plain exit (wall clock, terminated, lost)
    started_at: datetime | None = None
    ended_at: datetime | None = None


class ComputeBackend(Protocol):
    """Clusters and jobs. Every method is idempotent by name / job id."""

    name: str

    @property
    def reserved_shares(self) -> frozenset[str]:
        """The backend's own shares: no cluster or job may mount them."""

    async def create_cluster(self, cluster: Cluster) -> None: ...

    async def resize_cluster(self, cluster: Cluster, target: int) -> None: ...

    async def delete_cluster(self, cluster: Cluster) -> None: ...

    async def list_nodes(self, cluster: Cluster) -> list[Node]: ...

    async def start_job(self, request: LaunchRequest) -> LaunchResult: ...

    async def get_job_status(self, job_id: str) -> RunStatus: ...

    async def terminate_job(self, job_id: str) -> None: ...

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        """Move a running job's wall-clock limit (an approved extension): it may run for
        `remaining` more from now. Relative, so the backend's clock and ours never mix."""
        ...

    async def ping(self) -> None:
        """Raise (a BackendError) unless the backend answers now; cheap, for /readyz."""
        ...

    async def aclose(self) -> None: ...


class FileShare(Protocol):
    """Azure Files semantics: byte-range reads, directory listings, expiring per-file links."""

    async def stat(self, loc: FileLocation) -> FileEntry | None:
        """The entry, or None when nothing is there."""
        ...

    async def read_range(self, loc: FileLocation, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`; b"" at or past the end."""
        ...

    async def list_files(self, loc: FileLocation, *, recursive: bool = False) -> list[FileEntry]:
        """Entries below a directory, names relative to it; NotFound when it does not exist."""
        ...

    async def get_download_url(self, loc: FileLocation, *, expires_at: datetime) -> str:
        """A read-only link to one file that stops working at `expires_at`."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Delivery:
    """One stored event (or several log snippets merged into one), with what a presenter needs.

    `keys` are the idempotency keys of every event it carries: the message that completes the
    delivery records them all, so after a crash a covered event is never sent again."""

    event_ids: tuple[int, ...]
    event: Event
    job: Job | None
    links: tuple[DownloadLink, ...] = ()
    log_url: str | None = None  # the full log, for "N lines skipped"
    metrics: tuple[MetricPoint, ...] = ()  # for the completion receipt's loss curve
    approval: Approval | None = None  # for approval events
    # A crowded channel: the quiet steps (a submission, queued → preparing → running) this post
    # carries instead of posts of their own; `card_only`: post the job's card, not its reply.
    prelude: tuple[Event, ...] = ()
    card_only: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(event_key(i) for i in self.event_ids)


def event_key(event_id: int) -> str:
    return f"event-{event_id}"


class Notifier(Protocol):
    """Turns deliveries into messages (Slack, console). Returns the job's conversation when it
    created or moved it (e.g. the status card's ts), so the store can keep it."""

    async def deliver(self, delivery: Delivery) -> Conversation | None: ...
