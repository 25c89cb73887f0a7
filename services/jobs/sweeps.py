"""SweepService: a grid of jobs submitted as one sweep, approved as one, ranked and stopped as one.

`job create --sweep "lr=0.1,0.01" --sweep "batch=32,64"` (or a job.json's `sweep` section) stores
a sweep and its jobs `NAME-1` … `NAME-N` in one transaction, each job's values in its environment
and command line (services/jobspec/sweep.py). The gate judges the sweep's total; above the
requester's limit one approval request, on the first job, holds every job of the sweep."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING

from services.access.reads import JobReaders
from services.core.errors import NotAllowed, NotFound, NotOwner, UserError
from services.core.events import ApprovalRequested, Event, JobSubmitted
from services.core.ports import Clock, Store
from services.jobs.lifecycle import held_for_approval
from services.jobs.service import JobRequest, JobService
from services.jobspec import sweep as grid
from services.models import NAME_RE, Actor, Approval, Job, JobSweep, SweepView
from services.spend.gate import NeedsApproval, Refused

if TYPE_CHECKING:
    from services.spend.approvals.service import ApprovalService
    from services.spend.ledger import SpendService


@dataclass(frozen=True)
class SweepSubmitted:
    """A stored sweep: its jobs, the approval that holds them (None: queued at once), and the
    estimate of all of them (`formula`: N × the per-job estimate)."""

    view: SweepView
    approval: Approval | None
    total: Decimal | None
    formula: str | None


@dataclass(frozen=True)
class SweepStopped:
    """What Stop all / Stop losing half did: the jobs it stopped and those left running."""

    view: SweepView
    stopped: tuple[str, ...]
    kept: tuple[str, ...]
    metric: grid.Metric | None = None


class SweepService:
    def __init__(
        self,
        *,
        store: Store,
        jobs: JobService,
        clock: Clock,
        spend: SpendService | None = None,
        approvals: ApprovalService | None = None,
        readers: JobReaders | None = None,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._clock = clock
        self._spend = spend
        self._approvals = approvals
        self._readers = readers or JobReaders()

    # -- submitting --------------------------------------------------------------------------

    async def create_sweep(
        self,
        request: JobRequest,
        *,
        actor: Actor,
        flags: Sequence[str] = (),
        metric: str | None = None,
    ) -> SweepSubmitted | None:
        """Store the sweep the flags (or the job.json's sweep section) describe; None when
        neither describes one (a plain job: the caller submits it as such)."""
        spec, label, section = await self._jobs.load_spec_and_sweep(request, actor=actor)
        if not flags and section is None:
            if metric is not None:
                raise UserError("--sweep-metric ranks a sweep: give --sweep NAME=V1,V2 too")
            return None
        points_of = _grid(flags, metric, section, label)
        if len(request.name) > 60:
            raise UserError("a sweep's name is at most 60 characters (its jobs add -N)")
        async with self._store.unit() as uow:
            if await uow.sweeps.find(request.name) is not None:
                raise UserError(f"sweep {request.name} exists already; choose another name")
            if await uow.jobs.find(request.name) is not None:
                raise UserError(f"a job is named {request.name}; choose another sweep name")
        sweep_id = uuid.uuid4().hex
        built: list[tuple[Job, Sequence[str]]] = []
        cluster = None
        for point in points_of.points(request.name):
            try:
                one = grid.apply(spec, point)
            except ValueError as err:
                raise UserError(f"{label}: {err}") from None
            job, cluster, warnings = await self._jobs.build_job(
                replace(request, name=point.name), one, label, actor=actor, sweep_id=sweep_id
            )
            built.append((job, warnings))
        assert cluster is not None  # a sweep has at least one point
        record = JobSweep(
            id=sweep_id,
            name=request.name,
            requester=actor.user,
            created_at=self._clock.now(),
            parameters=tuple((p.name, p.values) for p in points_of.parameters),
            metric=None if points_of.metric is None else _spec(points_of.metric),
            channel=actor.conversation.channel if actor.conversation else None,
            cluster=cluster.name,
        )
        jobs = [job for job, _ in built]
        approval, total, formula = None, None, None
        ledger = []
        if self._spend is not None:
            first = jobs[0]
            each = self._spend.estimate(cluster, nodes=first.node_count, hours=first.max_wall_clock)
            jobs = [replace(j, node_rate=each.usd_per_hour, estimate=each.total) for j in jobs]
            ledger = [self._spend.estimate_entry(j, cluster, each) for j in jobs]
            total, formula = each.times(len(jobs)).total, each.times(len(jobs)).formula()
        if self._approvals is not None:
            commitment = self._approvals.gate.sweep(jobs, cluster)
            verdict = await self._approvals.gate.assess(commitment, actor=actor)
            if isinstance(verdict, Refused):
                raise NotAllowed(verdict.reason)
            if isinstance(verdict, NeedsApproval):
                jobs = [held_for_approval(j) for j in jobs]
                estimate = commitment.estimate
                approval = self._approvals.new_approval(
                    job=jobs[0],
                    kind="sweep",
                    estimate=estimate.total,
                    formula=f"sweep {record.name}: {estimate.formula()}",
                    assessment=verdict.assessment,
                    month_spend=verdict.month_spend,
                    budget=verdict.budget,
                )
        events: list[Event] = []
        for job, warnings in zip(jobs, (w for _, w in built), strict=True):
            events.append(
                JobSubmitted(
                    job_id=job.id,
                    cluster=job.cluster,
                    warnings=tuple(warnings),
                    estimate=None if formula is None else formula,
                )
            )
        if approval is not None:
            events.append(ApprovalRequested(job_id=jobs[0].id, approval_id=approval.id))
        async with self._store.unit() as uow:
            await uow.sweeps.add(record)
            for job in jobs:
                await uow.jobs.add(job)
            for entry in ledger:
                await uow.ledger.add(entry)
            if approval is not None:
                await uow.approvals.add(approval)
            uow.emit(*events, at=record.created_at)
            await uow.commit()
        return SweepSubmitted(SweepView(record, tuple(jobs)), approval, total, formula)

    # -- reading -----------------------------------------------------------------------------

    async def find_sweep(self, name: str, *, actor: Actor) -> SweepView | None:
        """The sweep of that name with its jobs, None when there is none (a job's name)."""
        if not NAME_RE.match(name):
            return None
        async with self._store.unit() as uow:
            record = await uow.sweeps.find(name)
            jobs = [] if record is None else await uow.jobs.list(sweep_id=record.id)
        if record is None:
            return None
        if not jobs:
            raise NotFound(f"sweep {name} has no jobs left (they were deleted)")
        await self._readers.check(jobs[0], actor)
        return SweepView(record, tuple(jobs))

    async def get_sweep_by_id(self, sweep_id: str, *, actor: Actor) -> SweepView:
        async with self._store.unit() as uow:
            record = await uow.sweeps.get(sweep_id)
            jobs = [] if record is None else await uow.jobs.list(sweep_id=sweep_id)
        if record is None or not jobs:
            raise NotFound("that sweep no longer exists")
        await self._readers.check(jobs[0], actor)
        return SweepView(record, tuple(jobs))

    def metric(self, view: SweepView) -> grid.Metric | None:
        return ranking_metric(view)

    def best(self, view: SweepView) -> Job | None:
        return best_job(view)

    # -- stopping ----------------------------------------------------------------------------

    async def stop_sweep(
        self, view: SweepView, *, actor: Actor, losing_half: bool = False
    ) -> SweepStopped:
        """Stop every live job of the sweep, or (*Stop losing half*) the worse half of those
        that report the metric. Only the requester or an admin may, like `job terminate`."""
        if actor.user != view.sweep.requester and not actor.is_admin:
            raise NotOwner(view.sweep.requester, f"stop sweep {view.sweep.name}")
        live = [j for j in view.jobs if not j.state.finished]
        metric = ranking_metric(view)
        if losing_half:
            if metric is None:
                raise UserError(
                    f"no job of sweep {view.sweep.name} reports a metric yet: nothing to rank"
                )
            values = {j.name: j.last_metrics.get(metric.name) for j in live}
            chosen = set(grid.losing_half(values, metric))
            targets = [j for j in live if j.name in chosen]
        else:
            targets = live
        stopped = []
        for job in targets:
            _, applied = await self._jobs.terminate_job(actor=actor, job_id=job.id)
            if applied:
                stopped.append(job.name)
        fresh = await self.get_sweep_by_id(view.sweep.id, actor=actor)
        kept = tuple(j.name for j in fresh.jobs if not j.state.finished and j.name not in stopped)
        return SweepStopped(fresh, tuple(stopped), kept, metric)


def ranking_metric(view: SweepView) -> grid.Metric | None:
    """The sweep's metric, or the one its jobs' logs report (val_acc up, loss down)."""
    reported = {name for job in view.jobs for name in job.last_metrics}
    return grid.metric_of(view.sweep.metric, reported)


def best_job(view: SweepView) -> Job | None:
    """The job with the best latest value of the ranking metric (None: none reports it)."""
    metric = ranking_metric(view)
    if metric is None:
        return None
    values = {j.name: j.last_metrics.get(metric.name) for j in view.jobs}
    order = grid.ranked(values, metric)
    if not order or values.get(order[0]) is None:
        return None
    return next(j for j in view.jobs if j.name == order[0])


def _grid(flags: Sequence[str], metric: str | None, section: object, label: str) -> grid.Sweep:
    """The grid of the flags or of the job.json's section; errors name the flag or the file."""
    if flags and section is not None:
        raise UserError(
            f"{label} has a sweep section: give --sweep or the section, not both", field="sweep"
        )
    try:
        ranked_by = grid.parse_metric(metric) if metric else None
    except ValueError as err:
        raise UserError(f"--sweep-metric: {err}", field="sweep") from None
    try:
        found = grid.sweep_of(flags) if flags else grid.sweep_from_json(section)
    except ValueError as err:
        text = str(err)
        where = "" if text.startswith("--sweep") else ("--sweep: " if flags else f"{label}: ")
        raise UserError(f"{where}{text}", field="sweep") from None
    return found if ranked_by is None else replace(found, metric=ranked_by)


def _spec(metric: grid.Metric) -> str:
    return f"{metric.name}:{metric.goal}"
