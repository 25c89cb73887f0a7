"""Domain values: clusters, jobs, file references, progress. Frozen dataclasses, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.clusters.lifecycle import ClusterState
from services.jobs.lifecycle import JobState
from services.spend.approvals.lifecycle import ApprovalState

if TYPE_CHECKING:
    from services.core.events import Event

NAME_RE = re.compile(r"^[-\w]{1,64}$", re.ASCII)
STDOUTERR = "stdouterr"
# What Batch AI wrote into stdouterr: stdout/stderr (per rank, task or job-preparation node:
# `stdout-wk-0.txt`, `stderr-job_prep-<node>.txt`) and the per-node `execution-<node>.log`.
_LOG_NAME_RE = re.compile(
    r"^(?:(?:stdout|stderr)(?:-[-\w.]+)?\.txt|execution(?:-[-\w.]+)?\.log)$",
    re.ASCII,
)


def is_log_name(name: str) -> bool:
    """Whether `name` is one of the log files Batch AI kept in a job's stdouterr directory."""
    return _LOG_NAME_RE.match(name) is not None


@dataclass(frozen=True)
class Conversation:
    """Where a job's story is told. Opaque to services: the transport fills and reads it."""

    channel: str
    thread: str | None = None  # Slack: ts of the status card, which is also the thread root
    user: str | None = None


@dataclass(frozen=True)
class ShareMount:
    """A file system mounted on every node at $AZ_BATCHAI_MOUNT_ROOT/<mount_path>: an Azure
    File share (afs), a blob container (bfs) or one of the bot's NFS file servers (nfs).

    `share` names the share, the container or the file server; `account` is the storage
    account of a share or container, None for the bot's own. `account_key` is given only for
    another account's storage (sealed at rest, never shown)."""

    share: str
    mount_path: str
    kind: str = "afs"  # afs | bfs | nfs
    account: str | None = None
    account_key: str | None = field(default=None, repr=False)


AUTO_SHARE = "batchaishare"  # --use-auto-storage: az batchai's share and container names
AUTO_CONTAINER = "batchaicontainer"
AUTO_SHARE_PATH = "autoafs"  # and where they are mounted
AUTO_CONTAINER_PATH = "autobfs"


@dataclass(frozen=True)
class FileServer:
    """An NFS file server (`az batchai file-server create`): one VM exporting its data disks,
    striped as RAID 0, at `export`; clusters and jobs mount it with --nfs NAME."""

    name: str
    resource_group: str
    workspace: str
    vm_size: str
    disk_count: int
    disk_size_gb: int
    storage_sku: str  # Standard_LRS | Premium_LRS
    admin_user: str
    state: str  # creating | succeeded | failed | deleting
    created_by: str | None = None
    created_at: datetime | None = None
    address: str | None = None  # the server's private IP (azure) or its directory (local)
    export: str = "/mnt/data"  # where the RAID-0 array is mounted and exported (Batch AI's)
    error: str | None = None


@dataclass(frozen=True)
class NodeCounts:
    idle: int = 0
    running: int = 0
    preparing: int = 0
    unusable: int = 0
    leaving: int = 0

    @property
    def total(self) -> int:
        return self.idle + self.running + self.preparing + self.unusable + self.leaving


@dataclass(frozen=True)
class Node:
    """One node of a cluster as `cluster node list` shows it."""

    id: str
    index: int
    ip: str
    port: int
    state: str  # idle | running | preparing | unusable | leaving
    detail: str = ""  # why it is unusable (its health check's reason) or what it waits for


@dataclass(frozen=True)
class NodeProblem:
    """A node that failed its health check: no job is ever placed on it."""

    cluster: str
    node: str  # its name (the VM's computer name; the local slot's id)
    reason: str


@dataclass(frozen=True)
class NodeOutput:
    """What one command run on a node (`node exec`) answered: its exit code (None when it was
    stopped at its time limit), its output (stdout and stderr as they interleaved; the end of it
    when `truncated`), and why the output may be short (`limit`, e.g. Azure's 4 KB)."""

    node_id: str
    exit_code: int | None
    output: str
    truncated: bool = False
    timed_out: bool = False
    limit: str = ""


