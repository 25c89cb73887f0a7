"""The file-servers repository: NFS servers of `az batchai file-server create`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.core.errors import Conflict
from services.models import FileServer
from services.store.schema import file_servers


class SqlFileServerRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, server: FileServer) -> None:
        try:
            await self._conn.execute(insert(file_servers).values(**asdict(server)))
        except IntegrityError as err:
            raise Conflict(f"file server {server.name} already exists") from err

    async def update(self, server: FileServer) -> None:
        stmt = update(file_servers).where(file_servers.c.name == server.name)
        await self._conn.execute(stmt.values(**asdict(server)))

    async def delete(self, name: str) -> None:
        await self._conn.execute(file_servers.delete().where(file_servers.c.name == name))

    async def get(self, name: str) -> FileServer | None:
        stmt = select(file_servers).where(file_servers.c.name == name)
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else _from(row._mapping)

    async def list(self) -> list[FileServer]:
        rows = await self._conn.execute(select(file_servers).order_by(file_servers.c.name))
        return [_from(r._mapping) for r in rows]


def _from(r: Any) -> FileServer:
    names = [column.name for column in file_servers.columns]
    return FileServer(**{name: r[name] for name in names})
