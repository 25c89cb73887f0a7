"""The logs repository: how far each log file of a job was read, and the metrics parsed from it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from services.models import LogAdvance, MetricPoint, Progress
from services.store.schema import jobs, log_offsets, metrics

_UPSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class SqlLogRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get_offsets(self, job_id: str) -> dict[str, tuple[int, int]]:
        """file -> (committed byte offset, lines delivered so far)."""
        stmt = select(log_offsets).where(log_offsets.c.job_id == job_id)
        return {r.file: (r.offset, r.lines) for r in await self._conn.execute(stmt)}

    async def reset_offsets(self, job_id: str) -> None:
        """A new attempt writes new log files (its own stdouterr): they are read from the start."""
        await self._conn.execute(delete(log_offsets).where(log_offsets.c.job_id == job_id))

    async def advance(
        self,
        job_id: str,
        offsets: dict[str, tuple[int, int]],
        points: Sequence[MetricPoint],
        progress: Progress | None,
        last_metrics: dict[str, float] | None,
    ) -> None:
        """New offsets and the metrics parsed up to them (the snippets are the unit's events)."""
        conn = self._conn
        for file, (offset, lines) in offsets.items():
            values = {"offset": offset, "lines": lines}
            changed = await conn.execute(
                update(log_offsets)
                .where(log_offsets.c.job_id == job_id, log_offsets.c.file == file)
                .values(values)
            )
            if changed.rowcount == 0:
                await conn.execute(insert(log_offsets).values(job_id=job_id, file=file, **values))
        for p in points:
            key = (metrics.c.job_id == job_id, metrics.c.step == p.step, metrics.c.name == p.name)
            changed = await conn.execute(update(metrics).where(*key).values(value=p.value))
            if changed.rowcount == 0:
                row = {"job_id": job_id, "step": p.step, "name": p.name, "value": p.value}
                await conn.execute(insert(metrics).values(row))
        job_values: dict[str, Any] = {}
        if progress is not None:
            job_values["progress"] = progress
        if last_metrics:
            job_values["last_metrics"] = last_metrics
        if job_values:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(job_values))

    async def advance_all(self, advances: Sequence[LogAdvance]) -> None:
        """`advance` for many jobs in a few statements (a tail round's batch): one upsert of
        every offset, one of every metric point, one update of the jobs' progress per shape."""
        upsert = _UPSERT.get(self._conn.dialect.name)
        if upsert is None:
            for a in advances:
                await self.advance(a.job_id, a.offsets, a.points, a.progress, a.last_metrics)
            return
        offsets = [
            {"job_id": a.job_id, "file": f, "offset": o, "lines": n}
            for a in advances
            for f, (o, n) in a.offsets.items()
        ]
        await self._upsert(upsert, log_offsets, offsets, ("job_id", "file"), ("offset", "lines"))
        latest: dict[tuple[str, int, str], float] = {}  # a point seen twice: the last one wins
        for a in advances:
            for p in a.points:
                latest[(a.job_id, p.step, p.name)] = p.value
        points = [
            {"job_id": job, "step": step, "name": name, "value": value}
            for (job, step, name), value in latest.items()
        ]
        await self._upsert(upsert, metrics, points, ("job_id", "step", "name"), ("value",))
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for a in advances:
            values: dict[str, Any] = {}
            if a.progress is not None:
                values["progress"] = a.progress
            if a.last_metrics:
                values["last_metrics"] = a.last_metrics
            if values:
                shapes.setdefault(tuple(sorted(values)), []).append({"_id": a.job_id, **values})
        for rows in shapes.values():  # SET takes the rows' keys: one statement per shape
            await self._conn.execute(update(jobs).where(jobs.c.id == bindparam("_id")), rows)

    async def _upsert(
        self,
        upsert: Any,
        table: Table,
        rows: list[dict[str, Any]],
        keys: tuple[str, ...],
        changed: tuple[str, ...],
    ) -> None:
        if rows:
            stmt = upsert(table)
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys), set_={c: stmt.excluded[c] for c in changed}
            )
            await self._conn.execute(stmt, rows)

    async def list_metrics(self, job_id: str) -> list[MetricPoint]:
        stmt = select(metrics).where(metrics.c.job_id == job_id).order_by(metrics.c.step)
        return [MetricPoint(r.step, r.name, r.value) for r in await self._conn.execute(stmt)]
