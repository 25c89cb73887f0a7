"""/metrics over real HTTP from a running bot: Prometheus text that parses, and numbers that
move as jobs queue, run, notify and finish; /readyz naming the check that fails."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from bot.bootstrap import Bot
from bot.config import Settings
from bot.console import ConsoleTransport
from bot.lifecycle import running
from bot.metrics import BotMetrics, measured
from bot.web import CachedCheck, HealthCheck, create_probe_app
from services.backends.local import LocalBackend
from services.clusters.service import ClusterRequest
from services.core.clock import FakeClock
from services.core.errors import BackendError, NotFound, TransientError
from services.core.events import JobNote
from services.jobs.lifecycle import JobState
from services.jobs.service import JobRequest
from services.models import Actor, ConfigSource, Conversation, Job
from services.schedules.timer import _run
from services.store import SqlStore
from tests.conftest import NOW, make_cluster, make_job
from tests.fakes.faulty import FaultyBackend

TIMEOUT = 60.0
ACTOR = Actor("U1", Conversation("C1", None, "U1"), may_read_paths=True, is_admin=True)
SCRIPT = """
import os, sys, time
print("hello", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def settings(tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        batchai_data_dir=tmp_path / "data",
        port=0,
        link_secret="link-secret-for-tests",
        price_refresh_hours=0,
    )


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[Bot]:
    transport = ConsoleTransport(tmp_path / "files", out=io.StringIO())
    async with running(
        settings(tmp_path), transport=transport, clock=FakeClock(), periodic=False
    ) as b:
        b.share.create_share("data")
        (b.share.share_dir("data") / "job.py").write_text(SCRIPT)
        yield b
        for job in await b.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await b.backend.terminate_job(job.id)


async def scrape(bot: Bot) -> Samples:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{bot.probe_url}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await response.text())


async def submit(bot: Bot, name: str) -> Job:
    command = (
        f"{sys.executable} $AZ_BATCHAI_MOUNT_ROOT/afs/job.py $AZ_BATCHAI_MOUNT_ROOT/afs/{name}.go"
    )
    spec = {
        "properties": {
            "nodeCount": 1,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            "customToolkitSettings": {"commandLine": command},
        }
    }
    request = JobRequest(name, "c1", ConfigSource("inline", json.dumps(spec)))
    return await bot.jobs.create_job(request, actor=ACTOR)


