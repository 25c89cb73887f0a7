"""Domain events: what happened, stored with the state change and delivered once by the relay."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from services.models import Cluster


@dataclass(frozen=True)
class Event:
    """Base: `kind` names the subclass in the store; `job_id`/`cluster` say whose story it is."""

    kind: ClassVar[str] = "event"
    job_id: str | None = None
    cluster: str | None = None

    def payload(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JobSubmitted(Event):
    kind: ClassVar[str] = "job_submitted"
    warnings: tuple[str, ...] = ()
    estimate: str | None = None  # "4 × Standard_NC24ads_A100_v4 × $3.673/h × 8 h max = $117.54"


@dataclass(frozen=True)
class JobStateChanged(Event):
    kind: ClassVar[str] = "job_state_changed"
    old: str = ""
    new: str = ""
    detail: str | None = None
    passed: tuple[str, ...] = ()  # states passed through on the way (merged deliveries)


@dataclass(frozen=True)
class JobNote(Event):
    """A line for the job's thread that is not a state change (e.g. no container engine)."""

    kind: ClassVar[str] = "job_note"
    text: str = ""
    by: str | None = None  # the user whose click the note tells of, named before the text


@dataclass(frozen=True)
class LogSnippet(Event):
    kind: ClassVar[str] = "log_snippet"
    file: str = ""
    first_line: int = 1  # 1-based number of lines[0] in the file
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputFile:
    directory_id: str
    name: str  # relative to the output directory
    share: str
    path: str  # relative to the share
    size: int
    container: bool = False  # share names a blob container (FileLocation.container)


@dataclass(frozen=True)
class JobFinished(Event):
    """The completion receipt: exactly one per job."""

    kind: ClassVar[str] = "job_finished"
    state: str = ""
    exit_code: int | None = None
    detail: str | None = None
    outputs: tuple[OutputFile, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class JobRequeued(Event):
    """A job's nodes were lost and it goes round again: attempt `attempt` of `of`, and what
    the lost attempt and all attempts so far cost (USD as text; None: no price)."""

    kind: ClassVar[str] = "job_requeued"
    attempt: int = 2
    of: int = 2
    reason: str = ""
    attempt_usd: str | None = None
    spent_usd: str | None = None
    waits_for_approval: bool = False  # this attempt passes the approved amount: asked again


@dataclass(frozen=True)
class ClusterChanged(Event):
    kind: ClassVar[str] = "cluster_changed"
    text: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        JobSubmitted,
        JobStateChanged,
        JobNote,
        LogSnippet,
        JobFinished,
        JobRequeued,
        ClusterChanged,
    )
}


def event_from_payload(kind: str, payload: dict[str, Any]) -> Event:
    """Rebuild a stored event; tuples come back from JSON as lists."""
    cls = EVENT_TYPES[kind]
    data = dict(payload)
    if cls is LogSnippet:
        data["lines"] = tuple(data.get("lines", ()))
    if cls is JobSubmitted:
        data["warnings"] = tuple(data.get("warnings", ()))
    if cls is JobStateChanged:
        data["passed"] = tuple(data.get("passed", ()))
    if cls is JobFinished:
        data["outputs"] = tuple(OutputFile(**o) for o in data.get("outputs", ()))
    return cls(**data)


@dataclass(frozen=True)
class ApprovalRequested(Event):
    kind: ClassVar[str] = "approval_requested"
    approval_id: str = ""


@dataclass(frozen=True)
class ApprovalDecided(Event):
    """A vote or the final decision (`state` pending means one of two approvals came in)."""

    kind: ClassVar[str] = "approval_decided"
    approval_id: str = ""
    state: str = ""
    by: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class WallClockWarning(Event):
    kind: ClassVar[str] = "wall_clock_warning"
    deadline: str = ""  # ISO time the job will be stopped at


EVENT_TYPES.update(
    {cls.kind: cls for cls in (ApprovalRequested, ApprovalDecided, WallClockWarning)}
)


@dataclass(frozen=True)
class ScheduleFired(Event):
    """A schedule submitted its job: stored with the job, told before the job's card."""

    kind: ClassVar[str] = "schedule_fired"
    schedule_id: str = ""
    job_name: str = ""


