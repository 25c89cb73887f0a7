"""The audit repository: who did, or was refused, what; the typed command is stored sealed."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.models import AuditEntry
from services.store.rows import safe_text
from services.store.schema import audit
from services.store.sealing import SecretBox


class SqlAuditRepository:
    def __init__(self, conn: AsyncConnection, box: SecretBox) -> None:
        self._conn = conn
        self._box = box

    async def add(self, entry: AuditEntry) -> None:
        row = asdict(entry)
        if entry.detail is not None:
            row["detail"] = self._box.seal(safe_text(entry.detail))
        await self._conn.execute(insert(audit).values(**row))

    async def list(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        stmt = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if target is not None:
            stmt = stmt.where(audit.c.target == target)
        return [
            AuditEntry(
                at=r.at,
                actor=r.actor,
                channel=r.channel,
                action=r.action,
                target=r.target,
                outcome=r.outcome,
                detail=None if r.detail is None else self._box.open(r.detail),
            )
            for r in await self._conn.execute(stmt)
        ]
