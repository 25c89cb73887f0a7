"""Spot eviction on the azure backend (real SDK clients, fake ARM and Files): the fake deletes the
job's instance mid-job, the job requeues, the scale set grows back to the cluster's size, the
next attempt resumes from its checkpoint on a new VM; one receipt with every attempt and cost."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handlers import views
from handlers.views import to_text
from services.backends.azure.backend import AzureBackend
from services.backends.azure.files import AzureShare
from services.core.clock import FakeClock
from services.core.errors import TransientError
from services.core.events import JobFinished, JobRequeued
from services.jobs.lifecycle import JobState
from services.jobs.service import JobRequest
from services.models import ConfigSource, Job
from services.spend.pricing import format_usd
from services.store import SqlStore
from tests.azure.rig import JOB_SHARE, AzureRig, azure_rig
from tests.test_spot import SCRIPT, Rig, job_config, open_policy


@pytest.fixture
async def spot(rig: AzureRig, store: SqlStore) -> AsyncIterator[Rig]:
    rig.arm.give_gpus()  # the A100 nodes boot with a (fake) NVIDIA driver
    share_dir = rig.files.create_share(JOB_SHARE)
    (share_dir / "ckpt.py").write_text(SCRIPT)
    files: list[AzureShare] = []
    backends: list[AzureBackend] = []

    def azure() -> AzureBackend:
        share = rig.share()
        files.append(share)
        backend = rig.backend(share)
        backends.append(backend)
        return backend

    job_files = rig.share()
    clock = FakeClock(datetime.now(UTC) - timedelta(days=1))
    made = Rig(rig.root, store, job_files, share_dir, clock, open_policy(), azure)
    yield made
    for job in await store.list_jobs(include_deleted=True):
        if not job.state.finished and job.layout is not None:
            await made.backend.terminate_job(job.run_id)
    for backend in backends:
        await backend.aclose()
    for share in [*files, job_files]:
        await share.aclose()


def instance_of(rig: AzureRig) -> str:
    (instance,) = rig.arm.scale_sets["c1"].instances
    return str(instance)


async def test_an_evicted_spot_vm_requeues_the_job_and_the_scale_set_grows_back(
    spot: Rig, rig: AzureRig
) -> None:
    await spot.cluster()
    job = await spot.submit(job_config())
    assert job.max_retries == 3
    await spot.running(job, "fresh start")
    first_vm = instance_of(rig)
    spot.clock.advance(timedelta(minutes=40))
    rig.arm.evict("c1", first_vm)  # Spot capacity reclaimed: the VM is deleted

    async def requeued() -> bool:
        return (await spot.job(job)).attempts != ()

    await spot.until(requeued, "the evicted attempt to requeue")
    lost = (await spot.job(job)).attempts[0]
    assert lost.reason == f"node 0 (instance {first_vm}) was evicted (Spot capacity reclaimed)"
    assert lost.usd == spot.node_cost(40)

    await spot.running(job, "resumed from 1")  # on a new VM: the scale set grew back
    second_vm = instance_of(rig)
    assert second_vm != first_vm
    assert rig.arm.scale_sets["c1"].model["sku"]["capacity"] == 1
    spot.clock.advance(timedelta(minutes=5))
    spot.open_gate(1)

    async def done() -> bool:
        return (await spot.job(job)).state.finished

    await spot.until(done, "the second attempt to finish")
    finished: Job = await spot.job(job)
    assert finished.state is JobState.SUCCEEDED
    (told,) = spot.recorder.of(job, JobRequeued)
    assert (told.event.attempt, told.event.of) == (2, 4)
    (receipt,) = spot.recorder.of(job, JobFinished)
    text, _ = to_text(views.receipt(finished, receipt.links))
    total = spot.node_cost(40) + spot.node_cost(5)
    assert f"cost {format_usd(total)} over 2 attempts" in text
    assert "was evicted (Spot capacity reclaimed)" in text
    assert sorted(await spot.actual_entries(job)) == sorted([spot.node_cost(40), spot.node_cost(5)])
    ckpts = [p.read_text() for p in spot.share_dir.rglob("ckpt") if p.is_file()]
    assert ckpts == ["2"]  # one output directory, written by both attempts


async def test_an_evicted_job_without_retries_fails_as_before(spot: Rig, rig: AzureRig) -> None:
    await spot.cluster()
    job = await spot.submit(job_config(), retries=0)
    await spot.running(job, "fresh start")
    rig.arm.evict("c1", instance_of(rig))

    async def failed() -> bool:
        return (await spot.job(job)).state.finished

    await spot.until(failed, "the job to fail")
    ended = await spot.job(job)
    assert ended.state is JobState.FAILED and ended.attempts == ()
    assert ended.error is not None and "evicted (Spot capacity reclaimed)" in ended.error
    assert spot.recorder.of(job, JobRequeued) == []


async def test_a_cluster_that_cannot_grow_back_runs_the_retry_on_the_nodes_it_has(
    spot: Rig, rig: AzureRig
) -> None:
    await spot.cluster(nodes=2)
    job = await spot.submit(job_config())
    await spot.running(job, "fresh start")
    (held,) = (await spot.job(job)).nodes
    evicted = sorted(rig.arm.scale_sets["c1"].instances)[held]
    # No Spot capacity: every grow-back of the scale set is refused.
    rig.arm.fail_next(
        1000,
        status=409,
        code="AllocationFailed",
        match="/virtualMachineScaleSets/c1",
        method="PATCH",
    )
    mark = rig.arm.mark()
    rig.arm.evict("c1", evicted)

    async def requeued() -> bool:
        return (await spot.job(job)).attempts != ()

    await spot.until(requeued, "the evicted attempt to requeue")
    await spot.running(job, "resumed from 1")  # on the node that is left
    assert len(rig.arm.scale_sets["c1"].instances) == 1
    for _ in range(5):
        await spot.runner.tick()
    # Asked once for the retry, not again at every tick.
    assert rig.arm.count(mark, method="PATCH", match="/virtualMachineScaleSets/c1") == 1
    spot.open_gate(1)

    async def done() -> bool:
        return (await spot.job(job)).state.finished

    await spot.until(done, "the second attempt to finish")
    assert (await spot.job(job)).state is JobState.SUCCEEDED


JOB_GID = 7000  # the production default: each job runs as a uid of its own
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="dropping to another uid needs root (the nodes' runner is root)"
)
# Bash, not Python: the job's uid may not reach the test's interpreter.
GATED = (
    'echo "$AZ_BATCHAI_JOB_TEMP" > "$AZ_BATCHAI_JOB_TEMP/mine" && echo "attempt up" && '
    'while [ ! -e "$AZ_BATCHAI_MOUNT_ROOT/afs/go1" ]; do sleep 0.05; done'
)


@pytest.fixture
async def spot_as_users(store: SqlStore) -> AsyncIterator[tuple[Rig, AzureRig]]:
    """As `spot`, with the production `job_gid`: the job's processes drop to its own uid."""
    # Not below pytest's temp root (0700): the job's uid must reach the node's job temp.
    base = Path(tempfile.mkdtemp(prefix="batchai-spot-"))
    base.chmod(0o711)
    try:
        async with azure_rig(base) as rig:
            share_dir = rig.files.create_share(JOB_SHARE)
            files: list[AzureShare] = []
            backends: list[AzureBackend] = []

            def azure() -> AzureBackend:
                share = rig.share()
                files.append(share)
                backend = rig.backend(share, job_gid=JOB_GID)
                backends.append(backend)
                return backend

            job_files = rig.share()
            clock = FakeClock(datetime.now(UTC) - timedelta(days=1))
            made = Rig(rig.root, store, job_files, share_dir, clock, open_policy(), azure)
            yield made, rig
            for job in await store.list_jobs(include_deleted=True):
                if not job.state.finished and job.layout is not None:
                    await made.backend.terminate_job(job.run_id)
            for backend in backends:
                await backend.aclose()
            for share in [*files, job_files]:
                await share.aclose()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@as_root
