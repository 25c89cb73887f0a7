"""The log tailer at scale: bounded concurrency, per-file pacing, one ranged GET per file.

Real jobs (the local backend's processes) write their logs under a directory that the fake
Azure Files server serves; the runner tails them through the real AzureShare (real SDK
clients, real HTTP), so every request is counted, timed and held up at the fake.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from services.backends.azure.config import AzureConfig
from services.backends.azure.files import AzureShare
from services.backends.links import LinkSigner
from services.backends.local import LocalBackend, LocalShare
from services.clusters.service import ClusterRequest, ClusterService
from services.core.clock import FakeClock
from services.jobs.runner import JobRunner
from services.jobs.service import JobRequest, JobService
from services.jobs.sources import ConfigLoader
from services.jobs.tailer import LogTailer
from services.models import Actor, ConfigSource, Conversation, FileLocation, Job
from services.store import SqlStore
from tests.fakes.azure_files import FakeAzureFiles

SHARE = "data"
GUARD = 60.0  # a round that has not ended by then is stuck: the test fails, it does not hang

# Waits for the file $GATE.ready, prints `n` numbered lines, then waits for the file $GATE.
SCRIPT = r"""
import os, sys, time
while not os.path.exists(os.environ["GATE"] + ".ready"):
    time.sleep(0.05)
for i in range(1, int(sys.argv[1]) + 1):
    print(f"line {i}", flush=True)
while not os.path.exists(os.environ["GATE"]):
    time.sleep(0.05)