@dataclass(frozen=True)
class IdleNotice:
    """An idle warning as announced: its buttons carry `id`; unanswered, it scales at `deadline`."""

    id: str
    at: datetime
    deadline: datetime
    nodes: int  # the size it was warned at
    min_nodes: int  # the size it scales to
    saves_per_hour: Decimal | None = None  # USD: (nodes - min) x the node-hour price


@dataclass(frozen=True)
class IdleState:
    """A cluster's idle scale-down bookkeeping: clusters/idle.py decides, the store keeps it."""

    since: datetime | None = None  # nodes above min and no live job since then
    warning: IdleNotice | None = None  # the warning waiting for an answer
    keep_until: datetime | None = None  # Keep was pressed: no warning before then


@dataclass(frozen=True)
class Cluster:
    name: str
    resource_group: str
    workspace: str
    vm_size: str
    image: str
    vm_priority: str  # dedicated | lowpriority
    min_nodes: int
    max_nodes: int
    target_nodes: int
    autoscale: bool
    state: ClusterState
    mounts: tuple[ShareMount, ...] = ()
    admin_user: str | None = None
    setup_task: str | None = None  # nodeSetup.setupTask.commandLine (bash, as root, per node)
    # stdOutErrPathPrefix as given ($AZ_BATCHAI_MOUNT_ROOT/<afs mount>[/...]) and the suffix
    # the bot appends (<sub>/<rg>/workspaces/<ws>/clusters/<name>/<uuid>): where its logs go.
    setup_task_output: str | None = None
    setup_task_suffix: str | None = None
    setup_task_env: tuple[tuple[str, str], ...] = ()
    setup_task_secrets: tuple[tuple[str, str], ...] = field(
        default=(), repr=False
    )  # sealed at rest
    created_by: str | None = None
    created_at: datetime | None = None
    conversation: Conversation | None = None
    error: str | None = None
    idle_timeout_s: int | None = None  # None: the bot's default; 0: never scale down when idle
    idle: IdleState = field(default_factory=IdleState)
    # Nodes that failed their health check, each announced once (services/clusters/health.py).
    unusable: tuple[NodeProblem, ...] = ()


@dataclass(frozen=True)
class Usage:
    """One row of `list-usages`: how much of something is in use, of how much (None: no limit
    applies here)."""

    name: str
    localized_name: str
    current: int
    limit: int | None


@dataclass(frozen=True)
class FileLocation:
    """A file or directory on a share: `path` is relative to the share's root, POSIX style.
    With `container`, `share` names a blob container of the bot's storage account and `path` a
    blob name (or a prefix of names: Blob storage has no directories)."""

    share: str
    path: str
    container: bool = False

    def child(self, name: str) -> FileLocation:
        path = f"{self.path.rstrip('/')}/{name}" if self.path else name
        return FileLocation(self.share, path, self.container)


def location_json(loc: FileLocation) -> dict[str, Any]:
    """A location as stored (layouts, launch records); `container` only when set."""
    row: dict[str, Any] = {"share": loc.share, "path": loc.path}
    if loc.container:
        row["container"] = True
    return row


