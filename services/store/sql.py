"""SqlStore: every write is one transaction, and events are stored with the change they announce."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, and_, delete, event, func, insert, make_url, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.clusters.lifecycle import ClusterState, ClusterTransition
from services.core.clock import utcnow
from services.core.errors import Conflict
from services.core.events import Event, event_from_payload
from services.jobs.lifecycle import JobState, JobTransition
from services.models import (
    Approval,
    AuditEntry,
    Cluster,
    ConfigSource,
    Conversation,
    FileLocation,
    IdleNotice,
    IdleState,
    Job,
    JobLayout,
    LedgerEntry,
    MetricPoint,
    Progress,
    Schedule,
    ScheduledJob,
    ScheduleRun,
    ShareMount,
    Vote,
)
from services.spend.approvals.lifecycle import ApprovalState, ApprovalTransition
from services.store.schema import (
    approvals,
    audit,
    budgets,
    clusters,
    deliveries,
    events,
    jobs,
    ledger,
    log_offsets,
    metrics,
    prices,
    safe_text,
    schedules,
    secrets_check,
    votes,
)
from services.store.sealing import SecretBox
from services.store.spend_rows import (
    approval_from,
    approval_row,
    aware,
    ledger_from,
    ledger_row,
    vote_from,
)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_FILES = ("", "-wal", "-shm", "-journal")  # the database and the files SQLite keeps beside it

log = logging.getLogger(__name__)

_SEQ_LOCK = 0x6A6F6273  # the PostgreSQL advisory lock that orders job submissions ("jobs")
_LIFECYCLE_COLUMNS = ("state", "queued_at", "started_at", "ended_at", "exit_code", "error", "nodes")

INTENT = "?"  # a deliveries row whose message id starts so is an intent, not a record


class SqlStore:
    """Clusters, jobs, log offsets, metrics and the event outbox in one database.

    Secret fields (a job.json's secrets, passwords and keys, inline job.json of schedules, the
    typed commands in the audit table) are sealed with `secrets` on their way in; without a
    box, with a key of this process only."""

    def __init__(self, url: str, *, echo: bool = False, secrets: SecretBox | None = None) -> None:
        self.url = url
        self._box = secrets or SecretBox.ephemeral()
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            connect_args["timeout"] = 30
        self._engine: AsyncEngine = create_async_engine(url, echo=echo, connect_args=connect_args)
        if url.startswith("sqlite"):
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision, and make sure the secrets in the
        database are sealed with the current key (SecretsKeyError if they cannot be opened)."""
        if self._engine.dialect.name == "sqlite":
            _private_sqlite_files(self.url)
        async with self._engine.begin() as conn:
            await conn.run_sync(_upgrade)
            resealed = await self._check_key(conn)
        if resealed:
            await self._scrub()

    async def _check_key(self, conn: AsyncConnection) -> int:
        """Seal what an older version stored in plain text (first start), or re-seal what the
        previous key sealed (rotation); refuse a key that opens neither. Returns the rows
        rewritten."""
        box = self._box
        check = (await conn.execute(select(secrets_check.c.value))).scalar_one_or_none()
        if check is not None and box.recognise(check):
            return 0
        if check is None:
            count = await _reseal(conn, box.seal_spec, box.seal)
            await conn.execute(insert(secrets_check).values(id=1, value=box.check_value()))
            if count:
                log.info("sealed the secret fields of %d rows stored in plain text", count)
        else:
            count = await _reseal(conn, box.rotate_spec, box.rotate)
            await conn.execute(update(secrets_check).values(value=box.check_value()))
            log.info("re-sealed %d stored rows with the new SECRETS_KEY", count)
        return count

    async def _scrub(self) -> None:
        """Rewrite the tables so the old values of resealed rows are not left in free pages
        (SQLite: and in its write-ahead log; PostgreSQL: in dead row versions)."""
        sqlite = self._engine.dialect.name == "sqlite"
        statements = (
            ["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"]
            if sqlite
            else ["VACUUM FULL jobs, schedules, audit"]
        )
        async with self._engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await auto.exec_driver_sql(statement)

    def open_spec(self, spec_json: str) -> str:
        """A stored job's job.json with its secrets in plain text: for launching it, only."""
        return self._box.open_spec(spec_json)

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(select(1))

    async def aclose(self) -> None:
        await self._engine.dispose()

    # -- clusters ---------------------------------------------------------------------------

    async def insert_cluster(self, cluster: Cluster, new_events: Sequence[Event] = ()) -> None:
        async with self._engine.begin() as conn:
            try:
                await conn.execute(insert(clusters).values(**_cluster_row(cluster)))
            except IntegrityError as err:
                raise Conflict(f"cluster {cluster.name} already exists") from err
            await _add_events(conn, new_events, cluster.created_at)

    async def update_cluster(
        self,
        cluster: Cluster,
        new_events: Sequence[Event] = (),
        *,
        transition: ClusterTransition | None = None,
    ) -> None:
        """Write the cluster's settings; its state only with a `transition` from the lifecycle,
        and then only while the stored state still is `transition.old` (else Conflict)."""
        row = _cluster_row(cluster)
        stmt = update(clusters).where(clusters.c.name == cluster.name)
        if transition is None:
            del row["state"]
        else:
            _check_moved(cluster.state, transition.new, transition)
            stmt = stmt.where(clusters.c.state == transition.old.value)
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt.values(row))
            if transition is not None and result.rowcount == 0:
                raise Conflict(
                    f"cluster {cluster.name} is no longer {transition.old.value}; "
                    f"it did not become {transition.new.value}"
                )
            await _add_events(conn, new_events, None)

    async def delete_cluster(self, name: str, new_events: Sequence[Event] = ()) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(clusters.delete().where(clusters.c.name == name))
            await _add_events(conn, new_events, None)

    async def update_idle(
        self, name: str, idle: IdleState, new_events: Sequence[Event] = ()
    ) -> None:
        """Only the idle bookkeeping (update_cluster never writes it: a stale copy of a cluster
        must not bring back a warning that was answered)."""
        async with self._engine.begin() as conn:
            stmt = update(clusters).where(clusters.c.name == name).values(_idle_row(idle))
            await conn.execute(stmt)
            await _add_events(conn, new_events, None)

    async def get_cluster(self, name: str) -> Cluster | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(clusters).where(clusters.c.name == name))).first()
        return None if row is None else _cluster_from(row._mapping)

    async def list_clusters(self) -> list[Cluster]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(clusters).order_by(clusters.c.name))
            return [_cluster_from(r._mapping) for r in rows]

    # -- jobs -------------------------------------------------------------------------------

    async def insert_job(
        self,
        job: Job,
        new_events: Sequence[Event] = (),
        *,
        approval: Approval | None = None,
        ledger_entry: LedgerEntry | None = None,
        run: ScheduleRun | None = None,
    ) -> Job:
        """A new job, with its approval request and estimate if any, in one transaction; with
        `run`, only if that schedule run is still unclaimed (else Conflict, nothing stored)."""
        async with self._engine.begin() as conn:
            if run is not None:
                claimed = await _claim_run(
                    conn, run, last_job_id=job.id, last_job_name=job.name, last_error=None
                )
                if not claimed:  # leaving the block by an error rolls the transaction back
                    raise Conflict(f"schedule {run.schedule_id} has run already")
            if conn.dialect.name == "postgresql":
                # Submissions take turns, or two would read the same max(seq); the lock ends
                # with the transaction. (SQLite locks the database for the one INSERT below.)
                await conn.execute(select(func.pg_advisory_xact_lock(_SEQ_LOCK)))
            # The next place in the queue is read by the INSERT itself, never before it.
            seq = select(func.coalesce(func.max(jobs.c.seq), 0) + 1).scalar_subquery()
            try:
                await conn.execute(insert(jobs).values(seq=seq, **_new_job_row(job, self._box)))
            except IntegrityError as err:
                raise Conflict(f"job {job.name} already exists") from err
            if approval is not None:
                await conn.execute(insert(approvals).values(approval_row(approval)))
            if ledger_entry is not None:
                await conn.execute(insert(ledger).values(ledger_row(ledger_entry)))
            await _add_events(conn, new_events, job.created_at)
        return job

    async def update_job(
        self,
        job: Job,
        new_events: Sequence[Event] = (),
        *,
        transition: JobTransition,
        ledger_entry: LedgerEntry | None = None,
    ) -> bool:
        """Write the job's lifecycle columns (state, times, exit code, error, nodes) for a
        `transition` built by the lifecycle, only if the stored state still is its `old`
        (else nothing, and False).

        Layout, conversation, progress and metrics have writers of their own, so a transition
        computed from an older snapshot never undoes them."""
        _check_moved(job.state, transition.new, transition)
        async with self._engine.begin() as conn:
            stmt = update(jobs).where(jobs.c.id == job.id, jobs.c.state == transition.old.value)
            row = _job_row(job)
            result = await conn.execute(stmt.values({k: row[k] for k in _LIFECYCLE_COLUMNS}))
            if result.rowcount == 0:
                await conn.rollback()
                return False
            if ledger_entry is not None:
                await conn.execute(insert(ledger).values(ledger_row(ledger_entry)))
            await _add_events(conn, new_events, None)
        return True

    async def set_layout(
        self, job_id: str, layout: JobLayout, new_events: Sequence[Event] = ()
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(layout=_layout_row(layout))
            )
            await _add_events(conn, new_events, None)

    async def delete_job(self, job_id: str) -> None:
        """Frees the job's name; its events and metrics stay for the record."""
        async with self._engine.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(deleted=True))

    async def get_job(self, job_id: str) -> Job | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return None if row is None else _job_from(row._mapping)

    async def find_job(self, name: str) -> Job | None:
        async with self._engine.connect() as conn:
            stmt = select(jobs).where(jobs.c.name == name, jobs.c.deleted.is_(False))
            row = (await conn.execute(stmt)).first()
        return None if row is None else _job_from(row._mapping)

    async def list_jobs(
        self,
        *,
        cluster: str | None = None,
        states: Iterable[JobState] | None = None,
        include_deleted: bool = False,
    ) -> list[Job]:
        """Jobs in submission (FIFO) order; deleted ones only when asked (the runner asks)."""
        stmt = select(jobs).order_by(jobs.c.seq, jobs.c.created_at, jobs.c.id)
        if not include_deleted:
            stmt = stmt.where(jobs.c.deleted.is_(False))
        if cluster is not None:
            stmt = stmt.where(jobs.c.cluster == cluster)
        if states is not None:
            stmt = stmt.where(jobs.c.state.in_([s.value for s in states]))
        async with self._engine.connect() as conn:
            return [_job_from(r._mapping) for r in await conn.execute(stmt)]

    async def set_conversation(self, job_id: str, conversation: Conversation) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(conversation=_conversation_row(conversation))
            )

    # -- logs and metrics -------------------------------------------------------------------

    async def get_log_offsets(self, job_id: str) -> dict[str, tuple[int, int]]:
        """file -> (committed byte offset, lines delivered so far)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(log_offsets).where(log_offsets.c.job_id == job_id))
            return {r.file: (r.offset, r.lines) for r in rows}

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
        async with self._engine.begin() as conn:
            for file, (offset, lines) in offsets.items():
                values = {"offset": offset, "lines": lines}
                changed = await conn.execute(
                    update(log_offsets)
                    .where(log_offsets.c.job_id == job_id, log_offsets.c.file == file)
                    .values(values)
                )
                if changed.rowcount == 0:
                    await conn.execute(
                        insert(log_offsets).values(job_id=job_id, file=file, **values)
                    )
            for p in points:
                await _upsert_metric(conn, job_id, p)
            job_values: dict[str, Any] = {}
            if progress is not None:
                job_values["progress"] = {"current": progress.current, "total": progress.total}
            if last_metrics:
                job_values["last_metrics"] = last_metrics
            if job_values:
                await conn.execute(update(jobs).where(jobs.c.id == job_id).values(job_values))
            await _add_events(conn, new_events, None)

    async def list_metrics(self, job_id: str) -> list[MetricPoint]:
        async with self._engine.connect() as conn:
            stmt = select(metrics).where(metrics.c.job_id == job_id).order_by(metrics.c.step)
            return [MetricPoint(r.step, r.name, r.value) for r in await conn.execute(stmt)]

    # -- events -----------------------------------------------------------------------------

    async def add_events(self, new_events: Sequence[Event]) -> None:
        async with self._engine.begin() as conn:
            await _add_events(conn, new_events, None)

    async def pending_events(
        self, limit: int = 100, *, job_id: str | None = None, of_job: bool = False
    ) -> list[tuple[int, Event]]:
        """Undelivered events, oldest first; with `of_job`, only those of `job_id` (None: the
        events of no job, such as cluster changes)."""
        stmt = select(events).where(events.c.delivered_at.is_(None))
        if of_job:
            stmt = stmt.where(
                events.c.job_id == job_id if job_id is not None else events.c.job_id.is_(None)
            )
        stmt = stmt.order_by(events.c.id).limit(limit)
        async with self._engine.connect() as conn:
            rows = await conn.execute(stmt)
            return [(r.id, event_from_payload(r.kind, r.payload)) for r in rows]

    async def pending_job_ids(self) -> list[str | None]:
        """Whose events wait for delivery (None: events of no job), oldest first."""
        stmt = (
            select(events.c.job_id, func.min(events.c.id).label("first"))
            .where(events.c.delivered_at.is_(None))
            .group_by(events.c.job_id)
            .order_by("first")
        )
        async with self._engine.connect() as conn:
            return [row.job_id for row in await conn.execute(stmt)]

    async def mark_delivered(self, event_id: int, at: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(events).where(events.c.id == event_id).values(delivered_at=at)
            )

    async def count_events(self, *, kind: str | None = None, job_id: str | None = None) -> int:
        stmt = select(func.count()).select_from(events)
        if kind is not None:
            stmt = stmt.where(events.c.kind == kind)
        if job_id is not None:
            stmt = stmt.where(events.c.job_id == job_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def count_jobs_by_state(self) -> dict[JobState, int]:
        """How many jobs (not deleted) are in each state; one aggregate query, for /metrics."""
        stmt = (
            select(jobs.c.state, func.count())
            .where(jobs.c.deleted.is_(False))
            .group_by(jobs.c.state)
        )
        async with self._engine.connect() as conn:
            return {JobState(state): int(n) for state, n in await conn.execute(stmt)}

    async def get_oldest_queued(self) -> datetime | None:
        """When the job that has waited longest in a queue was queued (None: no queue)."""
        stmt = select(func.min(jobs.c.queued_at)).where(jobs.c.state == JobState.QUEUED.value)
        async with self._engine.connect() as conn:
            return aware((await conn.execute(stmt)).scalar_one())

    async def get_outbox_backlog(self) -> tuple[int, datetime | None]:
        """Undelivered events: how many, and when the oldest of them was stored."""
        stmt = select(func.count(), func.min(events.c.created_at)).where(
            events.c.delivered_at.is_(None)
        )
        async with self._engine.connect() as conn:
            count, oldest = (await conn.execute(stmt)).one()
            return int(count), aware(oldest)

    # -- sent messages (exactly-once notifications) -----------------------------------------

    async def recorded_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these notification keys were already sent (intents do not count)."""
        if not keys:
            return set()
        async with self._engine.connect() as conn:
            stmt = select(deliveries.c.key).where(
                deliveries.c.key.in_(list(keys)), ~deliveries.c.message_id.startswith(INTENT)
            )
            return {row.key for row in await conn.execute(stmt)}

    async def get_delivery(self, keys: Sequence[str]) -> tuple[str, str] | None:
        """(channel, message id) a notification with any of these keys was sent as, or None.
        The channel is the one Slack answered with: a post to a user id is in the DM (D…)."""
        if not keys:
            return None
        async with self._engine.connect() as conn:
            stmt = select(deliveries.c.channel, deliveries.c.message_id).where(
                deliveries.c.key.in_(list(keys)), ~deliveries.c.message_id.startswith(INTENT)
            )
            row = (await conn.execute(stmt.limit(1))).first()
            return None if row is None else (row.channel, row.message_id)

    async def record_delivery(
        self, keys: Sequence[str], channel: str, message_id: str, at: datetime
    ) -> None:
        """Remember that one message carried these keys, in the channel Slack put it in; an
        existing record is kept, an intent (see `add_intent`) becomes the record."""
        async with self._engine.begin() as conn:
            await _put_deliveries(conn, keys, channel, message_id, at, replace=INTENT)

    async def add_intent(
        self, keys: Sequence[str], channel: str, marker: str, at: datetime
    ) -> None:
        """Before a message goes out: "these keys may be sent as the message `marker` names".
        A crash before `record_delivery` leaves the intent, and the next start asks Slack."""
        async with self._engine.begin() as conn:
            await _put_deliveries(conn, keys, channel, INTENT + marker, at, replace=INTENT)

    async def list_intents(self) -> list[tuple[str, str, str]]:
        """(key, channel, marker) of every message whose sending was begun but not recorded."""
        async with self._engine.connect() as conn:
            stmt = select(deliveries).where(deliveries.c.message_id.startswith(INTENT))
            rows = await conn.execute(stmt.order_by(deliveries.c.sent_at))
            return [(r.key, r.channel, r.message_id.removeprefix(INTENT)) for r in rows]

    async def drop_intents(self, keys: Sequence[str]) -> None:
        """Those messages never reached Slack: forget the intents, so they are sent again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(deliveries).where(
                    deliveries.c.key.in_(list(keys)), deliveries.c.message_id.startswith(INTENT)
                )
            )

    async def mark_all_delivered(self, event_ids: Sequence[int], at: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(events).where(events.c.id.in_(list(event_ids))).values(delivered_at=at)
            )

    # -- audit ------------------------------------------------------------------------------

    async def add_audit(self, entry: AuditEntry) -> None:
        async with self._engine.begin() as conn:
            row = asdict(entry)
            row["detail"] = (
                None if entry.detail is None else self._box.seal(safe_text(entry.detail))
            )
            await conn.execute(insert(audit).values(**row))

    async def list_audit(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        stmt = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if target is not None:
            stmt = stmt.where(audit.c.target == target)
        async with self._engine.connect() as conn:
            rows = await conn.execute(stmt)
            return [
                AuditEntry(
                    at=aware(r.at) or r.at,
                    actor=r.actor,
                    channel=r.channel,
                    action=r.action,
                    target=r.target,
                    outcome=r.outcome,
                    detail=None if r.detail is None else self._box.open(r.detail),
                )
                for r in rows
            ]

    # -- approvals ---------------------------------------------------------------------------

    async def get_approval(self, approval_id: str) -> Approval | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(approvals).where(approvals.c.id == approval_id))
            ).first()
            if row is None:
                return None
            return approval_from(row._mapping, await _votes(conn, approval_id))

    async def list_approvals(
        self, *, state: str | None = None, job_id: str | None = None
    ) -> list[Approval]:
        stmt = select(approvals).order_by(approvals.c.created_at)
        if state is not None:
            stmt = stmt.where(approvals.c.state == state)
        if job_id is not None:
            stmt = stmt.where(approvals.c.job_id == job_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
            return [approval_from(r._mapping, await _votes(conn, r.id)) for r in rows]

    async def add_vote(self, approval_id: str, vote: Vote) -> bool:
        """Record one approver's vote; False when this approver had voted already."""
        async with self._engine.begin() as conn:
            try:
                await conn.execute(
                    insert(votes).values(
                        approval_id=approval_id,
                        approver=vote.approver,
                        decision=vote.decision,
                        at=vote.at,
                        reason=vote.reason,
                    )
                )
            except IntegrityError:
                await conn.rollback()
                return False
        return True

    async def close_approval(
        self,
        approval_id: str,
        decision: ApprovalTransition,
        at: datetime,
        job: Job | None,
        new_events: Sequence[Event],
        *,
        job_transition: JobTransition | None = None,
        extend_by: timedelta | None = None,
    ) -> bool:
        """Decide an approval once by a `decision` from its lifecycle (False if it was decided
        already), moving its job (`job` by `job_transition`) or lengthening its wall clock
        (`extend_by`) with it."""
        if not isinstance(decision, ApprovalTransition):
            raise TypeError("close_approval takes an ApprovalTransition from the lifecycle")
        if job is not None:
            if job_transition is None:
                raise TypeError("moving a job with its approval takes its JobTransition")
            _check_moved(job.state, job_transition.new, job_transition)
        async with self._engine.begin() as conn:
            closed = await conn.execute(
                update(approvals)
                .where(approvals.c.id == approval_id, approvals.c.state == decision.old.value)
                .values(state=decision.new.value, decided_at=at)
            )
            if closed.rowcount == 0:
                await conn.rollback()
                return False
            if job is not None and job_transition is not None:
                stmt = update(jobs).where(
                    jobs.c.id == job.id, jobs.c.state == job_transition.old.value
                )
                row = _job_row(job)
                columns = ("state", "queued_at", "ended_at", "error")
                moved = await conn.execute(stmt.values({k: row[k] for k in columns}))
                if moved.rowcount == 0:  # the job moved meanwhile: decide nothing
                    await conn.rollback()
                    return False
            if extend_by is not None:
                of_approval = select(approvals.c.job_id).where(approvals.c.id == approval_id)
                await conn.execute(_extend(jobs.c.id == of_approval.scalar_subquery(), extend_by))
            await _add_events(conn, new_events, at)
        return True

    # -- ledger, budgets, prices ------------------------------------------------------------

    async def add_ledger(self, entry: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(ledger).values(ledger_row(entry)))

    async def list_ledger(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        kind: str | None = None,
        job_id: str | None = None,
    ) -> list[LedgerEntry]:
        stmt = select(ledger).order_by(ledger.c.id)
        if since is not None:
            stmt = stmt.where(ledger.c.at >= since)
        if until is not None:
            stmt = stmt.where(ledger.c.at < until)
        if kind is not None:
            stmt = stmt.where(ledger.c.kind == kind)
        if job_id is not None:
            stmt = stmt.where(ledger.c.job_id == job_id)
        async with self._engine.connect() as conn:
            return [ledger_from(r._mapping) for r in await conn.execute(stmt)]

    async def set_budget(self, channel: str, monthly: Decimal, by: str, at: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(budgets.delete().where(budgets.c.channel == channel))
            await conn.execute(
                insert(budgets).values(
                    channel=channel, monthly_usd=str(monthly), set_by=by, set_at=at
                )
            )

    async def get_budget(self, channel: str) -> Decimal | None:
        async with self._engine.connect() as conn:
            stmt = select(budgets.c.monthly_usd).where(budgets.c.channel == channel)
            value = (await conn.execute(stmt)).scalar_one_or_none()
        return None if value is None else Decimal(value)

    async def save_prices(
        self, rows: Sequence[tuple[str, str, bool, Decimal]], source: str, at: datetime
    ) -> None:
        """Replace the refreshed price cache: (sku, region, spot, usd_per_hour) rows."""
        async with self._engine.begin() as conn:
            await conn.execute(prices.delete())
            if rows:
                await conn.execute(
                    insert(prices),
                    [
                        {
                            "sku": sku,
                            "region": region,
                            "spot": spot,
                            "usd_per_hour": str(rate),
                            "fetched_at": at,
                            "source": source,
                        }
                        for sku, region, spot, rate in rows
                    ],
                )

    async def load_prices(self) -> list[tuple[str, str, bool, Decimal, datetime, str]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(prices))
            return [
                (
                    r.sku,
                    r.region,
                    r.spot,
                    Decimal(r.usd_per_hour),
                    aware(r.fetched_at) or r.fetched_at,
                    r.source,
                )
                for r in rows
            ]

    async def extend_wall_clock(
        self,
        job_id: str,
        extra: timedelta,
        new_events: Sequence[Event] = (),
        *,
        expect: timedelta | None = None,
    ) -> bool:
        """Add to a running job's limit in the database itself; with `expect`, only while the
        limit is still that (False otherwise): of two clicks on one warning, one extends."""
        which = jobs.c.id == job_id
        if expect is not None:
            which = and_(which, jobs.c.max_wall_clock_s == int(expect.total_seconds()))
        async with self._engine.begin() as conn:
            result = await conn.execute(_extend(which, extra))
            if result.rowcount == 0:
                await conn.rollback()
                return False
            await _add_events(conn, new_events, None)
        return True

    async def add_extension_approval(self, approval: Approval, new_events: Sequence[Event]) -> bool:
        """One pending extension per job: False when one is waiting already."""
        async with self._engine.begin() as conn:
            waiting = await conn.execute(
                select(approvals.c.id).where(
                    approvals.c.job_id == approval.job_id,
                    approvals.c.kind == "extend",
                    approvals.c.state == ApprovalState.PENDING.value,
                )
            )
            if waiting.first() is not None:
                return False
            await conn.execute(insert(approvals).values(approval_row(approval)))
            await _add_events(conn, new_events, approval.created_at)
        return True

    async def set_wall_clock_warned(
        self, job_id: str, at: datetime | None, new_events: Sequence[Event] = ()
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(wall_clock_warned_at=at)
            )
            await _add_events(conn, new_events, at)

    # -- user schedules ---------------------------------------------------------------------

    async def insert_schedule(self, schedule: Schedule) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(schedules).values(_schedule_row(schedule, self._box)))

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        async with self._engine.connect() as conn:
            stmt = select(schedules).where(schedules.c.id == schedule_id)
            row = (await conn.execute(stmt)).first()
        return None if row is None else _schedule_from(row._mapping, self._box)

    async def list_schedules(
        self, *, channel: str | None = None, active: bool | None = None
    ) -> list[Schedule]:
        """Oldest first; of one channel when given."""
        stmt = select(schedules).order_by(schedules.c.created_at, schedules.c.id)
        if channel is not None:
            stmt = stmt.where(schedules.c.channel == channel)
        if active is not None:
            stmt = stmt.where(schedules.c.active.is_(active))
        async with self._engine.connect() as conn:
            return [_schedule_from(r._mapping, self._box) for r in await conn.execute(stmt)]

    async def delete_schedule(self, schedule_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(schedules.delete().where(schedules.c.id == schedule_id))
        return bool(result.rowcount)

    async def close_run(
        self, run: ScheduleRun, *, error: str, new_events: Sequence[Event] = ()
    ) -> bool:
        """A run that submitted nothing (failed, or missed): recorded with its events once;
        False when the run was claimed already (or the schedule is gone)."""
        async with self._engine.begin() as conn:
            if not await _claim_run(
                conn, run, last_job_id=None, last_job_name=None, last_error=error
            ):
                await conn.rollback()
                return False
            await _add_events(conn, new_events, run.at)
        return True


def _check_moved(state: object, new: object, transition: object) -> None:
    """Only a transition built by a lifecycle module, and the row it moves, may be written."""
    kinds = (JobTransition, ClusterTransition, ApprovalTransition)
    if not isinstance(transition, kinds):
        raise TypeError("state changes take a transition built by a lifecycle module")
    if state != new:
        raise Conflict(f"the row is {state}, its transition says {new}")


async def _claim_run(conn: AsyncConnection, run: ScheduleRun, **outcome: Any) -> bool:
    """Move the schedule past `run.due`, only if it still waits for exactly that run."""
    result = await conn.execute(
        update(schedules)
        .where(
            schedules.c.id == run.schedule_id,
            schedules.c.active.is_(True),
            schedules.c.next_run_at == run.due,
        )
        .values(
            next_run_at=run.following,
            last_run_at=run.at,
            runs=schedules.c.runs + 1,
            active=run.following is not None,
            **outcome,
        )
    )
    return bool(result.rowcount)


def _schedule_row(s: Schedule, box: SecretBox) -> dict[str, Any]:
    job = s.job
    return {
        "id": s.id,
        "kind": s.kind,
        "expression": s.expression,
        "timezone": s.timezone,
        "request": {
            "name": job.name,
            "cluster": job.cluster,
            "config": _config_row(job.config, box.seal),
            "resource_group": job.resource_group,
            "workspace": job.workspace,
            "experiment": job.experiment,
            "may_read_paths": job.may_read_paths,
        },
        "requester": s.requester,
        "channel": s.channel,
        "created_at": s.created_at,
        "next_run_at": s.next_run_at,
        "last_run_at": s.last_run_at,
        "last_job_id": s.last_job_id,
        "last_job_name": s.last_job_name,
        "last_error": s.last_error,
        "runs": s.runs,
        "active": s.active,
    }


def _config_row(config: ConfigSource, change: Callable[[str], str]) -> dict[str, str]:
    """An inline job.json is the user's whole job, secrets and all: sealed as one value."""
    value = change(config.value) if config.kind == "inline" else config.value
    return {"kind": config.kind, "value": value}


def _schedule_from(r: Any, box: SecretBox) -> Schedule:
    request = dict(r["request"])
    config = _config_row(ConfigSource(**request.pop("config")), box.open)
    created = aware(r["created_at"])
    assert created is not None
    return Schedule(
        id=r["id"],
        kind=r["kind"],
        expression=r["expression"],
        timezone=r["timezone"],
        job=ScheduledJob(config=ConfigSource(config["kind"], config["value"]), **request),
        requester=r["requester"],
        channel=r["channel"],
        created_at=created,
        next_run_at=aware(r["next_run_at"]),
        last_run_at=aware(r["last_run_at"]),
        last_job_id=r["last_job_id"],
        last_job_name=r["last_job_name"],
        last_error=r["last_error"],
        runs=r["runs"],
        active=bool(r["active"]),
    )


def _extend(which: Any, extra: timedelta) -> Any:
    """UPDATE jobs: a running job's limit grows by `extra`, computed by the database."""
    seconds = int(extra.total_seconds())
    return (
        update(jobs)
        .where(which, jobs.c.state == JobState.RUNNING.value)
        .values(max_wall_clock_s=jobs.c.max_wall_clock_s + seconds)
    )


async def _put_deliveries(
    conn: AsyncConnection,
    keys: Sequence[str],
    channel: str,
    message_id: str,
    at: datetime,
    *,
    replace: str,
) -> None:
    """Insert a row per new key; rows whose message id starts with `replace` are overwritten."""
    unique = list(dict.fromkeys(keys))
    found = await conn.execute(
        select(deliveries.c.key, deliveries.c.message_id).where(deliveries.c.key.in_(unique))
    )
    existing = {row.key: row.message_id for row in found}
    stale = [k for k, m in existing.items() if m.startswith(replace)]
    if stale:
        await conn.execute(
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
        await conn.execute(insert(deliveries), rows)


async def _votes(conn: AsyncConnection, approval_id: str) -> tuple[Vote, ...]:
    stmt = select(votes).where(votes.c.approval_id == approval_id).order_by(votes.c.at)
    return tuple(vote_from(r._mapping) for r in await conn.execute(stmt))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the web app and the periodic work read while a tick writes.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _private_sqlite_files(url: str) -> None:
    """The database file is created 0600 (SQLite gives its -wal/-shm/-journal files the same
    mode), and a looser one left by an older version is tightened."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():
        return  # SQLite's own error says what is wrong
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for suffix in SQLITE_FILES:
        extra = path.with_name(path.name + suffix)
        if extra.exists() and extra.stat().st_mode & 0o077:
            extra.chmod(0o600)
            log.warning("tightened %s to mode 0600 (others could read it)", extra)


async def _reseal(
    conn: AsyncConnection, spec: Callable[[str], str], value: Callable[[str], str]
) -> int:
    """Rewrite every stored secret through `spec` (job.json text) or `value` (a whole value)."""
    count = 0
    for job_id, text in (await conn.execute(select(jobs.c.id, jobs.c.spec_json))).all():
        if (sealed_spec := spec(text)) != text:
            change = update(jobs).where(jobs.c.id == job_id).values(spec_json=sealed_spec)
            await conn.execute(change)
            count += 1
    found = await conn.execute(select(schedules.c.id, schedules.c.request))
    for schedule_id, request in found.all():
        config = ConfigSource(**request["config"])
        if config.kind == "inline":
            sealed = {**request, "config": _config_row(config, value)}
            change = update(schedules).where(schedules.c.id == schedule_id)
            await conn.execute(change.values(request=sealed))
            count += 1
    stmt = select(audit.c.id, audit.c.detail).where(audit.c.detail.is_not(None))
    for audit_id, detail in (await conn.execute(stmt)).all():
        await conn.execute(update(audit).where(audit.c.id == audit_id).values(detail=value(detail)))
        count += 1
    return count


def _upgrade(sync_conn: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


async def _add_events(
    conn: AsyncConnection, new_events: Sequence[Event], at: datetime | None
) -> None:
    if not new_events:
        return
    stamp = at or utcnow()
    await conn.execute(
        insert(events),
        [
            {
                "kind": e.kind,
                "job_id": e.job_id,
                "cluster": e.cluster,
                "payload": e.payload(),
                "created_at": stamp,
            }
            for e in new_events
        ],
    )


async def _upsert_metric(conn: AsyncConnection, job_id: str, p: MetricPoint) -> None:
    key = (metrics.c.job_id == job_id, metrics.c.step == p.step, metrics.c.name == p.name)
    changed = await conn.execute(update(metrics).where(*key).values(value=p.value))
    if changed.rowcount == 0:
        await conn.execute(
            insert(metrics).values(job_id=job_id, step=p.step, name=p.name, value=p.value)
        )


def _conversation_row(c: Conversation | None) -> dict[str, Any] | None:
    return None if c is None else {"channel": c.channel, "thread": c.thread, "user": c.user}


def _conversation_from(data: Any) -> Conversation | None:
    return None if not data else Conversation(data["channel"], data.get("thread"), data.get("user"))


def _cluster_row(c: Cluster) -> dict[str, Any]:
    return {
        "name": c.name,
        "resource_group": c.resource_group,
        "workspace": c.workspace,
        "vm_size": c.vm_size,
        "image": c.image,
        "vm_priority": c.vm_priority,
        "min_nodes": c.min_nodes,
        "max_nodes": c.max_nodes,
        "target_nodes": c.target_nodes,
        "autoscale": c.autoscale,
        "state": c.state.value,
        "mounts": [{"share": m.share, "mount_path": m.mount_path} for m in c.mounts],
        "admin_user": c.admin_user,
        "setup_task": c.setup_task,
        "created_by": c.created_by,
        "created_at": c.created_at,
        "conversation": _conversation_row(c.conversation),
        "error": c.error,
        "idle_timeout_s": c.idle_timeout_s,
    }


def _idle_row(idle: IdleState) -> dict[str, Any]:
    w = idle.warning
    return {
        "idle_since": idle.since,
        "idle_keep_until": idle.keep_until,
        "idle_warned_at": None if w is None else w.at,
        "idle_warning": None
        if w is None
        else {
            "id": w.id,
            "deadline": w.deadline.isoformat(),
            "nodes": w.nodes,
            "min_nodes": w.min_nodes,
            "saves_per_hour": None if w.saves_per_hour is None else str(w.saves_per_hour),
        },
    }


def _idle_from(r: Any) -> IdleState:
    data, at = r["idle_warning"], aware(r["idle_warned_at"])
    warning = None
    if data and at is not None:
        saves = data.get("saves_per_hour")
        warning = IdleNotice(
            id=data["id"],
            at=at,
            deadline=datetime.fromisoformat(data["deadline"]),
            nodes=data["nodes"],
            min_nodes=data["min_nodes"],
            saves_per_hour=None if saves is None else Decimal(saves),
        )
    return IdleState(
        since=aware(r["idle_since"]), warning=warning, keep_until=aware(r["idle_keep_until"])
    )


def _cluster_from(r: Any) -> Cluster:
    return Cluster(
        name=r["name"],
        resource_group=r["resource_group"],
        workspace=r["workspace"],
        vm_size=r["vm_size"],
        image=r["image"],
        vm_priority=r["vm_priority"],
        min_nodes=r["min_nodes"],
        max_nodes=r["max_nodes"],
        target_nodes=r["target_nodes"],
        autoscale=r["autoscale"],
        state=ClusterState(r["state"]),
        mounts=tuple(ShareMount(m["share"], m["mount_path"]) for m in r["mounts"]),
        admin_user=r["admin_user"],
        setup_task=r["setup_task"],
        created_by=r["created_by"],
        created_at=aware(r["created_at"]),
        conversation=_conversation_from(r["conversation"]),
        error=r["error"],
        idle_timeout_s=r["idle_timeout_s"],
        idle=_idle_from(r),
    )


def _layout_row(layout: JobLayout | None) -> dict[str, Any] | None:
    if layout is None:
        return None

    def loc(x: FileLocation | None) -> dict[str, str] | None:
        return None if x is None else {"share": x.share, "path": x.path}

    return {
        "stdouterr": loc(layout.stdouterr),
        "outputs": {k: loc(v) for k, v in layout.outputs.items()},
        "log_files": list(layout.log_files),
        "primary_log": layout.primary_log,
    }


def _layout_from(data: Any) -> JobLayout | None:
    if not data:
        return None

    def loc(x: Any) -> FileLocation | None:
        return None if x is None else FileLocation(x["share"], x["path"])

    outputs = {k: v for k, v in ((k, loc(v)) for k, v in data["outputs"].items()) if v is not None}
    return JobLayout(
        stdouterr=loc(data["stdouterr"]),
        outputs=outputs,
        log_files=tuple(data["log_files"]),
        primary_log=data["primary_log"],
    )


def _new_job_row(j: Job, box: SecretBox) -> dict[str, Any]:
    """The row of a new job: its job.json is stored once, with its secret fields sealed."""
    return {**_job_row(j), "spec_json": box.seal_spec(j.spec_json)}


def _job_row(j: Job) -> dict[str, Any]:
    """Every column a job's updates may write."""
    return {
        "id": j.id,
        "name": j.name,
        "cluster": j.cluster,
        "resource_group": j.resource_group,
        "workspace": j.workspace,
        "experiment": j.experiment,
        "state": j.state.value,
        "node_count": j.node_count,
        "toolkit": j.toolkit,
        "max_wall_clock_s": int(j.max_wall_clock.total_seconds()),
        "requester": j.requester,
        "created_at": j.created_at,
        "queued_at": j.queued_at,
        "started_at": j.started_at,
        "ended_at": j.ended_at,
        "exit_code": j.exit_code,
        "error": j.error,
        "nodes": list(j.nodes),
        "layout": _layout_row(j.layout),
        "progress": None
        if j.progress is None
        else {"current": j.progress.current, "total": j.progress.total},
        "last_metrics": dict(j.last_metrics),
        "container_image": j.container_image,
        "conversation": _conversation_row(j.conversation),
        "node_rate": None if j.node_rate is None else str(j.node_rate),
        "estimate": None if j.estimate is None else str(j.estimate),
        "wall_clock_warned_at": j.wall_clock_warned_at,
    }


def _job_from(r: Any) -> Job:
    progress = r["progress"]
    created = aware(r["created_at"])
    assert created is not None
    return Job(
        id=r["id"],
        name=r["name"],
        cluster=r["cluster"],
        resource_group=r["resource_group"],
        workspace=r["workspace"],
        experiment=r["experiment"],
        state=JobState(r["state"]),
        spec_json=r["spec_json"],
        node_count=r["node_count"],
        toolkit=r["toolkit"],
        max_wall_clock=timedelta(seconds=r["max_wall_clock_s"]),
        requester=r["requester"],
        created_at=created,
        conversation=_conversation_from(r["conversation"]),
        queued_at=aware(r["queued_at"]),
        started_at=aware(r["started_at"]),
        ended_at=aware(r["ended_at"]),
        exit_code=r["exit_code"],
        error=r["error"],
        nodes=tuple(r["nodes"]),
        layout=_layout_from(r["layout"]),
        progress=None if progress is None else Progress(progress["current"], progress["total"]),
        last_metrics=dict(r["last_metrics"] or {}),
        container_image=r["container_image"],
        node_rate=None if r["node_rate"] is None else Decimal(r["node_rate"]),
        estimate=None if r["estimate"] is None else Decimal(r["estimate"]),
        wall_clock_warned_at=aware(r["wall_clock_warned_at"]),
    )