async def test_the_attempt_after_an_eviction_starts_under_the_job_s_own_uid(
    spot_as_users: tuple[Rig, AzureRig],
) -> None:
    spot, rig = spot_as_users
    await spot.cluster()
    props = {
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "customToolkitSettings": {"commandLine": GATED},
        "constraints": {"maxWallClockTime": "1:00:00"},
    }
    job = await spot.submit(ConfigSource("inline", json.dumps({"properties": props})))
    await spot.running(job, "attempt up")
    first_vm = instance_of(rig)
    rig.arm.evict("c1", first_vm)

    async def requeued() -> bool:
        return (await spot.job(job)).attempts != ()

    await spot.until(requeued, "the evicted attempt to requeue")
    # Attempt 2 (run id `<id>-2`): its 0700 temp dir belongs to the uid its processes run as,
    # so the job can write there.
    spot.open_gate(1)

    async def done() -> bool:
        return (await spot.job(job)).state.finished

    await spot.until(done, "the second attempt to finish")
    finished = await spot.job(job)
    assert finished.run_id == f"{job.id}-2"
    assert finished.state is JobState.SUCCEEDED, finished.error


async def two_running_jobs(spot: Rig) -> tuple[Job, Job]:
    """A two-node Spot cluster with a job running on each node (node 0, then node 1)."""
    await spot.cluster(nodes=2)
    first = await spot.submit(job_config())
    await spot.running(first, "fresh start")
    second = await spot.jobs.create_job(JobRequest("other", "c1", job_config()), actor=spot.actor)
    await spot.running(second, "fresh start")
    return await spot.job(first), await spot.job(second)