def location_from_json(raw: Mapping[str, Any]) -> FileLocation:
    return FileLocation(str(raw["share"]), str(raw["path"]), raw.get("container") is True)


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing; `name` is relative to the listed directory."""

    name: str
    is_directory: bool
    size: int
    modified: datetime | None = None


@dataclass(frozen=True)
class DownloadLink:
    name: str
    size: int
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class Progress:
    current: int
    total: int

    @property
    def fraction(self) -> float:
        return min(1.0, self.current / self.total) if self.total else 0.0


@dataclass(frozen=True)
class MetricPoint:
    step: int
    name: str
    value: float


@dataclass(frozen=True)
class JobLayout:
    """Where a launched job writes: its stdouterr directory and its output directories."""

    stdouterr: FileLocation | None
    outputs: dict[str, FileLocation] = field(default_factory=dict)
    log_files: tuple[str, ...] = ()  # names in stdouterr, in the order they should be tailed
    primary_log: str = "stderr.txt"
    # One log journal per node (noderun.runner.JOURNAL): when given, the tailer reads these,
    # and a log itself only to fill a gap or at the end.
    journals: tuple[FileLocation, ...] = ()


@dataclass(frozen=True)
class Attempt:
    """One earlier run of a job that ended because its nodes were lost (a Spot eviction, a
    deleted or unusable node, a killed node runner): what the receipt lists and the ledger
    charged."""

    number: int  # 1-based
    started_at: datetime | None  # None: lost before it ran
    ended_at: datetime
    nodes: tuple[int, ...]
    reason: str
    usd: Decimal | None = None  # None: the VM size had no price
    logs: FileLocation | None = None  # its stdouterr directory (each attempt has its own)

    @property
    def duration(self) -> timedelta:
        return timedelta(0) if self.started_at is None else self.ended_at - self.started_at


@dataclass(frozen=True)
class GpuUse:
    """A running job's GPUs as nvidia-smi last said (services/backends/noderun/gpu.py): a node's
    utilisation is the mean of its GPUs; min and mean are across nodes; memory is per GPU."""

    util_min: float
    util_avg: float
    util_max: float  # the busiest single GPU: under the idle threshold means every one is idle
    used_mib: float  # mean per GPU
    total_mib: float
    gpus: int  # GPUs that answered, all nodes together
    run_avg: float | None  # mean utilisation over the run so far
    at: float  # epoch seconds of the newest sample


@dataclass(frozen=True)
class GpuWatch:
    """What the bot keeps of a job's GPU use: the last reading and the idle-GPU warning
    (services/jobs/gpu_idle.py decides, the store keeps it)."""

    use: GpuUse | None = None
    idle_since: datetime | None = None  # every GPU under the threshold since then
    warning_id: str | None = None  # the one warning, once given (never a second)
    warned_at: datetime | None = None
    closed: str | None = None  # kept | stopped | ended: the warning was answered or its job ended


@dataclass(frozen=True)
class Job:
    id: str  # uuid hex, also Batch AI's job uuid in the output path
    name: str
    cluster: str
    resource_group: str
    workspace: str
    experiment: str
    state: JobState
    spec_json: str = field(repr=False)  # may hold the job's secrets: never print it
    node_count: int
    toolkit: str
    max_wall_clock: timedelta
    requester: str
    created_at: datetime
    conversation: Conversation | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = None
    nodes: tuple[int, ...] = ()
    layout: JobLayout | None = None
    progress: Progress | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    container_image: str | None = None
    node_rate: Decimal | None = None  # USD per node-hour of its cluster's VM size at submit time
    estimate: Decimal | None = None  # USD: nodes × rate × max wall clock, as shown at submit
    wall_clock_warned_at: datetime | None = None
    max_retries: int = 0  # lost-node retries allowed (--max-retries, maxTaskRetryCount)
    attempts: tuple[Attempt, ...] = ()  # the earlier attempts, oldest first

    @property
    def attempt(self) -> int:
        """The number of the current (or last) attempt, 1-based."""
        return len(self.attempts) + 1

    @property
    def run_id(self) -> str:
        """The backend's key for the current attempt: the job's id, then `<id>-<attempt>`, so
        each attempt has launch records, run commands and status files of its own, while the
        job's id (Batch AI's uuid in its output paths) stays the same."""
        return self.id if not self.attempts else f"{self.id}-{self.attempt}"

    @property
    def retries_left(self) -> int:
        return max(0, self.max_retries - len(self.attempts))

    @property
    def spent_before(self) -> Decimal | None:
        """USD the earlier attempts cost (None when none of them had a price)."""
        known = [a.usd for a in self.attempts if a.usd is not None]
        return sum(known, Decimal(0)) if known else None

    gpu: GpuWatch | None = None
    sweep_id: str | None = None  # the sweep it is one point of (JobSweep.id)

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        end = self.ended_at
        return None if end is None else end - self.started_at


@dataclass(frozen=True)
class ConfigSource:
    """Where a job.json / cluster.json comes from: a manifest name, inline JSON, or a local path."""

    kind: str  # "manifest" | "inline" | "path"
    value: str


@dataclass(frozen=True)
class Actor:
    """Who asked, and where the answer and the job's story should go."""

    user: str
    conversation: Conversation | None = None
    may_read_paths: bool = False  # only the console may name files of the bot's machine
    is_admin: bool = False  # may act on other people's jobs


