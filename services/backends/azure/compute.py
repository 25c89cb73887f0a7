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
- node list            -> the scale set's VMs with their instance views, NICs for private IPs
- job mountVolumes     -> shares of the bot's storage account, mounted once per node under
                          `share_mount_root` and linked at $AZ_BATCHAI_JOB_MOUNT_ROOT/<path>

ARM reads of a cluster are shared by every status call within one poll cycle, so a poll costs
O(clusters) ARM requests, not O(jobs x nodes). The scale-set model and node states are in
`scaleset`, sizes and quotas in `sizes`, the node-side scripts in `node` and `cloudinit`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import (
    VirtualMachineRunCommand,
    VirtualMachineScaleSet,
    VirtualMachineScaleSetUpdate,
)
from azure.mgmt.network.aio import NetworkManagementClient

from services.backends.azure import node
from services.backends.azure.config import AzureConfig
from services.backends.azure.errors import QUOTA_CODES, azure_errors, error_code, translate
from services.backends.azure.scaleset import (
    Snapshot,
    instance_of,
    job_share_options,
    scale_set_model,
    vm_state,
)
from services.backends.azure.sizes import (
    Quota,
    SkuInfo,
    cluster_quotas,
    quota_problem,
    same_gpu,
    sku_info,
    wire_text,
)
from services.backends.noderun import runner as noderunner
from services.backends.noderun.launch import (
    NodeRun,
    docker_argv,
    exited_status,
    from_epoch,
    layout_from_json,
    layout_to_json,
    share_from_url,
    share_layout,
)
from services.backends.noderun.runner import ProcessSpec, RunnerSpec
from services.backends.noderun.specs import runner_spec
from services.core.errors import (
    BackendError,
    BatchAIError,
    Conflict,
    NotAllowed,
    NotFound,
    QuotaError,
    TransientError,
    UserError,
)
from services.core.ports import FileShare, LaunchRequest, LaunchResult, RunStatus
from services.jobspec import JobSpec, LaunchContext, LaunchPlan, NodeInfo, ProcessPlan, plan_launch
from services.models import Cluster, FileEntry, FileLocation, Node, Usage

log = logging.getLogger(__name__)

CONTROL_DIR = ".batchai"  # on the bot's share: the node runner, launch records, status files
MAX_SPEC_BYTES = 96 * 1024  # a node spec rides in one environment variable (128 KiB on Linux)
SSH_PORT = 22
# A clean environment, like a systemd unit's (plus the node's PATH): nothing of the bot's.
NODE_ENV = {"HOME": "/root", "LANG": "C.UTF-8"}
_TERMINAL_RC = {"Failed", "TimedOut", "Canceled"}


class ControlShare(FileShare, Protocol):
    """The FileShare port plus the writes the backend needs on its own share."""

    async def write_file(self, loc: FileLocation, data: bytes) -> None: ...


# --------------------------------------------------------------------------- jobs on the share


@dataclass
class _JobInfo:
    """What start_job recorded (`launch.json`), plus what polls learned and keep."""

    job_id: str
    cluster: str
    instances: list[str]
    result: LaunchResult
    launched_at: float
    spot: bool = False
    started: dict[int, float] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)
    final: RunStatus | None = None
    cleaned: bool = False
    terminated: bool = False


def _status_json(status: RunStatus, cleaned: bool) -> dict[str, Any]:
    def ts(value: datetime | None) -> float | None:
        return None if value is None else value.timestamp()

    return {
        "phase": status.phase,
        "exit_code": status.exit_code,
        "detail": status.detail,
        "started": ts(status.started_at),
        "ended": ts(status.ended_at),
        "cleaned": cleaned,
    }


def _status_from_json(raw: Mapping[str, Any]) -> RunStatus:
    return RunStatus(
        phase=raw["phase"],
        exit_code=raw["exit_code"],
        detail=raw["detail"],
        started_at=from_epoch(raw["started"]),
        ended_at=from_epoch(raw["ended"]),
    )


def _int(text: str | None) -> int | None:
    """A status number; None while absent or half-written (Files writes are not atomic)."""
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _node_dirs(plan: LaunchPlan) -> list[str]:
    """The node-local directories the launch script creates (as root, then handed to the jobs'
    uid) before the runner starts."""
    return [plan.job_temp, plan.shared_job_temp, f"{plan.job_temp}/wd"]


def _job_dirs(plan: LaunchPlan) -> tuple[str, ...]:
    """The directories the runner creates as the jobs' uid: logs and outputs, on shares."""
    return (plan.stdouterr_dir, *(o.path for o in plan.output_dirs))


def refuse_control_share(share: str, control: str, where: str) -> None:
    """The bot's own share is never a job's: one line that says so."""
    if share == control:
        raise UserError(
            f"{where}: share {share} is the bot's control share (AZURE_SHARE), which holds every "
            "job's launch records and status; mount another share"
        )


