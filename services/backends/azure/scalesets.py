"""Clusters as Uniform VM Scale Sets: create (after the pre-flight quota check), resize, delete,
and what ARM says about their VMs (node states), read once per poll cycle for every caller.

ARM reads of a cluster are shared by every status call within one poll cycle, so a poll costs
O(clusters) ARM requests, not O(jobs x nodes). The model sent to ARM is in `scaleset_model`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineScaleSet, VirtualMachineScaleSetUpdate
from azure.mgmt.network.aio import NetworkManagementClient

from services.backends.azure.config import AzureConfig
from services.backends.azure.control import refuse_control_share
from services.backends.azure.errors import azure_errors
from services.backends.azure.preflight import Preflight
from services.backends.azure.scaleset_model import SETUP_EXTENSION, scale_set_model
from services.backends.azure.sizes import wire_text
from services.core.errors import BackendError, NotFound, UserError
from services.models import Cluster, Node

log = logging.getLogger(__name__)

SSH_PORT = 22


@dataclass(frozen=True)
class VmState:
    instance_id: str
    name: str
    state: str  # idle-capable base state: ready | preparing | unusable | leaving
    detail: str
    ip: str | None = None
    computer_name: str = ""  # the node's hostname, which names its health result


@dataclass
class Snapshot:
    """One ARM read of a cluster: its VMs (instance views) in node-index order."""

    exists: bool
    vms: list[VmState] = field(default_factory=list)
    taken: float = 0.0  # the backend's monotonic clock

    def by_instance(self) -> dict[str, VmState]:
        return {vm.instance_id: vm for vm in self.vms}


def _codes(statuses: Iterable[Any] | None) -> list[str]:
    return [str(s.code or "") for s in statuses or []]


def vm_state(vm: Any) -> VmState:
    view = vm.instance_view
    codes = _codes(view.statuses if view else None)
    power = next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), "")
    provisioning = str(vm.provisioning_state or "").lower()
    ext_codes = [
        code
        for ext in (view.extensions or [] if view else [])
        if ext.name == SETUP_EXTENSION
        for code in _codes(ext.statuses)
    ]
    state, detail = "ready", "running"
    if provisioning == "deleting" or power == "deallocating":
        state, detail = "leaving", provisioning or power
    elif provisioning == "failed" or any("failed" in c.lower() for c in codes + ext_codes):
        state, detail = "unusable", "provisioning or setup failed"
    elif power in ("stopped", "deallocated", "stopping"):
        state, detail = "unusable", f"VM is {power}"
    elif provisioning in ("creating", "updating") or power in ("starting", ""):
        state, detail = "preparing", provisioning or "starting"
    elif ext_codes and not any("succeeded" in c.lower() for c in ext_codes):
        state, detail = "preparing", "running the setup extension"
    computer = (vm.os_profile.computer_name if vm.os_profile else None) or (
        view.computer_name if view else None
    )
    return VmState(str(vm.instance_id), str(vm.name), state, detail, computer_name=computer or "")


def instance_of(resource_id: str | None) -> str | None:
    if not resource_id:
        return None
    parts = resource_id.rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2].lower() == "virtualmachines" else None


class ScaleSets:
    """One scale set per cluster, and the cache of their VM snapshots."""

    def __init__(
        self,
        config: AzureConfig,
        *,
        compute: ComputeManagementClient,
        network: NetworkManagementClient,
        preflight: Preflight,
        monotonic: Callable[[], float],
    ) -> None:
        self._config = config
        self._compute = compute
        self._network = network
        self._preflight = preflight
        self._monotonic = monotonic
        self._rg = config.resource_group
        self._snapshots: dict[str, Snapshot] = {}
        self._inflight: dict[str, asyncio.Future[Snapshot]] = {}

    async def snapshot(self, cluster: str, *, fresh: bool = False) -> Snapshot:
        """The cluster's VMs; one ARM read shared by all callers within a poll cycle."""
        cached = self._snapshots.get(cluster)
        if (
            not fresh
            and cached is not None
            and self._monotonic() - cached.taken < self._config.poll_cache_seconds
        ):
            return cached
        pending = self._inflight.get(cluster)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._inflight[cluster] = future
        try:
            snap = await self._read_snapshot(cluster)
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._inflight.pop(cluster, None)
        snap.taken = self._monotonic()
        future.set_result(snap)
        self._snapshots[cluster] = snap
        return snap

    async def _read_snapshot(self, cluster: str) -> Snapshot:
        async with azure_errors(f"list the nodes of cluster {cluster}"):
            try:
                vms = [
                    vm
                    async for vm in self._compute.virtual_machine_scale_set_vms.list(
                        self._rg, cluster, expand="instanceView"
                    )
                ]
            except ResourceNotFoundError:
                return Snapshot(exists=False)
        vms.sort(key=lambda vm: int(str(vm.instance_id)) if str(vm.instance_id).isdigit() else 0)
        return Snapshot(exists=True, vms=[vm_state(vm) for vm in vms])

    async def private_ips(self, cluster: str) -> dict[str, str]:
        """Instance id -> private IP: one NIC list for the whole scale set."""
        ips: dict[str, str] = {}
        async with azure_errors(f"list the network interfaces of cluster {cluster}"):
            async for (
                nic
            ) in self._network.network_interfaces.list_virtual_machine_scale_set_network_interfaces(  # noqa: E501
                self._rg, cluster
            ):
                instance = instance_of(nic.virtual_machine.id if nic.virtual_machine else None)
                configs = nic.ip_configurations or []
                primary = next((c for c in configs if c.primary), configs[0] if configs else None)
                if instance is not None and primary is not None and primary.private_ip_address:
                    ips[instance] = primary.private_ip_address
        return ips

    def forget(self, cluster: str) -> None:
        self._snapshots.pop(cluster, None)

    async def create(self, cluster: Cluster) -> None:
        what = f"create cluster {cluster.name}"
        for m in cluster.mounts:
            refuse_control_share(m.share, self._config.share, f"cluster {cluster.name}")
        spot = cluster.vm_priority == "lowpriority"
        async with azure_errors(what):
            try:
                found = await self._compute.virtual_machine_scale_sets.get(self._rg, cluster.name)
                if wire_text(found.provisioning_state).lower() == "failed":
                    raise BackendError(
                        f"cluster {cluster.name} exists but failed to provision; delete it and "
                        "create it again"
                    )
                return  # idempotent: it exists
            except ResourceNotFoundError:
                pass
        sku = await self._preflight.check_capacity(cluster.vm_size, cluster.target_nodes, spot=spot)
        model = scale_set_model(self._config, cluster, sku)
        try:
            poller = await self._compute.virtual_machine_scale_sets.begin_create_or_update(
                self._rg, cluster.name, VirtualMachineScaleSet(model)
            )
            await poller.result()
        except HttpResponseError as err:
            raise await self._preflight.explain_quota(
                err, cluster.vm_size, cluster.target_nodes, spot, what
            ) from err
        finally:
            self.forget(cluster.name)
        log.info(
            "cluster %s: scale set created (%d × %s)",
            cluster.name,
            cluster.target_nodes,
            cluster.vm_size,
        )

    async def resize(self, cluster: Cluster, target: int) -> None:
        if target < 0:
            raise UserError("a cluster cannot have fewer than 0 nodes")
        what = f"resize cluster {cluster.name}"
        async with azure_errors(what):
            vmss = await self._compute.virtual_machine_scale_sets.get(self._rg, cluster.name)
        size = (vmss.sku.name if vmss.sku else None) or cluster.vm_size
        current = int(vmss.sku.capacity or 0) if vmss.sku else 0
        if current == target:
            return
        spot = cluster.vm_priority == "lowpriority"
        if target > current:
            await self._preflight.check_capacity(size, target - current, spot=spot)
        try:
            poller = await self._compute.virtual_machine_scale_sets.begin_update(
                self._rg, cluster.name, VirtualMachineScaleSetUpdate({"sku": {"capacity": target}})
            )
            await poller.result()
        except HttpResponseError as err:
            raise await self._preflight.explain_quota(
                err, cluster.vm_size, max(0, target - current), spot, what
            ) from err
        finally:
            self.forget(cluster.name)

    async def delete(self, cluster: Cluster) -> None:
        try:
            async with azure_errors(f"delete cluster {cluster.name}"):
                poller = await self._compute.virtual_machine_scale_sets.begin_delete(
                    self._rg, cluster.name
                )
                await poller.result()
        except NotFound:
            pass  # deleting what is gone succeeds
        finally:
            self.forget(cluster.name)

    async def list_nodes(
        self,
        cluster: Cluster,
        busy: Collection[str],
        states: Callable[[Snapshot], Awaitable[list[tuple[str, str]]]],
    ) -> list[Node]:
        """The cluster's nodes; `states` gives each VM's (state, detail) with its health check
        taken into account; a ready one is running when its instance id is in `busy`."""
        snap = await self.snapshot(cluster.name, fresh=True)
        if not snap.exists:
            raise NotFound(f"cluster {cluster.name} does not exist")
        ips = await self.private_ips(cluster.name) if snap.vms else {}
        nodes = []
        for index, (vm, (state, detail)) in enumerate(
            zip(snap.vms, await states(snap), strict=True)
        ):
            if state == "ready":
                state = "running" if vm.instance_id in busy else "idle"
            nodes.append(
                Node(
                    id=vm.name,
                    index=index,
                    ip=ips.get(vm.instance_id, ""),
                    port=SSH_PORT,
                    state=state,
                    detail=detail if state in ("unusable", "preparing", "leaving") else "",
                )
            )
        return nodes
