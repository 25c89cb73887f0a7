"""Multi-node jobs on InfiniBand sizes get the MPI/NCCL environment Azure's HPC images need;
single-node jobs and sizes without RDMA get none of it; the job's own variables win."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.backends.azure.backend import AzureBackend
from services.backends.azure.fabric import rdma_env, topology_file
from tests.azure.rig import AzureRig
from tests.azure.test_compute import backend_share, gpu_cluster
from tests.contract import job_spec, launch_request, log_loc, read_text, wait_for

FABRIC = {"UCX_TLS", "UCX_NET_DEVICES", "OMPI_MCA_pml", "I_MPI_FABRICS", "FI_PROVIDER"}


def test_nd_a100_pytorch_gets_nccl_over_infiniband_with_azures_topology_file() -> None:
    env = rdma_env(size="Standard_ND96asr_v4", rdma=True, nodes=4, gpus=8, toolkit="pytorch")
    assert env["NCCL_TOPO_FILE"] == "/opt/microsoft/ndv4-topo.xml"
    assert env["NCCL_IB_PCI_RELAXED_ORDERING"] == "1"
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert (env["UCX_TLS"], env["UCX_NET_DEVICES"]) == ("rc", "mlx5_ib0:1")
    assert "OMPI_MCA_pml" not in env and "I_MPI_FABRICS" not in env  # not an MPI toolkit


def test_mpi_toolkits_get_the_mpi_fabric_and_cpu_sizes_no_nccl() -> None:
    hb = rdma_env(size="Standard_HB120rs_v3", rdma=True, nodes=2, gpus=0, toolkit="custommpi")
    assert hb["OMPI_MCA_pml"] == "ucx" and hb["I_MPI_FABRICS"] == "shm:ofi"
    assert hb["FI_PROVIDER"] == "mlx"
    assert not any(k.startswith("NCCL_") for k in hb)
    horovod = rdma_env(
        size="Standard_ND96isr_H100_v5", rdma=True, nodes=2, gpus=8, toolkit="horovod"
    )
    assert horovod["NCCL_TOPO_FILE"] == "/opt/microsoft/ndv5-topo.xml"
    assert horovod["OMPI_MCA_coll_hcoll_enable"] == "0"


@pytest.mark.parametrize(
    ("size", "rdma", "nodes"),
    [
        ("Standard_NC4as_T4_v3", False, 4),  # no InfiniBand
        ("Standard_ND96asr_v4", True, 1),  # nothing crosses the fabric
    ],
)
def test_no_fabric_without_infiniband_or_on_one_node(size: str, rdma: bool, nodes: int) -> None:
    assert rdma_env(size=size, rdma=rdma, nodes=nodes, gpus=8, toolkit="horovod") == {}


def test_topology_files_only_where_azure_ships_one() -> None:
    assert topology_file("Standard_ND96amsr_A100_v4") == "/opt/microsoft/ndv4-topo.xml"
    assert topology_file("Standard_ND40rs_v2") == "/opt/microsoft/ndv2-topo.xml"
    assert topology_file("Standard_NC24ads_A100_v4") is None
    amd = rdma_env(size="Standard_ND96isr_MI300X_v5", rdma=True, nodes=2, gpus=8, toolkit="pytorch")
    assert "NCCL_TOPO_FILE" not in amd and amd["UCX_TLS"] == "rc"


async def job_env(
    rig: AzureRig, backend: AzureBackend, size: str, nodes: int, **extra: Any
) -> list[dict[str, str]]:
    """Every rank's environment of an `ok` job on `nodes` × `size`, run on the fake nodes."""
    for quota in ("cores", "standardNDASv4_A100Family"):
        rig.arm.limits[quota.lower()] = 10_000
    c = gpu_cluster(f"ib{nodes}", size, nodes)
    await backend.create_cluster(c)
    spec = job_spec("ok", node_count=nodes, process_count=nodes, extra=extra or None)
    request = launch_request(spec, c, tuple(range(nodes)))
    result = await backend.start_job(request)
    assert (await wait_for(backend, request.job_id)).exit_code == 0
    envs = []
    for rank in range(nodes):
        name = f"stdout-{rank}.txt" if nodes > 1 else "stdout.txt"
        out = await read_text(backend_share(backend), log_loc(result, name))
        envs.append(json.loads(out)["env"])
    return envs


async def test_a_two_node_job_on_an_rdma_size_gets_the_fabric_and_its_own_values_win(
    rig: AzureRig, backend: AzureBackend
) -> None:
    own = {"environmentVariables": [{"name": "NCCL_SOCKET_IFNAME", "value": "ib0"}]}
    envs = await job_env(rig, backend, "Standard_ND96asr_v4", 2, **own)
    for env in envs:
        assert env["NCCL_TOPO_FILE"] == "/opt/microsoft/ndv4-topo.xml"
        assert env["UCX_NET_DEVICES"] == "mlx5_ib0:1"
        assert env["NCCL_SOCKET_IFNAME"] == "ib0"  # the job's own value, not eth0


async def test_non_rdma_sizes_and_single_nodes_get_none_of_it(
    rig: AzureRig, backend: AzureBackend
) -> None:
    for size, nodes in (("Standard_NC4as_T4_v3", 2), ("Standard_ND96asr_v4", 1)):
        for env in await job_env(rig, backend, size, nodes):
            assert not FABRIC & set(env) and not any(k.startswith("NCCL_") for k in env)