@dataclass(frozen=True)
class ScheduleFailed(Event):
    """A run could not submit its job (cluster gone, config broken, ...); told once."""

    kind: ClassVar[str] = "schedule_failed"
    schedule_id: str = ""
    channel: str | None = None
    error: str = ""
    next_run: str | None = None  # ISO (UTC) of the next run; None: the schedule has ended
    timezone: str = "UTC"


@dataclass(frozen=True)
class ScheduleMissed(Event):
    """A run fell due while the bot was down and is too late to start now; told once."""

    kind: ClassVar[str] = "schedule_missed"
    schedule_id: str = ""
    channel: str | None = None
    missed: str = ""  # ISO (UTC) of the run that was missed
    next_run: str | None = None
    timezone: str = "UTC"


EVENT_TYPES.update({cls.kind: cls for cls in (ScheduleFired, ScheduleFailed, ScheduleMissed)})


@dataclass(frozen=True)
class IdleWarning(Event):
    """A cluster without work is about to be scaled to its minimum (services/clusters/idle.py)."""

    kind: ClassVar[str] = "idle_warning"
    warning_id: str = ""
    channel: str | None = None  # the cluster's conversation; None: the bot's default channel
    since: str = ""  # ISO times
    deadline: str = ""
    nodes: int = 0
    min_nodes: int = 0
    saves_per_hour: str | None = None  # USD, a decimal as text


@dataclass(frozen=True)
class IdleWarningClosed(IdleWarning):
    """The warning's answer: kept (until), scaled (by someone, or nobody), or cancelled (why)."""

    kind: ClassVar[str] = "idle_warning_closed"
    outcome: str = ""  # kept | scaled | cancelled
    by: str | None = None
    at: str = ""
    until: str | None = None
    reason: str | None = None


def idle_warning(cluster: Cluster, **closed: Any) -> IdleWarning:
    """The event of a cluster's pending warning; with `outcome=...` and friends, its closing."""
    w, since = cluster.idle.warning, cluster.idle.since
    assert w is not None, "no pending idle warning"
    fields: dict[str, Any] = dict(
        cluster=cluster.name,
        warning_id=w.id,
        channel=cluster.conversation.channel if cluster.conversation else None,
        since=(since or w.at).isoformat(),
        deadline=w.deadline.isoformat(),
        nodes=w.nodes,
        min_nodes=w.min_nodes,
        saves_per_hour=None if w.saves_per_hour is None else str(w.saves_per_hour),
    )
    return IdleWarningClosed(**fields, **closed) if closed else IdleWarning(**fields)


EVENT_TYPES.update({cls.kind: cls for cls in (IdleWarning, IdleWarningClosed)})


@dataclass(frozen=True)
class NodeUnusable(Event):
    """A node failed its health check: told once in the cluster's channel (clusters/health.py)."""

    kind: ClassVar[str] = "node_unusable"
    channel: str | None = None  # the cluster's conversation; None: the bot's default channel
    node: str = ""
    reason: str = ""
    vm_size: str = ""


EVENT_TYPES.update({NodeUnusable.kind: NodeUnusable})


@dataclass(frozen=True)
class GpuIdleWarning(Event):
    """A running job kept its GPUs idle too long (services/jobs/gpu_idle.py): told once in its
    thread with Keep / Stop."""

    kind: ClassVar[str] = "gpu_idle_warning"
    warning_id: str = ""
    gpus: int = 0
    gpu_model: str | None = None  # "A100"
    per_hour: str | None = None  # USD the job's nodes cost per hour, a decimal as text
    minutes: int = 15
    threshold: int = 5  # % utilisation


@dataclass(frozen=True)
class GpuIdleWarningClosed(GpuIdleWarning):
    """The warning's answer: kept (silenced for this job) or stopped (terminated); or ended:
    the job ended with the warning open (its buttons go)."""

    kind: ClassVar[str] = "gpu_idle_warning_closed"
    outcome: str = ""  # kept | stopped | ended | requeued (its attempt lost its nodes)
    by: str | None = None


EVENT_TYPES.update({cls.kind: cls for cls in (GpuIdleWarning, GpuIdleWarningClosed)})
