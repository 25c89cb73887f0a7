"""The schedules repository: user schedules, and the claim that lets one run submit once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.models import ConfigSource, Schedule, ScheduledJob, ScheduleRun, ShareMount
from services.store.rows import mounts_from_json, mounts_json
from services.store.schema import schedules
from services.store.sealing import SecretBox


class SqlScheduleRepository:
    def __init__(self, conn: AsyncConnection, box: SecretBox) -> None:
        self._conn = conn
        self._box = box

    async def add(self, schedule: Schedule) -> None:
        await self._conn.execute(insert(schedules).values(_schedule_row(schedule, self._box)))

    async def get(self, schedule_id: str) -> Schedule | None:
        stmt = select(schedules).where(schedules.c.id == schedule_id)
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else _schedule_from(row._mapping, self._box)

    async def list(
        self, *, channel: str | None = None, active: bool | None = None
    ) -> list[Schedule]:
        """Oldest first; of one channel when given."""
        stmt = select(schedules).order_by(schedules.c.created_at, schedules.c.id)
        if channel is not None:
            stmt = stmt.where(schedules.c.channel == channel)
        if active is not None:
            stmt = stmt.where(schedules.c.active.is_(active))
        return [_schedule_from(r._mapping, self._box) for r in await self._conn.execute(stmt)]

    async def delete(self, schedule_id: str) -> bool:
        stmt = schedules.delete().where(schedules.c.id == schedule_id)
        return bool((await self._conn.execute(stmt)).rowcount)

    async def claim(
        self,
        run: ScheduleRun,
        *,
        job_id: str | None = None,
        job_name: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Move the schedule past `run.due` with the run's outcome (the job it submitted, or
        why none), only if it still waits for exactly that run: False when it was claimed
        already (or the schedule is gone)."""
        result = await self._conn.execute(
            update(schedules)
            .where(
                schedules.c.id == run.schedule_id,
                schedules.c.active.is_(True),
                schedules.c.next_run_at == run.due,
            )
            .values(
                next_run_at=run.following,
                last_run_at=run.at,
                runs=schedules.c.runs + 1,
                active=run.following is not None,
                last_job_id=job_id,
                last_job_name=job_name,
                last_error=error,
            )
        )
        return bool(result.rowcount)


def _keys(mounts: Iterable[ShareMount], change: Callable[[str], str]) -> tuple[ShareMount, ...]:
    """The mounts with another account's key sealed (or opened) by `change`."""
    return tuple(
        replace(m, account_key=change(m.account_key)) if m.account_key else m for m in mounts
    )


def config_row(config: ConfigSource, change: Callable[[str], str]) -> dict[str, str]:
    """An inline job.json is the user's whole job, secrets and all: sealed as one value."""
    value = change(config.value) if config.kind == "inline" else config.value
    return {"kind": config.kind, "value": value}


def _schedule_row(s: Schedule, box: SecretBox) -> dict[str, Any]:
    job = s.job
    return {
        "id": s.id,
        "kind": s.kind,
        "expression": s.expression,
        "timezone": s.timezone,
        "request": {
            "name": job.name,
            "cluster": job.cluster,
            "config": config_row(job.config, box.seal),
            "resource_group": job.resource_group,
            "workspace": job.workspace,
            "experiment": job.experiment,
            "may_read_paths": job.may_read_paths,
            "max_retries": job.max_retries,
            **({"mounts": mounts_json(_keys(job.mounts, box.seal))} if job.mounts else {}),
        },
        "requester": s.requester,
        "channel": s.channel,
        "created_at": s.created_at,
        "next_run_at": s.next_run_at,
        "last_run_at": s.last_run_at,
        "last_job_id": s.last_job_id,
        "last_job_name": s.last_job_name,
        "last_error": s.last_error,
        "runs": s.runs,
        "active": s.active,
    }


def _schedule_from(r: Any, box: SecretBox) -> Schedule:
    request = dict(r["request"])
    config = config_row(ConfigSource(**request.pop("config")), box.open)
    request["mounts"] = _keys(mounts_from_json(request.pop("mounts", ())), box.open)
    return Schedule(
        id=r["id"],
        kind=r["kind"],
        expression=r["expression"],
        timezone=r["timezone"],
        job=ScheduledJob(config=ConfigSource(config["kind"], config["value"]), **request),
        requester=r["requester"],
        channel=r["channel"],
        created_at=r["created_at"],
        next_run_at=r["next_run_at"],
        last_run_at=r["last_run_at"],
        last_job_id=r["last_job_id"],
        last_job_name=r["last_job_name"],
        last_error=r["last_error"],
        runs=r["runs"],
        active=bool(r["active"]),
    )
