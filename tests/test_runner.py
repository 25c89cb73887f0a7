"""JobService + JobRunner + EventRelay on the real local backend, real SQLite, real processes."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.backends.links import LinkSigner
from services.backends.local import LocalBackend, LocalShare
from services.clusters.service import ClusterRequest, ClusterService
from services.core.clock import SystemClock
from services.core.errors import NotAllowed
from services.core.events import JobFinished, JobStateChanged, LogSnippet
from services.core.ports import Delivery
from services.jobs.lifecycle import JobState
from services.jobs.runner import JobRunner
from services.jobs.service import JobRequest, JobService
from services.jobs.sources import ConfigLoader
from services.models import Actor, ConfigSource, Conversation, Job
from services.notify.relay import EventRelay
from services.store import SqlStore

SHARE = "data"
TIMEOUT = 60.0

# Prints `lines` numbered lines, then waits for the file named by $GATE (if set) to exist.
SCRIPT = r"""
import os, sys, time
n = int(sys.argv[1]); code = int(sys.argv[2])
for i in range(1, n + 1):
    print(f"line {i}", flush=True)
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.02)
sys.exit(code)
"""


def job_config(
    lines: int = 3, code: int = 0, *, nodes: int = 1, gate: str | None = None, outputs: bool = False
) -> ConfigSource:
    command = f"{shlex.quote(sys.executable)} $AZ_BATCHAI_MOUNT_ROOT/afs/job.py {lines} {code}"
    props: dict[str, object] = {
        "nodeCount": nodes,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "customToolkitSettings": {"commandLine": command},
        "environmentVariables": (
            [{"name": "GATE", "value": f"$AZ_BATCHAI_MOUNT_ROOT/afs/{gate}"}] if gate else []
        ),
    }
    if outputs:
        props["outputDirectories"] = [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}]
        props["customToolkitSettings"] = {
            "commandLine": f"{command} && echo weights > $AZ_BATCHAI_OUTPUT_MODEL/m.bin"
        }
    return ConfigSource("inline", json.dumps({"properties": props}))


@dataclass
class Recorder:
    """A Notifier that remembers every delivery (a fake of our own port, not a mock)."""

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
    root: Path
    store: SqlStore
    backend: LocalBackend
    share: LocalShare
    clusters: ClusterService
    jobs: JobService
    runner: JobRunner
    relay: EventRelay
    recorder: Recorder
    actor: Actor = Actor("U1", Conversation("C1"))

    def new_runner(self) -> None:
        """What a restart does: fresh in-memory state, same store and share."""
        self.backend = LocalBackend(self.root, python=sys.executable)
        self.clusters = ClusterService(
            store=self.store,
            backend=self.backend,
            clock=SystemClock(),
            configs=ConfigLoader(self.root),
            resource_group="rg",
            workspace="ws",
        )
        self.runner = JobRunner(
            store=self.store,
            backend=self.backend,
            share=self.share,
            clusters=self.clusters,
            clock=SystemClock(),
        )
        self.relay = EventRelay(
            store=self.store, share=self.share, notifier=self.recorder, clock=SystemClock()
        )

    async def cluster(self, name: str = "c1", **kw: object) -> None:
        if "min_nodes" not in kw:
            kw["target_nodes"] = 1
        request = ClusterRequest(
            name=name, vm_size="STANDARD_NC6", afs_name=SHARE, afs_mount_path="afs", **kw
        )  # type: ignore[arg-type]
        await self.clusters.create_cluster(request, actor=self.actor)

    async def submit(self, name: str, config: ConfigSource, cluster: str = "c1") -> Job:
        return await self.jobs.create_job(JobRequest(name, cluster, config), actor=self.actor)

    async def until(self, condition: Callable[[], object], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            await self.runner.tick()
            await self.relay.drain()
            if await condition():  # type: ignore[misc]
                return
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def state(self, job: Job) -> JobState:
        stored = await self.store.get_job(job.id)
        assert stored is not None
        return stored.state

    def open_gate(self, name: str) -> None:
        (self.share.share_dir(SHARE) / name).write_text("go")


@pytest.fixture
async def rig(tmp_path: Path, store: SqlStore) -> AsyncIterator[Rig]:
    share = LocalShare(tmp_path, LinkSigner(b"s" * 32, "http://127.0.0.1:1/files"))
    share.create_share(SHARE)
    (share.share_dir(SHARE) / "job.py").write_text(SCRIPT)
    jobs = JobService(
        store=store,
        share=share,
        clock=SystemClock(),
        configs=ConfigLoader(tmp_path),
        resource_group="rg",
        workspace="ws",
    )
    recorder = Recorder()
    r = Rig(tmp_path, store, None, share, None, jobs, None, None, recorder)  # type: ignore[arg-type]
    r.new_runner()
    yield r
    for job in await store.list_jobs(include_deleted=True):
        if not job.state.finished and job.layout is not None:
            await r.backend.terminate_job(job.id)


async def test_job_runs_and_gets_exactly_one_receipt(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("j1", job_config(lines=5, outputs=True))
    await rig.until(lambda: _finished(rig, job), "j1 to finish")
    for _ in range(3):  # more rounds change nothing
        await rig.runner.tick()
        await rig.relay.drain()
    assert await rig.state(job) is JobState.SUCCEEDED
    receipts = rig.recorder.of(job, JobFinished)
    assert len(receipts) == 1
    assert [link.name for link in receipts[0].links] == ["MODEL/m.bin"]
    snippets = rig.recorder.of(job, LogSnippet)
    lines = [line for d in snippets for line in d.event.lines]  # type: ignore[attr-defined]
    assert lines == [f"line {i}" for i in range(1, 6)]
    changes = rig.recorder.of(job, JobStateChanged)
    states = [s for d in changes for s in (*d.event.passed, d.event.new)]  # type: ignore[attr-defined]
    assert states == ["preparing", "running", "succeeded"]


async def test_non_zero_exit_fails_with_its_code(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("bad", job_config(lines=1, code=3))
    await rig.until(lambda: _finished(rig, job), "bad to finish")
    stored = await rig.store.get_job(job.id)
    assert stored is not None and stored.state is JobState.FAILED and stored.exit_code == 3


async def test_fifo_and_gang_scheduling(rig: Rig) -> None:
    await rig.cluster(min_nodes=2, max_nodes=2)
    big = await rig.submit("big", job_config(nodes=2, gate="big.go"))
    small1 = await rig.submit("small1", job_config(gate="small.go"))
    small2 = await rig.submit("small2", job_config(gate="small.go"))
    await rig.until(lambda: _in(rig, big, JobState.RUNNING), "big to run")
    # big holds both nodes: the small ones wait their turn, in order.
    assert await rig.state(small1) is JobState.QUEUED
    assert await rig.state(small2) is JobState.QUEUED
    rig.open_gate("big.go")
    await rig.until(lambda: _in(rig, small2, JobState.RUNNING), "both small jobs to run")
    assert await rig.state(small1) is JobState.RUNNING
    first, second = await rig.store.get_job(small1.id), await rig.store.get_job(small2.id)
    assert first is not None and second is not None
    assert {first.nodes, second.nodes} == {(0,), (1,)}
    rig.open_gate("small.go")
    await rig.until(lambda: _finished(rig, small2), "small2 to finish")


async def test_head_of_queue_is_not_overtaken(rig: Rig) -> None:
    await rig.cluster(min_nodes=2, max_nodes=2)
    first = await rig.submit("first", job_config(gate="g1"))
    wide = await rig.submit("wide", job_config(nodes=2, gate="g2"))
    late = await rig.submit("late", job_config(gate="g3"))
    await rig.until(lambda: _in(rig, first, JobState.RUNNING), "first to run")
    for _ in range(5):
        await rig.runner.tick()
    # one node is free, but `wide` (2 nodes) is ahead of `late`: nobody jumps the queue.
    assert await rig.state(wide) is JobState.QUEUED
    assert await rig.state(late) is JobState.QUEUED
    for gate in ("g1", "g2", "g3"):
        rig.open_gate(gate)
    await rig.until(lambda: _finished(rig, late), "late to finish")


async def test_terminate_running_and_queued_jobs(rig: Rig) -> None:
    await rig.cluster()
    running = await rig.submit("running", job_config(gate="never"))
    queued = await rig.submit("queued", job_config())
    await rig.until(lambda: _in(rig, running, JobState.RUNNING), "running to run")
    await rig.jobs.terminate_job("queued", actor=rig.actor)
    await rig.jobs.terminate_job("running", actor=rig.actor)
    await rig.jobs.terminate_job("running", actor=rig.actor)  # a second click is harmless
    await rig.until(lambda: _finished(rig, running), "running to end")
    await rig.until(lambda: _finished(rig, queued), "queued to end")
    assert await rig.state(running) is JobState.TERMINATED
    assert await rig.state(queued) is JobState.TERMINATED
    assert len(rig.recorder.of(running, JobFinished)) == 1
    assert len(rig.recorder.of(queued, JobFinished)) == 1


async def test_delete_terminates_first_and_frees_the_name(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("dup", job_config(gate="never"))
    await rig.until(lambda: _in(rig, job, JobState.RUNNING), "dup to run")
    await rig.jobs.delete_job("dup", actor=rig.actor)
    again = await rig.submit("dup", job_config())
    await rig.until(lambda: _finished(rig, job), "the deleted job to end")
    await rig.until(lambda: _finished(rig, again), "the new dup to end")
    assert await rig.state(job) is JobState.TERMINATED
    assert await rig.state(again) is JobState.SUCCEEDED


async def test_autoscale_grows_for_the_queue_at_once_and_waits_to_shrink(rig: Rig) -> None:
    await rig.cluster(min_nodes=0, max_nodes=2)
    cluster = await rig.store.get_cluster("c1")
    assert cluster is not None and cluster.target_nodes == 0
    job = await rig.submit("grow", job_config(nodes=2, gate="grow.go"))
    await rig.until(lambda: _in(rig, job, JobState.RUNNING), "grow to run")
    assert (await rig.store.get_cluster("c1")).target_nodes == 2  # type: ignore[union-attr]
    rig.open_gate("grow.go")
    await rig.until(lambda: _finished(rig, job), "grow to finish")
    await rig.runner.tick()
    # shrinking is the idle flow's, after a warning (tests/test_idle.py), never the dispatcher's
    assert (await rig.store.get_cluster("c1")).target_nodes == 2  # type: ignore[union-attr]


async def test_restart_mid_job_loses_and_repeats_nothing(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("long", job_config(lines=50, gate="long.go"))
    await rig.until(lambda: _log_lines(rig, job, 50), "the first 50 lines")
    rig.new_runner()  # the bot restarts; the node runner keeps going
    rig.open_gate("long.go")
    await rig.until(lambda: _finished(rig, job), "long to finish")
    lines = [line for d in rig.recorder.of(job, LogSnippet) for line in d.event.lines]  # type: ignore[attr-defined]
    assert lines == [f"line {i}" for i in range(1, 51)]
    assert len(rig.recorder.of(job, JobFinished)) == 1


async def test_undelivered_events_survive_a_restart(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("quiet", job_config(lines=2))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not (await rig.state(job)).finished:  # run the job without delivering anything
        assert loop.time() < deadline
        await rig.runner.tick()
        await asyncio.sleep(0.05)
    assert rig.recorder.deliveries == []
    rig.new_runner()
    await rig.relay.drain()
    assert len(rig.recorder.of(job, JobFinished)) == 1
    await rig.relay.drain()
    assert len(rig.recorder.of(job, JobFinished)) == 1


async def _finished(rig: Rig, job: Job) -> bool:
    return (await rig.state(job)).finished and not await rig.store.pending_events(1)


async def _in(rig: Rig, job: Job, state: JobState) -> bool:
    return await rig.state(job) is state


async def _log_lines(rig: Rig, job: Job, n: int) -> bool:
    return sum(len(d.event.lines) for d in rig.recorder.of(job, LogSnippet)) >= n  # type: ignore[attr-defined]


async def test_terminate_during_start_is_not_undone(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("t", job_config(lines=1, gate="t.go"))
    real = rig.backend.start_job

    async def start_while_user_clicks(request):  # type: ignore[no-untyped-def]
        await rig.jobs.terminate_job("t", actor=rig.actor)
        await rig.store.set_conversation(job.id, Conversation("C1", "1.5", "U1"))
        return await real(request)

    rig.backend.start_job = start_while_user_clicks  # type: ignore[method-assign]
    await rig.runner.dispatch()
    stored = await rig.store.get_job(job.id)
    assert stored is not None and stored.state is JobState.TERMINATING
    assert stored.conversation == Conversation("C1", "1.5", "U1")  # the layout write kept it
    await rig.until(lambda: _finished(rig, job), "t to end")
    assert await rig.state(job) is JobState.TERMINATED


async def test_only_the_requester_or_an_admin_may_stop_a_job(rig: Rig) -> None:
    await rig.cluster()
    await rig.submit("mine", job_config(gate="never"))
    stranger = Actor("U2", Conversation("C1"))
    with pytest.raises(NotAllowed):
        await rig.jobs.terminate_job("mine", actor=stranger)
    _, applied = await rig.jobs.terminate_job("mine", actor=Actor("U3", is_admin=True))
    assert applied


async def test_a_job_whose_outputs_escape_the_share_still_finishes(rig: Rig) -> None:
    await rig.cluster()
    evil = ConfigSource(
        "inline",
        json.dumps(
            {
                "properties": {
                    "nodeCount": 1,
                    "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
                    "outputDirectories": [
                        {"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}
                    ],
                    "customToolkitSettings": {
                        "commandLine": "rm -r $AZ_BATCHAI_OUTPUT_MODEL && "
                        "ln -s / $AZ_BATCHAI_OUTPUT_MODEL"
                    },
                }
            }
        ),
    )
    job = await rig.submit("evil", evil)
    after = await rig.submit("after", job_config())
    await rig.until(lambda: _finished(rig, after), "the next job to finish")
    assert await rig.state(job) is JobState.SUCCEEDED
    (receipt,) = rig.recorder.of(job, JobFinished)
    assert receipt.links == ()


async def test_receipt_skips_outputs_deleted_before_delivery(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("gone", job_config(outputs=True))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not (await rig.state(job)).finished:
        assert loop.time() < deadline
        await rig.runner.tick()
        await asyncio.sleep(0.05)
    for path in rig.share.share_dir(SHARE).rglob("m.bin"):
        path.unlink()
    await rig.relay.drain()
    (receipt,) = rig.recorder.of(job, JobFinished)
    assert receipt.links == ()


async def test_autoscale_keeps_busy_nodes(rig: Rig) -> None:
    await rig.cluster(min_nodes=0, max_nodes=2)
    first = await rig.submit("first", job_config(gate="first.go"))
    second = await rig.submit("second", job_config(gate="second.go"))
    await rig.until(lambda: _in(rig, second, JobState.RUNNING), "both to run")
    rig.open_gate("first.go")  # node 0 frees up, node 1 stays busy
    await rig.until(lambda: _finished(rig, first), "first to finish")
    await rig.runner.tick()
    cluster = await rig.store.get_cluster("c1")
    assert cluster is not None and cluster.target_nodes == 2
    rig.open_gate("second.go")
    await rig.until(lambda: _finished(rig, second), "second to finish")
    await rig.runner.tick()
    assert (await rig.store.get_cluster("c1")).target_nodes == 2  # type: ignore[union-attr]


async def test_snippets_waiting_for_delivery_go_out_as_one_message(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("chatty", job_config(lines=300))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not (await rig.state(job)).finished:  # the channel is "slow": nothing delivered yet
        assert loop.time() < deadline
        await rig.runner.tick()
        await asyncio.sleep(0.05)
    await rig.relay.drain()
    snippets = [d for d in rig.recorder.of(job, LogSnippet) if d.event.file == "stdout.txt"]  # type: ignore[attr-defined]
    assert len(snippets) == 1
    assert snippets[0].event.lines == tuple(f"line {i}" for i in range(1, 301))  # type: ignore[attr-defined]
    assert len(snippets[0].event_ids) >= 2 and snippets[0].log_url is not None  # merged


async def test_a_job_that_ended_between_polls_keeps_its_real_start(rig: Rig) -> None:
    await rig.cluster()
    job = await rig.submit("quick", job_config(lines=1))
    await rig.runner.dispatch()  # started; nobody polls while it runs
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while (status := await rig.backend.get_job_status(job.id)).phase != "exited":
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    await rig.runner.poll()
    done = await rig.store.get_job(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED
    # the start the node runner saw, not the moment of the poll that noticed ("0 s, $0")
    assert status.started_at is not None and status.ended_at is not None
    assert done.started_at == status.started_at
    assert done.ended_at is not None and done.ended_at >= status.ended_at > done.started_at
