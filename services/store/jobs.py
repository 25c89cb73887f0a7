"""The jobs repository: a job's row, its place in the queue, and its guarded state moves."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.core.errors import Conflict
from services.jobs.lifecycle import JobState, JobTransition
from services.models import Conversation, GpuUse, GpuWatch, Job, JobLayout
from services.store.guard import check_moved
from services.store.schema import jobs
from services.store.sealing import SecretBox

_SEQ_LOCK = 0x6A6F6273  # the PostgreSQL advisory lock that orders job submissions ("jobs")
_LIFECYCLE_COLUMNS = (
    "state",
    "queued_at",
    "started_at",
    "ended_at",
    "exit_code",
    "error",
    "nodes",
    "attempts",
)
# A requeue (a lost attempt) also clears what belonged to that attempt: its layout, its
# wall-clock warning and its GPU watch (last reading, idle-since, idle warning).
_REQUEUE_COLUMNS = ("layout", "wall_clock_warned_at")
_REQUEUE_CLEARED: dict[str, Any] = {
    "gpu": None,
    "gpu_warning_id": None,
    "gpu_warned_at": None,
    "gpu_warning_closed": None,
}


class SqlJobRepository:
    """Jobs in one unit of work's transaction. Layout, conversation, progress and metrics have
    writers of their own, so a move computed from an older snapshot never undoes them."""

    def __init__(self, conn: AsyncConnection, box: SecretBox) -> None:
        self._conn = conn
        self._box = box

    async def add(self, job: Job) -> Job:
        """A new job at the end of the queue; Conflict when its name is taken."""
        conn = self._conn
        if conn.dialect.name == "postgresql":
            # Submissions take turns, or two would read the same max(seq); the lock ends
            # with the transaction. (SQLite locks the database for the one INSERT below.)
            await conn.execute(select(func.pg_advisory_xact_lock(_SEQ_LOCK)))
        # The next place in the queue is read by the INSERT itself, never before it.
        seq = select(func.coalesce(func.max(jobs.c.seq), 0) + 1).scalar_subquery()
        row = {**_job_row(job), "spec_json": self._box.seal_spec(job.spec_json)}
        try:
            await conn.execute(insert(jobs).values(seq=seq, **row))
        except IntegrityError as err:
            raise Conflict(f"job {job.name} already exists") from err
        return job

    async def move(self, job: Job, transition: JobTransition) -> bool:
        """Write the lifecycle columns (state, times, exit code, error, nodes) for a
        `transition` built by the lifecycle, only if the stored state still is its `old`
        (else nothing, and False: the caller decides again or lets the unit roll back)."""
        check_moved(job.state, transition.new, transition)
        row = _job_row(job)
        columns = _LIFECYCLE_COLUMNS + (_REQUEUE_COLUMNS if transition.requeues else ())
        values = {k: row[k] for k in columns}
        if transition.requeues:
            values.update(_REQUEUE_CLEARED)
        stmt = update(jobs).where(jobs.c.id == job.id, jobs.c.state == transition.old.value)
        result = await self._conn.execute(stmt.values(values))
        return bool(result.rowcount)

    async def set_layout(self, job_id: str, layout: JobLayout) -> None:
        await self._conn.execute(update(jobs).where(jobs.c.id == job_id).values(layout=layout))

    async def set_nodes(self, job_id: str, nodes: tuple[int, ...]) -> None:
        await self._conn.execute(update(jobs).where(jobs.c.id == job_id).values(nodes=list(nodes)))

    async def set_conversation(self, job_id: str, conversation: Conversation) -> None:
        stmt = update(jobs).where(jobs.c.id == job_id).values(conversation=conversation)
        await self._conn.execute(stmt)

    async def set_wall_clock_warned(self, job_id: str, at: datetime | None) -> None:
        stmt = update(jobs).where(jobs.c.id == job_id).values(wall_clock_warned_at=at)
        await self._conn.execute(stmt)

    async def set_gpu_use(
        self, job_id: str, use: GpuUse | None, idle_since: datetime | None
    ) -> None:
        """The last GPU reading (the warning has a writer of its own: a click is never undone
        by a poll that read the job before it)."""
        stmt = update(jobs).where(jobs.c.id == job_id).values(gpu=_gpu_row(use, idle_since))
        await self._conn.execute(stmt)

    async def give_gpu_warning(self, job_id: str, warning_id: str, at: datetime) -> bool:
        """The one idle-GPU warning of a job: False when it was given already."""
        stmt = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.gpu_warning_id.is_(None))
            .values(gpu_warning_id=warning_id, gpu_warned_at=at)
        )
        return bool((await self._conn.execute(stmt)).rowcount)

    async def close_gpu_warning(self, job_id: str, warning_id: str, outcome: str) -> bool:
        """Answer the warning (kept | stopped), only while it is that one and still open: of
        two clicks, one decides."""
        stmt = (
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.gpu_warning_id == warning_id,
                jobs.c.gpu_warning_closed.is_(None),
            )
            .values(gpu_warning_closed=outcome)
        )
        return bool((await self._conn.execute(stmt)).rowcount)

    async def extend_wall_clock(
        self, job_id: str, extra: timedelta, *, expect: timedelta | None = None
    ) -> bool:
        """Add to a running job's limit in the database itself; with `expect`, only while the
        limit is still that (False otherwise): of two clicks on one warning, one extends."""
        which = and_(jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value)
        if expect is not None:
            which = and_(which, jobs.c.max_wall_clock_s == int(expect.total_seconds()))
        seconds = int(extra.total_seconds())
        stmt = update(jobs).where(which).values(max_wall_clock_s=jobs.c.max_wall_clock_s + seconds)
        return bool((await self._conn.execute(stmt)).rowcount)

    async def delete(self, job_id: str) -> None:
        """Frees the job's name; its events and metrics stay for the record."""
        await self._conn.execute(update(jobs).where(jobs.c.id == job_id).values(deleted=True))

    async def get(self, job_id: str) -> Job | None:
        row = (await self._conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return None if row is None else _job_from(row._mapping)

    async def find(self, name: str) -> Job | None:
        stmt = select(jobs).where(jobs.c.name == name, jobs.c.deleted.is_(False))
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else _job_from(row._mapping)

    async def list(
        self,
        *,
        cluster: str | None = None,
        states: Iterable[JobState] | None = None,
        include_deleted: bool = False,
        sweep_id: str | None = None,
    ) -> list[Job]:
        """Jobs in submission (FIFO) order; deleted ones only when asked (the runner asks)."""
        wanted = None if states is None else tuple(sorted({s.value for s in states}))
        stmt = _list_statement(include_deleted, cluster is not None, sweep_id is not None, wanted)
        rows = await self._conn.execute(stmt, {"cluster": cluster, "sweep_id": sweep_id})
        return [_job_from(r._mapping) for r in rows]

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs (not deleted) are in each state; one aggregate query, for /metrics."""
        stmt = (
            select(jobs.c.state, func.count())
            .where(jobs.c.deleted.is_(False))
            .group_by(jobs.c.state)
        )
        return {JobState(state): int(n) for state, n in await self._conn.execute(stmt)}

    async def oldest_queued(self) -> datetime | None:
        """When the job that has waited longest in a queue was queued (None: no queue)."""
        stmt = select(func.min(jobs.c.queued_at)).where(jobs.c.state == JobState.QUEUED.value)
        value: datetime | None = (await self._conn.execute(stmt)).scalar_one()
        return value


@functools.lru_cache(maxsize=64)
def _list_statement(
    include_deleted: bool, by_cluster: bool, by_sweep: bool, states: tuple[str, ...] | None
) -> Select[Any]:
    """One statement per shape of `list`, built once: SQLAlchemy then skips building the
    clauses and their cache key on every call (the values are bound parameters)."""
    stmt = select(jobs).order_by(jobs.c.seq, jobs.c.created_at, jobs.c.id)
    if not include_deleted:
        stmt = stmt.where(jobs.c.deleted.is_(False))
    if by_cluster:
        stmt = stmt.where(jobs.c.cluster == bindparam("cluster"))
    if by_sweep:
        stmt = stmt.where(jobs.c.sweep_id == bindparam("sweep_id"))
    if states is not None:
        # One parameter per state: an IN of a tuple is an "expanding" parameter, whose SQL
        # SQLAlchemy renders anew at every execution.
        stmt = stmt.where(
            jobs.c.state.in_([bindparam(f"state_{i}", s) for i, s in enumerate(states)])
        )
    return stmt


def _job_row(j: Job) -> dict[str, Any]:
    """Every column a job's updates may write (the job.json is written once, sealed)."""
    return {
        "id": j.id,
        "name": j.name,
        "cluster": j.cluster,
        "resource_group": j.resource_group,
        "workspace": j.workspace,
        "experiment": j.experiment,
        "state": j.state.value,
        "node_count": j.node_count,
        "toolkit": j.toolkit,
        "max_wall_clock_s": int(j.max_wall_clock.total_seconds()),
        "requester": j.requester,
        "created_at": j.created_at,
        "queued_at": j.queued_at,
        "started_at": j.started_at,
        "ended_at": j.ended_at,
        "exit_code": j.exit_code,
        "error": j.error,
        "nodes": list(j.nodes),
        "layout": j.layout,
        "progress": j.progress,
        "last_metrics": dict(j.last_metrics),
        "container_image": j.container_image,
        "conversation": j.conversation,
        "node_rate": j.node_rate,
        "estimate": j.estimate,
        "wall_clock_warned_at": j.wall_clock_warned_at,
        "max_retries": j.max_retries,
        "attempts": j.attempts,
        "sweep_id": j.sweep_id,
    }


def _job_from(r: Any) -> Job:
    return Job(
        id=r["id"],
        name=r["name"],
        cluster=r["cluster"],
        resource_group=r["resource_group"],
        workspace=r["workspace"],
        experiment=r["experiment"],
        state=JobState(r["state"]),
        spec_json=r["spec_json"],
        node_count=r["node_count"],
        toolkit=r["toolkit"],
        max_wall_clock=timedelta(seconds=r["max_wall_clock_s"]),
        requester=r["requester"],
        created_at=r["created_at"],
        conversation=r["conversation"],
        queued_at=r["queued_at"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        exit_code=r["exit_code"],
        error=r["error"],
        nodes=tuple(r["nodes"]),
        layout=r["layout"],
        progress=r["progress"],
        last_metrics=dict(r["last_metrics"] or {}),
        container_image=r["container_image"],
        node_rate=r["node_rate"],
        estimate=r["estimate"],
        wall_clock_warned_at=r["wall_clock_warned_at"],
        max_retries=r["max_retries"] or 0,
        attempts=tuple(r["attempts"] or ()),
        sweep_id=r["sweep_id"],
        gpu=_gpu_from(r),
    )


def _gpu_row(use: GpuUse | None, idle_since: datetime | None) -> dict[str, Any] | None:
    if use is None and idle_since is None:
        return None
    return {
        "use": None if use is None else asdict(use),
        "idle_since": None if idle_since is None else idle_since.isoformat(),
    }


def _gpu_from(r: Any) -> GpuWatch | None:
    raw = r["gpu"] or {}
    if not raw and r["gpu_warning_id"] is None:
        return None
    since = raw.get("idle_since")
    return GpuWatch(
        use=GpuUse(**raw["use"]) if raw.get("use") else None,
        idle_since=datetime.fromisoformat(since) if since else None,
        warning_id=r["gpu_warning_id"],
        warned_at=r["gpu_warned_at"],
        closed=r["gpu_warning_closed"],
    )
