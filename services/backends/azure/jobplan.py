"""A job as the scale set's nodes run it: its launch context (hosts, GPUs, mount roots), the
shares its mountVolumes link in, where its logs land on a share, and each node's runner spec and
processes (in the job's container when it has one, as a uid of its own when `job_gid` is set).

Pure: made from the config, the job's spec and the nodes; nothing here calls Azure.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from services.backends.azure import node
from services.backends.azure.config import AzureConfig
from services.backends.azure.control import ControlRecords, refuse_control_share
from services.backends.azure.fabric import rdma_env
from services.backends.azure.scaleset_model import job_share_options
from services.backends.noderun.launch import launch_context, share_from_url
from services.backends.noderun.runner import ProcessSpec, RunnerSpec
from services.backends.noderun.specs import Container, process_spec, runner_spec
from services.core.ports import LaunchRequest
from services.jobspec import (
    JobSpec,
    LaunchContext,
    LaunchPlan,
    NodeInfo,
    ProcessPlan,
    plan_launch,
    toolkit_name,
)
from services.models import Cluster, FileLocation

# A clean environment, like a systemd unit's (plus the node's PATH): nothing of the bot's.
NODE_ENV = {"HOME": "/root", "LANG": "C.UTF-8"}


def node_dirs(plan: LaunchPlan) -> list[str]:
    """The node-local directories the launch script creates (as root, then handed to the jobs'
    uid) before the runner starts."""
    return [plan.job_temp, plan.shared_job_temp, f"{plan.job_temp}/wd"]


def job_dirs(plan: LaunchPlan) -> tuple[str, ...]:
    """The directories the runner creates as the jobs' uid: logs and outputs, on shares."""
    return (plan.stdouterr_dir, *(o.path for o in plan.output_dirs))


