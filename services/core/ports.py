"""The ports: what services need from the world, as Protocols. Backends implement them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, Self

from services.clusters.lifecycle import ClusterTransition
from services.core.events import Event, LogSnippet
from services.jobs.lifecycle import JobState, JobTransition
from services.models import (
    Approval,
    AuditEntry,
    Cluster,
    Conversation,
    DownloadLink,
    Experiment,
    FileEntry,
    FileLocation,
    FileServer,
    GpuUse,
    IdleState,
    Job,
    JobLayout,
    JobSweep,
    LedgerEntry,
    MetricPoint,
    Node,
    NodeOutput,
    NodeProblem,
    Progress,
    Schedule,
    ScheduleRun,
    SweepView,
    Usage,
    Vote,
    Workspace,
)
from services.spend.approvals.lifecycle import ApprovalState, ApprovalTransition

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
    # `job_id` is the backend's key for this launch (Job.run_id: the job's id, `<id>-<n>` for
    # attempt n > 1); `job_uuid` the job's own id, Batch AI's uuid in its output paths, the
    # same for every attempt so a retry finds its checkpoints.
    job_uuid: str | None = None
    attempt: int = 1

    @property
    def uuid(self) -> str:
        return self.job_uuid or self.job_id


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
    # `lost` because a node went (Spot eviction, a deleted or unusable VM, a node runner that
    # died or stopped beating): another attempt on other nodes may succeed. A deleted cluster
    # or a job the backend forgot is lost for good.
    retryable: bool = False
    gpu: GpuUse | None = None  # while it runs: its nodes' last GPU samples together
    # Where the job's nodes are in its cluster's node list now, when that moved since it was
    # placed (a scale set lists its VMs in order: an evicted VM deleted shifts the rest).
    nodes: tuple[int, ...] | None = None


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

    async def unusable_nodes(self, cluster: Cluster) -> dict[int, str]:
        """Node index -> why no job may be placed there now: it failed its health check, is
        unusable or leaving, or has not proved itself yet. From reads the poll cycle shares."""
        ...

    async def failed_nodes(self, *, cluster: str | None = None) -> list[NodeProblem]:
        """Every node of every cluster (of `cluster` only, when named) that failed its health
        check (for the one announcement per node); one cheap read for all clusters."""
        ...

    async def start_job(self, request: LaunchRequest) -> LaunchResult: ...

    async def get_job_status(self, job_id: str) -> RunStatus: ...

    async def terminate_job(self, job_id: str) -> None: ...

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        """Move a running job's wall-clock limit (an approved extension): it may run for
        `remaining` more from now. Relative, so the backend's clock and ours never mix."""
        ...

    async def run_on_node(
        self, cluster: Cluster, node_id: str, command: str, *, timeout: float, job_id: str | None
    ) -> NodeOutput:
        """Run `command` (a bash command line, the node's own business) on one node of `cluster`
        and wait for it, at most `timeout` seconds; NotFound for a node id it does not have.
        As the job's user when `job_id` is given, never as one that can read the bot's secrets;
        in the node's $AZ_BATCHAI_MOUNT_ROOT, with none of the bot's environment."""
        ...

    async def usages(self, location: str | None) -> list[Usage]:
        """The quotas that bound clusters: Azure's vCPU and scale-set quotas in `location`
        (None: the backend's own region), the local backend's nodes on this machine."""
        ...

    async def ping(self) -> None:
        """Raise (a BackendError) unless the backend answers now; cheap, for /readyz."""
        ...

    async def aclose(self) -> None: ...


