"""GpuIdleService: keep each running job's GPU reading, and warn once when a job keeps every GPU
under 5 % for 15 minutes (a warning with Keep / Stop in its thread, as idle clusters get one).

The runner hands over each poll's reading (`observe`); a warning is stored with its event before
anything is said (given at most once per job, even across restarts). Keep silences it for that
job; Stop terminates the job as the Terminate button does. Only the job's requester or an admin
may answer (services/access), and every click, allowed or not, is audited."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from services.access.owners import check_owner
from services.core.errors import BatchAIError, NotAllowed, UserError
from services.core.events import GpuIdleWarning, GpuIdleWarningClosed
from services.core.ports import Clock
from services.jobs.service import JobService
from services.models import Actor, AuditEntry, GpuUse, GpuWatch, Job
from services.spend.ledger import PriceBook
from services.store import SqlStore

log = logging.getLogger(__name__)

IDLE_UTIL = 5.0  # % : a GPU under this is idle
IDLE_AFTER = timedelta(minutes=15)
STALE = "that warning is no longer current"


@dataclass(frozen=True)
class GpuClick:
    """What a Keep / Stop click did; `detail` is plain text about job `job` (None: no job)."""

    applied: bool
    detail: str
    job: str | None = None
    refused: BatchAIError | None = None  # why not (NotOwner: the handler names the owner)


async def gpu_model(store: SqlStore, prices: PriceBook | None, job: Job) -> str | None:
    """The GPU's short name ("A100") from the price table, for the warning's line."""
    cluster = await store.get_cluster(job.cluster)
    if prices is None or cluster is None:
        return None
    try:
        model = prices.table.get_price(cluster.vm_size).gpu_model
    except UserError:
        return None
    return model.split()[0] if model else None


def closed_warning(
    job: Job,
    warning_id: str,
    outcome: str,
    *,
    by: str | None = None,
    gpu_model: str | None = None,
    idle_after: timedelta = IDLE_AFTER,
) -> GpuIdleWarningClosed:
    """The close of a job's warning (kept | stopped | ended), saying what the warning said."""
    use = job.gpu.use if job.gpu is not None else None
    return GpuIdleWarningClosed(
        job_id=job.id,
        cluster=job.cluster,
        warning_id=warning_id,
        gpus=use.gpus if use is not None else 0,
        gpu_model=gpu_model,
        per_hour=None if job.node_rate is None else str(job.node_rate * job.node_count),
        minutes=int(idle_after.total_seconds() // 60),
        threshold=int(IDLE_UTIL),
        outcome=outcome,
        by=by,
    )


class GpuIdleService:
    def __init__(
        self,
        *,
        store: SqlStore,
        jobs: JobService,
        clock: Clock,
        prices: PriceBook | None = None,
        idle_after: timedelta = IDLE_AFTER,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._clock = clock
        self._prices = prices
        self._idle_after = idle_after
        self._lock = asyncio.Lock()

    async def observe(self, job: Job, use: GpuUse | None) -> None:
        """A poll's reading of a running job: kept when it changed; the warning when due."""
        if use is None:
            return
        now = self._clock.now()
        watch = job.gpu or GpuWatch()
        idle = use.util_max < IDLE_UTIL
        since = (watch.idle_since or now) if idle else None
        if (use, since) != (watch.use, watch.idle_since):
            await self._store.set_gpu_use(job.id, use, since)
        if since is None or watch.warning_id is not None or now - since < self._idle_after:
            return
        event = GpuIdleWarning(
            job_id=job.id,
            cluster=job.cluster,
            warning_id=uuid.uuid4().hex[:12],
            gpus=use.gpus,
            gpu_model=await self._model(job),
            per_hour=None if job.node_rate is None else str(job.node_rate * job.node_count),
            minutes=int(self._idle_after.total_seconds() // 60),
            threshold=int(IDLE_UTIL),
        )
        if await self._store.give_gpu_warning(job.id, event.warning_id, now, [event]):
            log.info("job %s: GPUs idle for %s; warned", job.name, now - since)

    async def keep(self, value: str, *, actor: Actor) -> GpuClick:
        """Keep: the job runs on and is not warned about idle GPUs again."""
        return await self._answer(value, actor, "kept")

    async def stop(self, value: str, *, actor: Actor) -> GpuClick:
        """Stop: terminate the job, as its Terminate button does."""
        return await self._answer(value, actor, "stopped")

    async def _answer(self, value: str, actor: Actor, outcome: str) -> GpuClick:
        action = "gpu idle keep" if outcome == "kept" else "gpu idle stop"
        async with self._lock:
            job_id, _, warning_id = value.partition(":")
            job = await self._store.get_job(job_id) if job_id else None
            watch = job.gpu if job is not None else None
            if (
                job is None
                or watch is None
                or watch.warning_id != warning_id
                or watch.closed is not None
                or job.state.finished
            ):
                await self._audit(actor, action, job, "denied", STALE, target=job_id)
                return GpuClick(False, STALE, job.name if job else None)
            try:
                check_owner(job, actor, "keep" if outcome == "kept" else "stop")
            except NotAllowed as err:
                await self._audit(actor, action, job, "denied", str(err))
                return GpuClick(False, str(err), job.name, refused=err)
            if outcome == "stopped":
                try:
                    job, _ = await self._jobs.terminate_job(actor=actor, job_id=job.id)
                except BatchAIError as err:
                    await self._audit(actor, action, job, "failed", str(err))
                    return GpuClick(False, str(err), job.name, refused=err)
            closing = closed_warning(
                job,
                warning_id,
                outcome,
                by=actor.user,
                gpu_model=await self._model(job),
                idle_after=self._idle_after,
            )
            if not await self._store.close_gpu_warning(job.id, warning_id, outcome, [closing]):
                return GpuClick(False, STALE, job.name)
            detail = (
                "keeps running; no more idle-GPU warnings for it"
                if outcome == "kept"
                else "is being stopped"
            )
            await self._audit(actor, action, job, "allowed", detail)
            return GpuClick(True, detail, job.name)

    async def _model(self, job: Job) -> str | None:
        return await gpu_model(self._store, self._prices, job)

    async def _audit(
        self,
        actor: Actor,
        action: str,
        job: Job | None,
        outcome: str,
        detail: str,
        *,
        target: str | None = None,
    ) -> None:
        channel = actor.conversation.channel if actor.conversation else None
        await self._store.add_audit(
            AuditEntry(
                at=self._clock.now(),
                actor=actor.user,
                action=action,
                outcome=outcome,
                channel=channel,
                target=job.name if job is not None else target,
                detail=detail,
            )
        )
