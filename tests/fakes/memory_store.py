"""MemoryStore: the unit-of-work port (services/core/ports.py) in plain dictionaries, for service
tests (cosmicpython's FakeRepository). A unit works on a copy of the state and puts it back at
commit, so what a unit left without committing is gone, as on the SQL store."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Self

from services.clusters.lifecycle import ClusterTransition
from services.core.clock import utcnow
from services.core.errors import Conflict
from services.core.events import Event
from services.jobs.lifecycle import JobState, JobTransition
from services.models import (
    Approval,
    AuditEntry,
    Cluster,
    Conversation,
    Experiment,
    GpuUse,
    GpuWatch,
    IdleState,
    Job,
    JobLayout,
    LedgerEntry,
    MetricPoint,
    NodeProblem,
    Progress,
    Schedule,
    ScheduleRun,
    Vote,
    Workspace,
)
from services.spend.approvals.lifecycle import ApprovalState, ApprovalTransition
from services.store.guard import check_moved

INTENT = "?"


@dataclass
class _State:
    jobs: dict[str, Job] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    offsets: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    metrics: dict[tuple[str, int, str], float] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    approvals: dict[str, Approval] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    budgets: dict[str, Decimal] = field(default_factory=dict)
    events: list[tuple[int, Event, datetime, datetime | None]] = field(default_factory=list)
    deliveries: dict[str, tuple[str, str, datetime]] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    prices: list[tuple[str, str, bool, Decimal, datetime, str]] = field(default_factory=list)
    # keyed by (resource group in lower case, name) and (group, workspace, name)
    workspaces: dict[tuple[str, str], Workspace] = field(default_factory=dict)
    experiments: dict[tuple[str, str, str], Experiment] = field(default_factory=dict)


class MemoryStore:
    def __init__(self) -> None:
        self.state = _State()
        self.commits = 0

    def unit(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self)


class MemoryUnitOfWork:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._events: list[tuple[tuple[Event, ...], datetime | None]] = []
        self._state = copy.deepcopy(store.state)
        self._bind()

    def _bind(self) -> None:
        s = self._state
        self.jobs = _Jobs(s)
        self.logs = _Logs(s)
        self.clusters = _Clusters(s)
        self.approvals = _Approvals(s)
        self.ledger = _Ledger(s)
        self.outbox = _Outbox(s)
        self.schedules = _Schedules(s)
        self.audit = _Audit(s)
        self.prices = _Prices(s)
        self.workspaces = _Workspaces(s)
        self.experiments = _Experiments(s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.rollback()

    def emit(self, *events: Event, at: datetime | None = None) -> None:
        self._events.append((events, at))

    async def commit(self) -> None:
        now = utcnow()
        for batch, at in self._events:
            await self.outbox.add(batch, at or now)
        self._events.clear()
        self._store.state = self._state
        self._store.commits += 1
        self._state = copy.deepcopy(self._state)
        self._bind()

    async def rollback(self) -> None:
        self._events.clear()
        self._state = copy.deepcopy(self._store.state)
        self._bind()


class _Jobs:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, job: Job) -> Job:
        if any(j.name == job.name and i not in self._s.deleted for i, j in self._s.jobs.items()):
            raise Conflict(f"job {job.name} already exists")
        self._s.jobs[job.id] = job
        self._s.seq[job.id] = len(self._s.seq) + 1
        return job

    async def move(self, job: Job, transition: JobTransition) -> bool:
        check_moved(job.state, transition.new, transition)
        stored = self._s.jobs.get(job.id)
        if stored is None or stored.state is not transition.old:
            return False
        self._s.jobs[job.id] = replace(
            stored,
            state=job.state,
            queued_at=job.queued_at,
            started_at=job.started_at,
            ended_at=job.ended_at,
            exit_code=job.exit_code,
            error=job.error,
            nodes=job.nodes,
            attempts=job.attempts,
        )
        if transition.requeues:
            self._set(job.id, layout=None, wall_clock_warned_at=None, gpu=None)
        return True

    def _set(self, job_id: str, **values: object) -> None:
        if job_id in self._s.jobs:
            self._s.jobs[job_id] = replace(self._s.jobs[job_id], **values)  # type: ignore[arg-type]

    async def set_layout(self, job_id: str, layout: JobLayout) -> None:
        self._set(job_id, layout=layout)

    async def set_conversation(self, job_id: str, conversation: Conversation) -> None:
        self._set(job_id, conversation=conversation)

    async def set_wall_clock_warned(self, job_id: str, at: datetime | None) -> None:
        self._set(job_id, wall_clock_warned_at=at)

    async def set_gpu_use(
        self, job_id: str, use: GpuUse | None, idle_since: datetime | None
    ) -> None:
        old = self._s.jobs[job_id].gpu or GpuWatch()
        self._set(job_id, gpu=replace(old, use=use, idle_since=idle_since))

    async def give_gpu_warning(self, job_id: str, warning_id: str, at: datetime) -> bool:
        old = self._s.jobs[job_id].gpu or GpuWatch()
        if old.warning_id is not None:
            return False
        self._set(job_id, gpu=replace(old, warning_id=warning_id, warned_at=at))
        return True

    async def close_gpu_warning(self, job_id: str, warning_id: str, outcome: str) -> bool:
        old = self._s.jobs[job_id].gpu or GpuWatch()
        if old.warning_id != warning_id or old.closed is not None:
            return False
        self._set(job_id, gpu=replace(old, closed=outcome))
        return True

    async def extend_wall_clock(
        self, job_id: str, extra: timedelta, *, expect: timedelta | None = None
    ) -> bool:
        job = self._s.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return False
        if expect is not None and job.max_wall_clock != expect:
            return False
        self._set(job_id, max_wall_clock=job.max_wall_clock + extra)
        return True

    async def delete(self, job_id: str) -> None:
        self._s.deleted.add(job_id)

    async def get(self, job_id: str) -> Job | None:
        return self._s.jobs.get(job_id)

    async def find(self, name: str) -> Job | None:
        live = (j for i, j in self._s.jobs.items() if i not in self._s.deleted)
        return next((j for j in live if j.name == name), None)

    async def count_by_state(self) -> dict[JobState, int]:
        counts: dict[JobState, int] = {}
        for job in await self.list():
            counts[job.state] = counts.get(job.state, 0) + 1
        return counts

    async def oldest_queued(self) -> datetime | None:
        queued = [j.queued_at for j in self._s.jobs.values() if j.state is JobState.QUEUED]
        return min((q for q in queued if q is not None), default=None)

    async def list(
        self,
        *,
        cluster: str | None = None,
        states: Iterable[JobState] | None = None,
        include_deleted: bool = False,
    ) -> list[Job]:
        wanted = None if states is None else set(states)
        return [
            j
            for i, j in sorted(self._s.jobs.items(), key=lambda kv: self._s.seq[kv[0]])
            if (include_deleted or i not in self._s.deleted)
            and (cluster is None or j.cluster == cluster)
            and (wanted is None or j.state in wanted)
        ]


class _Logs:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def get_offsets(self, job_id: str) -> dict[str, tuple[int, int]]:
        return dict(self._s.offsets.get(job_id, {}))

    async def reset_offsets(self, job_id: str) -> None:
        self._s.offsets.pop(job_id, None)

    async def advance(
        self,
        job_id: str,
        offsets: dict[str, tuple[int, int]],
        points: Sequence[MetricPoint],
        progress: Progress | None,
        last_metrics: dict[str, float] | None,
    ) -> None:
        self._s.offsets.setdefault(job_id, {}).update(offsets)
        for p in points:
            self._s.metrics[(job_id, p.step, p.name)] = p.value
        job = self._s.jobs.get(job_id)
        if job is not None:
            self._s.jobs[job_id] = replace(
                job,
                progress=progress or job.progress,
                last_metrics=last_metrics or job.last_metrics,
            )

    async def list_metrics(self, job_id: str) -> list[MetricPoint]:
        found = [MetricPoint(k[1], k[2], v) for k, v in self._s.metrics.items() if k[0] == job_id]
        return sorted(found, key=lambda p: p.step)


class _Clusters:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, cluster: Cluster) -> None:
        if cluster.name in self._s.clusters:
            raise Conflict(f"cluster {cluster.name} already exists")
        self._s.clusters[cluster.name] = cluster

    async def update(
        self, cluster: Cluster, *, transition: ClusterTransition | None = None
    ) -> None:
        stored = self._s.clusters.get(cluster.name)
        if stored is None:
            return
        if transition is None:
            self._s.clusters[cluster.name] = replace(
                cluster, state=stored.state, idle=stored.idle, unusable=stored.unusable
            )
            return
        check_moved(cluster.state, transition.new, transition)
        if stored.state is not transition.old:
            raise Conflict(f"cluster {cluster.name} is no longer {transition.old.value}")
        self._s.clusters[cluster.name] = replace(
            cluster, idle=stored.idle, unusable=stored.unusable
        )

    async def set_idle(self, name: str, idle: IdleState) -> None:
        if name in self._s.clusters:
            self._s.clusters[name] = replace(self._s.clusters[name], idle=idle)

    async def set_unusable(self, name: str, nodes: Sequence[NodeProblem]) -> None:
        if name in self._s.clusters:
            self._s.clusters[name] = replace(self._s.clusters[name], unusable=tuple(nodes))

    async def delete(self, name: str) -> None:
        self._s.clusters.pop(name, None)

    async def get(self, name: str) -> Cluster | None:
        return self._s.clusters.get(name)

    async def list(self) -> list[Cluster]:
        return [self._s.clusters[n] for n in sorted(self._s.clusters)]


class _Approvals:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, approval: Approval) -> None:
        self._s.approvals[approval.id] = approval

    async def get(self, approval_id: str) -> Approval | None:
        return self._s.approvals.get(approval_id)

    async def add_vote(self, approval_id: str, vote: Vote) -> bool:
        approval = self._s.approvals.get(approval_id)
        if approval is None or vote.approver in approval.decided_by:
            return False
        self._s.approvals[approval_id] = replace(approval, votes=(*approval.votes, vote))
        return True

    async def decide(self, approval_id: str, decision: ApprovalTransition, at: datetime) -> bool:
        if not isinstance(decision, ApprovalTransition):
            raise TypeError("deciding an approval takes an ApprovalTransition from the lifecycle")
        approval = self._s.approvals.get(approval_id)
        if approval is None or approval.state != decision.old:
            return False
        self._s.approvals[approval_id] = replace(approval, state=decision.new, decided_at=at)
        return True

    async def list(
        self,
        *,
        state: ApprovalState | str | None = None,
        job_id: str | None = None,
        kind: str | None = None,
    ) -> list[Approval]:
        return sorted(
            (
                a
                for a in self._s.approvals.values()
                if (state is None or a.state == state)
                and (job_id is None or a.job_id == job_id)
                and (kind is None or a.kind == kind)
            ),
            key=lambda a: a.created_at,
        )


class _Ledger:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, entry: LedgerEntry) -> None:
        self._s.ledger.append(entry)

    async def set_budget(self, channel: str, monthly: Decimal, by: str, at: datetime) -> None:
        self._s.budgets[channel] = monthly

    async def get_budget(self, channel: str) -> Decimal | None:
        return self._s.budgets.get(channel)

    async def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        kind: str | None = None,
        job_id: str | None = None,
    ) -> list[LedgerEntry]:
        return [
            e
            for e in self._s.ledger
            if (since is None or e.at >= since)
            and (until is None or e.at < until)
            and (kind is None or e.kind == kind)
            and (job_id is None or e.job_id == job_id)
        ]


class _Outbox:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, new_events: Sequence[Event], at: datetime) -> None:
        for e in new_events:
            self._s.events.append((len(self._s.events) + 1, e, at, None))

    def _undelivered(self) -> list[tuple[int, Event, datetime, datetime | None]]:
        return [row for row in self._s.events if row[3] is None]

    async def pending(
        self, limit: int = 100, *, job_id: str | None = None, of_job: bool = False
    ) -> list[tuple[int, Event]]:
        rows = [(i, e) for i, e, _, _ in self._undelivered() if not of_job or e.job_id == job_id]
        return rows[:limit]

    async def pending_job_ids(self) -> list[str | None]:
        return list(dict.fromkeys(e.job_id for _, e, _, _ in self._undelivered()))

    async def mark_delivered(self, event_ids: Sequence[int], at: datetime) -> None:
        ids = set(event_ids)
        self._s.events = [(i, e, c, at if i in ids else d) for i, e, c, d in self._s.events]

    async def count(self, *, kind: str | None = None, job_id: str | None = None) -> int:
        return sum(
            1
            for _, e, _, _ in self._s.events
            if (kind is None or e.kind == kind) and (job_id is None or e.job_id == job_id)
        )

    async def backlog(self) -> tuple[int, datetime | None]:
        rows = self._undelivered()
        return len(rows), min((c for _, _, c, _ in rows), default=None)

    async def recorded_keys(self, keys: Sequence[str]) -> set[str]:
        d = self._s.deliveries
        return {k for k in keys if k in d and not d[k][1].startswith(INTENT)}

    async def get_delivery(self, keys: Sequence[str]) -> tuple[str, str] | None:
        for k in keys:
            found = self._s.deliveries.get(k)
            if found is not None and not found[1].startswith(INTENT):
                return found[0], found[1]
        return None

    async def record_delivery(
        self, keys: Sequence[str], channel: str, message_id: str, at: datetime
    ) -> None:
        self._put(keys, channel, message_id, at)

    async def add_intent(
        self, keys: Sequence[str], channel: str, marker: str, at: datetime
    ) -> None:
        self._put(keys, channel, INTENT + marker, at)

    async def list_intents(self) -> list[tuple[str, str, str]]:
        rows = sorted(self._s.deliveries.items(), key=lambda kv: kv[1][2])
        return [(k, c, m.removeprefix(INTENT)) for k, (c, m, _) in rows if m.startswith(INTENT)]

    async def drop_intents(self, keys: Sequence[str]) -> None:
        for k in keys:
            if self._s.deliveries.get(k, ("", "", None))[1].startswith(INTENT):
                del self._s.deliveries[k]

    def _put(self, keys: Sequence[str], channel: str, message_id: str, at: datetime) -> None:
        for k in keys:
            found = self._s.deliveries.get(k)
            if found is None or found[1].startswith(INTENT):
                self._s.deliveries[k] = (channel, message_id, at)


class _Schedules:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, schedule: Schedule) -> None:
        self._s.schedules[schedule.id] = schedule

    async def get(self, schedule_id: str) -> Schedule | None:
        return self._s.schedules.get(schedule_id)

    async def delete(self, schedule_id: str) -> bool:
        return self._s.schedules.pop(schedule_id, None) is not None

    async def claim(
        self,
        run: ScheduleRun,
        *,
        job_id: str | None = None,
        job_name: str | None = None,
        error: str | None = None,
    ) -> bool:
        s = self._s.schedules.get(run.schedule_id)
        if s is None or not s.active or s.next_run_at != run.due:
            return False
        self._s.schedules[s.id] = replace(
            s,
            next_run_at=run.following,
            last_run_at=run.at,
            runs=s.runs + 1,
            active=run.following is not None,
            last_job_id=job_id,
            last_job_name=job_name,
            last_error=error,
        )
        return True

    async def list(
        self, *, channel: str | None = None, active: bool | None = None
    ) -> list[Schedule]:
        return sorted(
            (
                s
                for s in self._s.schedules.values()
                if (channel is None or s.channel == channel)
                and (active is None or s.active == active)
            ),
            key=lambda s: (s.created_at, s.id),
        )


class _Audit:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, entry: AuditEntry) -> None:
        self._s.audit.append(entry)

    async def list(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        found = [e for e in reversed(self._s.audit) if target is None or e.target == target]
        return found[:limit]


class _Prices:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def replace(
        self, rows: Sequence[tuple[str, str, bool, Decimal]], source: str, at: datetime
    ) -> None:
        self._s.prices = [(sku, region, spot, rate, at, source) for sku, region, spot, rate in rows]

    async def list(self) -> list[tuple[str, str, bool, Decimal, datetime, str]]:
        return list(self._s.prices)


class _Workspaces:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, workspace: Workspace) -> bool:
        key = (workspace.resource_group.lower(), workspace.name)
        if key in self._s.workspaces:
            return False
        self._s.workspaces[key] = workspace
        return True

    async def get(self, resource_group: str, name: str) -> Workspace | None:
        return self._s.workspaces.get((resource_group.lower(), name))

    async def list(self, resource_group: str | None = None) -> list[Workspace]:
        found = [
            w
            for (group, _), w in self._s.workspaces.items()
            if resource_group is None or group == resource_group.lower()
        ]
        return sorted(found, key=lambda w: (w.resource_group, w.name))

    async def delete(self, resource_group: str, name: str) -> None:
        group = resource_group.lower()
        self._s.workspaces.pop((group, name), None)
        for key in [k for k in self._s.experiments if k[:2] == (group, name)]:
            del self._s.experiments[key]


class _Experiments:
    def __init__(self, s: _State) -> None:
        self._s = s

    async def add(self, experiment: Experiment) -> bool:
        e = experiment
        key = (e.resource_group.lower(), e.workspace, e.name)
        if key in self._s.experiments:
            return False
        self._s.experiments[key] = e
        return True

    async def get(self, resource_group: str, workspace: str, name: str) -> Experiment | None:
        return self._s.experiments.get((resource_group.lower(), workspace, name))

    async def list(self, resource_group: str, workspace: str) -> list[Experiment]:
        where = (resource_group.lower(), workspace)
        return sorted(
            (e for k, e in self._s.experiments.items() if k[:2] == where), key=lambda e: e.name
        )

    async def delete(self, resource_group: str, workspace: str, name: str) -> None:
        self._s.experiments.pop((resource_group.lower(), workspace, name), None)
