"""PostgreSQL as the store: what differs between databases, and a whole job through the bot.

The store's own test modules run on both databases too (BOTH_DATABASES in tests/conftest.py);
these tests run on both as well, except the bot's run, which is the PostgreSQL one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.config import Settings
from bot.lifecycle import running
from services.core.errors import Conflict
from services.core.events import LogSnippet
from services.jobs.lifecycle import JobState
from services.jobs.service import add_submission
from services.models import (
    AuditEntry,
    ConfigSource,
    LedgerEntry,
    MetricPoint,
    Schedule,
    ScheduledJob,
    ScheduleRun,
)
from services.spend.pricing import to_hours
from services.store import SqlStore
from services.store.engine import MIGRATIONS
from services.store.schema import metadata
from tests.conftest import NOW, make_cluster, make_job
from tests.fakes.slack import FakeSlack
from tests.pg import PostgresServer
from tests.slack.conftest import CHANNEL, JOB_SCRIPT, USER, SlackRig, job_json, rig_settings


async def _scalar(store: SqlStore, query: str) -> object:
    engine = create_async_engine(store.url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(query))).scalar_one()
    finally:
        await engine.dispose()


def _alembic(conn: Connection, action: str, revision: str) -> list[Any]:
    """Run one Alembic command on this connection; then the differences from schema.py."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    getattr(command, action)(cfg, revision)
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_each_migration_runs_up_and_down_and_ends_at_the_schema(store: SqlStore) -> None:
    revisions = sorted(p.name[:4] for p in (MIGRATIONS / "versions").glob("0*.py"))
    assert revisions[:5] == ["0001", "0002", "0003", "0004", "0005"]
    engine = create_async_engine(store.url)
    try:
        async with engine.begin() as conn:
            assert await conn.run_sync(_alembic, "downgrade", "base")  # everything differs
            for revision in revisions:
                differences = await conn.run_sync(_alembic, "upgrade", revision)
            assert differences == []  # the migrations build exactly what schema.py describes
    finally:
        await engine.dispose()
    await store.insert_job(make_job())
    assert [j.name for j in await store.list_jobs()] == ["j1"]


async def test_concurrent_submissions_each_get_their_own_place_in_the_queue(
    store: SqlStore,
) -> None:
    await asyncio.gather(*(store.insert_job(make_job(f"j{i}")) for i in range(30)))
    assert await _scalar(store, "SELECT count(DISTINCT seq) FROM jobs") == 30


async def test_times_of_any_zone_come_back_as_the_same_instant_in_utc(store: SqlStore) -> None:
    cest = timezone(timedelta(hours=2))
    job = make_job(created_at=datetime(2026, 11, 27, 14, 0, tzinfo=cest), started_at=NOW)
    await store.insert_job(job)
    stored = await store.get_job(job.id)
    assert stored is not None
    assert stored.created_at == NOW and stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() == timedelta(0)
    # Comparisons happen in the database: a zone other than UTC must not shift them.
    audit_at = datetime(2026, 11, 27, 13, 30, tzinfo=cest)  # 11:30 UTC
    await store.add_audit(AuditEntry(at=audit_at, actor="U1", action="a", outcome="allowed"))
    assert [e.at for e in await store.list_audit()] == [audit_at]


async def test_text_with_nul_is_stored_on_every_database(store: SqlStore) -> None:
    """PostgreSQL refuses NUL in text; job output and typed text may hold one."""
    await store.insert_cluster(make_cluster())
    job = await store.insert_job(make_job(error="exit\x00code", state=JobState.FAILED))
    await store.add_audit(
        AuditEntry(at=NOW, actor="U1", action="job create", outcome="denied", detail="a\x00b")
    )
    snippet = LogSnippet(job_id=job.id, file="stdout.txt", lines=("nul\x00here", "\ud800"))
    await store.add_events([snippet])
    stored = await store.get_job(job.id)
    assert stored is not None and stored.error == "exit\ufffdcode"
    assert (await store.list_audit())[0].detail == "a\ufffdb"
    ((_, event),) = await store.pending_events()
    assert event == snippet  # JSON escapes NUL and lone surrogates itself


