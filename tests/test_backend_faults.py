"""Backend faults: the runner's loops survive a throttled, failing or forgetful backend, rest
with backoff while it is busy, and lose or repeat nothing once it answers again."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from services.backends.links import LinkSigner
from services.backends.local import LocalBackend, LocalShare
from services.clusters.service import ClusterRequest, ClusterService
from services.core.clock import FakeClock
from services.core.errors import BackendError, QuotaError, TransientError
from services.core.events import JobFinished, LogSnippet
from services.core.ports import Delivery
from services.jobs.lifecycle import JobState
from services.jobs.runner import JobRunner
from services.jobs.service import JobRequest, JobService
from services.jobs.sources import ConfigLoader
from services.models import Actor, ConfigSource, Conversation, Job
from services.notify.relay import EventRelay
from services.schedules.timer import Scheduler, _run
from services.store import SqlStore
from tests.fakes.faulty import FaultyBackend, FaultyShare

SHARE = "data"
TIMEOUT = 60.0
SCRIPT = r"""
import os, sys, time
for i in range(1, int(sys.argv[1]) + 1):
    print(f"line {i}", flush=True)
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.02)
"""


def config(lines: int, *, gate: str | None = None) -> ConfigSource:
    command = f"{shlex.quote(sys.executable)} $AZ_BATCHAI_MOUNT_ROOT/afs/job.py {lines}"
    env = [{"name": "GATE", "value": f"$AZ_BATCHAI_MOUNT_ROOT/afs/{gate}"}] if gate else []
    props = {
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "customToolkitSettings": {"commandLine": command},
        "environmentVariables": env,
    }
    import json

    return ConfigSource("inline", json.dumps({"properties": props}))


@dataclass
class Recorder:
    """A Notifier that keeps what it was given (a fake of our port)."""

    deliveries: list[Delivery] = field(default_factory=list)

    async def deliver(self, delivery: Delivery) -> Conversation | None:
        self.deliveries.append(delivery)
        return None

    def of(self, job: Job, kind: type) -> list[Delivery]:
        return [
            d for d in self.deliveries if d.event.job_id == job.id and isinstance(d.event, kind)
        ]


@dataclass
class Rig:
    store: SqlStore
    backend: FaultyBackend
    share: FaultyShare
    clock: FakeClock
    clusters: ClusterService
    jobs: JobService
    runner: JobRunner
    relay: EventRelay
    recorder: Recorder
    actor: Actor = Actor("U1", Conversation("C1"))

    async def start(self, name: str, lines: int, *, gate: str | None = None) -> Job:
        if await self.store.get_cluster("c1") is None:
            request = ClusterRequest(
                name="c1",
                vm_size="STANDARD_NC6",
                afs_name=SHARE,
                afs_mount_path="afs",
                target_nodes=1,
            )  # type: ignore[call-arg]
            await self.clusters.create_cluster(request, actor=self.actor)
        return await self.jobs.create_job(
            JobRequest(name, "c1", config(lines, gate=gate)), actor=self.actor
        )

    async def state(self, job: Job) -> Job:
        stored = await self.store.get_job(job.id)
        assert stored is not None
        return stored

    async def until(
        self, condition: Callable[[], Awaitable[bool]], what: str, *, step: float = 5
    ) -> None:
        """Rounds of the periodic work, the clock moving `step` seconds each, until it holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not await condition():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await self.runner.tick()
            await self.relay.drain()
            self.clock.advance(timedelta(seconds=step))
            await asyncio.sleep(0.02)

    def open_gate(self, name: str) -> None:
        (self.share.inner.share_dir(SHARE) / name).write_text("go")

    def lines_of(self, job: Job) -> list[str]:
        return [line for d in self.recorder.of(job, LogSnippet) for line in d.event.lines]  # type: ignore[attr-defined]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'faults.db'}")
    await store.migrate()
    local_share = LocalShare(tmp_path, LinkSigner(b"s" * 32, "http://127.0.0.1:1/files"))
    local_share.create_share(SHARE)
    (local_share.share_dir(SHARE) / "job.py").write_text(SCRIPT)
    backend = FaultyBackend(LocalBackend(tmp_path, python=sys.executable))
    share = FaultyShare(local_share)
    clock = FakeClock()
    clusters = ClusterService(
        store=store,
        backend=backend,
        clock=clock,
        configs=ConfigLoader(tmp_path),
        resource_group="rg",
        workspace="ws",
    )
    jobs = JobService(
        store=store,
        share=share,
        clock=clock,
        configs=ConfigLoader(tmp_path),
        resource_group="rg",
        workspace="ws",
    )
    runner = JobRunner(store=store, backend=backend, share=share, clusters=clusters, clock=clock)
    recorder = Recorder()
    relay = EventRelay(store=store, share=share, notifier=recorder, clock=clock)
    yield Rig(store, backend, share, clock, clusters, jobs, runner, relay, recorder)
    for job in await store.list_jobs(include_deleted=True):
        if not job.state.finished:
            await backend.inner.terminate_job(job.id)
    await store.aclose()


async def running(rig: Rig, job: Job) -> bool:
    return (await rig.state(job)).state is JobState.RUNNING