class JobPlanner:
    """Plans and runner specs of jobs on this config's nodes."""

    def __init__(self, config: AzureConfig, control: ControlRecords) -> None:
        self._config = config
        self._control = control

    def context(
        self,
        request: LaunchRequest,
        hosts: Sequence[tuple[str, str]],
        gpus: int,
        python: str,
        rdma: bool = False,
    ) -> LaunchContext:
        cfg = self._config
        fabric = rdma_env(
            size=request.cluster.vm_size,
            rdma=rdma,
            nodes=len(hosts),
            gpus=gpus,
            toolkit=toolkit_name(request.spec),
        )
        return launch_context(
            request,
            subscription=cfg.subscription_id,
            mount_root=cfg.mount_root.rstrip("/"),
            job_mount_root=self.job_mount_root(request.job_id),
            job_temp_root=cfg.job_temp_root.rstrip("/"),
            nodes=[
                NodeInfo(index=i, host=ip, gpus=gpus, node_id=name)
                for i, (name, ip) in enumerate(hosts)
            ],
            python=python,
            extra_env=fabric,
        )

    def on_share(
        self,
        cluster: Cluster,
        path: str,
        job_links: Sequence[tuple[str, str]] = (),
        job_containers: Sequence[tuple[str, str]] = (),
    ) -> FileLocation | None:
        """Where a node path is in the bot's storage account: on a share the cluster mounts or
        a job links in, or in a blob container (the cluster's, or one of the job's). Mounts of
        other accounts and file servers are nowhere the bot can list."""
        root = self._config.mount_root.rstrip("/")
        own = self._config.storage_account.lower()
        bases: list[tuple[str, str, bool]] = [
            (f"{root}/{m.mount_path.strip('/')}", m.share, m.kind == "bfs")
            for m in cluster.mounts
            if m.kind in ("afs", "bfs") and (m.account is None or m.account.lower() == own)
        ]
        bases += [(base, share, False) for base, share in job_links]
        bases += [(base, container, True) for base, container in job_containers]
        for base, share, container in bases:
            if share == self._config.share and not container:
                continue  # a cluster made before the control share was refused: never listed
            if path == base or path.startswith(base + "/"):
                return FileLocation(share, path[len(base) :].strip("/"), container)
        return None

    def job_containers(self, job_id: str, spec: JobSpec) -> list[tuple[str, str]]:
        """(node path, container) of the job's own blob containers in the bot's account: where
        `extra_prelude` links them in."""
        volumes = spec.properties.mount_volumes
        if volumes is None:
            return []
        root = self.job_mount_root(job_id)
        own = self._config.storage_account.lower()
        return [
            (f"{root}/{b.relative_mount_path.strip('/')}", b.container_name)
            for b in volumes.azure_blob_file_systems
            if b.account_name.lower() == own
        ]

    def job_mount_root(self, job_id: str) -> str:
        return f"{self._config.job_temp_root.rstrip('/')}/{job_id}/mounts"

    def job_mounts(self, job_id: str, spec: JobSpec) -> tuple[list[tuple[str, str]], list[str]]:
        """The job's mountVolumes: (node path, share) links for Azure file shares of our storage
        account, and a note for each volume the azure backend cannot mount."""
        volumes = spec.properties.mount_volumes
        if volumes is None:
            return [], []
        root = self.job_mount_root(job_id)
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
        for b in volumes.azure_blob_file_systems:
            if b.account_name.lower() != account:
                notes.append(
                    f"{b.relative_mount_path}: container {b.container_name} of storage account "
                    f"{b.account_name} is not mounted; a job mounts containers of {account} "
                    "only (mount another account's on the cluster, with its key)"
                )
        others: list[Any] = [*volumes.unmanaged_file_systems]
        notes += [
            f"{o.relative_mount_path}: a custom mount command is not run by the azure backend "
            "(it would run as root where the storage key is); it is an empty directory"
            for o in others
        ]
        return links, notes

    def extra_prelude(self, job_id: str, spec: JobSpec) -> list[str]:
        """Shell lines for the launch script: the job's blob containers of the bot's account
        (blobfuse2; its config is made on the node from the credentials file the setup
        extension wrote, so the key is in no script text and no argv) and its file servers
        (NFS), each mounted once per node and linked at the job's mount path."""
        volumes = spec.properties.mount_volumes
        if volumes is None:
            return []
        cfg = self._config
        root = self.job_mount_root(job_id)
        base = cfg.share_mount_root.rstrip("/")
        lines: list[str] = []
        account = cfg.storage_account.lower()
        blobs = [b for b in volumes.azure_blob_file_systems if b.account_name.lower() == account]
        mounts: list[tuple[str, str]] = []
        for b in blobs:
            mount = node.BlobMount(
                account=cfg.storage_account,
                container=b.container_name,
                path=f"{base}/blob-{b.container_name}",
                endpoint=f"https://{cfg.storage_account}.blob.{cfg.storage_suffix}",
                key="",
            )
            lines += node.job_blob_lines(mount)
            mounts.append((mount.path, f"{root}/{b.relative_mount_path.strip('/')}"))
        for f in volumes.file_servers:
            name = f.server_name
            server = node.NfsMount(node.server_host(name), node.NFS_EXPORT, f"{base}/nfs-{name}")
            lines += node.nfs_lines([server])
            mounts.append((server.path, f"{root}/{f.relative_mount_path.strip('/')}"))
        for mounted, link in mounts:
            lines += [
                f"mkdir -p -- {shlex.quote(link.rsplit('/', 1)[0])}",
                f"ln -sfn -- {shlex.quote(mounted)} {shlex.quote(link)}",
            ]
        return lines

    def mount_prelude(self, links: Sequence[tuple[str, str]]) -> list[str]:
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

    def plan(
        self,
        request: LaunchRequest,
        hosts: Sequence[tuple[str, str]],
        gpus: int,
        *,
        rdma: bool = False,
    ) -> LaunchPlan:
        """The job's plan; on an InfiniBand size (`rdma`) a multi-node job gets the fabric's
        environment (see `fabric`)."""
        container = request.spec.properties.container_settings
        python = "python" if container is not None else self._config.node_python
        return plan_launch(request.spec, self.context(request, hosts, gpus, python, rdma))

    def process_spec(
        self, proc: ProcessPlan, plan: LaunchPlan, request: LaunchRequest, container: bool
    ) -> ProcessSpec:
        cfg = self._config
        wd = f"{plan.job_temp}/wd"
        home = {"HOME": wd} if cfg.job_gid is not None else {}
        docker = None
        if container and plan.container_image is not None:
            settings = request.spec.properties.container_settings
            docker = Container(
                docker="docker",
                image=plan.container_image,
                # Not the control mount: a container sees the job's shares and temp only.
                volumes=[
                    cfg.mount_root.rstrip("/"),
                    cfg.share_mount_root,
                    self.job_mount_root(request.job_id),
                    plan.job_temp,
                ],
                shm_size=settings.shm_size if settings else None,
                gpus=True,
                user=self.job_owner(request.uuid),
                # the job's own, empty without a login: never root's, whoever logged in there
                config_dir=node.docker_config(request.job_id, proc.node_index),
            )
        env = {"PATH": cfg.node_path, **NODE_ENV, **home}
        return process_spec(proc, job_id=request.job_id, cwd=wd, env=env, container=docker)

    def job_owner(self, job_id: str) -> tuple[int, int] | None:
        """(uid, gid) of the job's processes on the nodes; None: the runner's own (tests)."""
        gid = self._config.job_gid
        return None if gid is None else (node.job_uid(job_id), gid)

    def node_spec(
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
            control_dir=self._control.node_path("jobs", job_id),
            process=lambda p: self.process_spec(p, plan, request, container),
            deadline=deadline,
            grace_seconds=self._config.grace_seconds,
            heartbeat_seconds=self._config.heartbeat_seconds,
            gpu_seconds=self._config.gpu_sample_seconds,
            run_as=self.job_owner(request.uuid),  # every attempt the same uid: its outputs
            job_dirs=job_dirs(plan),
            journal=True,  # over Files, one read a round per node instead of one per log
        )