async def test_a_schedule_run_is_claimed_once_whatever_zone_its_times_come_in(
    store: SqlStore,
) -> None:
    """A run is claimed by comparing its due time in the database: an `at` typed in Berlin time
    must match the same instant given in UTC, on both databases."""
    berlin = ZoneInfo("Europe/Berlin")
    due = datetime(2026, 12, 1, 2, 0, tzinfo=berlin)
    inline = '{"properties": {"customToolkitSettings": {"commandLine": "echo $(id) \x00"}}}'
    schedule = Schedule(
        id="s1",
        kind="at",
        expression="2026-12-01 02:00",
        timezone="Europe/Berlin",
        job=ScheduledJob(name="nightly", cluster="c1", config=ConfigSource("inline", inline)),
        requester="U1",
        channel="C1",
        created_at=NOW,
        next_run_at=due,
    )
    async with store.unit() as uow:
        await uow.schedules.add(schedule)
        await uow.commit()
    assert await store.get_schedule("s1") == schedule
    run = ScheduleRun("s1", due=due.astimezone(UTC), following=None, at=due)
    async with store.unit() as uow:
        await add_submission(uow, make_job("nightly"), run)
        await uow.commit()
    with pytest.raises(Conflict):  # the same run again: nothing stored
        async with store.unit() as uow:
            await add_submission(uow, make_job("nightly-2"), run)
            await uow.commit()
    async with store.unit() as uow:
        assert not await uow.schedules.claim(run, error="too late")
    (stored,) = await store.list_schedules()
    assert (stored.runs, stored.active, stored.last_job_name) == (1, False, "nightly")
    assert stored.next_run_at is None and stored.last_run_at == due
    assert await store.find_job("nightly-2") is None


async def test_long_image_references_fit_their_columns(store: SqlStore) -> None:
    """PostgreSQL enforces VARCHAR lengths (SQLite does not): a digest-pinned container image
    and the longest publisher:offer:sku:version the grammar takes must fit."""
    vm_image = ":".join(["p" * 64, "o" * 64, "s" * 64, "v" * 64])
    await store.insert_cluster(make_cluster(image=vm_image))
    container = "registry.example.com/" + "team/" * 40 + "trainer:" + "t" * 128
    container += "@sha256:" + "0" * 64
    job = await store.insert_job(make_job(container_image=container))
    assert (await store.get_cluster("c1")).image == vm_image  # type: ignore[union-attr]
    assert (await store.get_job(job.id)).container_image == container  # type: ignore[union-attr]


async def test_event_and_audit_ids_go_past_32_bits(store: SqlStore) -> None:
    """A bot running for months writes billions of events; PostgreSQL's SERIAL stops at 2**31."""
    start = 2**31 + 5
    rows = {
        "events": "(id, kind, payload, created_at, delivered_at) "
        "VALUES (:id, 'job_note', '{}', :at, :at)",
        "audit": "(id, at, actor, action, outcome) VALUES (:id, :at, 'U0', 'seed', 'allowed')",
    }
    engine = create_async_engine(store.url)
    try:
        async with engine.begin() as conn:
            for table, values in rows.items():
                await conn.execute(text(f"INSERT INTO {table} {values}"), {"id": start, "at": NOW})
                if conn.dialect.name == "postgresql":  # an explicit id leaves the sequence be
                    await conn.execute(text(f"SELECT setval('{table}_id_seq', {start})"))
    finally:
        await engine.dispose()
    job = await store.insert_job(make_job())
    await store.add_events([LogSnippet(job_id=job.id, file="f", lines=("a",))])
    ((event_id, _),) = await store.pending_events()
    assert event_id > 2**31
    await store.mark_all_delivered([event_id], NOW)
    assert await store.pending_events() == []
    await store.add_audit(AuditEntry(at=NOW, actor="U1", action="a", outcome="allowed"))
    assert [e.actor for e in await store.list_audit()] == ["U1", "U0"]