"""


def config(lines: int) -> ConfigSource:
    command = f"{shlex.quote(sys.executable)} $AZ_BATCHAI_MOUNT_ROOT/afs/job.py {lines}"
    props = {
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "customToolkitSettings": {"commandLine": command},
        "environmentVariables": [{"name": "GATE", "value": "$AZ_BATCHAI_MOUNT_ROOT/afs/go"}],
    }
    return ConfigSource("inline", json.dumps({"properties": props}))


@dataclass
class Rig:
    root: Path
    store: SqlStore
    files: FakeAzureFiles
    azure: AzureShare
    local: LocalShare
    backend: LocalBackend
    clock: FakeClock
    jobs: JobService

    def runner(self, **kw: object) -> JobRunner:
        clusters = ClusterService(
            store=self.store,
            backend=self.backend,
            clock=self.clock,
            configs=ConfigLoader(self.root),
            resource_group="rg",
            workspace="ws",
        )
        return JobRunner(
            store=self.store,
            backend=self.backend,
            share=self.azure,
            clusters=clusters,
            clock=self.clock,
            **kw,  # type: ignore[arg-type]
        )

    async def start(self, runner: JobRunner, count: int, lines: int) -> list[Job]:
        """`count` running jobs that print `lines` lines each once `ready` is called."""
        actor = Actor("U1", Conversation("C1"))
        clusters = ClusterService(
            store=self.store,
            backend=self.backend,
            clock=self.clock,
            configs=ConfigLoader(self.root),
            resource_group="rg",
            workspace="ws",
        )
        request = ClusterRequest(
            name="c1",
            vm_size="STANDARD_NC6",
            afs_name=SHARE,
            afs_mount_path="afs",
            target_nodes=count,
        )
        await clusters.create_cluster(request, actor=actor)
        jobs = [
            await self.jobs.create_job(JobRequest(f"j{i}", "c1", config(lines)), actor=actor)
            for i in range(count)
        ]
        for _ in range(400):
            await tick(runner, self.clock)
            stored = [await self.store.get_job(j.id) for j in jobs]
            if all(s is not None and s.layout is not None for s in stored):
                return [s for s in stored if s is not None]
            await asyncio.sleep(0.05)
        raise AssertionError("the jobs did not start")

    def ready(self) -> None:
        (self.local.share_dir(SHARE) / "go.ready").write_text("go")

    async def lines(self, job: Job) -> int:
        offsets = await self.store.get_log_offsets(job.id)
        return offsets.get("stdout.txt", (0, 0))[1]


def log_path(job: Job, name: str = "stdout.txt") -> str:
    assert job.layout is not None and job.layout.stdouterr is not None
    return job.layout.stdouterr.child(name).path


async def tick(runner: JobRunner, clock: FakeClock, step: float = 30.0) -> None:
    """One round, with every resting file due again (the clock moved past any pause)."""
    clock.advance(timedelta(seconds=step))
    await asyncio.wait_for(runner.tick(), GUARD)


@pytest.fixture
async def rig(tmp_path: Path, store: SqlStore) -> AsyncIterator[Rig]:
    local = LocalShare(tmp_path, LinkSigner(b"s" * 32, "http://127.0.0.1:1/files"))
    local.create_share(SHARE)
    (local.share_dir(SHARE) / "job.py").write_text(SCRIPT)
    clock = FakeClock()
    backend = LocalBackend(tmp_path, python=sys.executable)
    jobs = JobService(
        store=store,
        share=local,
        clock=clock,
        configs=ConfigLoader(tmp_path),
        resource_group="rg",
        workspace="ws",
    )
    async with FakeAzureFiles(tmp_path / "shares") as files:  # serves what the jobs write
        cfg = AzureConfig(
            subscription_id="sub",
            resource_group="rg",
            location="eastus",
            subnet_id="subnet",
            storage_account=files.account,
            share=SHARE,
            storage_key=files.key,
            storage_endpoint=files.account_url,
        )
        async with AzureShare(cfg, retry_total=0) as azure:
            yield Rig(tmp_path, store, files, azure, local, backend, clock, jobs)
            for gate in ("go.ready", "go"):
                (local.share_dir(SHARE) / gate).write_text("go")
            for job in await store.list_jobs(include_deleted=True):
                if not job.state.finished and job.layout is not None:
                    await backend.terminate_job(job.id)


async def test_a_slow_share_does_not_hold_up_the_other_jobs(rig: Rig) -> None:
    runner = rig.runner(tail_timeout=0.3)
    slow, *fast = await rig.start(runner, 3, lines=5)
    for name in ("stdout.txt", "stderr.txt"):  # this job's files answer after an hour
        rig.files.delay_path(SHARE, log_path(slow, name))
    rig.ready()
    # Rounds go on until the fast jobs are done and the slow file was asked for twice (the
    # jobs may write all their lines before the first round: one round then serves them).
    for _ in range(200):
        await tick(runner, rig.clock)
        done = all([await rig.lines(j) == 5 for j in fast])
        if done and rig.files.held.count(log_path(slow)) >= 2:
            break
        await asyncio.sleep(0.05)
    assert [await rig.lines(j) for j in fast] == [5, 5]
    assert await rig.lines(slow) == 0
    # The slow file was asked for while slow, and given up on each round; once it answers
    # again, its lines arrive from where it stood.
    assert rig.files.held.count(log_path(slow)) >= 2
    for name in ("stdout.txt", "stderr.txt"):
        rig.files.delay_path(SHARE, log_path(slow, name), 0)
    for _ in range(200):
        await tick(runner, rig.clock)
        if await rig.lines(slow) == 5:
            break
        await asyncio.sleep(0.05)
    assert await rig.lines(slow) == 5


async def test_one_ranged_get_per_log_file_per_round_and_quiet_files_rest(rig: Rig) -> None:
    runner = rig.runner()
    jobs = await rig.start(runner, 3, lines=4)
    rig.ready()
    for _ in range(200):
        await tick(runner, rig.clock)
        if all([await rig.lines(j) == 4 for j in jobs]):
            break
        await asyncio.sleep(0.05)
    logs = {log_path(j, name) for j in jobs for name in ("stdout.txt", "stderr.txt")}

    rig.files.reset_counters()
    await tick(runner, rig.clock)  # every file due again: one request each
    tail = [r for r in rig.files.requests if r.path in logs]
    assert Counter(r.path for r in tail) == Counter({path: 1 for path in logs})
    assert {r.op for r in tail} == {"GetFile"}  # no Get File Properties (HEAD)
    assert all(r.range is not None for r in tail)

    rig.files.reset_counters()
    await tick(runner, rig.clock, step=0.0)  # nothing grew: every file rests this round
    assert [r for r in rig.files.requests if r.path in logs] == []


async def test_reads_in_flight_never_exceed_the_bound(rig: Rig) -> None:
    runner = rig.runner(concurrency=2)
    jobs = await rig.start(runner, 6, lines=1)
    for job in jobs:  # every read takes a while, so the reads of a round overlap
        for name in ("stdout.txt", "stderr.txt"):
            rig.files.delay_path(SHARE, log_path(job, name), 0.2)
    rig.files.reset_counters()
    await tick(runner, rig.clock)
    assert len({r.path for r in rig.files.requests}) == 12  # every file was read
    assert rig.files.max_in_flight == 2  # in parallel, and never more than the bound


async def test_a_truncated_file_is_seen_in_the_ranged_get_and_read_again(tmp_path: Path) -> None:
    async with FakeAzureFiles(tmp_path) as files:
        log = files.create_share(SHARE) / "stdout.txt"
        log.write_bytes(b"one\ntwo\n")
        cfg = AzureConfig(
            subscription_id="sub",
            resource_group="rg",
            location="eastus",
            subnet_id="subnet",
            storage_account=files.account,
            share=SHARE,
            storage_key=files.key,
            storage_endpoint=files.account_url,
        )
        async with AzureShare(cfg) as share:
            tailer = LogTailer(share)
            where = FileLocation(SHARE, "stdout.txt")
            first = await tailer.read("k", where, 0, final=False)
            files.reset_counters()
            idle = await tailer.read("k", where, first.committed_offset, final=False)
            assert (idle.lines, [r.status for r in files.requests]) == ([], [416])
            log.write_bytes(b"new\n")  # replaced by a shorter file
            again = await tailer.read("k", where, idle.committed_offset, final=False)
    assert first.lines == ["one", "two"]
    assert again.restarted and again.lines == ["new"] and again.committed_offset == 4


async def test_a_round_is_stored_in_one_batch_and_a_failed_batch_is_read_again(
    rig: Rig, tmp_path: Path
) -> None:
    runner = rig.runner()
    jobs = await rig.start(runner, 3, lines=4)
    rig.ready()
    for _ in range(200):  # every job has written its lines (the gate file holds them running)
        if all(
            (rig.local.share_dir(SHARE) / log_path(j)).read_text().count("\n") == 4 for j in jobs
        ):
            break
        await asyncio.sleep(0.05)
    # The database refuses the offsets of the LAST job: the round's one transaction fails,
    # so the other jobs' lines are not stored (nor announced) either.
    db = sqlite3.connect(tmp_path / "test.db")
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON log_offsets WHEN NEW.job_id = ? "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END".replace("?", f"'{jobs[-1].id}'")
    )
    db.commit()
    await tick(runner, rig.clock)
    assert [await rig.lines(j) for j in jobs] == [0, 0, 0]
    assert await rig.store.count_events(kind="log_snippet") == 0
    db.execute("DROP TRIGGER refuse")
    db.commit()
    db.close()
    # A new process (the same store, nothing in memory) reads them once, from the offsets.
    again = rig.runner()
    await tick(again, rig.clock)
    assert [await rig.lines(j) for j in jobs] == [4, 4, 4]
    await tick(again, rig.clock)
    snippets = [e for _, e in await rig.store.pending_events(1000) if e.kind == "log_snippet"]
    lines = sorted((s.job_id, line) for s in snippets for line in s.lines)  # type: ignore[attr-defined]
    assert lines == sorted((j.id, f"line {i}") for j in jobs for i in range(1, 5))