async def test_a_busy_backend_makes_the_poll_rest_twice_as_long_each_time(rig: Rig) -> None:
    job = await rig.start("gated", 1, gate="open")
    await rig.until(lambda: running(rig, job), "the job to run", step=0)
    calls = rig.backend.calls
    rig.backend.fail_next("get_job_status", TransientError("throttled"), count=3)

    def polls_after(advance: float) -> int:
        rig.clock.advance(timedelta(seconds=advance))
        return calls["get_job_status"]

    seen = [calls["get_job_status"]]
    # busy: rest 1 s, then 2 s, then 4 s; a tick during a rest does not ask the backend
    for advance in (0, 0, 1, 0.5, 1.5, 3, 1, 0, 0):
        before = polls_after(advance)
        await rig.runner.tick()
        seen.append(calls["get_job_status"] - before)
    assert seen[1:] == [1, 0, 1, 0, 1, 0, 1, 1, 1]
    assert rig.backend.raised["get_job_status"] == 3
    assert rig.runner.step_failures["poll"] == 3
    assert (await rig.state(job)).state is JobState.RUNNING  # busy is not lost


async def test_a_retry_after_is_honoured(rig: Rig) -> None:
    job = await rig.start("gated", 1, gate="open")
    await rig.until(lambda: running(rig, job), "the job to run", step=0)
    rig.backend.fail_next("get_job_status", TransientError("throttled", retry_after=30))
    await rig.runner.tick()
    asked = rig.backend.calls["get_job_status"]
    rig.clock.advance(timedelta(seconds=29))
    await rig.runner.tick()
    assert rig.backend.calls["get_job_status"] == asked
    rig.clock.advance(timedelta(seconds=1))
    await rig.runner.tick()
    assert rig.backend.calls["get_job_status"] == asked + 1


async def test_faults_everywhere_lose_and_repeat_nothing(rig: Rig) -> None:
    rig.backend.fail_next("start_job", TransientError("503 from the service"), count=2)
    rig.backend.fail_next("get_job_status", TransientError("timed out"), count=2)
    rig.share.fail_next("read_range", BackendError("connection reset"), count=3)
    rig.share.fail_next("list_files", TransientError("throttled"), count=1)
    rig.share.fail_next("get_download_url", TransientError("throttled"), count=2)
    job = await rig.start("flaky", 40)
    await rig.until(lambda: _received(rig, job), "the job's receipt after every fault was served")
    assert (await rig.state(job)).state is JobState.SUCCEEDED
    assert len(rig.recorder.of(job, JobFinished)) == 1
    assert rig.lines_of(job) == [f"line {i}" for i in range(1, 41)]
    for fake, method, count in (
        (rig.backend, "start_job", 2),
        (rig.backend, "get_job_status", 2),
        (rig.share, "read_range", 3),
        (rig.share, "get_download_url", 2),
    ):
        assert fake.raised[method] == count, method
    for _ in range(3):  # more rounds send nothing more
        await rig.runner.tick()
        await rig.relay.drain()
    assert len(rig.recorder.of(job, JobFinished)) == 1


async def test_a_job_the_backend_no_longer_knows_fails_with_the_reason(rig: Rig) -> None:
    job = await rig.start("vanished", 2, gate="never")
    await rig.until(lambda: running(rig, job), "the job to run", step=0)
    rig.backend.forget(job.id)
    await rig.until(lambda: _received(rig, job), "the failure receipt")
    stored = await rig.state(job)
    assert stored.state is JobState.FAILED
    assert stored.error == "the backend no longer knows this job"
    assert len(rig.recorder.of(job, JobFinished)) == 1
    await rig.backend.inner.terminate_job(job.id)  # its processes are real: leave none behind


async def test_a_job_whose_status_keeps_failing_fails_after_five_polls(rig: Rig) -> None:
    job = await rig.start("unreadable", 1, gate="never")
    await rig.until(lambda: running(rig, job), "the job to run", step=0)
    rig.backend.fail_next("get_job_status", BackendError("malformed answer"), count=10)
    for _ in range(4):
        await rig.runner.poll()
    assert (await rig.state(job)).state is JobState.RUNNING
    await rig.runner.poll()
    stored = await rig.state(job)
    assert stored.state is JobState.FAILED
    assert stored.error == "the bot could not follow this job: BackendError: malformed answer"
    # and the job is stopped on the backend: an unfollowed job must not keep its node
    status = await rig.backend.inner.get_job_status(job.id)
    for _ in range(200):
        if status.phase == "exited":
            break
        await asyncio.sleep(0.05)
        status = await rig.backend.inner.get_job_status(job.id)
    assert (status.phase, status.exit_code) == ("exited", 143)


async def test_a_refused_start_is_recorded_even_when_its_cleanup_fails(rig: Rig) -> None:
    rig.backend.fail_next("start_job", QuotaError("no quota for 1 x STANDARD_NC6"))
    rig.backend.fail_next("terminate_job", TransientError("timed out"))
    job = await rig.start("refused", 1)
    await rig.until(lambda: _received(rig, job), "the failure receipt")
    stored = await rig.state(job)
    assert stored.state is JobState.FAILED and stored.error == "no quota for 1 x STANDARD_NC6"
    assert rig.backend.raised["terminate_job"] == 1


async def test_periodic_work_survives_a_failing_round_and_counts_it() -> None:
    scheduler = Scheduler()
    rounds: list[int] = []

    async def work() -> None:
        rounds.append(1)
        if len(rounds) < 3:
            raise RuntimeError("database is locked")

    scheduler.every("flaky", 60, work)
    for _ in range(4):
        await _run(scheduler, "flaky")
    assert len(rounds) == 4
    assert scheduler.failures["flaky"] == 2


async def test_the_local_backend_answers_a_ping_only_with_its_directory(tmp_path: Path) -> None:
    await LocalBackend(tmp_path).ping()
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(BackendError):
        await LocalBackend(tmp_path / "not-a-dir").ping()


async def _received(rig: Rig, job: Job) -> bool:
    return bool(rig.recorder.of(job, JobFinished))
