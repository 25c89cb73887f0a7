"""The audit log: who did, or was refused, what; written by the guard, readable by admins."""

from __future__ import annotations

from services.core.errors import NotAllowed
from services.core.ports import Store
from services.models import Actor, AuditEntry


class AuditLog:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(self, entry: AuditEntry) -> None:
        async with self._store.unit() as uow:
            await uow.audit.add(entry)
            await uow.commit()

    async def list_entries(
        self, *, actor: Actor, job_id: str | None = None, limit: int = 50
    ) -> list[AuditEntry]:
        if not actor.is_admin:
            raise NotAllowed("only an admin may read the audit log")
        async with self._store.unit() as uow:
            return await uow.audit.list(target=job_id, limit=limit)