class StorageBackend(Protocol):
    """What clusters and jobs mount besides the shares: the auto-storage share and container,
    NFS file servers. Idempotent by name, like the compute backend."""

    name: str

    async def ensure_auto_storage(self, share: str, container: str) -> None:
        """Create the bot's share and blob container when missing."""
        ...

    async def create_file_server(self, server: FileServer) -> str:
        """Build the server (VM, RAID-0 data disks, NFS export); returns its address."""
        ...

    async def delete_file_server(self, server: FileServer) -> None: ...


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
    # A busy channel: the other logs' snippets of the same moment, with their full logs' links,
    # in the same post (stdout and stderr in one message, not one each).
    also: tuple[tuple[LogSnippet, str | None], ...] = ()
    sweep: SweepView | None = None  # the job's sweep, all its jobs as they are now
    # The sweep's end (its last receipt): every job's curves and the best job's download links.
    sweep_metrics: tuple[tuple[str, tuple[MetricPoint, ...]], ...] = ()
    best_links: tuple[DownloadLink, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(event_key(i) for i in self.event_ids)


def event_key(event_id: int) -> str:
    return f"event-{event_id}"


class Notifier(Protocol):
    """Turns deliveries into messages (Slack, console). Returns the job's conversation when it
    created or moved it (e.g. the status card's ts), so the store can keep it."""

    async def deliver(self, delivery: Delivery) -> Conversation | None: ...


# -- the store: one unit of work, one repository per aggregate ------------------------------
# A repository's `list` comes last in its class: below it, `list[...]` would name the method.


class JobRepository(Protocol):
    async def add(self, job: Job) -> Job:
        """A new job at the end of the queue (FIFO); Conflict when its name is taken."""
        ...

    async def move(self, job: Job, transition: JobTransition) -> bool:
        """Write `job`'s lifecycle columns for a `transition` built by the lifecycle, only
        while the stored state still is `transition.old` (False: it moved meanwhile)."""
        ...

    async def set_layout(self, job_id: str, layout: JobLayout) -> None: ...

    async def set_nodes(self, job_id: str, nodes: tuple[int, ...]) -> None:
        """Where a live job's nodes are in its cluster's node list now (they moved)."""
        ...

    async def set_conversation(self, job_id: str, conversation: Conversation) -> None: ...

    async def set_wall_clock_warned(self, job_id: str, at: datetime | None) -> None: ...

    async def extend_wall_clock(
        self, job_id: str, extra: timedelta, *, expect: timedelta | None = None
    ) -> bool:
        """A running job's limit grows by `extra`; with `expect`, only while it is that."""
        ...

    async def set_gpu_use(
        self, job_id: str, use: GpuUse | None, idle_since: datetime | None
    ) -> None: ...

    async def give_gpu_warning(self, job_id: str, warning_id: str, at: datetime) -> bool:
        """The one idle-GPU warning: False when the job had one already."""
        ...

    async def close_gpu_warning(self, job_id: str, warning_id: str, outcome: str) -> bool:
        """Only while that warning is still open (False: answered already, or another)."""
        ...

    async def delete(self, job_id: str) -> None:
        """Frees the name; the job's events and metrics stay."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def find(self, name: str) -> Job | None:
        """The job (not deleted) of that name."""
        ...

    async def count_by_state(self) -> dict[JobState, int]: ...

    async def oldest_queued(self) -> datetime | None: ...

    async def list(
        self,
        *,
        cluster: str | None = None,
        states: Iterable[JobState] | None = None,
        include_deleted: bool = False,
        sweep_id: str | None = None,
    ) -> list[Job]:
        """In submission (FIFO) order."""
        ...


class LogRepository(Protocol):
    async def get_offsets(self, job_id: str) -> dict[str, tuple[int, int]]:
        """file -> (committed byte offset, lines delivered so far)."""
        ...

    async def reset_offsets(self, job_id: str) -> None:
        """Forget how far the job's logs were read (a new attempt writes new files)."""
        ...

    async def advance(
        self,
        job_id: str,
        offsets: dict[str, tuple[int, int]],
        points: Sequence[MetricPoint],
        progress: Progress | None,
        last_metrics: dict[str, float] | None,
    ) -> None: ...

    async def list_metrics(self, job_id: str) -> list[MetricPoint]: ...


class ClusterRepository(Protocol):
    async def add(self, cluster: Cluster) -> None:
        """Conflict when the name is taken."""
        ...

    async def update(
        self, cluster: Cluster, *, transition: ClusterTransition | None = None
    ) -> None:
        """Its settings; its state only by a lifecycle `transition` from the stored state
        (Conflict when the stored state is no longer `transition.old`)."""
        ...

    async def set_idle(self, name: str, idle: IdleState) -> None: ...

    async def set_unusable(self, name: str, nodes: Sequence[NodeProblem]) -> None:
        """The nodes known to have failed their health check (update never writes them)."""
        ...

    async def delete(self, name: str) -> None: ...

    async def get(self, name: str) -> Cluster | None: ...

    async def list(self) -> list[Cluster]: ...


class ApprovalRepository(Protocol):
    async def add(self, approval: Approval) -> None: ...

    async def get(self, approval_id: str) -> Approval | None: ...

    async def add_vote(self, approval_id: str, vote: Vote) -> bool:
        """False when this approver had voted already."""
        ...

    async def decide(self, approval_id: str, decision: ApprovalTransition, at: datetime) -> bool:
        """Only while the approval still is `decision.old` (False: decided already)."""
        ...

    async def list(
        self,
        *,
        state: ApprovalState | str | None = None,
        job_id: str | None = None,
        kind: str | None = None,
    ) -> list[Approval]:
        """Oldest first."""
        ...


class LedgerRepository(Protocol):
    async def add(self, entry: LedgerEntry) -> None: ...

    async def set_budget(self, channel: str, monthly: Decimal, by: str, at: datetime) -> None: ...

    async def get_budget(self, channel: str) -> Decimal | None: ...

    async def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        kind: str | None = None,
        job_id: str | None = None,
    ) -> list[LedgerEntry]:
        """In the order they were written."""
        ...


