"""The sweeps repository: a sweep's grid and metric (its jobs name it by jobs.sweep_id)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.core.errors import Conflict
from services.models import JobSweep
from services.store.schema import sweeps


class SqlSweepRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, sweep: JobSweep) -> None:
        """A new sweep; Conflict when its name was used before (names are never reused:
        the jobs of an old sweep keep naming it)."""
        row = {
            "id": sweep.id,
            "name": sweep.name,
            "requester": sweep.requester,
            "created_at": sweep.created_at,
            "parameters": [[name, list(values)] for name, values in sweep.parameters],
            "metric": sweep.metric,
            "channel": sweep.channel,
            "cluster": sweep.cluster,
        }
        try:
            await self._conn.execute(insert(sweeps).values(**row))
        except IntegrityError as err:
            raise Conflict(f"sweep {sweep.name} exists already; choose another name") from err

    async def get(self, sweep_id: str) -> JobSweep | None:
        row = (await self._conn.execute(select(sweeps).where(sweeps.c.id == sweep_id))).first()
        return None if row is None else _sweep_from(row._mapping)

    async def find(self, name: str) -> JobSweep | None:
        row = (await self._conn.execute(select(sweeps).where(sweeps.c.name == name))).first()
        return None if row is None else _sweep_from(row._mapping)


def _sweep_from(r: Any) -> JobSweep:
    return JobSweep(
        id=r["id"],
        name=r["name"],
        requester=r["requester"],
        created_at=r["created_at"],
        parameters=tuple((str(name), tuple(map(str, values))) for name, values in r["parameters"]),
        metric=r["metric"],
        channel=r["channel"],
        cluster=r["cluster"],
    )
