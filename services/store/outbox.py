"""The outbox: events stored with the change they announce, and the record of sent messages
(exactly-once notifications: an intent before a send, the Slack message id after it)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.core.events import Event, event_from_payload
from services.store.schema import deliveries, events

INTENT = "?"  # a deliveries row whose message id starts so is an intent, not a record


class SqlOutboxRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, new_events: Sequence[Event], at: datetime) -> None:
        """Stored by the unit of work at commit, in the transaction of the change."""
        if not new_events:
            return
        rows = [
            {
                "kind": e.kind,
                "job_id": e.job_id,
                "cluster": e.cluster,
                "payload": e.payload(),
                "created_at": at,
            }
            for e in new_events
        ]
        await self._conn.execute(insert(events), rows)

    async def pending(
        self, limit: int = 100, *, job_id: str | None = None, of_job: bool = False
    ) -> list[tuple[int, Event]]:
        """Undelivered events, oldest first; with `of_job`, only those of `job_id` (None: the
        events of no job, such as cluster changes)."""
        stmt = select(events).where(events.c.delivered_at.is_(None))
        if of_job:
            stmt = stmt.where(
                events.c.job_id == job_id if job_id is not None else events.c.job_id.is_(None)
            )
        rows = await self._conn.execute(stmt.order_by(events.c.id).limit(limit))
        return [(r.id, event_from_payload(r.kind, r.payload)) for r in rows]

    async def pending_job_ids(self) -> list[str | None]:
        """Whose events wait for delivery (None: events of no job), oldest first."""
        stmt = (
            select(events.c.job_id, func.min(events.c.id).label("first"))
            .where(events.c.delivered_at.is_(None))
            .group_by(events.c.job_id)
            .order_by("first")
        )
        return [row.job_id for row in await self._conn.execute(stmt)]

    async def mark_delivered(self, event_ids: Sequence[int], at: datetime) -> None:
        stmt = update(events).where(events.c.id.in_(list(event_ids))).values(delivered_at=at)
        await self._conn.execute(stmt)

    async def count(self, *, kind: str | None = None, job_id: str | None = None) -> int:
        stmt = select(func.count()).select_from(events)
        if kind is not None:
            stmt = stmt.where(events.c.kind == kind)
        if job_id is not None:
            stmt = stmt.where(events.c.job_id == job_id)
        return int((await self._conn.execute(stmt)).scalar_one())

    async def backlog(self) -> tuple[int, datetime | None]:
        """Undelivered events: how many, and when the oldest of them was stored."""
        stmt = select(func.count(), func.min(events.c.created_at)).where(
            events.c.delivered_at.is_(None)
        )
        count, oldest = (await self._conn.execute(stmt)).one()
        return int(count), oldest

    # -- sent messages -------------------------------------------------------------------

    async def recorded_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these notification keys were already sent (intents do not count)."""
        if not keys:
            return set()
        stmt = select(deliveries.c.key).where(
            deliveries.c.key.in_(list(keys)), ~deliveries.c.message_id.startswith(INTENT)
        )
        return {row.key for row in await self._conn.execute(stmt)}

    async def get_delivery(self, keys: Sequence[str]) -> tuple[str, str] | None:
        """(channel, message id) a notification with any of these keys was sent as, or None.
        The channel is the one Slack answered with: a post to a user id is in the DM (D…)."""
        if not keys:
            return None
        stmt = select(deliveries.c.channel, deliveries.c.message_id).where(
            deliveries.c.key.in_(list(keys)), ~deliveries.c.message_id.startswith(INTENT)
        )
        row = (await self._conn.execute(stmt.limit(1))).first()
        return None if row is None else (row.channel, row.message_id)

    async def record_delivery(
        self, keys: Sequence[str], channel: str, message_id: str, at: datetime
    ) -> None:
        """Remember that one message carried these keys, in the channel Slack put it in; an
        existing record is kept, an intent (see `add_intent`) becomes the record."""
        await self._put(keys, channel, message_id, at)

    async def add_intent(
        self, keys: Sequence[str], channel: str, marker: str, at: datetime
    ) -> None:
        """Before a message goes out: "these keys may be sent as the message `marker` names".
        A crash before `record_delivery` leaves the intent, and the next start asks Slack."""
        await self._put(keys, channel, INTENT + marker, at)

    async def list_intents(self) -> list[tuple[str, str, str]]:
        """(key, channel, marker) of every message whose sending was begun but not recorded."""
        stmt = select(deliveries).where(deliveries.c.message_id.startswith(INTENT))
        rows = await self._conn.execute(stmt.order_by(deliveries.c.sent_at))
        return [(r.key, r.channel, r.message_id.removeprefix(INTENT)) for r in rows]

    async def drop_intents(self, keys: Sequence[str]) -> None:
        """Those messages never reached Slack: forget the intents, so they are sent again."""
        await self._conn.execute(
            delete(deliveries).where(
                deliveries.c.key.in_(list(keys)), deliveries.c.message_id.startswith(INTENT)
            )
        )

    async def _put(self, keys: Sequence[str], channel: str, message_id: str, at: datetime) -> None:
        """Insert a row per new key; an intent of one of them is overwritten, a record kept."""
        unique = list(dict.fromkeys(keys))
        found = await self._conn.execute(
            select(deliveries.c.key, deliveries.c.message_id).where(deliveries.c.key.in_(unique))
        )
        existing = {row.key: row.message_id for row in found}
        stale = [k for k, m in existing.items() if m.startswith(INTENT)]
        if stale:
            await self._conn.execute(
                update(deliveries)
                .where(deliveries.c.key.in_(stale))
                .values(channel=channel, message_id=message_id, sent_at=at)
            )
        rows = [
            {"key": k, "channel": channel, "message_id": message_id, "sent_at": at}
            for k in unique
            if k not in existing
        ]
        if rows:
            await self._conn.execute(insert(deliveries), rows)
