"""The audit log: who did, or was refused, what; written by the guard, readable by admins."""

from __future__ import annotations

from services.core.errors import NotAllowed
from services.models import Actor, AuditEntry
from services.store import SqlStore


class AuditLog:
    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def record(self, entry: AuditEntry) -> None:
        await self._store.add_audit(entry)

    async def list_entries(
        self, *, actor: Actor, job_id: str | None = None, limit: int = 50
    ) -> list[AuditEntry]:
        if not actor.is_admin:
            raise NotAllowed("only an admin may read the audit log")
        return await self._store.list_audit(target=job_id, limit=limit)
