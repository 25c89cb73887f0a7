"""SqlUnitOfWork: one connection, one transaction, the repositories on it, events at commit."""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Self

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core.clock import utcnow
from services.core.errors import TransientError
from services.core.events import Event
from services.store.approvals import SqlApprovalRepository
from services.store.audit import SqlAuditRepository
from services.store.clusters import SqlClusterRepository
from services.store.fileservers import SqlFileServerRepository
from services.store.jobs import SqlJobRepository
from services.store.ledger import SqlLedgerRepository
from services.store.logs import SqlLogRepository
from services.store.outbox import SqlOutboxRepository
from services.store.prices import SqlPriceRepository
from services.store.schedules import SqlScheduleRepository
from services.store.sealing import SecretBox
from services.store.sweeps import SqlSweepRepository
from services.store.workspaces import SqlExperimentRepository, SqlWorkspaceRepository


class SqlUnitOfWork:
    """`async with store.unit() as uow:` reads and writes in one transaction; the events given
    to `emit` are stored by `commit`, in that same transaction, so a change and its
    announcement land together or not at all. Leaving the block without `commit` (or by an
    exception) rolls everything back, events included."""

    jobs: SqlJobRepository
    logs: SqlLogRepository
    clusters: SqlClusterRepository
    file_servers: SqlFileServerRepository
    approvals: SqlApprovalRepository
    ledger: SqlLedgerRepository
    outbox: SqlOutboxRepository
    schedules: SqlScheduleRepository
    audit: SqlAuditRepository
    prices: SqlPriceRepository
    workspaces: SqlWorkspaceRepository
    experiments: SqlExperimentRepository
    sweeps: SqlSweepRepository

    def __init__(self, engine: AsyncEngine, box: SecretBox) -> None:
        self._engine = engine
        self._box = box
        self._conn: AsyncConnection | None = None
        self._events: list[tuple[tuple[Event, ...], datetime | None]] = []

    async def __aenter__(self) -> Self:
        if self._conn is not None:
            raise RuntimeError("a unit of work is entered once")
        try:
            conn = self._conn = await self._engine.connect()
        except exc.TimeoutError as err:
            # Every pooled connection stayed busy for the pool's timeout (a starved process,
            # hundreds of deliveries at once): worth trying again, not a refusal to give up on.
            raise TransientError("the database is busy: no connection came free") from err
        self.jobs = SqlJobRepository(conn, self._box)
        self.logs = SqlLogRepository(conn)
        self.clusters = SqlClusterRepository(conn, self._box)
        self.file_servers = SqlFileServerRepository(conn)
        self.approvals = SqlApprovalRepository(conn)
        self.ledger = SqlLedgerRepository(conn)
        self.outbox = SqlOutboxRepository(conn)
        self.schedules = SqlScheduleRepository(conn, self._box)
        self.audit = SqlAuditRepository(conn, self._box)
        self.prices = SqlPriceRepository(conn)
        self.workspaces = SqlWorkspaceRepository(conn)
        self.experiments = SqlExperimentRepository(conn)
        self.sweeps = SqlSweepRepository(conn)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._events.clear()
        # Closing rolls back a transaction still open (after a commit there is none): one
        # trip through SQLAlchemy's greenlet bridge instead of two.
        await self._live().close()

    @property
    def events(self) -> tuple[Event, ...]:
        """What the next commit will store."""
        return tuple(e for batch, _ in self._events for e in batch)

    def emit(self, *events: Event, at: datetime | None = None) -> None:
        self._events.append((events, at))

    async def commit(self) -> None:
        conn = self._live()
        now = utcnow()
        runs: list[tuple[list[Event], datetime]] = []  # one insert per run of the same time
        for batch, at in self._events:
            when = at or now
            if runs and runs[-1][1] == when:
                runs[-1][0].extend(batch)
            else:
                runs.append((list(batch), when))
        for batch_events, when in runs:
            await self.outbox.add(batch_events, when)
        self._events.clear()
        await conn.commit()

    async def rollback(self) -> None:
        self._events.clear()
        await self._live().rollback()

    def _live(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("use the unit of work as `async with store.unit() as uow:`")
        return self._conn