# --------------------------------------------------------------------------- the backend


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
    ) -> None:
        self._config = config
        self._credential = credential
        self._share = share
        self._now = wall_time
        self._monotonic = monotonic
        options: dict[str, Any] = {
            "base_url": config.arm_url,
            "credential_scopes": [config.credential_scope],
            "connection_verify": config.connection_verify,
            "polling_interval": config.polling_interval,
        }
        self._compute = ComputeManagementClient(credential, config.subscription_id, **options)
        self._network = NetworkManagementClient(credential, config.subscription_id, **options)
        self._rg = config.resource_group
        self._snapshots: dict[str, Snapshot] = {}
        self._inflight: dict[str, asyncio.Future[Snapshot]] = {}
        self._jobs: dict[str, _JobInfo] = {}
        self._skus: dict[str, SkuInfo] | None = None
        self._seal_key = hmac.new(
            config.storage_key.encode(), b"batchai-bot control records", hashlib.sha256
        ).digest()
        self._locks: dict[str, asyncio.Lock] = {}

    # ---------------------------------------------------------------- share paths

    def _loc(self, *parts: str) -> FileLocation:
        return FileLocation(self._config.share, "/".join((CONTROL_DIR, *parts)))

    def _node_path(self, *parts: str) -> str:
        return "/".join((self._config.control_mount.rstrip("/"), CONTROL_DIR, *parts))

    @property
    def reserved_shares(self) -> frozenset[str]:
        """Shares no cluster or job may mount: the control share."""
        return frozenset({self._config.share})

    async def _write(self, loc: FileLocation, text: str) -> None:
        await self._share.write_file(loc, text.encode())

    def _seal(self, record: Mapping[str, Any]) -> str:
        """A record of the bot's on the share, with an HMAC that only the key's holders make."""
        body = json.dumps(record, sort_keys=True)
        mac = hmac.new(self._seal_key, body.encode(), hashlib.sha256).hexdigest()
        return json.dumps({"record": body, "hmac": mac})

    def _unseal(self, text: str, what: str) -> dict[str, Any]:
        """The record `_seal` wrote; a BackendError (never a use) when it was altered."""
        try:
            outer = json.loads(text)
            body, mac = str(outer["record"]), str(outer["hmac"])
        except (ValueError, KeyError, TypeError):
            body, mac = "", ""
        good = hmac.new(self._seal_key, body.encode(), hashlib.sha256).hexdigest()
        if not mac or not hmac.compare_digest(mac, good):
            raise BackendError(f"{what} on the bot's share was altered; it is not used")
        record: dict[str, Any] = json.loads(body)
        return record

    async def _read(self, loc: FileLocation) -> str | None:
        try:
            entry = await self._share.stat(loc)
            if entry is None or entry.is_directory:
                return None
            return (await self._share.read_range(loc, 0, max(entry.size, 1))).decode().strip()
        except NotFound:
            return None

    # ---------------------------------------------------------------- ARM reads (cached)

    async def _skus_in_region(self) -> dict[str, SkuInfo]:
        if self._skus is None:
            found: dict[str, SkuInfo] = {}
            location = self._config.location
            async with azure_errors(f"list VM sizes in {location}"):
                async for sku in self._compute.resource_skus.list(
                    filter=f"location eq '{location}'"
                ):
                    if sku.resource_type == "virtualMachines" and sku.name:
                        found[sku.name.lower()] = sku_info(sku, location)
            self._skus = found
        return self._skus

    async def _usages(self) -> dict[str, Quota]:
        out: dict[str, Quota] = {}
        async with azure_errors(f"read vCPU quotas in {self._config.location}"):
            async for u in self._compute.usage.list(self._config.location):
                name = str(u.name.value or "")
                out[name.lower()] = Quota(name, int(u.current_value or 0), int(u.limit or 0))
        return out

    async def usages(self, location: str | None) -> list[Usage]:
        region = location or self._config.location
        async with azure_errors(f"read vCPU quotas in {region}"):
            found = [
                Usage(
                    str(u.name.value or ""),
                    str(u.name.localized_value or u.name.value or ""),
                    int(u.current_value or 0),
                    int(u.limit or 0),
                )
                async for u in self._compute.usage.list(region)
            ]
        return cluster_quotas(found)

    async def _snapshot(self, cluster: str, *, fresh: bool = False) -> Snapshot:
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

    async def _private_ips(self, cluster: str) -> dict[str, str]:
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

    def _forget(self, cluster: str) -> None:
        self._snapshots.pop(cluster, None)

    # ---------------------------------------------------------------- pre-flight

    async def check_capacity(self, vm_size: str, nodes: int, *, spot: bool) -> SkuInfo:
        """Raise a one-line QuotaError (with alternatives) when `nodes` more VMs cannot be had."""
        skus = await self._skus_in_region()
        location = self._config.location
        sku = skus.get(vm_size.lower())
        if sku is None or sku.restriction is not None:
            why = "is not offered" if sku is None else f"is not available ({sku.restriction})"
            alts = same_gpu(skus, vm_size, exclude_restricted=True)
            hint = f"; sizes with the same GPU here: {', '.join(alts)}" if alts else ""
            raise QuotaError(f"{vm_size} {why} in {location} for this subscription{hint}")
        if spot and not sku.spot_capable:
            raise UserError(f"{vm_size} cannot run as Spot (low priority); use dedicated")
        if nodes <= 0:
            return sku
        usages = await self._usages()
        message = quota_problem(self._config.location, skus, usages, sku, nodes, spot=spot)
        if message is not None:
            raise QuotaError(message)
        return sku

    async def _explain_quota(
        self, err: HttpResponseError, vm_size: str, nodes: int, spot: bool, what: str
    ) -> BatchAIError:
        """A quota 409 that got past the pre-flight check, said the same way."""
        if error_code(err) in QUOTA_CODES or err.status_code == 409:
            try:
                await self.check_capacity(vm_size, nodes, spot=spot)
            except QuotaError as quota:
                return quota
            except BatchAIError:
                pass
        return translate(err, what)

    # ---------------------------------------------------------------- clusters

    # ---------------------------------------------------------------- clusters

    def scale_set_model(self, cluster: Cluster, sku: SkuInfo | None = None) -> dict[str, Any]:
        return scale_set_model(self._config, cluster, sku)

    async def create_cluster(self, cluster: Cluster) -> None:
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
        sku = await self.check_capacity(cluster.vm_size, cluster.target_nodes, spot=spot)
        model = self.scale_set_model(cluster, sku)
        try:
            poller = await self._compute.virtual_machine_scale_sets.begin_create_or_update(
                self._rg, cluster.name, VirtualMachineScaleSet(model)
            )
            await poller.result()
        except HttpResponseError as err:
            raise await self._explain_quota(
                err, cluster.vm_size, cluster.target_nodes, spot, what
            ) from err
        finally:
            self._forget(cluster.name)
        log.info(
            "cluster %s: scale set created (%d × %s)",
            cluster.name,
            cluster.target_nodes,
            cluster.vm_size,
        )

    async def resize_cluster(self, cluster: Cluster, target: int) -> None:
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
            await self.check_capacity(size, target - current, spot=spot)
        try:
            poller = await self._compute.virtual_machine_scale_sets.begin_update(
                self._rg, cluster.name, VirtualMachineScaleSetUpdate({"sku": {"capacity": target}})
            )
            await poller.result()
        except HttpResponseError as err:
            raise await self._explain_quota(
                err, cluster.vm_size, max(0, target - current), spot, what
            ) from err
        finally:
            self._forget(cluster.name)

    async def delete_cluster(self, cluster: Cluster) -> None:
        try:
            async with azure_errors(f"delete cluster {cluster.name}"):
                poller = await self._compute.virtual_machine_scale_sets.begin_delete(
                    self._rg, cluster.name
                )
                await poller.result()
        except NotFound:
            pass  # deleting what is gone succeeds
        finally:
            self._forget(cluster.name)

    async def list_nodes(self, cluster: Cluster) -> list[Node]:
        snap = await self._snapshot(cluster.name, fresh=True)
        if not snap.exists:
            raise NotFound(f"cluster {cluster.name} does not exist")
        ips = await self._private_ips(cluster.name) if snap.vms else {}
        busy = {
            inst
            for job in self._jobs.values()
            if job.cluster == cluster.name and job.final is None
            for inst in job.instances
        }
        nodes = []
        for index, vm in enumerate(snap.vms):
            state = vm.state
            if state == "ready":
                state = "running" if vm.instance_id in busy else "idle"
            nodes.append(
                Node(
                    id=vm.name,
                    index=index,
                    ip=ips.get(vm.instance_id, ""),
                    port=SSH_PORT,
                    state=state,
                )
            )
        return nodes

    async def ping(self) -> None:
        """One cheap ARM call and one Files call; raises a BatchAIError when either fails."""
        async with azure_errors(f"reach resource group {self._rg}"):
            pages = self._compute.virtual_machine_scale_sets.list(self._rg).by_page()
            async for _ in pages:
                break
        await self._share.stat(self._loc())

    # ---------------------------------------------------------------- jobs: start

    async def start_job(self, request: LaunchRequest) -> LaunchResult:
        lock = self._locks.setdefault(request.job_id, asyncio.Lock())
        async with lock:
            job = await self._load(request.job_id)
            if job is None:
                job = await self._prepare(request)
            await self._launch_missing(job, request)
            return job.result

    async def _load(self, job_id: str) -> _JobInfo | None:
        """What start_job stored for `job_id` (read once, then kept), or None."""
        if job_id in self._jobs:
            return self._jobs[job_id]
        if not re.fullmatch(r"[-\w]{1,64}", job_id, re.ASCII):
            return None
        raw = await self._read(self._loc("jobs", job_id, "launch.json"))
        if raw is None:
            return None
        data = self._unseal(raw, f"the launch record of job {job_id}")
        job = _JobInfo(
            job_id=job_id,
            cluster=data["cluster"],
            instances=list(data["instances"]),
            result=layout_from_json(data["result"]),
            launched_at=float(data["launched_at"]),
            spot=bool(data.get("spot")),
        )
        final = await self._read(self._loc("jobs", job_id, "final.json"))
        if final is not None:
            stored = self._unseal(final, f"the end record of job {job_id}")
            job.final = _status_from_json(stored)
            job.cleaned = bool(stored.get("cleaned"))
        self._jobs[job_id] = job
        return job

    def _context(
        self, request: LaunchRequest, hosts: Sequence[tuple[str, str]], gpus: int, python: str
    ) -> LaunchContext:
        cfg = self._config
        return LaunchContext(
            subscription=cfg.subscription_id,
            resource_group=request.resource_group,
            workspace=request.workspace,
            experiment=request.experiment,
            cluster_name=request.cluster.name,
            job_name=request.job_name,
            job_uuid=request.job_id,
            mount_root=cfg.mount_root.rstrip("/"),
            job_mount_root=self._job_mount_root(request.job_id),
            job_temp_root=cfg.job_temp_root.rstrip("/"),
            nodes=tuple(
                NodeInfo(index=i, host=ip, gpus=gpus, node_id=name)
                for i, (name, ip) in enumerate(hosts)
            ),
            python=python,
        )

    def _on_share(
        self, cluster: Cluster, path: str, job_links: Sequence[tuple[str, str]] = ()
    ) -> FileLocation | None:
        """The share location of a node path under a cluster mount or a job's share link."""
        root = self._config.mount_root.rstrip("/")
        bases = [(f"{root}/{m.mount_path.strip('/')}", m.share) for m in cluster.mounts]
        for base, share in [*bases, *job_links]:
            if share == self._config.share:
                continue  # a cluster made before the control share was refused: never listed
            if path == base or path.startswith(base + "/"):
                return FileLocation(share, path[len(base) :].strip("/"))
        return None

    def _job_mount_root(self, job_id: str) -> str:
        return f"{self._config.job_temp_root.rstrip('/')}/{job_id}/mounts"

    def _job_mounts(self, job_id: str, spec: JobSpec) -> tuple[list[tuple[str, str]], list[str]]:
        """The job's mountVolumes: (node path, share) links for Azure file shares of our storage
        account, and a note for each volume the azure backend cannot mount."""
        volumes = spec.properties.mount_volumes
        if volumes is None:
            return [], []
        root = self._job_mount_root(job_id)
        account = self._config.storage_account.lower()
        links: list[tuple[str, str]] = []
        notes: list[str] = []
        for v in volumes.azure_file_shares:
            share = share_from_url(v.azure_file_url)
            owner = (urlsplit(v.azure_file_url).hostname or "").split(".")[0].lower()
            if owner == account:
                refuse_control_share(share, self._config.share, "mountVolumes.azureFileShares")
            if owner != account:
                notes.append(
                    f"{v.relative_mount_path}: share {share} of storage account {owner} is not "
                    f"mounted; the azure backend mounts shares of {account} only"
                )
                continue
            links.append((f"{root}/{v.relative_mount_path.strip('/')}", share))
        others: list[Any] = [
            *volumes.azure_blob_file_systems,
            *volumes.file_servers,
            *volumes.unmanaged_file_systems,
        ]
        notes += [
            f"{o.relative_mount_path}: blob containers, NFS file servers and custom mounts are "
            "not mounted by the azure backend; it is an empty directory"
            for o in others
        ]
        return links, notes

    def _mount_prelude(self, links: Sequence[tuple[str, str]]) -> list[str]:
        """Shell lines for the launch script: mount each share once per node (the credentials
        file the setup extension wrote), then link it at the job's mount path."""
        cfg = self._config
        lines: list[str] = []
        for link, share in links:
            mounted = f"{cfg.share_mount_root.rstrip('/')}/{share}"
            mount = node.NodeMount(share, mounted, job_share_options(cfg))
            lines += node.mount_lines(cfg.smb_host, cfg.storage_account, [mount])
            parent = link.rsplit("/", 1)[0]
            lines += [
                f"mkdir -p -- {shlex.quote(parent)}",
                f"ln -sfn -- {shlex.quote(mounted)} {shlex.quote(link)}",
            ]
        return lines

    async def _prepare(self, request: LaunchRequest) -> _JobInfo:
        spec, c = request.spec, request.cluster
        if len(request.nodes) != spec.properties.node_count:
            raise Conflict(
                f"job {request.job_name} needs {spec.properties.node_count} nodes, "
                f"got {len(request.nodes)}"
            )
        links, mount_notes = self._job_mounts(request.job_id, spec)
        snap = await self._snapshot(c.name, fresh=True)
        if not snap.exists:
            raise NotFound(f"cluster {c.name} does not exist")
        if any(i < 0 or i >= len(snap.vms) for i in request.nodes):
            raise Conflict(f"nodes {list(request.nodes)} are not all on {c.name}")
        vms = [snap.vms[i] for i in request.nodes]
        broken = [f"{vm.name} ({vm.detail})" for vm in vms if vm.state in ("unusable", "leaving")]
        if broken:
            raise Conflict(f"cannot start on {', '.join(broken)}")
        waiting = [vm.name for vm in vms if vm.state == "preparing"]
        if waiting:
            raise TransientError(f"{', '.join(waiting)} still preparing; the job starts when ready")
        ips = await self._private_ips(c.name)
        missing = [vm.name for vm in vms if vm.instance_id not in ips]
        if missing:
            raise Conflict(f"no private IP yet for {', '.join(missing)}; try again shortly")
        sku = (await self._skus_in_region()).get(c.vm_size.lower())
        gpus = sku.gpus if sku else 0
        hosts = [(vm.name, ips[vm.instance_id]) for vm in vms]
        plan = self._plan(request, hosts, gpus)
        notes = [*plan.warnings, *mount_notes]
        layout = share_layout(plan, lambda path: self._on_share(c, path, links), notes)
        result = LaunchResult(layout=layout, notes=tuple(notes))
        job = _JobInfo(
            job_id=request.job_id,
            cluster=c.name,
            instances=[vm.instance_id for vm in vms],
            result=result,
            launched_at=self._now(),
            spot=c.vm_priority == "lowpriority",
        )
        # What a relaunch needs besides the job's own spec (which comes from the store): no
        # script text and no secret; sealed, so an altered record is refused, never used.
        launch = {
            "job_id": job.job_id,
            "cluster": job.cluster,
            "instances": job.instances,
            "launched_at": job.launched_at,
            "spot": job.spot,
            "hosts": [list(h) for h in hosts],
            "gpus": gpus,
            "deadline": self._now() + plan.max_wall_clock.total_seconds(),
            "result": layout_to_json(result),
        }
        # launch.json last: from here on a repeated start_job only completes this launch.
        await self._write(self._loc("jobs", job.job_id, "launch.json"), self._seal(launch))
        self._jobs[job.job_id] = job
        return job

    def _plan(
        self, request: LaunchRequest, hosts: Sequence[tuple[str, str]], gpus: int
    ) -> LaunchPlan:
        container = request.spec.properties.container_settings
        python = "python" if container is not None else self._config.node_python
        return plan_launch(request.spec, self._context(request, hosts, gpus, python))

    async def _ensure_runner(self) -> str:
        """The node runner's source on the share, checked (and rewritten if it differs) at every
        launch; its sha256, which the launch script checks again on the node."""
        source = Path(noderunner.__file__).read_bytes()
        loc = self._loc("noderunner.py")
        entry = await self._share.stat(loc)
        current = None
        if entry is not None and entry.size == len(source):
            current = await self._share.read_range(loc, 0, entry.size)
        if current != source:
            await self._share.write_file(loc, source)
        return hashlib.sha256(source).hexdigest()

    def _process_spec(
        self, proc: ProcessPlan, plan: LaunchPlan, request: LaunchRequest, container: bool
    ) -> ProcessSpec:
        cfg = self._config
        wd = f"{plan.job_temp}/wd"
        job_env = {"PYTHONUNBUFFERED": "1", **proc.env}
        home = {"HOME": wd} if cfg.job_gid is not None else {}
        env = {"PATH": cfg.node_path, **NODE_ENV, **home, **job_env}
        wrapper: tuple[str, ...] = ()
        stop: tuple[str, ...] = ()
        if container and plan.container_image is not None:
            name = f"job-{request.job_id}-{proc.role}-{proc.rank}"
            settings = request.spec.properties.container_settings
            wrapper = docker_argv(
                docker="docker",
                name=name,
                image=plan.container_image,
                argv=(),
                env_names=list(job_env),
                # Not the control mount: a container sees the job's shares and temp only.
                volumes=[
                    cfg.mount_root.rstrip("/"),
                    cfg.share_mount_root,
                    self._job_mount_root(request.job_id),
                    plan.job_temp,
                ],
                workdir=wd,
                shm_size=settings.shm_size if settings else None,
                gpus=int(proc.env.get("AZ_BATCHAI_NUM_GPUS", "0") or 0),
                user=self._job_owner(request.job_id),
            )
            stop = ("docker", "rm", "-f", name)
        return ProcessSpec(
            rank=proc.rank,
            role=proc.role,
            argv=proc.argv,
            env=env,
            stdout=proc.stdout_name,
            stderr=proc.stderr_name,
            cwd=wd,
            wrapper=wrapper,
            stop_argv=stop,
            drop=not wrapper,  # the docker CLI needs root; the container runs as the job user
        )

    def _job_owner(self, job_id: str) -> tuple[int, int] | None:
        """(uid, gid) of the job's processes on the nodes; None: the runner's own (tests)."""
        gid = self._config.job_gid
        return None if gid is None else (node.job_uid(job_id), gid)

    def _node_spec(
        self, request: LaunchRequest, plan: LaunchPlan, deadline: float, index: int
    ) -> RunnerSpec:
        """Node `index`'s runner spec, made from the job's spec: it never sits on a share."""
        job_id = request.job_id
        container = request.spec.properties.container_settings is not None
        return runner_spec(
            plan,
            job_id=job_id,
            index=index,
            count=len(request.nodes),
            control_dir=self._node_path("jobs", job_id),
            process=lambda p: self._process_spec(p, plan, request, container),
            deadline=deadline,
            grace_seconds=self._config.grace_seconds,
            heartbeat_seconds=self._config.heartbeat_seconds,
            run_as=self._job_owner(job_id),
            job_dirs=_job_dirs(plan),
        )

    async def _launch_missing(self, job: _JobInfo, request: LaunchRequest) -> None:
        """Create the run command of every node that has not started (the script skips a node
        whose runner already began, and systemd refuses a second unit of the same name). The
        scripts are made from the job's spec and the sealed launch record, nothing else."""
        if job.final is not None:
            return
        raw = await self._read(self._loc("jobs", job.job_id, "launch.json"))
        if raw is None:
            raise NotFound(f"job {job.job_id} has no launch record")
        record = self._unseal(raw, f"the launch record of job {job.job_id}")
        hosts = [(str(name), str(ip)) for name, ip in record["hosts"]]
        plan = self._plan(request, hosts, int(record["gpus"]))
        statuses = await asyncio.gather(
            *(self._node_files(job.job_id, i) for i in range(len(job.instances)))
        )
        todo = [
            i
            for i, names in enumerate(statuses)
            if noderunner.PID not in names and noderunner.EXIT_CODE not in names
        ]
        if not todo:
            return
        runner_sha = await self._ensure_runner()
        links, _ = self._job_mounts(job.job_id, request.spec)
        deadline = float(record["deadline"])
        await asyncio.gather(
            *(
                self._run_command(
                    job,
                    i,
                    plan,
                    self._node_spec(request, plan, deadline, i),
                    runner_sha,
                    self._mount_prelude(links),
                )
                for i in todo
            )
        )

    async def _run_command(
        self,
        job: _JobInfo,
        index: int,
        plan: LaunchPlan,
        spec: RunnerSpec,
        runner_sha: str,
        prelude: Sequence[str],
    ) -> None:
        encoded = base64.b64encode(json.dumps(spec.to_json()).encode()).decode()
        if len(encoded) > MAX_SPEC_BYTES:
            raise UserError(
                f"job {job.job_id}: its node spec is {len(encoded) // 1024} KiB, more than the "
                f"{MAX_SPEC_BYTES // 1024} KiB a launch can carry; shorten its environment"
            )
        script = node.launch_script(
            job_id=job.job_id,
            node_index=index,
            python=self._config.node_python,
            runner=self._node_path("noderunner.py"),
            runner_sha256=runner_sha,
            status_dir=self._node_path("jobs", job.job_id, f"node-{index}"),
            dirs=_node_dirs(plan),
            host_file=plan.env["AZ_BATCHAI_MPI_HOST_FILE"],
            host_lines=plan.mpi_host_file_lines,
            owner=self._job_owner(job.job_id),
            container=plan.container_image is not None,
            prelude=prelude,
        )
        body: dict[str, Any] = {
            "location": self._config.location,
            "properties": {
                "source": {"script": script},
                # The spec, secrets included: write-only in ARM, an environment variable of
                # the script on the node, then a root-only file the runner deletes once read.
                "protectedParameters": [{"name": node.SPEC_PARAMETER, "value": encoded}],
                "asyncExecution": True,
                "timeoutInSeconds": 600,
            },
        }
        name = f"job-{job.job_id}-{index}"
        async with azure_errors(f"start job {job.job_id} on node {index}"):
            poller = await self._compute.virtual_machine_scale_set_vm_run_commands.begin_create_or_update(  # noqa: E501
                self._rg, job.cluster, job.instances[index], name, VirtualMachineRunCommand(body)
            )
            await poller.result()

    # ---------------------------------------------------------------- jobs: status

    async def _node_files(self, job_id: str, index: int) -> dict[str, FileEntry]:
        try:
            entries = await self._share.list_files(self._loc("jobs", job_id, f"node-{index}"))
        except NotFound:
            return {}
        return {e.name: e for e in entries}

    async def _node_run(self, job: _JobInfo, index: int, names: Mapping[str, FileEntry]) -> NodeRun:
        base = ("jobs", job.job_id, f"node-{index}")

        async def text(name: str) -> str | None:
            return await self._read(self._loc(*base, name)) if name in names else None

        code, reason, ended = await asyncio.gather(
            text(noderunner.EXIT_CODE), text(noderunner.REASON), text(noderunner.ENDED)
        )
        started = job.started.get(index)
        if started is None and noderunner.STARTED in names:
            started = _float(await text(noderunner.STARTED))
            if started is not None:
                job.started[index] = started
        phase = "running" if index in job.running else None
        if code is None and phase is None and noderunner.PHASE in names:
            phase = await text(noderunner.PHASE)
            if phase == "running":
                job.running.add(index)
        return NodeRun(
            index=index,
            alive=_int(code) is None and noderunner.PID in names,
            pending=noderunner.PID not in names and _int(code) is None,
            exit_code=_int(code),
            reason=reason or "",
            phase=phase,
            started=started,
            ended=_float(ended),
        )

    async def get_job_status(self, job_id: str) -> RunStatus:
        job = await self._load(job_id)
        if job is None:
            raise NotFound(f"job {job_id} is not known to the azure backend")
        if job.final is not None:
            if not job.cleaned:
                await self._finish(job, job.final)
            return job.final
        listings = await asyncio.gather(
            *(self._node_files(job_id, i) for i in range(len(job.instances)))
        )
        runs = list(
            await asyncio.gather(*(self._node_run(job, i, n) for i, n in enumerate(listings)))
        )
        started = min((r.started for r in runs if r.started is not None), default=None)
        if all(r.exit_code is not None for r in runs):
            return await self._finish(job, exited_status(runs))
        lost = await self._lost(job, runs, listings)
        if lost is not None:
            status = RunStatus(
                phase="lost",
                detail=lost,
                started_at=from_epoch(started),
                ended_at=from_epoch(self._now()),
            )
            await self._write(self._loc("jobs", job_id, "terminate"), "")  # stop the others
            return await self._finish(job, status)
        waited = self._now() - job.launched_at
        if any(r.pending for r in runs):
            # A runner starts within a second of its run command; ask ARM only about a late one.
            if waited >= self._config.launch_check_seconds and await self._failed_launch(job, runs):
                return await self.get_job_status(job_id)
            return RunStatus(phase="preparing", started_at=from_epoch(started))
        preparing = any(r.phase in (None, "prep") for r in runs if r.exit_code is None)
        return RunStatus(
            phase="preparing" if preparing else "running", started_at=from_epoch(started)
        )

    async def _lost(
        self, job: _JobInfo, runs: Sequence[NodeRun], listings: Sequence[Mapping[str, FileEntry]]
    ) -> str | None:
        """Why the job cannot finish (its cluster or a node is gone), or None."""
        snap = await self._snapshot(job.cluster)
        if not snap.exists:
            return f"cluster {job.cluster} was deleted while the job ran"
        vms = snap.by_instance()
        for run in runs:
            if run.exit_code is not None:
                continue
            vm = vms.get(job.instances[run.index])
            if vm is None:
                how = "evicted (Spot capacity reclaimed)" if job.spot else "deleted"
                return f"node {run.index} (instance {job.instances[run.index]}) was {how}"
            if vm.state in ("unusable", "leaving"):
                return f"node {run.index} ({vm.name}) became unusable: {vm.detail}"
            beat = listings[run.index].get(noderunner.HEARTBEAT)
            if run.alive and beat is not None and beat.modified is not None:
                silent = self._now() - beat.modified.timestamp()
                if silent > self._config.heartbeat_timeout:
                    return f"node {run.index} ({vm.name}) stopped sending heartbeats"
        return None

    async def _failed_launch(self, job: _JobInfo, runs: Sequence[NodeRun]) -> bool:
        """Ask the run command of each unstarted node; end the nodes whose launch failed."""
        ended = False
        for run in runs:
            if not run.pending:
                continue
            reason = await self._launch_problem(job, run.index)
            if reason is not None:
                await self._end_node(job, run.index, noderunner.EXIT_LAUNCH_ERROR, reason)
                ended = True
        if ended:
            await self._write(self._loc("jobs", job.job_id, "terminate"), "")
        return ended

    async def _launch_problem(self, job: _JobInfo, index: int) -> str | None:
        name = f"job-{job.job_id}-{index}"
        try:
            async with azure_errors(f"read the run command of job {job.job_id}"):
                rc = await self._compute.virtual_machine_scale_set_vm_run_commands.get(
                    self._rg, job.cluster, job.instances[index], name, expand="instanceView"
                )
        except NotFound:
            if self._now() - job.launched_at > self._config.launch_grace:
                return f"the run command for node {index} is gone and the node never started"
            return None
        view = rc.instance_view
        state = wire_text(view.execution_state if view else None)
        exit_code = view.exit_code if view else None
        if state in _TERMINAL_RC or (state == "Succeeded" and exit_code not in (None, 0)):
            error = " ".join(str(view.error or view.execution_message or "").split())[-300:]
            return f"could not start node {index} ({state}, exit {exit_code}): {error}".rstrip(": ")
        if state == "Succeeded" and self._now() - job.launched_at > self._config.launch_grace:
            return f"node {index}: the launch ran but the node runner never reported"
        return None

    async def _end_node(self, job: _JobInfo, index: int, code: int, reason: str) -> None:
        """Write a node's end as its runner would have (exit_code last)."""
        base = ("jobs", job.job_id, f"node-{index}")
        await self._write(self._loc(*base, noderunner.ENDED), f"{self._now():.3f}\n")
        await self._write(self._loc(*base, noderunner.REASON), f"{reason}\n")
        await self._write(self._loc(*base, noderunner.EXIT_CODE), f"{code}\n")

    async def _finish(self, job: _JobInfo, status: RunStatus) -> RunStatus:
        """Keep the end (on the share too, for a restarted bot) and delete the run commands."""
        job.final = status
        try:
            await asyncio.gather(
                *(
                    self._delete_run_command(job, i, f"job-{job.job_id}-{i}")
                    for i in range(len(job.instances))
                )
            )
            job.cleaned = True
        except BatchAIError as err:
            log.warning("job %s: run commands not deleted yet: %s", job.job_id, err)
        await self._write(
            self._loc("jobs", job.job_id, "final.json"),
            self._seal(_status_json(status, job.cleaned)),
        )
        return status

    async def _delete_run_command(self, job: _JobInfo, index: int, name: str) -> None:
        try:
            async with azure_errors(f"delete run command {name}"):
                poller = await self._compute.virtual_machine_scale_set_vm_run_commands.begin_delete(
                    self._rg, job.cluster, job.instances[index], name
                )
                await poller.result()
        except NotFound:
            pass

    # ---------------------------------------------------------------- jobs: terminate, deadline

    async def terminate_job(self, job_id: str) -> None:
        """TERMINATE on the share (a runner not yet started obeys it too), then stop the unit on
        every node. Repeated calls (each poll while terminating) cost nothing."""
        job = await self._load(job_id)
        if job is None or job.final is not None or job.terminated:
            return
        await self._write(self._loc("jobs", job_id, "terminate"), "")
        job.terminated = True
        await asyncio.gather(*(self._stop_node(job, i) for i in range(len(job.instances))))

    async def _stop_node(self, job: _JobInfo, index: int) -> None:
        name = f"stop-{job.job_id}-{index}"
        body: dict[str, Any] = {
            "location": self._config.location,
            "properties": {
                "source": {"script": node.stop_script(job.job_id, index)},
                "asyncExecution": False,
                "timeoutInSeconds": 120,
            },
        }
        try:
            async with (
                asyncio.timeout(self._config.stop_timeout),
                azure_errors(f"stop job {job.job_id} on node {index}"),
            ):
                poller = await self._compute.virtual_machine_scale_set_vm_run_commands.begin_create_or_update(  # noqa: E501
                    self._rg,
                    job.cluster,
                    job.instances[index],
                    name,
                    VirtualMachineRunCommand(body),
                )
                await poller.result()
        except NotFound:
            return  # the node is gone: nothing runs there
        except TimeoutError:
            log.warning("job %s: stop on node %d timed out; TERMINATE stops it", job.job_id, index)
            return
        except BatchAIError as err:
            # The TERMINATE file still stops the runner within a second of its next look.
            log.warning("job %s: stop on node %d failed: %s", job.job_id, index, err)
            return
        await self._delete_run_command(job, index, name)

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        """Move the wall-clock limit (an approved extension); the node runners re-read it."""
        job = await self._load(job_id)
        if job is not None and job.final is None:
            deadline = self._now() + remaining.total_seconds()
            await self._write(self._loc("jobs", job_id, "deadline"), f"{deadline:.3f}\n")

    # ---------------------------------------------------------------- `batchai-bot check`

    async def check_setup(self, vm_size: str) -> list[tuple[str, bool, str]]:
        """(name, ok, one-line detail) for the credential, resource group, subnet, share, the
        size's availability in the region and its family's vCPU quota; never raises."""
        cfg = self._config
        out: list[tuple[str, bool, str]] = []
        try:
            await self._credential.get_token(cfg.credential_scope)
            out.append(("credential", True, f"token for {cfg.arm_url}"))
        except Exception as err:  # any failure of the chain is one line with what to do
            out.append(
                (
                    "credential",
                    False,
                    f"no Azure credential ({type(err).__name__}): run `az login`, give the bot a "
                    "managed identity, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and "
                    "AZURE_CLIENT_SECRET",
                )
            )
            skipped = "not checked: needs a working credential"
            out += [(n, False, skipped) for n in ("resource group", "subnet", "vm size", "quota")]
            out.append(await self._check_share())
            return out
        out.append(await self._check_step("resource group", self._check_group()))
        out.append(await self._check_step("subnet", self._check_subnet()))
        out.append(await self._check_share())
        sku_result = await self._check_step("vm size", self._check_sku(vm_size))
        out.append(sku_result)
        if sku_result[1]:
            out.append(await self._check_step("quota", self._check_quota(vm_size)))
        else:
            out.append(("quota", False, f"not checked: {vm_size} is not usable"))
        return out

    async def _check_step(self, name: str, step: Awaitable[str]) -> tuple[str, bool, str]:
        hints = {
            "resource group": "give the bot's identity Virtual Machine Contributor on it",
            "subnet": "give the bot's identity Network Contributor (or the subnets/join/action "
            "permission) on the virtual network",
        }
        try:
            return (name, True, await step)
        except NotAllowed as err:
            hint = hints.get(name, "check the bot identity's roles")
            return (name, False, f"{err} — {hint}")
        except BatchAIError as err:
            return (name, False, str(err))

    async def _check_group(self) -> str:
        async with azure_errors(f"resource group {self._rg}"):
            count = 0
            async for _ in self._compute.virtual_machine_scale_sets.list(self._rg):
                count += 1
        return f"{self._rg}: readable, {count} scale set(s)"

    async def _check_subnet(self) -> str:
        parts = self._config.subnet_id.strip("/").split("/")
        keys = {parts[i].lower(): parts[i + 1] for i in range(0, len(parts) - 1, 2)}
        rg, vnet, subnet = (
            keys.get("resourcegroups"),
            keys.get("virtualnetworks"),
            keys.get("subnets"),
        )
        if not (rg and vnet and subnet):
            raise UserError(
                "AZURE_SUBNET_ID must look like /subscriptions/<id>/resourceGroups/<rg>/providers/"
                "Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>"
            )
        async with azure_errors(f"subnet {vnet}/{subnet}"):
            found = await self._network.subnets.get(rg, vnet, subnet)
        nat = found.nat_gateway is not None
        note = (
            "NAT gateway attached" if nat else "no NAT gateway: make sure nodes reach the internet"
        )
        return f"{vnet}/{subnet}: {found.address_prefix or 'found'}, {note}"

    async def _check_share(self) -> tuple[str, bool, str]:
        share = self._config.share
        where = f"{share} on {self._config.storage_account}"
        try:
            await self._share.list_files(FileLocation(share, ""))
        except NotFound:
            return ("share", False, f"{where}: no such share — create it (az storage share create)")
        except NotAllowed as err:
            return ("share", False, f"{where}: {err} — check AZURE_STORAGE_KEY")
        except BatchAIError as err:
            return ("share", False, f"{where}: {err}")
        return ("share", True, f"{where}: readable")

    async def _check_sku(self, vm_size: str) -> str:
        sku = await self.check_capacity(vm_size, 0, spot=False)
        gpus = f", {sku.gpus} GPU(s)" if sku.gpus else ""
        return f"{sku.name} in {self._config.location}: {sku.vcpus} vCPUs{gpus}"

    async def _check_quota(self, vm_size: str) -> str:
        sku = await self.check_capacity(vm_size, 1, spot=False)
        usages = await self._usages()
        family = usages.get(sku.family.lower())
        regional = usages.get("cores")
        parts = [
            f"{q.name} {q.left} of {q.limit} vCPUs free"
            for q in (family, regional)
            if q is not None
        ]
        fit = min((q.left for q in (family, regional) if q is not None), default=0)
        nodes = fit // sku.vcpus if sku.vcpus else 0
        return f"{'; '.join(parts)} — room for {nodes} × {sku.name}"

    async def aclose(self) -> None:
        """Close the SDK clients (the credential belongs to the composition root)."""
        await self._compute.close()
        await self._network.close()