async def test_exact_decimals_of_any_length_are_kept(store: SqlStore) -> None:
    """Hours come from elapsed microseconds (1,464,047 us is 0.0004066797222… h, 33 characters):
    PostgreSQL refused them in VARCHAR(24), and a job could not finish."""
    hours = to_hours(timedelta(microseconds=1_464_047))
    assert len(str(hours)) > 24
    rate = Decimal(1) / Decimal(7)
    job = await store.insert_job(make_job(node_rate=rate, estimate=rate * hours))
    entry = LedgerEntry(NOW, "actual", job.id, "U1", "C1", "c1", "NC6", 1, hours, rate * hours)
    async with store.unit() as uow:
        await uow.ledger.add(entry)
        await uow.commit()
    async with store.unit() as uow:
        assert await uow.ledger.list() == [entry]
    stored = await store.get_job(job.id)
    assert stored is not None and (stored.node_rate, stored.estimate) == (rate, rate * hours)


async def test_big_numbers_fit_their_columns(store: SqlStore) -> None:
    job = await store.insert_job(make_job())
    offset = 5 * 1024**4  # a 5 TiB log
    await store.commit_log(
        job.id,
        {"stdout.txt": (offset, 2**31 - 1)},
        [],
        [MetricPoint(999_999_999, "loss", 1e308)],
        None,
        {"loss": -1e308},
    )
    assert await store.get_log_offsets(job.id) == {"stdout.txt": (offset, 2**31 - 1)}
    assert await store.list_metrics(job.id) == [MetricPoint(999_999_999, "loss", 1e308)]


# --------------------------------------------------------------------------- a job through the bot


def test_database_url_needs_a_known_async_driver_and_never_shows_its_password() -> None:
    url = Settings(_env_file=None, database_url="postgresql://u:pw@db:5432/batchai").db_url
    assert url == "postgresql+asyncpg://u:pw@db:5432/batchai"
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, database_url="mysql://u:s3cr3t@db/batchai")
    assert "DATABASE_URL must start with postgresql+asyncpg://" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as server:
        yield server


@pytest.fixture
async def pg_rig(
    tmp_path: Path, fake: FakeSlack, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SlackRig]:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    # The URL as hosting providers hand it out: the settings give it the asyncpg driver.
    url = (await postgres.create_database()).replace("postgresql+asyncpg://", "postgres://")
    settings = rig_settings(tmp_path, fake, database_url=url)
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        yield SlackRig(fake, bot, http, settings)
        for job in await bot.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await bot.backend.terminate_job(job.id)


async def test_a_whole_job_runs_through_the_bot_on_postgresql(pg_rig: SlackRig) -> None:
    rig = pg_rig
    assert rig.bot.store.url.startswith("postgresql+asyncpg://")
    await rig.answer("cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data")
    await rig.answer(f"job create -n pg1 -r c1 -c {job_json(3)}")

    async def finished() -> bool:
        job = await rig.bot.store.find_job("pg1")
        return job is not None and job.state.finished

    await rig.until(finished, "pg1 to finish")
    job = await rig.bot.store.find_job("pg1")
    assert job is not None and job.state is JobState.SUCCEEDED
    assert job.progress is not None and (job.progress.current, job.progress.total) == (3, 3)
    assert [p.step for p in await rig.bot.store.list_metrics(job.id) if p.name == "loss"] == [
        1,
        2,
        3,
    ]
    (card,) = [m for m in rig.fake.messages_in(CHANNEL) if not m.is_reply]
    texts = [m.block_text() for m in rig.fake.replies(CHANNEL, card.ts)]
    assert any("Epoch 3/3" in t for t in texts)
    assert sum("succeeded" in t and "exit code 0" in t for t in texts) == 1
    assert f"<@{USER}>" in texts[-1]
    before = len(rig.fake.calls_to("chat.postMessage"))
    await rig.bot.runner.tick()
    await rig.bot.relay.drain()
    assert len(rig.fake.calls_to("chat.postMessage")) == before  # nothing posted twice
    assert await rig.bot.store.pending_events() == []
    assert job.created_at.tzinfo is not None and job.ended_at is not None
    assert datetime.now(UTC) - job.ended_at < timedelta(hours=1)
