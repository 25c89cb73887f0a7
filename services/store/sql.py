"""SqlStore: the SQL store (SQLite or PostgreSQL). Its `unit()` is the unit of work services
decide in; the methods below it are one-unit shortcuts for single-aggregate reads and writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from services.clusters.lifecycle import ClusterTransition
from services.core.events import Event, GpuIdleWarningClosed
from services.jobs.lifecycle import JobState, JobTransition
from services.models import (
    Approval,
    AuditEntry,
    Cluster,
    Conversation,
    FileServer,
    GpuUse,
    IdleState,
    Job,
    JobLayout,
    JobSweep,
    LedgerEntry,
    LogAdvance,
    MetricPoint,
    NodeProblem,
    Progress,
    Schedule,
)
from services.store.engine import migrate, open_engine, ping
from services.store.prices import PriceRow
from services.store.sealing import SecretBox
from services.store.unit import SqlUnitOfWork


class SqlStore:
    """Clusters, jobs, spend, schedules, audit and the event outbox in one database.

    Secret fields (a job.json's secrets, passwords and keys, inline job.json of schedules, the
    typed commands in the audit table) are sealed with `secrets` on their way in; without a
    box, with a key of this process only."""

    def __init__(self, url: str, *, echo: bool = False, secrets: SecretBox | None = None) -> None:
        self.url = url
        self._box = secrets or SecretBox.ephemeral()
        self._engine = open_engine(url, echo=echo)

    def unit(self) -> SqlUnitOfWork:
        """A new unit of work: `async with store.unit() as uow: ...; await uow.commit()`."""
        return SqlUnitOfWork(self._engine, self._box)

    async def migrate(self) -> None:
        """The newest schema, and every secret sealed with the current key (engine.migrate)."""
        await migrate(self._engine, self._box)

    def open_spec(self, spec_json: str) -> str:
        """A stored job's job.json with its secrets in plain text: for launching it, only."""
        return self._box.open_spec(spec_json)

    async def ping(self) -> None:
        """Raise unless the database answers (for /readyz); needs no table."""
        await ping(self._engine)

    async def aclose(self) -> None:
        await self._engine.dispose()

    # -- clusters ---------------------------------------------------------------------------

    async def insert_cluster(self, cluster: Cluster, new_events: Sequence[Event] = ()) -> None:
        async with self.unit() as uow:
            await uow.clusters.add(cluster)
            uow.emit(*new_events, at=cluster.created_at)
            await uow.commit()

    async def update_cluster(
        self,
        cluster: Cluster,
        new_events: Sequence[Event] = (),
        *,
        transition: ClusterTransition | None = None,
    ) -> None:
        async with self.unit() as uow:
            await uow.clusters.update(cluster, transition=transition)
            uow.emit(*new_events)
            await uow.commit()

    async def delete_cluster(self, name: str, new_events: Sequence[Event] = ()) -> None:
        async with self.unit() as uow:
            await uow.clusters.delete(name)
            uow.emit(*new_events)
            await uow.commit()

    async def update_idle(
        self, name: str, idle: IdleState, new_events: Sequence[Event] = ()
    ) -> None:
        async with self.unit() as uow:
            await uow.clusters.set_idle(name, idle)
            uow.emit(*new_events)
            await uow.commit()

    async def update_unusable(
        self, name: str, nodes: Sequence[NodeProblem], new_events: Sequence[Event] = ()
    ) -> None:
        async with self.unit() as uow:
            await uow.clusters.set_unusable(name, nodes)
            uow.emit(*new_events)
            await uow.commit()

    async def get_cluster(self, name: str) -> Cluster | None:
        async with self.unit() as uow:
            return await uow.clusters.get(name)

    async def list_clusters(self) -> list[Cluster]:
        async with self.unit() as uow:
            return await uow.clusters.list()

    # -- file servers -----------------------------------------------------------------------

    async def insert_file_server(self, server: FileServer) -> None:
        async with self.unit() as uow:
            await uow.file_servers.add(server)
            await uow.commit()

    async def update_file_server(self, server: FileServer) -> None:
        async with self.unit() as uow:
            await uow.file_servers.update(server)
            await uow.commit()

    async def delete_file_server(self, name: str) -> None:
        async with self.unit() as uow:
            await uow.file_servers.delete(name)
            await uow.commit()

    async def get_file_server(self, name: str) -> FileServer | None:
        async with self.unit() as uow:
            return await uow.file_servers.get(name)

    async def list_file_servers(self) -> list[FileServer]:
        async with self.unit() as uow:
            return await uow.file_servers.list()

    # -- jobs -------------------------------------------------------------------------------

    async def insert_job(self, job: Job, new_events: Sequence[Event] = ()) -> Job:
        async with self.unit() as uow:
            await uow.jobs.add(job)
            uow.emit(*new_events, at=job.created_at)
            await uow.commit()
        return job

    async def update_job(
        self,
        job: Job,
        new_events: Sequence[Event] = (),
        *,
        transition: JobTransition,
        ledger_entry: LedgerEntry | None = None,
        gpu_closed: GpuIdleWarningClosed | None = None,
    ) -> bool:
        """Move a job (uow.jobs.move) with its events and, when it ends, its actual cost and
        the close of its idle-GPU warning (`gpu_closed`, said only if it was still open)."""
        async with self.unit() as uow:
            if not await uow.jobs.move(job, transition):
                return False
            if ledger_entry is not None:
                await uow.ledger.add(ledger_entry)
            uow.emit(*new_events)
            if gpu_closed is not None and await uow.jobs.close_gpu_warning(
                job.id, gpu_closed.warning_id, gpu_closed.outcome
            ):
                uow.emit(gpu_closed)
            await uow.commit()
        return True

    async def set_layout(
        self, job_id: str, layout: JobLayout, new_events: Sequence[Event] = ()
    ) -> None:
        async with self.unit() as uow:
            await uow.jobs.set_layout(job_id, layout)
            uow.emit(*new_events)
            await uow.commit()

    async def set_nodes(self, job_id: str, nodes: tuple[int, ...]) -> None:
        async with self.unit() as uow:
            await uow.jobs.set_nodes(job_id, nodes)
            await uow.commit()

    async def set_conversation(self, job_id: str, conversation: Conversation) -> None:
        async with self.unit() as uow:
            await uow.jobs.set_conversation(job_id, conversation)
            await uow.commit()

    async def set_wall_clock_warned(
        self, job_id: str, at: datetime | None, new_events: Sequence[Event] = ()
    ) -> None:
        async with self.unit() as uow:
            await uow.jobs.set_wall_clock_warned(job_id, at)
            uow.emit(*new_events, at=at)
            await uow.commit()

    async def set_gpu_use(
        self, job_id: str, use: GpuUse | None, idle_since: datetime | None
    ) -> None:
        async with self.unit() as uow:
            await uow.jobs.set_gpu_use(job_id, use, idle_since)
            await uow.commit()

    async def give_gpu_warning(
        self, job_id: str, warning_id: str, at: datetime, new_events: Sequence[Event] = ()
    ) -> bool:
        """Stored with its announcement, or not at all (it was given already)."""
        async with self.unit() as uow:
            if not await uow.jobs.give_gpu_warning(job_id, warning_id, at):
                return False
            uow.emit(*new_events, at=at)
            await uow.commit()
        return True

    async def close_gpu_warning(
        self, job_id: str, warning_id: str, outcome: str, new_events: Sequence[Event] = ()
    ) -> bool:
        async with self.unit() as uow:
            if not await uow.jobs.close_gpu_warning(job_id, warning_id, outcome):
                return False
            uow.emit(*new_events)
            await uow.commit()
        return True

    async def get_job(self, job_id: str) -> Job | None:
        async with self.unit() as uow:
            return await uow.jobs.get(job_id)

    async def find_job(self, name: str) -> Job | None:
        async with self.unit() as uow:
            return await uow.jobs.find(name)

    async def list_jobs(
        self,
        *,
        cluster: str | None = None,
        states: Iterable[JobState] | None = None,
        include_deleted: bool = False,
        sweep_id: str | None = None,
    ) -> list[Job]:
        async with self.unit() as uow:
            return await uow.jobs.list(
                cluster=cluster, states=states, include_deleted=include_deleted, sweep_id=sweep_id
            )

    async def get_sweep(self, sweep_id: str) -> JobSweep | None:
        async with self.unit() as uow:
            return await uow.sweeps.get(sweep_id)

    async def count_jobs_by_state(self) -> dict[JobState, int]:
        async with self.unit() as uow:
            return await uow.jobs.count_by_state()

    async def get_oldest_queued(self) -> datetime | None:
        async with self.unit() as uow:
            return await uow.jobs.oldest_queued()

    # -- logs and metrics -------------------------------------------------------------------

    async def get_log_offsets(self, job_id: str) -> dict[str, tuple[int, int]]:
        async with self.unit() as uow:
            return await uow.logs.get_offsets(job_id)

    async def commit_log(
        self,
        job_id: str,
        offsets: dict[str, tuple[int, int]],
        new_events: Sequence[Event],
        points: Sequence[MetricPoint],
        progress: Progress | None,
        last_metrics: dict[str, float] | None,
    ) -> None:
        """New offsets, the snippets they produced and parsed metrics, all or nothing."""
        async with self.unit() as uow:
            await uow.logs.advance(job_id, offsets, points, progress, last_metrics)
            uow.emit(*new_events)
            await uow.commit()

    async def commit_logs(self, advances: Sequence[LogAdvance]) -> None:
        """Several jobs' log news in one transaction (a tail round's batch), all or nothing."""
        if not advances:
            return
        async with self.unit() as uow:
            await uow.logs.advance_all(advances)
            uow.emit(*(e for a in advances for e in a.events))
            await uow.commit()

    async def list_metrics(self, job_id: str) -> list[MetricPoint]:
        async with self.unit() as uow:
            return await uow.logs.list_metrics(job_id)

    # -- the outbox and sent messages -------------------------------------------------------

    async def add_events(self, new_events: Sequence[Event]) -> None:
        async with self.unit() as uow:
            uow.emit(*new_events)
            await uow.commit()

    async def pending_events(
        self, limit: int = 100, *, job_id: str | None = None, of_job: bool = False
    ) -> list[tuple[int, Event]]:
        async with self.unit() as uow:
            return await uow.outbox.pending(limit, job_id=job_id, of_job=of_job)

    async def pending_job_ids(self) -> list[str | None]:
        async with self.unit() as uow:
            return await uow.outbox.pending_job_ids()

    async def mark_all_delivered(self, event_ids: Sequence[int], at: datetime) -> None:
        async with self.unit() as uow:
            await uow.outbox.mark_delivered(event_ids, at)
            await uow.commit()

    async def count_events(self, *, kind: str | None = None, job_id: str | None = None) -> int:
        async with self.unit() as uow:
            return await uow.outbox.count(kind=kind, job_id=job_id)

    async def get_outbox_backlog(self) -> tuple[int, datetime | None]:
        async with self.unit() as uow:
            return await uow.outbox.backlog()

    async def recorded_keys(self, keys: Sequence[str]) -> set[str]:
        async with self.unit() as uow:
            return await uow.outbox.recorded_keys(keys)

    async def get_delivery(self, keys: Sequence[str]) -> tuple[str, str] | None:
        async with self.unit() as uow:
            return await uow.outbox.get_delivery(keys)

    async def record_delivery(
        self, keys: Sequence[str], channel: str, message_id: str, at: datetime
    ) -> None:
        async with self.unit() as uow:
            await uow.outbox.record_delivery(keys, channel, message_id, at)
            await uow.commit()

    async def add_intent(
        self, keys: Sequence[str], channel: str, marker: str, at: datetime
    ) -> None:
        async with self.unit() as uow:
            await uow.outbox.add_intent(keys, channel, marker, at)
            await uow.commit()

    async def list_intents(self) -> list[tuple[str, str, str]]:
        async with self.unit() as uow:
            return await uow.outbox.list_intents()

    async def drop_intents(self, keys: Sequence[str]) -> None:
        async with self.unit() as uow:
            await uow.outbox.drop_intents(keys)
            await uow.commit()

    # -- audit, approvals, schedules, prices (read by the bot and by tests) -----------------

    async def add_audit(self, entry: AuditEntry) -> None:
        async with self.unit() as uow:
            await uow.audit.add(entry)
            await uow.commit()

    async def list_audit(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        async with self.unit() as uow:
            return await uow.audit.list(target=target, limit=limit)

    async def get_approval(self, approval_id: str) -> Approval | None:
        async with self.unit() as uow:
            return await uow.approvals.get(approval_id)

    async def list_approvals(
        self, *, state: str | None = None, job_id: str | None = None
    ) -> list[Approval]:
        async with self.unit() as uow:
            return await uow.approvals.list(state=state, job_id=job_id)

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        async with self.unit() as uow:
            return await uow.schedules.get(schedule_id)

    async def list_schedules(
        self, *, channel: str | None = None, active: bool | None = None
    ) -> list[Schedule]:
        async with self.unit() as uow:
            return await uow.schedules.list(channel=channel, active=active)

    async def save_prices(self, rows: Sequence[PriceRow], source: str, at: datetime) -> None:
        """Replace the refreshed price cache: (sku, region, spot, usd_per_hour) rows."""
        async with self.unit() as uow:
            await uow.prices.replace(rows, source, at)
            await uow.commit()

    async def load_prices(self) -> list[tuple[str, str, bool, Decimal, datetime, str]]:
        async with self.unit() as uow:
            return await uow.prices.list()
