"""The prices repository: the cache of refreshed VM prices, replaced whole by each refresh."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.store.schema import prices

PriceRow = tuple[str, str, bool, Decimal]  # sku, region, spot, USD per hour


class SqlPriceRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def replace(self, rows: Sequence[PriceRow], source: str, at: datetime) -> None:
        await self._conn.execute(prices.delete())
        if rows:
            await self._conn.execute(
                insert(prices),
                [
                    {
                        "sku": sku,
                        "region": region,
                        "spot": spot,
                        "usd_per_hour": rate,
                        "fetched_at": at,
                        "source": source,
                    }
                    for sku, region, spot, rate in rows
                ],
            )

    async def list(self) -> list[tuple[str, str, bool, Decimal, datetime, str]]:
        rows = await self._conn.execute(select(prices))
        return [(r.sku, r.region, r.spot, r.usd_per_hour, r.fetched_at, r.source) for r in rows]