class OutboxRepository(Protocol):
    """Stored events (written by the unit at commit) and the record of sent messages."""

    async def add(self, new_events: Sequence[Event], at: datetime) -> None: ...

    async def pending(
        self, limit: int = 100, *, job_id: str | None = None, of_job: bool = False
    ) -> list[tuple[int, Event]]: ...

    async def pending_job_ids(self) -> list[str | None]: ...

    async def mark_delivered(self, event_ids: Sequence[int], at: datetime) -> None: ...

    async def count(self, *, kind: str | None = None, job_id: str | None = None) -> int: ...

    async def backlog(self) -> tuple[int, datetime | None]: ...

    async def recorded_keys(self, keys: Sequence[str]) -> set[str]: ...

    async def get_delivery(self, keys: Sequence[str]) -> tuple[str, str] | None: ...

    async def record_delivery(
        self, keys: Sequence[str], channel: str, message_id: str, at: datetime
    ) -> None: ...

    async def add_intent(
        self, keys: Sequence[str], channel: str, marker: str, at: datetime
    ) -> None: ...

    async def list_intents(self) -> list[tuple[str, str, str]]: ...

    async def drop_intents(self, keys: Sequence[str]) -> None: ...


class ScheduleRepository(Protocol):
    async def add(self, schedule: Schedule) -> None: ...

    async def get(self, schedule_id: str) -> Schedule | None: ...

    async def delete(self, schedule_id: str) -> bool: ...

    async def claim(
        self,
        run: ScheduleRun,
        *,
        job_id: str | None = None,
        job_name: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Move the schedule past `run.due` with the run's outcome, only while it still waits
        for exactly that run (False: claimed already, or the schedule is gone)."""
        ...

    async def list(
        self, *, channel: str | None = None, active: bool | None = None
    ) -> list[Schedule]: ...


class AuditRepository(Protocol):
    async def add(self, entry: AuditEntry) -> None: ...

    async def list(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        ...


class PriceRepository(Protocol):
    async def replace(
        self, rows: Sequence[tuple[str, str, bool, Decimal]], source: str, at: datetime
    ) -> None: ...

    async def list(self) -> list[tuple[str, str, bool, Decimal, datetime, str]]: ...


class WorkspaceRepository(Protocol):
    """Workspaces by (resource group, name); the resource group compared without case."""

    async def add(self, workspace: Workspace) -> bool:
        """False (nothing written) when the name is taken in its resource group."""
        ...

    async def get(self, resource_group: str, name: str) -> Workspace | None: ...

    async def list(self, resource_group: str | None = None) -> list[Workspace]:
        """By resource group, then name; None: every resource group."""
        ...

    async def delete(self, resource_group: str, name: str) -> None:
        """The workspace and its experiments; deleting what is gone does nothing."""
        ...


class ExperimentRepository(Protocol):
    async def add(self, experiment: Experiment) -> bool:
        """False (nothing written) when the name is taken in its workspace."""
        ...

    async def get(self, resource_group: str, workspace: str, name: str) -> Experiment | None: ...

    async def list(self, resource_group: str, workspace: str) -> list[Experiment]: ...

    async def delete(self, resource_group: str, workspace: str, name: str) -> None: ...


class SweepRepository(Protocol):
    async def add(self, sweep: JobSweep) -> None:
        """Conflict when the name was used before."""
        ...

    async def get(self, sweep_id: str) -> JobSweep | None: ...

    async def find(self, name: str) -> JobSweep | None: ...


class UnitOfWork(Protocol):
    """One transaction over the repositories (cosmicpython's unit of work): `emit` collects
    events, `commit` writes them with the changes; leaving without commit rolls back."""

    @property
    def jobs(self) -> JobRepository: ...

    @property
    def logs(self) -> LogRepository: ...

    @property
    def clusters(self) -> ClusterRepository: ...

    @property
    def approvals(self) -> ApprovalRepository: ...

    @property
    def ledger(self) -> LedgerRepository: ...

    @property
    def outbox(self) -> OutboxRepository: ...

    @property
    def schedules(self) -> ScheduleRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def prices(self) -> PriceRepository: ...

    @property
    def workspaces(self) -> WorkspaceRepository: ...

    @property
    def experiments(self) -> ExperimentRepository: ...

    @property
    def sweeps(self) -> SweepRepository: ...

    def emit(self, *events: Event, at: datetime | None = None) -> None:
        """Store `events` at commit, stamped `at` (default: the time of the commit)."""
        ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Store(Protocol):
    """Where services keep their state: `async with store.unit() as uow: ...`."""

    def unit(self) -> UnitOfWork: ...
