"""Who may run the periodic work: a PostgreSQL session advisory lock held on a connection of its
own (the leader's lease), or for SQLite an exclusive lock on `<db>.lock` (one process only)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

LOCK_KEY = 0x6261746368616942  # "batchaiB": one advisory lock per database, the bot's
CHECK_TIMEOUT = 5.0  # seconds a lock query may take before the lease counts as lost
# The server side of the lease's connection probes a silent peer after 10 s, every 5 s, 3 times:
# a leader cut off by a partition (no FIN, no RST) loses the lock within ~25 s, not the
# kernel's default 2 hours, so a standby can take over while the old one stops on its own
# CHECK_TIMEOUT. `tcp_user_timeout` does the same for data the server sent and nobody acked.
KEEPALIVE = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "25000",
}


class Lease(Protocol):
    """A lease one replica at a time holds."""

    async def acquire(self) -> bool:
        """Take the lease if it is free; True when this process holds it now."""
        ...

    async def held(self) -> bool:
        """Whether this process still holds it (asked of the database, not remembered)."""
        ...

    async def release(self) -> None:
        """Give it up (a dying process gives it up without this)."""
        ...


class AdvisoryLease:
    """`pg_try_advisory_lock` on a dedicated connection: PostgreSQL frees it the moment that
    connection ends, so a killed leader's lease is free as soon as its socket closes."""

    def __init__(self, url: str, *, key: int = LOCK_KEY) -> None:
        self._engine: AsyncEngine = create_async_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"server_settings": KEEPALIVE},
        )
        self._key = key
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()  # one query at a time on the one connection

    async def acquire(self) -> bool:
        async with self._lock:
            try:
                if self._conn is None:
                    self._conn = await self._engine.connect()
                got = await self._scalar("SELECT pg_try_advisory_lock(:key)")
            except Exception as err:  # database away: not the leader, try again later
                log.warning("cannot ask for the leader lease: %s", type(err).__name__)
                await self._drop()
                return False
            return bool(got)

    async def held(self) -> bool:
        async with self._lock:
            if self._conn is None:
                return False
            try:
                mine = await self._scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid()"
                    " AND ((classid::bigint << 32) | objid::bigint) = :key"
                )
            except Exception as err:  # the connection is gone, and the lock with it
                log.warning("the leader lease's connection failed: %s", type(err).__name__)
                await self._drop()
                return False
            return bool(mine)

    async def release(self) -> None:
        async with self._lock:
            await self._drop()
        await self._engine.dispose()

    async def _scalar(self, sql: str) -> object:
        assert self._conn is not None
        result = await asyncio.wait_for(
            self._conn.execute(text(sql), {"key": self._key}), CHECK_TIMEOUT
        )
        return result.scalar()

    async def _drop(self) -> None:
        """Close the connection; PostgreSQL ends its session and frees the lock."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken: closing it is all that was left
                log.debug("closing the lease connection failed", exc_info=True)


class FileLease:
    """SQLite: an exclusive `flock` on `<db>.lock`, taken once and kept for the process's life."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    async def acquire(self) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "ab")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle
        return True

    async def held(self) -> bool:
        return self._file is not None

    async def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing the file drops the lock


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for PostgreSQL or an in-memory SQLite."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def is_postgres(url: str) -> bool:
    return make_url(url).drivername.startswith("postgresql")


class SoleLease:
    """Nothing else can share this database (in-memory SQLite, or a bot without periodic
    work): always held."""

    async def acquire(self) -> bool:
        return True

    async def held(self) -> bool:
        return True

    async def release(self) -> None:
        return None