def vms_running(rig: AzureRig, job: Job) -> list[str]:
    """The instances the job's launch run command was sent to."""
    instances = rig.arm.scale_sets["c1"].instances
    return [i for i, inst in instances.items() if f"job-{job.run_id}-0" in inst.run_commands]


async def test_an_eviction_moves_the_other_jobs_node_and_the_retry_takes_a_free_vm(
    spot: Rig, rig: AzureRig
) -> None:
    """A scale set lists its VMs in order: deleting an evicted one moves the VMs after it down
    the list. The job on them must be found where it is now, and the retry must not be
    started on its VM (two jobs on one GPU)."""
    first, second = await two_running_jobs(spot)
    assert (first.nodes, second.nodes) == ((0,), (1,))
    (first_vm,), (second_vm,) = vms_running(rig, first), vms_running(rig, second)
    rig.arm.evict("c1", first_vm)  # second's VM is now the scale set's first

    async def moved() -> bool:
        again = await spot.job(first)
        return again.attempts != () and (await spot.job(second)).nodes == (0,)

    await spot.until(moved, "the requeue and the other job's node to move")
    await spot.running(first, "resumed from 1")
    retried = await spot.job(first)
    assert retried.nodes == (1,)
    (retry_vm,) = vms_running(rig, retried)
    assert retry_vm not in (first_vm, second_vm)  # the VM the scale set grew back
    assert vms_running(rig, await spot.job(second)) == [second_vm]


async def test_a_job_placed_on_a_vm_another_job_holds_waits_for_it(
    spot: Rig, rig: AzureRig
) -> None:
    """The dispatcher's positions may be a poll old: the backend still never starts a job on a
    VM that another live job runs on; the job waits, and starts there once that job ended."""
    first, second = await two_running_jobs(spot)
    (first_vm,), (second_vm,) = vms_running(rig, first), vms_running(rig, second)
    rig.arm.evict("c1", first_vm)

    async def moved() -> bool:
        again = await spot.job(first)
        return again.attempts != () and (await spot.job(second)).nodes == (0,)

    await spot.until(moved, "the requeue and the other job's node to move")
    await spot.store.set_nodes(second.id, (1,))  # where it was: the view before that poll
    with pytest.raises(TransientError, match="still running"):
        await spot.runner.dispatch()  # places the retry at 0: the other job's VM
    retry = await spot.job(first)
    assert retry.state is JobState.PREPARING and retry.nodes == (0,)
    assert vms_running(rig, retry) == []  # nothing was started on it

    spot.open_gate(0)  # the other job ends
    await spot.running(first, "resumed from 1")
    assert vms_running(rig, await spot.job(first)) == [second_vm]
    assert (await spot.job(second)).state is JobState.SUCCEEDED


async def test_the_rounds_go_on_while_the_cluster_grows_back(
    spot: Rig, rig: AzureRig, caplog: pytest.LogCaptureFixture
) -> None:
    """A scale set takes minutes to add a VM: the grow-back after an eviction runs beside the
    rounds, which go on polling and placing over the nodes the cluster has. (Awaited in the
    round, the held request stopped every round until the SDK gave up on it.)"""
    first, second = await two_running_jobs(spot)
    (first_vm,) = vms_running(rig, first)
    rig.arm.delay_next(1, seconds=600, match="/virtualMachineScaleSets/c1", method="PATCH")
    rig.arm.evict("c1", first_vm)

    async def requeued() -> bool:
        return (await spot.job(first)).attempts != ()

    await spot.until(requeued, "the evicted attempt to requeue")
    spot.open_gate(0)  # the other job ends while the grow-back is held

    async def second_done() -> bool:
        return (await spot.job(second)).state.finished

    await spot.until(second_done, "the other job's end, seen while the cluster grows back")
    await spot.running(first, "resumed from 1")  # on the VM the other job left
    assert rig.arm.scale_sets["c1"].model["sku"]["capacity"] == 1  # still growing back
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    await spot.runner.aclose()
