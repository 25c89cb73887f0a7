"""Spot jobs that survive eviction, on the local backend: a lost node requeues the job (same job,
next attempt, outputs kept), the thread says why and what it cost, one receipt at the end with
every attempt and the right total; a retry past the approved amount asks again."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from handlers import views
from handlers.views import to_text
from services.backends.links import LinkSigner
from services.backends.local import LocalBackend, LocalShare
from services.clusters.service import ClusterRequest, ClusterService
from services.core.clock import FakeClock
from services.core.events import (
    GpuIdleWarningClosed,
    JobFinished,
    JobRequeued,
    JobStateChanged,
    LogSnippet,
)
from services.core.ports import Delivery, FileShare
from services.jobs.lifecycle import JobState
from services.jobs.runner import JobRunner
from services.jobs.service import JobRequest, JobService
from services.jobs.sources import ConfigLoader
from services.jobspec import LaunchContext, NodeInfo, load_job_spec, plan_launch
from services.models import Actor, ConfigSource, Conversation, GpuUse, Job
from services.notify.relay import EventRelay
from services.spend.approvals.service import ApprovalService
from services.spend.gate import ApprovalPolicy, SpendGate
from services.spend.ledger import PriceBook, SpendService
from services.spend.pricing import cost_so_far, format_usd, load_price_table
from services.store import SqlStore

PROJECT = Path(__file__).resolve().parents[1]
SHARE = "data"
A100 = "Standard_NC24ads_A100_v4"  # spot $0.7345/h in the bundled table
TIMEOUT = 60.0
USER, BOSS = "U1", "UBOSS"

# A job that checkpoints into $AZ_BATCHAI_OUTPUT_MODEL: attempt n resumes from step n-1, says
# so, and waits for the file go<step> on the share before it ends.
SCRIPT = r"""
import os, sys, time
ck = os.path.join(os.environ["AZ_BATCHAI_OUTPUT_MODEL"], "ckpt")
step = int(open(ck).read()) if os.path.exists(ck) else 0
print(f"resumed from {step}" if step else "fresh start", flush=True)
with open(ck, "w") as f:
    f.write(str(step + 1))
gate = os.path.join(os.environ["AZ_BATCHAI_MOUNT_ROOT"], "afs", f"go{step}")
while not os.path.exists(gate):
    time.sleep(0.02)