@dataclass(frozen=True)
class Where:
    """Where a command says a resource lives (`-g`, `-w`, `-e`); a None field matches any."""

    resource_group: str | None = None
    workspace: str | None = None
    experiment: str | None = None

    def misses(
        self, resource_group: str, workspace: str, experiment: str | None = None
    ) -> str | None:
        """Why a resource of (resource_group, workspace, experiment) is not here: the
        " in …" of its NotFound, or None when it is."""
        if (
            self.resource_group is not None
            and self.resource_group.lower() != resource_group.lower()
        ):
            return f" in resource group {self.resource_group}"
        if self.workspace is not None and self.workspace != workspace:
            return f" in workspace {self.workspace}"
        if self.experiment is not None and experiment is not None and self.experiment != experiment:
            return f" in experiment {self.experiment} of workspace {workspace}"
        return None


ANYWHERE = Where()


@dataclass(frozen=True)
class ClusterView:
    """A cluster with its node counts, as `cluster list/show` report it."""

    cluster: Cluster
    counts: NodeCounts
    queued_jobs: int
    idle_after: timedelta | None = None  # scales down after this long idle; None: never
    storage_account: str | None = None  # the bot's own: what a mount naming no account is of


@dataclass(frozen=True)
class Workspace:
    """A Batch AI workspace (2018-05-01 on): a named home for clusters and experiments."""

    name: str
    resource_group: str
    location: str | None
    created_at: datetime
    created_by: str | None = None


@dataclass(frozen=True)
class Experiment:
    """A Batch AI experiment: a named group of jobs inside a workspace."""

    name: str
    workspace: str
    resource_group: str
    created_at: datetime
    created_by: str | None = None


@dataclass(frozen=True)
class WorkspaceView:
    """A workspace with what belongs to it, as `workspace list/show` report it."""

    workspace: Workspace
    clusters: tuple[str, ...] = ()
    experiments: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExperimentView:
    """An experiment with its jobs, as `experiment list/show` report it."""

    experiment: Experiment
    jobs: int = 0
    live_jobs: tuple[str, ...] = ()  # names of those not yet finished


@dataclass(frozen=True)
class FileListing:
    """`job list-files`: entries of one directory and a download link per file."""

    job: Job
    directory_id: str
    path: str
    entries: tuple[FileEntry, ...]
    links: dict[str, DownloadLink]  # by entry name; files only


@dataclass(frozen=True)
class ClusterFileListing:
    """`cluster file list`: the setup-task logs of a cluster (one directory of them)."""

    cluster: Cluster
    path: str
    entries: tuple[FileEntry, ...]
    links: dict[str, DownloadLink]  # by entry name; files only


@dataclass(frozen=True)
class AuditEntry:
    """Who did (or was refused) what, when, and where."""

    at: datetime
    actor: str
    action: str
    outcome: str  # allowed | denied | failed
    channel: str | None = None
    target: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Vote:
    approver: str
    decision: str  # approve | deny
    at: datetime
    reason: str | None = None


@dataclass(frozen=True)
class Approval:
    """A request to spend above the requester's limit, and its decision."""

    id: str
    job_id: str
    kind: str  # "job" (start it) | "extend" (more wall-clock time) | "retry" (lost nodes)
    requester: str
    channel: str | None
    estimate: Decimal  # USD
    formula: str  # "4 × Standard_NC24ads_A100_v4 × $3.673/h × 8 h max = $117.54"
    reasons: tuple[str, ...]  # why approval is needed (over limit, over budget)
    required: int  # approvers needed (1 or 2)
    state: ApprovalState
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    extra_hours: Decimal | None = None  # kind == "extend"
    votes: tuple[Vote, ...] = ()
    month_spend: Decimal | None = None  # the channel's spend this month when it was asked
    budget: Decimal | None = None  # the channel's monthly budget then

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes if v.decision == "approve")

    @property
    def decided_by(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes)


