"""The leader lease on a real PostgreSQL: what a partitioned or dethroned leader may still do."""

from __future__ import annotations

import asyncpg
import pytest

from bot.leader import Leadership
from bot.outbox import SlackOutbox
from handlers.views import Message, section
from services.core.clock import utcnow
from services.core.errors import TransientError
from services.store import SqlStore
from services.store.lease import AdvisoryLease
from tests.fakes.slack import FakeSlack
from tests.pg import PostgresServer

CHANNEL = "C0LEASE"


async def nothing() -> None:
    return None


async def cut_off_the_leader(url: str) -> None:
    """End the lease holder's session from outside, as a lost connection would."""
    dsn = url.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    try:
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted"
        )
    finally:
        await conn.close()
    assert ended == 1


@pytest.fixture
async def db_url(postgres: PostgresServer) -> str:
    url = await postgres.create_database()
    store = SqlStore(url)
    await store.migrate()
    await store.aclose()
    return url


async def test_the_server_probes_the_lease_connection_so_a_partition_frees_it(
    db_url: str,
) -> None:
    lease = AdvisoryLease(db_url)
    try:
        assert await lease.acquire()
        # a silent peer is found within idle + interval * count = 25 s, not the kernel's 2 h
        settings = {
            name: await lease._scalar(f"SHOW {name}")
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
        }
        assert settings == {
            "tcp_keepalives_idle": "10",
            "tcp_keepalives_interval": "5",
            "tcp_keepalives_count": "3",
        }
        assert await lease._scalar("SHOW tcp_user_timeout") == "25000"  # ms
    finally:
        await lease.release()


async def test_a_leader_that_lost_its_lease_sends_no_further_message(db_url: str) -> None:
    old, new = AdvisoryLease(db_url), AdvisoryLease(db_url)
    store = SqlStore(db_url)
    leadership = Leadership(old, retry=60, on_win=nothing, on_lose=nothing)
    try:
        async with FakeSlack(rate_limits=False) as fake:
            outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
            outbox.fence = leadership.confirm
            await leadership.step()
            assert leadership.is_leader
            await outbox.post(CHANNEL, Message("while leading", [section("while leading")]))

            await cut_off_the_leader(db_url)
            assert await new.acquire()  # the standby leads now
            with pytest.raises(TransientError, match="no longer leads"):
                await outbox.post(CHANNEL, Message("too late", [section("too late")]))

            assert [m.text for m in fake.messages_in(CHANNEL)] == ["while leading"]
            assert outbox.stats["fenced"] == 1
            assert not leadership.is_leader
    finally:
        await store.aclose()
        await new.release()
        await old.release()
