"""The local backend: Batch AI clusters, jobs and file shares as directories and processes here."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from services.backends.local import nodeexec, processes
from services.backends.local.nodes import LOCAL_HOST, ClusterDirs
from services.backends.local.paths import DataDir, clean_rel, inside, link, read
from services.backends.local.processes import (
    DOCKER_ENV_KEEP,
    HOST_ENV_KEEP,
    end_unstarted,
    host_env,
    kill_orphans,
    node_run,
    signal_runners,
    spawn_missing,
)
from services.backends.noderun import gpu
from services.backends.noderun import runner as noderunner
from services.backends.noderun.launch import (
    NodeRun,
    check_node_count,
    check_share_name,
    exited_status,
    from_epoch,
    launch_context,
    layout_from_json,
    layout_to_json,
    share_from_url,
    share_layout,
)
from services.backends.noderun.registry import RegistryLogin, registry_login
from services.backends.noderun.runner import ProcessSpec, write_atomic
from services.backends.noderun.specs import (
    DEADLINE,
    TERMINATE,
    Container,
    process_spec,
    runner_spec,
)
from services.core.errors import BackendError, Conflict, NotFound, UserError
from services.core.ports import LaunchRequest, LaunchResult, RunStatus
from services.jobspec import JobSpec, LaunchContext, LaunchPlan, NodeInfo, ProcessPlan, plan_launch
from services.models import (
    Cluster,
    FileLocation,
    FileServer,
    Node,
    NodeOutput,
    NodeProblem,
    Usage,
)

# A node whose runner has not written its pid this long after the launch began is lost.
SPAWN_GRACE_SECONDS = 60.0


class _Mounted(Protocol):
    @property
    def relative_mount_path(self) -> str: ...


class LocalBackend:
    """ComputeBackend on this machine. Each Batch AI concept and its local stand-in:

    - cluster                 -> `<root>/clusters/<c>/` holding `cluster.json` (target node
                                 count) and N node slots, all on this machine (127.0.0.1,
                                 remote-login port 50000 + slot)
    - Azure File share        -> the directory `<root>/shares/<share>` (see LocalShare)
    - cluster mount           -> symlink `<root>/clusters/<c>/mounts/<mount_path>` ->
                                 `shares/<share>`; that `mounts` dir is $AZ_BATCHAI_MOUNT_ROOT
    - blob container (bfs)    -> the directory `<root>/shares/<container>` (one storage
                                 namespace here, whatever the account)
    - NFS file server         -> the directory `<root>/file-servers/<name>/data`
    - job mountVolumes        -> symlinks `<root>/jobs/<job_id>/mounts/<relativeMountPath>` ->
                                 the share, container or file server directory above;
                                 that `mounts` dir is $AZ_BATCHAI_JOB_MOUNT_ROOT
    - node-local job temp     -> `<root>/clusters/<c>/jobs/<job>-<uuid>` ($AZ_BATCHAI_JOB_TEMP;
                                 one directory shared by the job's slots, as they share a disk)
    - run command per node    -> a detached node runner (`services.backends.noderun.runner`) per
                                 node, its files in `<root>/jobs/<job_id>/run/node-<i>/`
    - exit_code on the share  -> the runner's `exit_code` file (written last, atomically)
    - containerSettings       -> `docker run` when a docker engine answers, else the host
    - node exec (run command) -> `bash -c` here, in the cluster's mount root, time-limited
    - registry credentials    -> `docker login --password-stdin` into the job's own DOCKER_CONFIG
                                 (`run/docker`), from a 0600 file removed after
    - node busy / idle        -> a marker `<root>/clusters/<c>/nodes/<slot>/<job_id>` plus a
                                 live runner for that node
    - node setup health check -> `noderun.health` run once per slot against this machine's
                                 `nvidia-smi` (GPU sizes) and mounts: `nodes/<slot>/health`

    Nothing is held in memory: a restarted bot (or a second instance) reads the same files.
    """

    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        python: str = sys.executable,
        subscription: str = "local",
        grace_seconds: float = 10.0,
        heartbeat_seconds: float = 5.0,
        containers: bool = True,
        gpus_of: Callable[[str], int] = lambda size: 0,
        gpu_check: str = "auto",
        gpu_sample_seconds: float = 30.0,
    ) -> None:
        self._gpu_seconds = gpu_sample_seconds
        self._data = DataDir(root)
        self._root = self._data.root
        self._clusters = ClusterDirs(self._data, gpus_of=gpus_of, gpu_check=gpu_check)
        self._python = python
        self._subscription = subscription
        self._grace = grace_seconds
        self._heartbeat = heartbeat_seconds
        self._docker: str | None | bool = None if containers else False
        self._locks: dict[str, asyncio.Lock] = {}

    # ---------------------------------------------------------------- paths

    # Every share lives in <data dir>/shares; the bot's own files are outside any of them.
    reserved_shares: frozenset[str] = frozenset()

    @property
    def root(self) -> Path:
        return self._root

    # ---------------------------------------------------------------- clusters (nodes.py)

    async def create_cluster(self, cluster: Cluster) -> None:
        await self._clusters.create(cluster)

    # ---------------------------------------------------------------- storage (StorageBackend)

    async def ensure_auto_storage(self, share: str, container: str) -> None:
        for name in (share, container):  # one storage account here: both are shares/<name>
            self._data.volume("afs", name).mkdir(parents=True, exist_ok=True)

    async def create_file_server(self, server: FileServer) -> str:
        """A file server here is a directory; its data disks are this machine's disk."""
        export = self._data.file_server(server.name)
        export.mkdir(parents=True, exist_ok=True)
        return str(export)

    async def delete_file_server(self, server: FileServer) -> None:
        await asyncio.to_thread(shutil.rmtree, self._data.file_server(server.name).parent, True)

    async def resize_cluster(self, cluster: Cluster, target: int) -> None:
        await self._clusters.resize(cluster, target)

    async def delete_cluster(self, cluster: Cluster) -> None:
        await self._clusters.delete(cluster)

    async def list_nodes(self, cluster: Cluster) -> list[Node]:
        return await self._clusters.list_nodes(cluster)

    async def unusable_nodes(self, cluster: Cluster) -> dict[int, str]:
        return await self._clusters.unusable(cluster)

    async def failed_nodes(self, *, cluster: str | None = None) -> list[NodeProblem]:
        return [NodeProblem(c, n, r) for c, n, r in self._clusters.failed(cluster)]

    # ---------------------------------------------------------------- jobs: start

    async def start_job(self, request: LaunchRequest) -> LaunchResult:
        lock = self._locks.setdefault(request.job_id, asyncio.Lock())
        async with lock:
            run_dir = self._data.run_dir(request.job_id)
            stored = read(run_dir / "launch.json")
            if stored is not None:
                launch = json.loads(stored)
                # A launch cut short (bot killed mid-way) is completed, never repeated.
                # The runner is ours and runs with our interpreter; `python` is the jobs'.
                await spawn_missing(sys.executable, run_dir, len(launch["nodes"]))
                return layout_from_json(launch["result"])
            result, node_count = await self._prepare(request)
            await spawn_missing(sys.executable, run_dir, node_count)
            return result

    async def _engine(self) -> str | None:
        """The docker binary when an engine answers (checked once per backend), else None."""
        if self._docker is None:
            binary = shutil.which("docker")
            ok = binary is not None and await asyncio.to_thread(processes.docker_socket_reachable)
            self._docker = binary if ok else False
        return self._docker if isinstance(self._docker, str) else None

    def _context(self, request: LaunchRequest, python: str) -> LaunchContext:
        cdir = self._data.cluster_dir(request.cluster.name)
        return launch_context(
            request,
            subscription=self._subscription,
            mount_root=str(cdir / "mounts"),
            job_mount_root=str(self._data.job_dir(request.job_id) / "mounts"),
            job_temp_root=str(cdir / "jobs"),
            nodes=[
                NodeInfo(
                    index=i,
                    host=LOCAL_HOST,
                    node_id=f"{request.cluster.name}-node-{slot}",
                )
                for i, slot in enumerate(request.nodes)
            ],
            python=python,
        )

    def _job_mounts(self, job_id: str, spec: JobSpec) -> list[str]:
        """Link the job's mountVolumes under its mount root; notes for what cannot be had here."""
        volumes = spec.properties.mount_volumes
        if volumes is None:
            return []
        root = self._data.job_dir(job_id) / "mounts"
        links = [
            (self._data.volume("afs", share_from_url(v.azure_file_url)), v.relative_mount_path)
            for v in volumes.azure_file_shares
        ]
        links += [
            (self._data.volume("bfs", check_share_name(v.container_name)), v.relative_mount_path)
            for v in volumes.azure_blob_file_systems
        ]
        notes = []
        for v in volumes.file_servers:
            server = self._data.file_server(v.server_name)
            if not server.is_dir():
                notes.append(
                    f"{v.relative_mount_path}: file server {server.parent.name} does not exist "
                    "(file-server create makes it); the job sees an empty directory"
                )
            links.append((server, v.relative_mount_path))
        for target, rel in links:
            target.mkdir(parents=True, exist_ok=True)
            link(root / clean_rel(rel), target)
        others: list[_Mounted] = [*volumes.unmanaged_file_systems]
        for other in others:
            Path(root, clean_rel(other.relative_mount_path)).mkdir(parents=True, exist_ok=True)
            notes.append(
                f"{other.relative_mount_path}: a custom mount command is not run on the local "
                "backend (it would run on the bot's own machine); it is an empty directory"
            )
        return notes

    def _on_share(self, path: str) -> FileLocation | None:
        """The share location of a node path, following the mount links; None when off-share."""
        real = Path(path).resolve()
        shares = self._data.shares().resolve()
        if not inside(real, shares) or real == shares:
            return None
        rel = real.relative_to(shares)
        return FileLocation(rel.parts[0], "/".join(rel.parts[1:]))

    async def _prepare(self, request: LaunchRequest) -> tuple[LaunchResult, int]:
        spec = request.spec
        check_node_count(request)
        target = self._clusters.target(request.cluster.name)
        if any(slot < 0 or slot >= target for slot in request.nodes):
            raise Conflict(f"nodes {list(request.nodes)} are not all on {request.cluster.name}")
        notes: list[str] = []
        image = spec.properties.container_settings
        docker = await self._engine() if image is not None else None
        if image is not None and docker is None:
            notes.append(
                f"container image {image.image_source_registry.image} requested; no container "
                "engine on this machine, so the job runs on the host"
            )
        login = registry_login(request)
        if login is not None:
            notes.extend(await self._registry_login(request, login, docker))
        # In a container the image's own python runs the scripts, not the bot's interpreter.
        plan = plan_launch(spec, self._context(request, "python" if docker else self._python))
        notes.extend(plan.warnings)

        job_dir = self._data.job_dir(request.job_id)
        run_dir = job_dir / "run"
        for path in (job_dir / "wd", run_dir, job_dir / "mounts"):
            path.mkdir(parents=True, exist_ok=True)
        notes.extend(self._job_mounts(request.job_id, spec))
        for d in (
            plan.stdouterr_dir,
            plan.job_temp,
            plan.shared_job_temp,
            *(o.path for o in plan.output_dirs),
        ):
            Path(d).mkdir(parents=True, exist_ok=True)
        host_file = Path(plan.env["AZ_BATCHAI_MPI_HOST_FILE"])
        write_atomic(host_file, "".join(f"{line}\n" for line in plan.mpi_host_file_lines))

        layout = share_layout(plan, self._on_share, notes)
        result = LaunchResult(layout=layout, notes=tuple(notes))
        self._write_runner_specs(request, plan, docker)
        launch = {
            "job_id": request.job_id,
            "cluster": request.cluster.name,
            "nodes": list(request.nodes),
            "result": layout_to_json(result),
        }
        nodes_dir = self._data.cluster_dir(request.cluster.name) / "nodes"
        for i, slot in enumerate(request.nodes):
            marker = nodes_dir / str(slot) / request.job_id
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, f"{i}\n")
        # launch.json last: from here on a repeated start_job only completes this launch.
        write_atomic(run_dir / "launch.json", json.dumps(launch, indent=1))
        return result, len(request.nodes)

    async def _registry_login(
        self, request: LaunchRequest, login: RegistryLogin, docker: str | None
    ) -> list[str]:
        """Log the job's docker config in to its registry; a note when that cannot be."""
        where = login.server or "Docker Hub"
        if docker is None:
            return [f"registry credentials for {where} need the docker runtime; not used here"]
        if login.password is None:
            return []  # from Key Vault: the plan's own warning says it cannot be read here
        problem = await processes.docker_login(
            docker,
            server=login.server,
            username=login.username,
            password=login.password,
            config_dir=self._docker_config(request.job_id),
        )
        if problem is not None:
            raise UserError(f"docker login to {where} as {login.username} failed: {problem}")
        return []

    def _docker_config(self, job_id: str) -> Path:
        """The job's own docker config (its registry login), beside its runner files."""
        return self._data.run_dir(job_id) / "docker"

    def _process_spec(
        self,
        proc: ProcessPlan,
        plan: LaunchPlan,
        request: LaunchRequest,
        docker: str | None,
    ) -> ProcessSpec:
        container = None
        keep: tuple[str, ...] = HOST_ENV_KEEP
        if docker is not None and plan.container_image is not None:
            settings = request.spec.properties.container_settings
            login = registry_login(request)
            container = Container(
                docker=docker,
                image=plan.container_image,
                volumes=self._container_volumes(request, plan),
                shm_size=settings.shm_size if settings else None,
                config_dir=str(self._docker_config(request.job_id))
                if login is not None and login.password is not None
                else None,
            )
            keep = HOST_ENV_KEEP + DOCKER_ENV_KEEP
        return process_spec(
            proc,
            job_id=request.job_id,
            cwd=str(self._data.job_dir(request.job_id) / "wd"),
            env=host_env(keep),
            container=container,
        )

    def _container_volumes(self, request: LaunchRequest, plan: LaunchPlan) -> list[str]:
        # The mount roots hold relative links into shares/, so the shares go in too.
        cdir = self._data.cluster_dir(request.cluster.name)
        return [
            str(self._data.shares()),
            str(cdir / "mounts"),
            str(self._data.job_dir(request.job_id)),
            plan.job_temp,
        ]

    def _write_runner_specs(
        self, request: LaunchRequest, plan: LaunchPlan, docker: str | None
    ) -> None:
        run_dir = self._data.run_dir(request.job_id)
        deadline = time.time() + plan.max_wall_clock.total_seconds()
        count = len(request.nodes)
        for i in range(count):
            spec = runner_spec(
                plan,
                job_id=request.job_id,
                index=i,
                count=count,
                control_dir=str(run_dir),
                process=lambda p: self._process_spec(p, plan, request, docker),
                deadline=deadline,
                grace_seconds=self._grace,
                heartbeat_seconds=self._heartbeat,
                gpu_seconds=self._gpu_seconds,
            )
            # The spec holds the job's secrets: readable by the bot's user only.
            write_atomic(run_dir / f"node-{i}.json", json.dumps(spec.to_json()), mode=0o600)

    # ---------------------------------------------------------------- jobs: status, terminate

    def _launch_info(self, job_id: str) -> dict[str, Any]:
        raw = read(self._data.run_dir(job_id) / "launch.json")
        if raw is None:
            raise NotFound(f"job {job_id} is not known to the local backend")
        info: dict[str, Any] = json.loads(raw)
        return info

    def _spawning_here(self, job_id: str) -> bool:
        lock = self._locks.get(job_id)
        return lock is not None and lock.locked()

    def _still_spawning(self, job_id: str) -> bool:
        """A start_job is under way here, or began so recently that its runners may be coming."""
        if self._spawning_here(job_id):
            return True
        try:
            age = time.time() - (self._data.run_dir(job_id) / "launch.json").stat().st_mtime
        except FileNotFoundError:
            return False
        return age < SPAWN_GRACE_SECONDS

    def _runs(self, job_id: str) -> list[NodeRun]:
        count = len(self._launch_info(job_id)["nodes"])
        return [node_run(self._data.run_dir(job_id), i) for i in range(count)]

    async def get_job_status(self, job_id: str) -> RunStatus:
        runs = self._runs(job_id)
        started = min((r.started for r in runs if r.started is not None), default=None)
        if all(r.exit_code is not None for r in runs):
            return exited_status(runs)
        live = [r for r in runs if r.alive]
        if any(r.pending for r in runs) and self._still_spawning(job_id):
            return RunStatus(phase="preparing", started_at=from_epoch(started))
        # A runner that died without an exit code: its node is gone (its process group killed
        # from outside, the machine's slot lost). What it left running goes, as on a lost node,
        # and the other nodes are told to stop; another attempt may succeed.
        dead = [r for r in runs if not r.alive and not r.pending and r.exit_code is None]
        if dead or not live:
            await asyncio.to_thread(kill_orphans, self._data.run_dir(job_id), len(runs))
            if live:
                await self.terminate_job(job_id)
            which = f"node {dead[0].index} runner" if dead and len(runs) > 1 else "node runner"
            return RunStatus(
                phase="lost",
                detail=f"{which} disappeared",
                started_at=from_epoch(started),
                retryable=True,
            )
        preparing = any(r.phase in (None, "prep") for r in live)
        if preparing:
            return RunStatus(phase="preparing", started_at=from_epoch(started))
        run_dir = self._data.run_dir(job_id)
        samples = [
            gpu.parse(read(run_dir / f"node-{r.index}" / noderunner.GPU))
            for r in runs
            if r.exit_code is None
        ]
        return RunStatus(
            phase="running",
            started_at=from_epoch(started),
            gpu=gpu.combine([s for s in samples if s is not None]),
        )

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        """Move the wall-clock limit (an approved extension); the node runners re-read it."""
        run_dir = self._data.run_dir(job_id)
        if run_dir.is_dir():
            deadline = time.time() + remaining.total_seconds()
            write_atomic(run_dir / DEADLINE, f"{deadline:.3f}\n")

    async def terminate_job(self, job_id: str) -> None:
        """SIGTERM the job's runners and return; a job never started here is nothing to stop."""
        try:
            count = len(self._launch_info(job_id)["nodes"])
        except NotFound:
            return
        run_dir = self._data.run_dir(job_id)
        write_atomic(run_dir / TERMINATE, "")
        await signal_runners(run_dir, count, signal.SIGTERM)
        if not self._spawning_here(job_id):
            # Nodes whose runner never started (a launch cut short) end here, as the runner would.
            end_unstarted(run_dir, [r.index for r in self._runs(job_id) if r.pending])

    async def run_on_node(
        self, cluster: Cluster, node_id: str, command: str, *, timeout: float, job_id: str | None
    ) -> NodeOutput:
        """A subprocess in the node's mount root: every slot is this machine, so `job_id` only
        says which job's variables the command sees (none of the job's secrets)."""
        if node_id not in {n.id for n in await self._clusters.list_nodes(cluster)}:
            raise NotFound(f"cluster {cluster.name} has no node {node_id}")
        mounts = self._data.cluster_dir(cluster.name) / "mounts"
        mounts.mkdir(parents=True, exist_ok=True)
        env = {"AZ_BATCHAI_MOUNT_ROOT": str(mounts), "AZ_BATCHAI_CLUSTER_NAME": cluster.name}
        if job_id is not None:
            env["AZ_BATCHAI_JOB_MOUNT_ROOT"] = str(self._data.job_dir(job_id) / "mounts")
        return await nodeexec.run_command(
            command, node_id=node_id, cwd=mounts, env=env, timeout=timeout
        )

    async def usages(self, location: str | None) -> list[Usage]:
        """The node slots the clusters hold on this machine; nothing here caps them."""
        return [Usage("localNodes", "Node slots on this machine", self._clusters.held(), None)]

    async def ping(self) -> None:
        """The local stand-in for "the service answers": its root is a writable directory."""
        if not (self._root.is_dir() and os.access(self._root, os.W_OK | os.X_OK)):
            raise BackendError("the local backend's data directory is not a writable directory")

    async def aclose(self) -> None:
        # Runners are detached on purpose: jobs outlive the bot, as on Batch AI.
        self._locks.clear()