async def until(bot: Bot, condition: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await bot.runner.tick()
        await asyncio.sleep(0.05)


async def test_metrics_follow_jobs_from_queue_to_receipt(bot: Bot) -> None:
    clock = bot.clock
    assert isinstance(clock, FakeClock)
    empty = await scrape(bot)
    assert value(empty, "batchai_store_up") == 1
    assert value(empty, "batchai_jobs", state="running") == 0
    assert value(empty, "batchai_queue_length") == 0
    assert value(empty, "process_resident_memory_bytes") > 0

    await bot.clusters.create_cluster(
        ClusterRequest(name="c1", vm_size="STANDARD_NC6", afs_name="data", target_nodes=1),
        actor=ACTOR,
    )
    first, second = await submit(bot, "first"), await submit(bot, "second")
    clock.advance(timedelta(seconds=90))
    queued = await scrape(bot)
    assert value(queued, "batchai_jobs", state="queued") == 2
    assert value(queued, "batchai_queue_length") == 2
    assert value(queued, "batchai_queue_oldest_age_seconds") == 90
    assert value(queued, "batchai_outbox_pending_events") > 0
    assert value(queued, "batchai_outbox_lag_seconds") == 90
    assert value(queued, "batchai_clusters", state="steady") == 1
    assert value(queued, "batchai_cluster_target_nodes", cluster="c1") == 1

    async def first_runs() -> bool:
        job = await bot.store.get_job(first.id)
        return job is not None and job.state is JobState.RUNNING

    await until(bot, first_runs, "the first job to run")
    stored = await bot.store.get_job(first.id)
    assert stored is not None and stored.node_rate is not None
    await bot.relay.drain()
    busy = await scrape(bot)
    assert value(busy, "batchai_jobs", state="running") == 1
    assert value(busy, "batchai_queue_length") == 1  # the second waits for the only node
    assert value(busy, "batchai_spend_rate_usd_per_hour") == pytest.approx(float(stored.node_rate))
    assert value(busy, "batchai_outbox_pending_events") == 0
    assert value(busy, "batchai_outbox_lag_seconds") == 0
    assert value(busy, "batchai_backend_call_seconds_count", operation="compute.start_job") == 1
    assert (
        value(busy, "batchai_backend_call_seconds_count", operation="compute.get_job_status") >= 1
    )

    clock.advance(timedelta(hours=2))
    for job in (first, second):
        (bot.share.share_dir("data") / f"{job.name}.go").write_text("go")

    async def both_done() -> bool:
        jobs = [await bot.store.get_job(j.id) for j in (first, second)]
        return all(j is not None and j.state is JobState.SUCCEEDED for j in jobs)

    await until(bot, both_done, "both jobs to succeed")
    done = await scrape(bot)
    assert value(done, "batchai_jobs", state="succeeded") == 2
    assert value(done, "batchai_jobs", state="running") == 0
    assert value(done, "batchai_spend_rate_usd_per_hour") == 0
    two_hours = 2 * float(stored.node_rate)
    assert value(done, "batchai_spend_month_usd") == pytest.approx(two_hours, abs=0.01)


async def test_failing_periodic_work_shows_in_the_metrics(bot: Bot) -> None:
    async def broken() -> None:
        raise RuntimeError("database is locked")

    bot.scheduler.every("broken", 60, broken)
    for _ in range(3):
        await _run(bot.scheduler, "broken")
    samples = await scrape(bot)
    assert value(samples, "batchai_periodic_failures_total", work="broken") == 3


async def test_an_unreadable_store_still_serves_the_counters(bot: Bot) -> None:
    await bot.store.aclose()
    db = bot.settings.batchai_data_dir / "batchai.db"
    db.rename(db.with_suffix(".moved"))
    db.mkdir()  # a directory where the database was: SQLite cannot open it
    samples = await scrape(bot)
    assert value(samples, "batchai_store_up") == 0
    assert ("batchai_jobs", (("state", "queued"),)) not in samples
    db.rmdir()
    db.with_suffix(".moved").rename(db)


async def test_backend_errors_are_counted_by_operation_and_kind(tmp_path: Path) -> None:
    metrics = BotMetrics()
    faulty = FaultyBackend(LocalBackend(tmp_path))
    backend = measured(faulty, "compute", metrics)
    faulty.fail_next("get_job_status", TransientError("throttled"), count=2)
    for _ in range(2):
        with pytest.raises(TransientError):
            await backend.get_job_status("j1")
    with pytest.raises(NotFound):  # the real local backend: no such job
        await backend.get_job_status("j1")
    await backend.ping()
    samples = parse((await metrics.render()).decode())
    errors = "batchai_backend_errors_total"
    assert value(samples, errors, operation="compute.get_job_status", kind="transient") == 2
    assert value(samples, errors, operation="compute.get_job_status", kind="not_found") == 1
    assert value(samples, "batchai_backend_call_seconds_count", operation="compute.ping") == 1
    assert backend.name == "local"


def test_every_bot_has_its_own_registry() -> None:
    one, two = BotMetrics(), BotMetrics()
    one.slack_call("chat.postMessage", "ok")
    assert (
        one.registry.get_sample_value(
            "batchai_slack_calls_total", {"method": "chat.postMessage", "outcome": "ok"}
        )
        == 1
    )
    assert (  # no such series at all in the other bot
        two.registry.get_sample_value(
            "batchai_slack_calls_total", {"method": "chat.postMessage", "outcome": "ok"}
        )
        is None
    )


# -- /readyz ---------------------------------------------------------------------------------


async def readyz(checks: dict[str, HealthCheck]) -> tuple[int, dict[str, object]]:
    app = create_probe_app(checks=checks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(str(server.make_url("/readyz"))) as response,
        ):
            return response.status, await response.json()
    finally:
        await server.close()


async def test_readyz_names_the_failing_check(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'ok.db'}")
    gone = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    faulty = FaultyBackend(LocalBackend(tmp_path))
    try:
        status, body = await readyz({"database": store.ping, "backend": faulty.ping})
        assert status == 200
        assert body == {"status": "ready", "checks": {"database": "ok", "backend": "ok"}}

        faulty.fail_next("ping", BackendError("management endpoint said 503"))
        status, body = await readyz({"database": store.ping, "backend": faulty.ping})
        assert status == 503
        assert body["checks"] == {"database": "ok", "backend": "failed: BackendError"}

        status, body = await readyz({"database": gone.ping, "backend": faulty.ping})
        assert status == 503 and body["status"] == "unready"
        assert body["checks"] == {"database": "failed: OperationalError", "backend": "ok"}
        assert "no-such-dir" not in json.dumps(body)  # what failed, never the details
    finally:
        await store.aclose()
        await gone.aclose()


async def test_a_cached_check_asks_again_only_after_its_ttl() -> None:
    now = [0.0]
    asked: list[float] = []
    answers = [None, RuntimeError("down"), None]

    async def check() -> None:
        asked.append(now[0])
        if (answer := answers[len(asked) - 1]) is not None:
            raise answer

    cached = CachedCheck(check, 30.0, monotonic=lambda: now[0])
    await cached()
    now[0] = 29.0
    await cached()  # from the cache
    now[0] = 30.0
    with pytest.raises(RuntimeError):
        await cached()
    now[0] = 45.0
    with pytest.raises(RuntimeError):  # the failure is cached too
        await cached()
    now[0] = 60.0
    await cached()
    assert asked == [0.0, 30.0, 60.0]


async def test_the_store_aggregates_behind_the_gauges(store: SqlStore) -> None:
    await store.insert_cluster(make_cluster())
    for name, minutes in (("a", 0), ("b", 5), ("c", 9)):
        at = NOW + timedelta(minutes=minutes)
        await store.insert_job(make_job(name, queued_at=at, created_at=at))
    await store.insert_job(make_job("r", state=JobState.RUNNING, queued_at=None))
    assert await store.count_jobs_by_state() == {JobState.QUEUED: 3, JobState.RUNNING: 1}
    assert await store.get_oldest_queued() == NOW
    assert await store.get_outbox_backlog() == (0, None)
    await store.add_events([JobNote(job_id="id-a", cluster="c1", text=t) for t in ("x", "y")])
    count, oldest = await store.get_outbox_backlog()
    assert count == 2
    assert oldest is not None and oldest.tzinfo is not None
    await store.mark_all_delivered([i for i, _ in await store.pending_events(100)], NOW)
    assert await store.get_outbox_backlog() == (0, None)
