"""Node health on Azure, against the fake ARM's nodes with a fake NVIDIA driver: the setup
extension's check leaves its result on the node and the control share; a node that fails is
unusable with the reason, no job is placed or started on it, and reading health costs no ARM
call."""

from __future__ import annotations

from typing import Any

import pytest

from services.backends.azure.files import AzureShare
from services.core.errors import Conflict, TransientError
from tests.azure.rig import AzureRig
from tests.azure.test_compute import gpu_cluster
from tests.contract import job_spec, launch_request

T4 = "Standard_NC4as_T4_v3"  # 1 GPU


async def test_a_healthy_gpu_node_is_idle_and_its_result_is_on_the_share(
    rig: AzureRig, share: AzureShare
) -> None:
    backend = rig.backend(share)
    try:
        c = gpu_cluster("fine", T4, 2)
        await backend.create_cluster(c)
        nodes = await backend.list_nodes(c)
        assert [n.state for n in nodes] == ["idle", "idle"]
        assert await backend.unusable_nodes(c) == {}
        assert await backend.failed_nodes() == []
        results = sorted((rig.files.share_dir("batchai") / ".batchai" / "nodes").iterdir())
        assert [p.name for p in results] == [
            f"fine.{i.computer_name}" for i in rig.arm.scale_sets["fine"].instances.values()
        ]
        assert "status=ok" in results[0].read_text()
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"mode": "failed"}, "the NVIDIA driver does not answer: NVIDIA-SMI has failed"),
        ({"mode": "missing"}, "no NVIDIA driver: nvidia-smi is not installed"),
        ({"count": 2}, "nvidia-smi lists 2 GPU(s); the size has 1"),
    ],
    ids=["driver-does-not-answer", "no-driver", "wrong-gpu-count"],
)
async def test_a_node_that_fails_is_unusable_and_no_job_starts_on_it(
    rig: AzureRig, share: AzureShare, state: dict[str, Any], reason: str
) -> None:
    backend = rig.backend(share)
    try:
        rig.arm.give_gpus("bad", **state)
        c = gpu_cluster("bad", T4, 1)
        await backend.create_cluster(c)
        (node,) = await backend.list_nodes(c)
        assert node.state == "unusable" and node.detail.startswith(reason)
        mark = rig.arm.mark()
        assert (await backend.unusable_nodes(c))[0].startswith(reason)
        (problem,) = await backend.failed_nodes()
        assert problem.cluster == "bad" and problem.reason.startswith(reason)
        inst = rig.arm.scale_sets["bad"].instances["0"]
        assert problem.node == inst.computer_name
        assert rig.arm.count(mark, match="/virtualMachines") <= 1  # health itself: no ARM call
        with pytest.raises(Conflict, match="cannot start on"):
            await backend.start_job(launch_request(job_spec("ok"), c))
        assert inst.run_commands == {}  # nothing was sent to the node
        # and the node itself refuses a job, should one ever be sent
        assert "status=failed" in (inst.dir / "var" / "lib" / "batchai" / "health").read_text()
    finally:
        await backend.aclose()


async def test_a_deleted_cluster_takes_its_health_results_along(
    rig: AzureRig, share: AzureShare
) -> None:
    backend = rig.backend(share)
    try:
        rig.arm.give_gpus("gone", mode="failed")
        c = gpu_cluster("gone", T4, 1)
        await backend.create_cluster(c)
        assert len(await backend.failed_nodes()) == 1
        await backend.delete_cluster(c)
        assert await backend.failed_nodes() == []
        assert list((rig.files.share_dir("batchai") / ".batchai" / "nodes").iterdir()) == []
    finally:
        await backend.aclose()


async def test_a_failed_node_that_is_scaled_in_or_deleted_is_no_longer_listed(
    rig: AzureRig, share: AzureShare
) -> None:
    now = [0.0]
    backend = rig.backend(share, monotonic=lambda: now[0])
    results = rig.files.share_dir("batchai") / ".batchai" / "nodes"
    try:
        rig.arm.give_gpus("bad", mode="failed")
        c = gpu_cluster("bad", T4, 2)
        await backend.create_cluster(c)
        assert len(await backend.failed_nodes()) == 2
        await backend.resize_cluster(c, 1)  # scale-in: Azure picks the VM that goes
        (left,) = rig.arm.scale_sets["bad"].instances.values()
        (problem,) = await backend.failed_nodes()
        assert problem.node == left.computer_name
        assert [p.name for p in results.iterdir()] == [f"bad.{left.computer_name}"]
        # The last VM deleted behind the bot's back (as an eviction does): not listed either.
        rig.arm.scale_sets["bad"].instances.pop(left.id).kill()
        now[0] += 3600.0  # past every cache
        assert await backend.failed_nodes() == []
    finally:
        await backend.aclose()


async def test_a_node_that_never_reports_says_why_after_a_while_and_gets_no_job(
    rig: AzureRig, share: AzureShare
) -> None:
    """A ready VM without a health result is preparing (no job is placed there); after half an
    hour its detail says why that may be, a long setup task or a cluster older than the check."""
    now = [0.0]
    backend = rig.backend(share, monotonic=lambda: now[0])
    results = rig.files.share_dir("batchai") / ".batchai" / "nodes"
    try:
        c = gpu_cluster("quiet", T4, 1)
        await backend.create_cluster(c)
        for result in results.iterdir():  # as a node of a cluster made before the check
            result.unlink()
        now[0] += 3600.0  # past the listing cache
        (node,) = await backend.list_nodes(c)
        assert (node.state, node.detail) == ("preparing", "checking its GPUs and share mounts")
        now[0] += 31 * 60.0
        (node,) = await backend.list_nodes(c)
        assert node.state == "preparing"
        assert node.detail.startswith("no health result for 31 min: its setup task may still run")
        assert "recreate the cluster" in node.detail
        with pytest.raises(TransientError, match="still preparing"):
            await backend.start_job(launch_request(job_spec("ok"), c))
    finally:
        await backend.aclose()
