"""The InfiniBand environment of a multi-node job on an RDMA size (the SKU's `RdmaEnabled`: the
`…r` sizes, ND, HB, HC): what Batch AI gave its RDMA sizes' MPI jobs, for today's SR-IOV sizes
and the Ubuntu-HPC image they boot by default (Mellanox OFED, HPC-X, Intel MPI, NCCL with the
RDMA SHARP plugin, the `mlx5_ib*` device names of azure-persistent-rdma-naming).

Pure. The job's own environmentVariables win over every value here (they are laid on top), and a
single-node job or a size without InfiniBand gets none of it.

Sources, so the values can be checked:
- Azure, "Set up Message Passing Interface (MPI) for HPC" (learn.microsoft.com/azure/
  virtual-machines/setup-mpi): HPC-X/Open MPI over UCX on the InfiniBand device, `-x UCX_TLS=rc
  -x UCX_NET_DEVICES=mlx5_ib0:1`; Intel MPI 2019+ over libfabric.
- Azure HPC blog, "IntelMPI 2019 on Azure HPC Clusters": `FI_PROVIDER=mlx` selects libfabric's
  UCX provider for InfiniBand.
- Azure/azhpc-images `customizations/ndv2.sh`, `ndv4.sh`, `ndv5.sh` (the Ubuntu-HPC image's
  per-size NCCL setup): `NCCL_IB_PCI_RELAXED_ORDERING=1` and `NCCL_TOPO_FILE` =
  /opt/microsoft/ndv{2,4,5}-topo.xml for ND40rs_v2, ND A100 v4 and ND H100 v5; its NCCL test
  presets add `CUDA_DEVICE_ORDER=PCI_BUS_ID`, `NCCL_SOCKET_IFNAME=eth0` and, for Open MPI,
  `coll_hcoll_enable 0`, `pml ucx`, `btl ^openib`, `UCX_IB_PCI_RELAXED_ORDERING=on`.
"""

from __future__ import annotations

import re

# The topology files the Ubuntu-HPC image installs in /opt/microsoft, by size (azhpc-images
# `setup_sku_customizations.sh` picks them the same way).
TOPOLOGY_FILES = (
    (re.compile(r"standard_nd40rs_v2", re.IGNORECASE), "/opt/microsoft/ndv2-topo.xml"),
    (re.compile(r"standard_nd\d+a\w*_v4", re.IGNORECASE), "/opt/microsoft/ndv4-topo.xml"),
    (re.compile(r"standard_nd96is\w*_h100_v5", re.IGNORECASE), "/opt/microsoft/ndv5-topo.xml"),
)
# Toolkits whose multi-node jobs Batch AI started with mpirun (and custom command lines, which
# the recipes run through mpirun with $AZ_BATCHAI_MPI_HOST_FILE).
MPI_TOOLKITS = frozenset({"cntk", "chainer", "custommpi", "horovod", "custom"})

# Every MPI job over InfiniBand: UCX on the first HCA's port 1 with reliable connections.
_UCX = {"UCX_TLS": "rc", "UCX_NET_DEVICES": "mlx5_ib0:1"}
_MPI = {
    "OMPI_MCA_pml": "ucx",  # Open MPI / HPC-X: UCX, not the retired openib transport
    "OMPI_MCA_btl": "^openib",
    "I_MPI_FABRICS": "shm:ofi",  # Intel MPI 2019+: shared memory on the node, libfabric across
    "FI_PROVIDER": "mlx",
}
# NVIDIA GPU sizes: NCCL over InfiniBand with the PCI ordering and device order the topology
# files describe; bootstrap traffic on the Ethernet NIC (the IPoIB interface has no peers' names).
_NCCL = {
    "NCCL_IB_PCI_RELAXED_ORDERING": "1",
    "UCX_IB_PCI_RELAXED_ORDERING": "on",
    "NCCL_SOCKET_IFNAME": "eth0",
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
}
_NCCL_MPI = {"OMPI_MCA_coll_hcoll_enable": "0"}  # hcoll next to NCCL hangs allreduce tests


def topology_file(size: str) -> str | None:
    """The NCCL topology file Azure ships for this ND size on its HPC image, if any."""
    return next((path for pattern, path in TOPOLOGY_FILES if pattern.fullmatch(size)), None)


def rdma_env(*, size: str, rdma: bool, nodes: int, gpus: int, toolkit: str) -> dict[str, str]:
    """The variables a job of `toolkit` on `nodes` × `size` gets; empty off InfiniBand or on one
    node (nothing crosses the fabric)."""
    if not rdma or nodes < 2:
        return {}
    mpi = toolkit in MPI_TOOLKITS
    env = {**_UCX, **(_MPI if mpi else {})}
    if gpus > 0 and not re.search(r"mi\d+x", size, re.IGNORECASE):  # AMD GPUs speak RCCL
        env.update(_NCCL)
        if mpi:
            env.update(_NCCL_MPI)
        topo = topology_file(size)
        if topo is not None:
            env["NCCL_TOPO_FILE"] = topo
    return env
