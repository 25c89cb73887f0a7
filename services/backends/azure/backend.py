"""AzureBackend: clusters as Uniform VM Scale Sets, jobs as node runners started by run command.

Each Batch AI concept and its Azure form:

- cluster              -> a Uniform scale set named like the cluster (capacity = node count,
                          overprovisioning off, manual upgrades); `lowpriority` -> Spot, Delete
- share mounts         -> cloud-init (cifs-utils, fstab entries, no secret) plus a CustomScript
                          extension whose protectedSettings carry the storage key and mount the
                          shares over SMB 3.1.1; it also runs the cluster's setup task
- job on a node        -> a managed run command `job-<id>-<rank>` (async) that starts the node
                          runner (`backends.noderun.runner`, stdlib only) under systemd-run;
                          the node's spec (secrets too) travels in its protected parameters, the
                          runner is run only when its sha256 is the bot's; job processes run as
                          a uid of their own (group `job_gid`), which cannot read the root-only
                          control mount
- status, terminate,   -> the runner's files on the bot's share (`.batchai/jobs/<id>/`), read and
  deadline                written over the Files REST API; the run command's instance view is
                          only asked while a node has not started; the bot's own records there
                          (`launch.json`, `final.json`) carry an HMAC and are refused if altered
- node exec            -> a synchronous managed run command `exec-<uuid>` on the instance (the
                          command line in a parameter, run as a job's uid, never root), read
                          back (the last 4 KB of output) and deleted
- node list            -> the scale set's VMs with their instance views, NICs for private IPs
- registry credentials -> `docker login --password-stdin` in the launch, fed from a root-only file
  (imageSourceRegistry)   written from a protected parameter and removed; a Key Vault reference
                          is read with the bot's credential first (`keyvault`)
- node health check    -> the setup extension ends with `noderun.health` (nvidia-smi lists the
                          size's GPUs, the mounts answer) and leaves its result on the node and
                          at `.batchai/nodes/<cluster>.<hostname>`; a ready VM is idle only once
                          that says ok (one Files listing for all clusters, no ARM call)
- blob containers      -> blobfuse2, its config (account key included) written by the setup
                          extension into a root-only file; never on a command line
- NFS file servers     -> a VM with RAID-0 data disks exporting /mnt/data (`fileservers`),
                          mounted by its host name; `--use-auto-storage` makes the share and
                          container when missing (Files and Blob SDKs, the bot's account key)
- job mountVolumes     -> shares and containers of the bot's storage account and its file
                          servers, mounted once per node under `share_mount_root` and linked
                          at $AZ_BATCHAI_JOB_MOUNT_ROOT/<path>
- outputs              -> listed and linked where they are: on a share (Files API) or in a
                          container of the bot's account (`blobs`: Blob API, blob SAS links)

The backend is composed of one part per concern, each its own module: `scalesets` (clusters
and the per-poll VM snapshot, model in `scaleset_model`), `runcommands` (launch, stop, clean-up),
`jobplan` (what each node runs), `status` (job status from the share), `control` (the bot's
share and its sealed records), `preflight` (sizes, quotas, `batchai-bot check`); the node-side
scripts are in `node` and `cloudinit`, the Files client in `files` (outputs in blob containers
in `blobs`, path rules in `paths`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.network.aio import NetworkManagementClient
from azure.storage.blob.aio import BlobServiceClient

from services.backends.azure.config import AzureConfig
from services.backends.azure.control import ControlRecords, ControlShare
from services.backends.azure.errors import azure_errors
from services.backends.azure.fileservers import AzureFileServers
from services.backends.azure.health import NodeHealthRecords, node_state
from services.backends.azure.jobplan import JobPlanner
from services.backends.azure.keyvault import KeyVaultSecrets
from services.backends.azure.preflight import Preflight
from services.backends.azure.runcommands import RunCommands
from services.backends.azure.scalesets import ScaleSets, Snapshot
from services.backends.azure.status import JobStatus
from services.core.errors import NotFound
from services.core.ports import LaunchRequest, LaunchResult, RunStatus
from services.models import Cluster, FileServer, Node, NodeOutput, NodeProblem, Usage


class AzureBackend:
    """ComputeBackend on Azure (see the module docstring for the mapping)."""

    name = "azure"

    def __init__(
        self,
        config: AzureConfig,
        *,
        credential: AsyncTokenCredential,
        share: ControlShare,
        wall_time: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        key_vault: KeyVaultSecrets | None = None,
    ) -> None:
        self._config = config
        self._key_vault = key_vault or KeyVaultSecrets(config, credential)
        self._share = share
        options: dict[str, Any] = {
            "base_url": config.arm_url,
            "credential_scopes": [config.credential_scope],
            "connection_verify": config.connection_verify,
            "polling_interval": config.polling_interval,
        }
        self._compute = ComputeManagementClient(credential, config.subscription_id, **options)
        self._network = NetworkManagementClient(credential, config.subscription_id, **options)
        self._rg = config.resource_group
        self._control = ControlRecords(config, share)
        self._preflight = Preflight(
            config, credential=credential, compute=self._compute, network=self._network, share=share
        )
        self._scalesets = ScaleSets(
            config,
            compute=self._compute,
            network=self._network,
            preflight=self._preflight,
            monotonic=monotonic,
        )
        self._health = NodeHealthRecords(
            self._control, monotonic=monotonic, max_age=config.poll_cache_seconds
        )
        self._runcommands = RunCommands(
            config,
            compute=self._compute,
            control=self._control,
            scalesets=self._scalesets,
            preflight=self._preflight,
            planner=JobPlanner(config, self._control),
            key_vault=self._key_vault,
            wall_time=wall_time,
            node_states=self._node_states,
        )
        self._blobs = BlobServiceClient(
            config.blob_url,
            credential={"account_name": config.storage_account, "account_key": config.storage_key},
        )
        self._file_servers = AzureFileServers(
            config, compute=self._compute, network=self._network, blobs=self._blobs, files=share
        )
        self._status = JobStatus(
            config,
            control=self._control,
            scalesets=self._scalesets,
            runcommands=self._runcommands,
            wall_time=wall_time,
        )

    @property
    def reserved_shares(self) -> frozenset[str]:
        """Shares no cluster or job may mount: the control share."""
        return frozenset({self._config.share})

    # ---------------------------------------------------------------- clusters (scalesets.py)

    async def create_cluster(self, cluster: Cluster) -> None:
        await self._scalesets.create(cluster)

    async def resize_cluster(self, cluster: Cluster, target: int) -> None:
        await self._scalesets.resize(cluster, target)
        # The VMs it has now (after a scale-in, or a grow-back after evictions): the health
        # results of the others go. A fresh read: a VM made since has its result kept.
        snap = await self._scalesets.snapshot(cluster.name, fresh=True)
        if snap.exists:
            await self._health.prune(cluster.name, [vm.computer_name for vm in snap.vms])

    async def delete_cluster(self, cluster: Cluster) -> None:
        await self._scalesets.delete(cluster)
        await self._health.forget(cluster.name)

    async def list_nodes(self, cluster: Cluster) -> list[Node]:
        busy = {
            inst
            for job in self._control.jobs.values()
            if job.cluster == cluster.name and job.final is None
            for inst in job.instances
        }
        return await self._scalesets.list_nodes(
            cluster, busy, lambda snap: self._node_states(cluster.name, snap)
        )

    async def _node_states(self, cluster: str, snap: Snapshot) -> list[tuple[str, str]]:
        """Each VM's (state, detail), its health result taken into account (health.py)."""
        ready = [vm.computer_name for vm in snap.vms if vm.state == "ready"]
        results = await self._health.of_cluster(cluster, ready)
        return [
            node_state(
                vm,
                results.get(vm.computer_name.lower()),
                self._health.waited(cluster, vm.computer_name),
            )
            for vm in snap.vms
        ]

    async def unusable_nodes(self, cluster: Cluster) -> dict[int, str]:
        snap = await self._scalesets.snapshot(cluster.name)  # shared with the cycle's polls
        if not snap.exists:
            raise NotFound(f"cluster {cluster.name} does not exist")
        states = await self._node_states(cluster.name, snap)
        found = {i: detail for i, (state, detail) in enumerate(states) if state != "ready"}
        found.update({i: "not created yet" for i in range(len(snap.vms), cluster.target_nodes)})
        return found

    async def failed_nodes(self, *, cluster: str | None = None) -> list[NodeProblem]:
        """Failed health results of VMs that exist: one left by a VM deleted since (evicted,
        scaled in) is not listed, and goes at the cluster's next resize."""
        problems = [p for p in await self._health.failed() if cluster in (None, p.cluster)]
        hosts: dict[str, set[str]] = {}
        for name in sorted({p.cluster for p in problems}):
            snap = await self._scalesets.snapshot(name)
            hosts[name] = {vm.computer_name.lower() for vm in snap.vms} if snap.exists else set()
        return [p for p in problems if p.node.lower() in hosts[p.cluster]]

    # ---------------------------------------------------------------- storage (fileservers.py)

    async def ensure_auto_storage(self, share: str, container: str) -> None:
        await self._file_servers.ensure_auto_storage(share, container)

    async def create_file_server(self, server: FileServer) -> str:
        return await self._file_servers.create_file_server(server)

    async def delete_file_server(self, server: FileServer) -> None:
        await self._file_servers.delete_file_server(server)

    # ---------------------------------------------------------------- jobs (runcommands, status)

    async def start_job(self, request: LaunchRequest) -> LaunchResult:
        return await self._runcommands.start_job(request)

    async def get_job_status(self, job_id: str) -> RunStatus:
        return await self._status.get_job_status(job_id)

    async def terminate_job(self, job_id: str) -> None:
        await self._runcommands.terminate_job(job_id)

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        await self._runcommands.set_time_left(job_id, remaining)

    async def run_on_node(
        self, cluster: Cluster, node_id: str, command: str, *, timeout: float, job_id: str | None
    ) -> NodeOutput:
        return await self._runcommands.run_on_node(
            cluster.name, node_id, command, timeout=timeout, job_id=job_id
        )

    # ---------------------------------------------------------------- setup (preflight.py)

    async def check_setup(self, uses: Sequence[tuple[str, str]]) -> list[tuple[str, bool, str]]:
        """One line per step of `batchai-bot check` for the (VM size, image) pairs in use (see
        Preflight.check_setup); never raises."""
        return await self._preflight.check_setup(uses)

    async def usages(self, location: str | None) -> list[Usage]:
        return await self._preflight.quota_rows(location)

    async def ping(self) -> None:
        """One cheap ARM call and one Files call; raises a BatchAIError when either fails."""
        async with azure_errors(f"reach resource group {self._rg}"):
            pages = self._compute.virtual_machine_scale_sets.list(self._rg).by_page()
            async for _ in pages:
                break
        await self._share.stat(self._control.loc())

    async def aclose(self) -> None:
        """Close the SDK clients (the credential belongs to the composition root)."""
        await self._compute.close()
        await self._network.close()
        await self._key_vault.aclose()
        await self._blobs.close()
