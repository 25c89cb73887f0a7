"""The ledger repository: money estimated and spent, and the channels' monthly budgets."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.models import LedgerEntry
from services.store.schema import budgets, ledger


class SqlLedgerRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, entry: LedgerEntry) -> None:
        await self._conn.execute(insert(ledger).values(_ledger_row(entry)))

    async def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        kind: str | None = None,
        job_id: str | None = None,
    ) -> list[LedgerEntry]:
        """In the order they were written."""
        stmt = select(ledger).order_by(ledger.c.id)
        if since is not None:
            stmt = stmt.where(ledger.c.at >= since)
        if until is not None:
            stmt = stmt.where(ledger.c.at < until)
        if kind is not None:
            stmt = stmt.where(ledger.c.kind == kind)
        if job_id is not None:
            stmt = stmt.where(ledger.c.job_id == job_id)
        return [_ledger_from(r._mapping) for r in await self._conn.execute(stmt)]

    async def set_budget(self, channel: str, monthly: Decimal, by: str, at: datetime) -> None:
        await self._conn.execute(budgets.delete().where(budgets.c.channel == channel))
        row = {"channel": channel, "monthly_usd": monthly, "set_by": by, "set_at": at}
        await self._conn.execute(insert(budgets).values(row))

    async def get_budget(self, channel: str) -> Decimal | None:
        stmt = select(budgets.c.monthly_usd).where(budgets.c.channel == channel)
        value: Decimal | None = (await self._conn.execute(stmt)).scalar_one_or_none()
        return value


def _ledger_row(e: LedgerEntry) -> dict[str, Any]:
    return {
        "at": e.at,
        "kind": e.kind,
        "job_id": e.job_id,
        "user": e.user,
        "channel": e.channel,
        "cluster": e.cluster,
        "vm_size": e.vm_size,
        "nodes": e.nodes,
        "hours": e.hours,
        "usd": e.usd,
    }


def _ledger_from(r: Any) -> LedgerEntry:
    return LedgerEntry(
        at=r["at"],
        kind=r["kind"],
        job_id=r["job_id"],
        user=r["user"],
        channel=r["channel"],
        cluster=r["cluster"],
        vm_size=r["vm_size"],
        nodes=r["nodes"],
        hours=r["hours"],
        usd=r["usd"],
    )