"""


def job_config(hours: int = 1, retries: int | None = None) -> ConfigSource:
    command = f"{shlex.quote(sys.executable)} $AZ_BATCHAI_MOUNT_ROOT/afs/ckpt.py"
    constraints: dict[str, Any] = {"maxWallClockTime": f"{hours}:00:00"}
    if retries is not None:
        constraints["maxTaskRetryCount"] = retries
    props = {
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}],
        "customToolkitSettings": {"commandLine": command},
        "constraints": constraints,
    }
    return ConfigSource("inline", json.dumps({"properties": props}))


@dataclass
class Recorder:
    deliveries: list[Delivery] = field(default_factory=list)

    async def deliver(self, delivery: Delivery) -> Conversation | None:
        self.deliveries.append(delivery)
        return None

    def of(self, job: Job, kind: type) -> list[Any]:
        return [
            d for d in self.deliveries if d.event.job_id == job.id and isinstance(d.event, kind)
        ]


@dataclass
class Rig:
    """The services and runner over one store; `make_backend` gives the backend (local here,
    azure-on-fakes in tests/azure/test_spot.py) and `share_dir` is the job share's directory."""

    root: Path
    store: SqlStore
    share: FileShare
    share_dir: Path
    clock: FakeClock
    policy: ApprovalPolicy
    make_backend: Callable[[], Any]
    recorder: Recorder = field(default_factory=Recorder)
    actor: Actor = Actor(USER, Conversation("C1"))

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """What a restart does: fresh services and runner over the same store and share."""
        prices = PriceBook(load_price_table(PROJECT / "manifests" / "prices.json"))
        self.spend = SpendService(store=self.store, prices=prices, clock=self.clock)
        gate = SpendGate(policy=self.policy, spend=self.spend)
        self.approvals = ApprovalService(store=self.store, gate=gate, clock=self.clock)
        self.backend = self.make_backend()
        self.clusters = ClusterService(
            store=self.store,
            backend=self.backend,
            clock=self.clock,
            configs=ConfigLoader(self.root),
            resource_group="rg",
            workspace="ws",
            prices=prices,
            gate=gate,
        )
        self.jobs = JobService(
            store=self.store,
            share=self.share,
            clock=self.clock,
            configs=ConfigLoader(self.root),
            resource_group="rg",
            workspace="ws",
            spend=self.spend,
            approvals=self.approvals,
        )
        self.runner = JobRunner(
            store=self.store,
            backend=self.backend,
            share=self.share,
            clusters=self.clusters,
            clock=self.clock,
            spend=self.spend,
            approvals=self.approvals,
        )
        self.relay = EventRelay(
            store=self.store, share=self.share, notifier=self.recorder, clock=self.clock
        )

    async def cluster(self, *, spot: bool = True, nodes: int = 1) -> None:
        request = ClusterRequest(
            name="c1",
            vm_size=A100,
            vm_priority="lowpriority" if spot else "dedicated",
            target_nodes=nodes,
            afs_name=SHARE,
            afs_mount_path="afs",
        )
        await self.clusters.create_cluster(request, actor=Actor(BOSS, is_admin=True))

    async def submit(self, config: ConfigSource, *, retries: int | None = None) -> Job:
        request = JobRequest("ckpt", "c1", config, max_retries=retries)
        return await self.jobs.create_job(request, actor=self.actor)

    async def job(self, job: Job) -> Job:
        stored = await self.store.get_job(job.id)
        assert stored is not None
        return stored

    async def until(self, condition: Callable[[], Awaitable[bool]], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            await self.runner.tick()
            await self.relay.drain()
            if await condition():
                return
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def running(self, job: Job, line: str) -> None:
        """The job's current attempt runs and has printed `line`."""

        async def seen() -> bool:
            fresh = await self.job(job)
            if fresh.state is not JobState.RUNNING or fresh.layout is None:
                return False
            assert fresh.layout.stdouterr is not None
            loc = fresh.layout.stdouterr.child("stdout.txt")
            return line in (await self.share.read_range(loc, 0, 1 << 16)).decode()

        await self.until(seen, f"{job.name} to print {line!r}")

    async def lose_node(self, job: Job) -> None:
        """Kill the node's runner and its process group from outside, as a lost node."""
        fresh = await self.job(job)
        pid = int((self.root / "jobs" / fresh.run_id / "run" / "node-0" / "pid").read_text())
        os.killpg(pid, signal.SIGKILL)

    def open_gate(self, step: int) -> None:
        (self.share_dir / f"go{step}").write_text("go")

    def node_cost(self, minutes: int) -> Decimal:
        return cost_so_far(Decimal("0.7345"), nodes=1, elapsed=timedelta(minutes=minutes))

    async def actual_entries(self, job: Job) -> list[Decimal]:
        async with self.store.unit() as uow:
            entries = await uow.ledger.list(kind="actual")
        return [e.usd for e in entries if e.job_id == job.id]


def open_policy() -> ApprovalPolicy:
    return ApprovalPolicy()  # no approvers: nothing needs approval


@pytest.fixture
async def make_rig(tmp_path: Path, store: SqlStore) -> AsyncIterator[Callable[..., Rig]]:
    share = LocalShare(tmp_path, LinkSigner(b"s" * 32, "http://127.0.0.1:1/files"))
    share_dir = share.create_share(SHARE)
    (share_dir / "ckpt.py").write_text(SCRIPT)
    made: list[Rig] = []

    def local() -> LocalBackend:
        return LocalBackend(tmp_path, python=sys.executable, heartbeat_seconds=0.5)

    def build(policy: ApprovalPolicy | None = None) -> Rig:
        clock = FakeClock(datetime.now(UTC) - timedelta(days=1))
        rig = Rig(tmp_path, store, share, share_dir, clock, policy or open_policy(), local)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        for job in await store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await rig.backend.terminate_job(job.run_id)


async def finished(rig: Rig, job: Job) -> bool:
    return (await rig.job(job)).state.finished


async def test_an_evicted_attempt_requeues_and_resumes_with_one_receipt_and_the_right_cost(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    await rig.cluster()
    job = await rig.submit(job_config())
    assert job.max_retries == 3  # a Spot cluster's default
    await rig.running(job, "fresh start")
    first = await rig.job(job)
    rig.clock.advance(timedelta(minutes=30))
    await rig.lose_node(job)

    async def requeued() -> bool:
        return (await rig.job(job)).attempts != ()

    await rig.until(requeued, "the lost attempt to requeue")
    (told,) = rig.recorder.of(job, JobRequeued)
    event = told.event
    assert (event.attempt, event.of, event.reason) == (2, 4, "node runner disappeared")
    assert Decimal(event.attempt_usd) == rig.node_cost(30)
    text, _ = to_text(views.requeued_reply(told.job, event))
    assert f"that attempt cost {format_usd(rig.node_cost(30))}" in text
    assert "attempt 2/4" in text and "output directories are kept" in text

    await rig.running(job, "resumed from 1")  # the same job, from its checkpoint
    second = await rig.job(job)
    assert second.id == job.id and second.run_id == f"{job.id}-2"
    assert second.layout is not None and first.layout is not None
    assert second.layout.outputs == first.layout.outputs  # outputs kept across attempts
    assert second.layout.stdouterr != first.layout.stdouterr  # logs per attempt
    rig.clock.advance(timedelta(minutes=15))
    rig.open_gate(1)
    await rig.until(lambda: finished(rig, job), "attempt 2 to finish")
    for _ in range(3):
        await rig.runner.tick()
        await rig.relay.drain()

    done = await rig.job(job)
    assert done.state is JobState.SUCCEEDED and done.attempt == 2
    (receipt,) = rig.recorder.of(job, JobFinished)  # one receipt for the whole job
    total = rig.node_cost(30) + rig.node_cost(15)
    assert sorted(await rig.actual_entries(job)) == sorted([rig.node_cost(30), rig.node_cost(15)])
    assert views.cost_so_far(done, done.ended_at) == total  # type: ignore[arg-type]
    text, _ = to_text(views.receipt(done, receipt.links))
    assert f"cost {format_usd(total)} over 2 attempts" in text
    assert "attempt 1: 30m 00s" in text and "node runner disappeared" in text
    assert "attempt 2: 15m 00s" in text and "succeeded" in text
    assert [link.name for link in receipt.links] == ["MODEL/ckpt"]
    ckpt = rig.share.share_dir(SHARE)
    assert any(p.read_text() == "2" for p in ckpt.rglob("ckpt") if p.is_file())
    # attempt 1's log is whole in its own directory; attempt 2's lines are numbered from 1
    old = first.layout.stdouterr
    assert old is not None
    assert (await rig.share.read_range(old.child("stdout.txt"), 0, 999)) == b"fresh start\n"
    lines = [(d.event.first_line, d.event.lines) for d in rig.recorder.of(job, LogSnippet)]
    assert (1, ("fresh start",)) in lines and (1, ("resumed from 1",)) in lines
    moves = [(d.event.old, d.event.new) for d in rig.recorder.of(job, JobStateChanged)]
    assert ("running", "queued") in moves and moves[-1][1] == "succeeded"


async def test_a_requeue_closes_the_attempt_s_idle_gpu_warning_and_clears_its_watch(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    await rig.cluster()
    job = await rig.submit(job_config())
    await rig.running(job, "fresh start")
    # Attempt 1 was warned: its GPUs idle since an hour ago, the warning still open.
    idle = GpuUse(0.0, 0.0, 0.0, 100.0, 40960.0, 1, 0.0, rig.clock.now().timestamp())
    async with rig.store.unit() as uow:
        await uow.jobs.set_gpu_use(job.id, idle, rig.clock.now() - timedelta(hours=1))
        assert await uow.jobs.give_gpu_warning(job.id, "w-1", rig.clock.now())
        await uow.commit()
    await rig.lose_node(job)

    async def requeued() -> bool:
        return (await rig.job(job)).attempts != ()

    await rig.until(requeued, "the lost attempt to requeue")
    again = await rig.job(job)
    assert again.gpu is None  # attempt 2 is watched from its own first reading
    (closed,) = rig.recorder.of(job, GpuIdleWarningClosed)
    assert (closed.event.warning_id, closed.event.outcome) == ("w-1", "requeued")
    text, _ = to_text(views.gpu_idle_warning(closed.event))
    assert "that attempt lost its nodes" in text and "stopped by" not in text
    async with rig.store.unit() as uow:  # attempt 2 can be warned once of its own
        assert await uow.jobs.give_gpu_warning(job.id, "w-2", rig.clock.now())


async def test_retries_exhausted_fail_the_job_with_every_attempt_listed(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    await rig.cluster()
    job = await rig.submit(job_config(), retries=1)
    assert job.max_retries == 1
    await rig.running(job, "fresh start")
    rig.clock.advance(timedelta(minutes=10))
    await rig.lose_node(job)
    await rig.running(job, "resumed from 1")
    rig.clock.advance(timedelta(minutes=20))
    await rig.lose_node(job)
    await rig.until(lambda: finished(rig, job), "the job to fail")

    done = await rig.job(job)
    assert done.state is JobState.FAILED
    assert done.error == "node runner disappeared; no retry left (1 of 1 used)"
    assert [a.number for a in done.attempts] == [1]
    assert len(rig.recorder.of(job, JobRequeued)) == 1
    (receipt,) = rig.recorder.of(job, JobFinished)
    text, _ = to_text(views.receipt(done, receipt.links))
    total = rig.node_cost(10) + rig.node_cost(20)
    assert f"cost {format_usd(total)} over 2 attempts" in text
    assert "attempt 1: 10m 00s" in text and "attempt 2: 20m 00s" in text and "failed" in text
    assert sorted(await rig.actual_entries(job)) == sorted([rig.node_cost(10), rig.node_cost(20)])


async def test_a_retry_past_the_approved_amount_asks_again(
    make_rig: Callable[..., Rig],
) -> None:
    # One attempt (1 h x $0.7345) is within U1's limit; one more after 30 min is not.
    policy = ApprovalPolicy(default_limit=Decimal("0.80"), approvers=frozenset({BOSS}))
    rig = make_rig(policy)
    await rig.cluster()
    job = await rig.submit(job_config(hours=1))
    assert (await rig.job(job)).state is JobState.QUEUED  # no approval needed to start
    await rig.running(job, "fresh start")
    rig.clock.advance(timedelta(minutes=30))
    await rig.lose_node(job)

    async def waiting() -> bool:
        return (await rig.job(job)).state is JobState.PENDING_APPROVAL

    await rig.until(waiting, "the retry to wait for approval")
    (approval,) = await rig.store.list_approvals(job_id=job.id)
    assert approval.kind == "retry" and approval.state == "pending"
    spent = rig.node_cost(30)
    assert approval.estimate == (spent + Decimal("0.7345")).quantize(Decimal("0.01"))
    assert approval.formula.startswith(f"{format_usd(spent)} spent + 1 × {A100}")
    (told,) = rig.recorder.of(job, JobRequeued)
    assert told.event.waits_for_approval
    for _ in range(3):  # nothing runs while it waits
        await rig.runner.tick()
    assert (await rig.job(job)).state is JobState.PENDING_APPROVAL

    outcome = await rig.approvals.approve(approval.id, actor=Actor(BOSS))
    assert outcome.applied
    await rig.running(job, "resumed from 1")
    rig.open_gate(1)
    await rig.until(lambda: finished(rig, job), "the approved retry to finish")
    assert (await rig.job(job)).state is JobState.SUCCEEDED
    assert len(rig.recorder.of(job, JobFinished)) == 1


async def test_a_denied_retry_ends_the_job_failed(make_rig: Callable[..., Rig]) -> None:
    policy = ApprovalPolicy(default_limit=Decimal("0.80"), approvers=frozenset({BOSS}))
    rig = make_rig(policy)
    await rig.cluster()
    job = await rig.submit(job_config(hours=1))
    await rig.running(job, "fresh start")
    rig.clock.advance(timedelta(minutes=30))
    await rig.lose_node(job)

    async def waiting() -> bool:
        return (await rig.job(job)).state is JobState.PENDING_APPROVAL

    await rig.until(waiting, "the retry to wait for approval")
    (approval,) = await rig.store.list_approvals(job_id=job.id)
    await rig.approvals.deny(approval.id, actor=Actor(BOSS), reason="not worth it")
    await rig.relay.drain()
    done = await rig.job(job)
    assert done.state is JobState.FAILED
    assert done.error is not None and "retry was denied by UBOSS: not worth it" in done.error
    (receipt,) = rig.recorder.of(job, JobFinished)
    text, _ = to_text(views.receipt(done, receipt.links))
    assert f"cost {format_usd(rig.node_cost(30))} over 2 attempts" in text


async def test_a_dedicated_cluster_does_not_retry_by_default(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    await rig.cluster(spot=False)
    job = await rig.submit(job_config())
    assert job.max_retries == 0
    await rig.running(job, "fresh start")
    await rig.lose_node(job)
    await rig.until(lambda: finished(rig, job), "the job to fail")
    done = await rig.job(job)
    assert (done.state, done.error, done.attempts) == (
        JobState.FAILED,
        "node runner disappeared",
        (),
    )
    assert rig.recorder.of(job, JobRequeued) == []


async def test_the_job_json_retry_count_is_honoured_and_the_flag_wins(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    await rig.cluster(spot=False)
    from_spec = await rig.jobs.check_job(
        JobRequest("a", "c1", job_config(retries=2)), actor=rig.actor
    )
    assert from_spec.max_retries == 2
    flag = await rig.jobs.check_job(
        JobRequest("b", "c1", job_config(retries=2), max_retries=0), actor=rig.actor
    )
    assert flag.max_retries == 0


async def test_a_restart_mid_requeue_neither_loses_nor_repeats_the_message(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    await rig.cluster()
    job = await rig.submit(job_config())
    await rig.running(job, "fresh start")
    await rig.lose_node(job)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not (await rig.job(job)).attempts:  # requeued, its message not yet delivered
        assert loop.time() < deadline
        await rig.runner.tick()
        await asyncio.sleep(0.05)
    assert rig.recorder.of(job, JobRequeued) == []
    rig.restart()
    await rig.running(job, "resumed from 1")
    rig.restart()
    rig.open_gate(1)
    await rig.until(lambda: finished(rig, job), "the job to finish")
    assert len(rig.recorder.of(job, JobRequeued)) == 1
    assert len(rig.recorder.of(job, JobFinished)) == 1
    assert (await rig.job(job)).state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("api", "logs"),
    [(None, "jobs/ckpt/abc"), ("2018-05-01", "experiments/e/jobs/ckpt/abc/stdouterr")],
)
def test_each_attempt_logs_apart_and_writes_the_same_outputs(api: str | None, logs: str) -> None:
    """The plan: attempt n > 1 has its own stdouterr; the output directories do not move."""
    doc = json.loads(job_config().value)
    if api is not None:
        doc["$schema"] = (
            f"https://raw.githubusercontent.com/Azure/BatchAI/master/schemas/{api}/job.json"
        )
        doc["properties"]["constraints"] = {"maxWallClockTime": "1:00:00"}
    spec = load_job_spec(json.dumps(doc))
    ctx = LaunchContext(
        subscription="s",
        resource_group="rg",
        workspace="ws",
        experiment="e",
        cluster_name="c1",
        job_name="ckpt",
        job_uuid="abc",
        mount_root="/m",
        job_mount_root="/j/mounts",
        job_temp_root="/t",
        nodes=(NodeInfo(0, "10.0.0.4"),),
    )
    one = plan_launch(spec, ctx)
    two = plan_launch(spec, replace(ctx, attempt=2))
    assert one.stdouterr_dir.endswith(f"/{logs}")
    parent, _, last = logs.rpartition("/")
    expected = f"{parent}/attempt-2/{last}" if api else f"{logs}/attempt-2"
    assert two.stdouterr_dir.endswith(f"/{expected}")
    assert one.output_dirs == two.output_dirs
    assert two.env["AZ_BATCHAI_STDOUTERR_DIR"] == two.stdouterr_dir