@dataclass(frozen=True)
class LedgerEntry:
    """Money: an estimate when a job is submitted, the actual cost when it ends."""

    at: datetime
    kind: str  # estimate | actual
    job_id: str
    user: str
    channel: str | None
    cluster: str
    vm_size: str
    nodes: int
    hours: Decimal
    usd: Decimal


@dataclass(frozen=True)
class ScheduledJob:
    """The `job create` a schedule replays: resolved again (config, cluster, price) at each run."""

    name: str
    cluster: str | None
    config: ConfigSource
    resource_group: str | None = None
    workspace: str | None = None
    experiment: str | None = None
    may_read_paths: bool = False  # the console scheduled it with a job.json path
    max_retries: int | None = None  # --max-retries; None: the job.json's or the cluster's
    # The mount flags (--afs-name, --bfs-name, --nfs, --use-auto-storage …), added to the
    # job.json at each run as a submit adds them; another account's key is sealed at rest.
    mounts: tuple[ShareMount, ...] = ()


@dataclass(frozen=True)
class Schedule:
    """A user's `job create --at/--cron`: when to submit what, as whom, and how it went."""

    id: str
    kind: str  # at | cron
    expression: str  # as the user typed it (`at`: normalised to YYYY-MM-DD HH:MM)
    timezone: str  # IANA zone the expression is read in
    job: ScheduledJob
    requester: str
    channel: str | None
    created_at: datetime
    next_run_at: datetime | None  # UTC; None once it has ended
    last_run_at: datetime | None = None
    last_job_id: str | None = None
    last_job_name: str | None = None
    last_error: str | None = None
    runs: int = 0
    active: bool = True


@dataclass(frozen=True)
class ScheduleRun:
    """One run of a schedule, claimed in the transaction that stores its job: only while the
    schedule still waits for `due` does the claim (and so the job) go through."""

    schedule_id: str
    due: datetime  # the stored next_run_at this run consumes
    following: datetime | None  # the next run after it; None ends the schedule
    at: datetime  # when it ran


@dataclass(frozen=True)
class LogAdvance:
    """One job's log news, stored all or nothing: the new (offset, lines) per file, the
    snippets they produced (events) and the metrics and progress parsed from them."""

    job_id: str
    offsets: dict[str, tuple[int, int]]
    events: tuple[Event, ...]
    points: tuple[MetricPoint, ...]
    progress: Progress | None
    last_metrics: dict[str, float] | None


@dataclass(frozen=True)
class JobSweep:
    """A sweep: one job.json submitted once per point of a grid of values (jobs `NAME-1`…).

    `metric` is `NAME:max` / `NAME:min` when the user named it; None: the logs' usual names
    (val_acc up, loss down) rank the jobs."""

    id: str
    name: str
    requester: str
    created_at: datetime
    parameters: tuple[tuple[str, tuple[str, ...]], ...]
    metric: str | None = None
    channel: str | None = None
    cluster: str = ""

    def label(self, job_name: str) -> str:
        """`lr=0.1 batch=32`: the values of the job `NAME-i` (the grid, first name slowest)."""
        index = int(job_name.rsplit("-", 1)[-1]) - 1
        sizes = [len(values) for _, values in self.parameters]
        picked = []
        for (name, values), size in zip(reversed(self.parameters), reversed(sizes), strict=True):
            index, at = divmod(index, size)
            picked.append(f"{name}={values[at]}")
        return " ".join(reversed(picked))


@dataclass(frozen=True)
class SweepView:
    """A sweep with its jobs (in grid order), as the card, `job show` and the receipt show it."""

    sweep: JobSweep
    jobs: tuple[Job, ...]
