"""The local backend: Batch AI clusters, jobs and file shares as directories and processes here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat as stat_mod
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from services.backends.links import LinkSigner
from services.backends.noderun import runner as noderunner
from services.backends.noderun.launch import (
    NodeRun,
    check_share_name,
    docker_argv,
    exited_status,
    from_epoch,
    layout_from_json,
    layout_to_json,
    share_from_url,
    share_layout,
)
from services.backends.noderun.runner import ProcessSpec, write_atomic
from services.backends.noderun.specs import DEADLINE, TERMINATE, runner_spec
from services.core.errors import BackendError, Conflict, NotAllowed, NotFound, UserError
from services.core.ports import LaunchRequest, LaunchResult, RunStatus
from services.jobspec import JobSpec, LaunchContext, LaunchPlan, NodeInfo, ProcessPlan, plan_launch
from services.models import Cluster, FileEntry, FileLocation, Node

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][-\w.]{0,63}$", re.ASCII)
_READ_INLINE = 1 << 20  # a local pread this small takes microseconds: no thread hop needed
# Taken from the bot's environment for a job; nothing else is (the bot holds tokens and keys).
HOST_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
# Only the docker CLI gets these, never the container.
DOCKER_ENV_KEEP = ("DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH")
BASE_PORT = 50000  # Batch AI's remote-login ports start here, one per node
LOCAL_HOST = "127.0.0.1"
_PROJECT_ROOT = Path(noderunner.__file__).resolve().parents[3]
RUNNER_MODULE = "services.backends.noderun.runner"
# A node whose runner has not written its pid this long after the launch began is lost.
SPAWN_GRACE_SECONDS = 60.0


# --------------------------------------------------------------------------- paths and names


class _Mounted(Protocol):
    @property
    def relative_mount_path(self) -> str: ...


def _segment(what: str, value: str) -> str:
    if not _SEGMENT_RE.match(value) or value in (".", ".."):
        raise UserError(f"{what} {value!r} is not a safe name")
    return value


def _clean_rel(path: str) -> PurePosixPath:
    """A relative path without `..`, root or NUL; "" and "." both mean the top."""
    if "\x00" in path or "\\" in path:
        raise NotAllowed(f"bad path {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise NotAllowed(f"path {path!r} leaves its share")
    return pure


def _inside(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target` (relative, so the root may move); replace a stale link."""
    link.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == rel:
            return
        link.unlink()
    elif link.exists():
        raise Conflict(f"{link} exists and is not a mount link")
    link.symlink_to(rel, target_is_directory=True)


# --------------------------------------------------------------------------- the share


class LocalShare:
    """Azure Files stand-in: share `<name>` is the directory `<root>/shares/<name>`.

    Every location is resolved (symlinks too) and must stay inside its share's directory.
    Download links are signed by the bot and served by its own web app (`local_path`).
    """

    def __init__(self, root: Path, signer: LinkSigner) -> None:
        self._shares = Path(root) / "shares"
        self._signer = signer

    def share_dir(self, share: str) -> Path:
        return self._shares / check_share_name(share)

    def _resolve(self, loc: FileLocation) -> Path:
        """The real path; NotFound without the share, NotAllowed when it leaves the share."""
        try:
            share_dir = self.share_dir(loc.share)
        except UserError as err:
            raise NotFound(f"no share {loc.share!r}") from err
        rel = _clean_rel(loc.path)
        if not share_dir.is_dir():
            raise NotFound(f"no share {loc.share!r}")
        base = share_dir.resolve()
        target = (base / rel).resolve()
        if not _inside(target, base):
            raise NotAllowed(f"path {loc.path!r} leaves share {loc.share!r}")
        return target

    @staticmethod
    def _normalized(loc: FileLocation) -> FileLocation:
        rel = str(_clean_rel(loc.path))
        return FileLocation(loc.share, "" if rel == "." else rel)

    def local_path(self, loc: FileLocation) -> Path:
        """The file a verified download link names; NotFound unless it is a regular file."""
        path = self._resolve(loc)
        if not path.is_file():
            raise NotFound(f"no file {loc.path!r} on share {loc.share!r}")
        return path

    async def stat(self, loc: FileLocation) -> FileEntry | None:
        try:
            path = self._resolve(loc)
            st = path.stat()
        except (NotFound, FileNotFoundError, NotADirectoryError):
            return None
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        return FileEntry(
            name=PurePosixPath(self._normalized(loc).path).name,
            is_directory=is_dir,
            size=0 if is_dir else st.st_size,
            modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    async def read_range(self, loc: FileLocation, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise UserError("offset and length must not be negative")
        path = self._resolve(loc)
        if length <= _READ_INLINE:
            return _pread(path, offset, length)
        return await asyncio.to_thread(_pread, path, offset, length)

    async def list_files(self, loc: FileLocation, *, recursive: bool = False) -> list[FileEntry]:
        path = self._resolve(loc)
        if not path.is_dir():
            raise NotFound(f"no directory {loc.path or '.'!r} on share {loc.share!r}")
        base = self.share_dir(loc.share).resolve()
        return await asyncio.to_thread(_list_tree, path, base, recursive)

    async def get_download_url(self, loc: FileLocation, *, expires_at: datetime) -> str:
        self.local_path(loc)
        return self._signer.sign(self._normalized(loc), expires_at)

    async def aclose(self) -> None:
        return None

    def create_share(self, share: str) -> Path:
        """Create the share's directory (idempotent)."""
        path = self.share_dir(share)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def seed_share(self, share: str, src: Path, dest: str) -> int:
        """Copy directory `src` to `dest` on the share, skipping unchanged files; the count copied.

        Synchronous on purpose: it runs once at start-up, before the loop has work to do.
        """
        target = self.create_share(share) / _clean_rel(dest)
        return _copy_tree(Path(src), target)


def _pread(path: Path, offset: int, length: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise NotFound(f"no file {path.name!r}") from err
    try:
        if stat_mod.S_ISDIR(os.fstat(fd).st_mode):
            raise NotFound(f"{path.name!r} is a directory")
        parts: list[bytes] = []
        while length > 0:
            data = os.pread(fd, length, offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(parts)
    finally:
        os.close(fd)


def _list_tree(path: Path, base: Path, recursive: bool) -> list[FileEntry]:
    out: list[FileEntry] = []
    stack: list[tuple[Path, str]] = [(path, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # removed or unreadable while we walked: list what is still there
        for entry in entries:
            name = f"{prefix}{entry.name}"
            try:
                if entry.is_symlink():
                    real = Path(entry.path).resolve()
                    if not _inside(real, base):
                        continue  # the share's own tree only
                    st = real.stat()
                    recurse = False  # never walk through links: no cycles, no listing twice
                else:
                    st = entry.stat(follow_symlinks=False)
                    recurse = stat_mod.S_ISDIR(st.st_mode)
            except (FileNotFoundError, PermissionError, RuntimeError):
                continue
            is_dir = stat_mod.S_ISDIR(st.st_mode)
            out.append(
                FileEntry(
                    name=name,
                    is_directory=is_dir,
                    size=0 if is_dir else st.st_size,
                    modified=datetime.fromtimestamp(st.st_mtime, UTC),
                )
            )
            if recursive and recurse:
                stack.append((Path(entry.path), f"{name}/"))
    out.sort(key=lambda e: e.name)
    return out


def _copy_tree(src: Path, dest: Path) -> int:
    if not src.is_dir():
        raise NotFound(f"no directory {str(src)!r} to seed from")
    copied = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(filenames):
            source, target = Path(dirpath) / name, dest / rel / name
            s = source.stat()
            with contextlib.suppress(FileNotFoundError):
                t = target.stat()
                if t.st_size == s.st_size and int(t.st_mtime) == int(s.st_mtime):
                    continue
            shutil.copy2(source, target)
            copied += 1
    return copied


# --------------------------------------------------------------------------- containers


def _docker_socket_reachable() -> bool:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine: trust the configuration, the job's stderr shows failures
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(host[len("unix://") :])
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- runner status


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_float(path: Path) -> float | None:
    text = _read(path)
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _pid_alive(pid: int, job_id: str) -> bool:
    """Alive and still our runner: /proc shows the runner's command line naming this job, so a
    recycled pid is not mistaken for it (however the root directory was spelled)."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
            return False
        return state not in ("Z", "X") and RUNNER_MODULE in cmdline and job_id in cmdline
    try:  # no /proc (macOS): existence is all we can check
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- the backend


class LocalBackend:
    """ComputeBackend on this machine. Each Batch AI concept and its local stand-in:

    - cluster                 -> `<root>/clusters/<c>/` holding `cluster.json` (target node
                                 count) and N node slots, all on this machine (127.0.0.1,
                                 remote-login port 50000 + slot)
    - Azure File share        -> the directory `<root>/shares/<share>` (see LocalShare)
    - cluster mount           -> symlink `<root>/clusters/<c>/mounts/<mount_path>` ->
                                 `shares/<share>`; that `mounts` dir is $AZ_BATCHAI_MOUNT_ROOT
    - job mountVolumes        -> symlinks `<root>/jobs/<job_id>/mounts/<relativeMountPath>` ->
                                 `shares/<last segment of azureFileUrl | containerName>`;
                                 that `mounts` dir is $AZ_BATCHAI_JOB_MOUNT_ROOT
    - node-local job temp     -> `<root>/clusters/<c>/jobs/<job>-<uuid>` ($AZ_BATCHAI_JOB_TEMP;
                                 one directory shared by the job's slots, as they share a disk)
    - run command per node    -> a detached node runner (`services.backends.noderun.runner`) per
                                 node, its files in `<root>/jobs/<job_id>/run/node-<i>/`
    - exit_code on the share  -> the runner's `exit_code` file (written last, atomically)
    - containerSettings       -> `docker run` when a docker engine answers, else the host
    - node busy / idle        -> a marker `<root>/clusters/<c>/nodes/<slot>/<job_id>` plus a
                                 live runner for that node

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
    ) -> None:
        self._root = Path(root).resolve()
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

    def _shares(self) -> Path:
        return self._root / "shares"

    def _cluster_dir(self, name: str) -> Path:
        return self._root / "clusters" / _segment("cluster name", name)

    def _job_dir(self, job_id: str) -> Path:
        return self._root / "jobs" / _segment("job id", job_id)

    def _run_dir(self, job_id: str) -> Path:
        return self._job_dir(job_id) / "run"

    # ---------------------------------------------------------------- clusters

    async def create_cluster(self, cluster: Cluster) -> None:
        cdir = self._cluster_dir(cluster.name)
        for sub in ("mounts", "nodes", "jobs"):
            (cdir / sub).mkdir(parents=True, exist_ok=True)
        for mount in cluster.mounts:
            share = self._shares() / check_share_name(mount.share)
            share.mkdir(parents=True, exist_ok=True)
            _link(cdir / "mounts" / _clean_rel(mount.mount_path), share)
        meta = cdir / "cluster.json"
        if not meta.exists():
            self._write_cluster_meta(cluster.name, cluster.target_nodes)

    def _write_cluster_meta(self, name: str, target: int) -> None:
        cdir = self._cluster_dir(name)
        for slot in range(target):
            (cdir / "nodes" / str(slot)).mkdir(parents=True, exist_ok=True)
        write_atomic(cdir / "cluster.json", json.dumps({"name": name, "target_nodes": target}))

    async def resize_cluster(self, cluster: Cluster, target: int) -> None:
        if target < 0:
            raise UserError("a cluster cannot have fewer than 0 nodes")
        if not (self._cluster_dir(cluster.name) / "cluster.json").exists():
            raise NotFound(f"cluster {cluster.name} does not exist")
        self._write_cluster_meta(cluster.name, target)

    async def delete_cluster(self, cluster: Cluster) -> None:
        # rmtree removes the mount links themselves, never what they point at (the shares).
        await asyncio.to_thread(shutil.rmtree, self._cluster_dir(cluster.name), True)

    def _target(self, name: str) -> int:
        raw = _read(self._cluster_dir(name) / "cluster.json")
        if raw is None:
            raise NotFound(f"cluster {name} does not exist")
        return int(json.loads(raw)["target_nodes"])

    async def list_nodes(self, cluster: Cluster) -> list[Node]:
        target = self._target(cluster.name)
        nodes_dir = self._cluster_dir(cluster.name) / "nodes"
        nodes = []
        for slot in range(target):
            busy = False
            with contextlib.suppress(FileNotFoundError):
                for marker in (nodes_dir / str(slot)).iterdir():
                    position = _read(marker)
                    if _SEGMENT_RE.match(marker.name) and position and position.isdigit():
                        run = self._node_run(marker.name, int(position))
                        if run.alive and run.exit_code is None:
                            busy = True
                            break
            nodes.append(
                Node(
                    id=f"{cluster.name}-node-{slot}",
                    index=slot,
                    ip=LOCAL_HOST,
                    port=BASE_PORT + slot,
                    state="running" if busy else "idle",
                )
            )
        return nodes

    # ---------------------------------------------------------------- jobs: start

    async def start_job(self, request: LaunchRequest) -> LaunchResult:
        lock = self._locks.setdefault(request.job_id, asyncio.Lock())
        async with lock:
            run_dir = self._run_dir(request.job_id)
            stored = _read(run_dir / "launch.json")
            if stored is not None:
                launch = json.loads(stored)
                # A launch cut short (bot killed mid-way) is completed, never repeated.
                await self._spawn_missing(run_dir, len(launch["nodes"]))
                return layout_from_json(launch["result"])
            result, node_count = await self._prepare(request)
            await self._spawn_missing(run_dir, node_count)
            return result

    async def _engine(self) -> str | None:
        """The docker binary when an engine answers (checked once per backend), else None."""
        if self._docker is None:
            binary = shutil.which("docker")
            ok = binary is not None and await asyncio.to_thread(_docker_socket_reachable)
            self._docker = binary if ok else False
        return self._docker if isinstance(self._docker, str) else None

    def _context(self, request: LaunchRequest, python: str) -> LaunchContext:
        cdir = self._cluster_dir(request.cluster.name)
        return LaunchContext(
            subscription=self._subscription,
            resource_group=request.resource_group,
            workspace=request.workspace,
            experiment=request.experiment,
            cluster_name=request.cluster.name,
            job_name=request.job_name,
            job_uuid=request.job_id,
            mount_root=str(cdir / "mounts"),
            job_mount_root=str(self._job_dir(request.job_id) / "mounts"),
            job_temp_root=str(cdir / "jobs"),
            nodes=tuple(
                NodeInfo(
                    index=i,
                    host=LOCAL_HOST,
                    node_id=f"{request.cluster.name}-node-{slot}",
                )
                for i, slot in enumerate(request.nodes)
            ),
            python=python,
        )

    def _job_mounts(self, job_id: str, spec: JobSpec) -> list[str]:
        """Link the job's mountVolumes under its mount root; notes for what cannot be had here."""
        volumes = spec.properties.mount_volumes
        if volumes is None:
            return []
        root = self._job_dir(job_id) / "mounts"
        links = [
            (share_from_url(v.azure_file_url), v.relative_mount_path)
            for v in volumes.azure_file_shares
        ]
        links += [
            (check_share_name(v.container_name), v.relative_mount_path)
            for v in volumes.azure_blob_file_systems
        ]
        for share, rel in links:
            target = self._shares() / share
            target.mkdir(parents=True, exist_ok=True)
            _link(root / _clean_rel(rel), target)
        notes = []
        others: list[_Mounted] = [
            *volumes.file_servers,
            *volumes.unmanaged_file_systems,
        ]
        for other in others:
            Path(root, _clean_rel(other.relative_mount_path)).mkdir(parents=True, exist_ok=True)
            notes.append(
                f"{other.relative_mount_path}: NFS file servers and custom mounts are not "
                "available on the local backend; it is an empty directory"
            )
        return notes

    def _on_share(self, path: str) -> FileLocation | None:
        """The share location of a node path, following the mount links; None when off-share."""
        real = Path(path).resolve()
        shares = self._shares().resolve()
        if not _inside(real, shares) or real == shares:
            return None
        rel = real.relative_to(shares)
        return FileLocation(rel.parts[0], "/".join(rel.parts[1:]))

    async def _prepare(self, request: LaunchRequest) -> tuple[LaunchResult, int]:
        spec = request.spec
        if len(request.nodes) != spec.properties.node_count:
            raise Conflict(
                f"job {request.job_name} needs {spec.properties.node_count} nodes, "
                f"got {len(request.nodes)}"
            )
        target = self._target(request.cluster.name)
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
        # In a container the image's own python runs the scripts, not the bot's interpreter.
        plan = plan_launch(spec, self._context(request, "python" if docker else self._python))
        notes.extend(plan.warnings)

        job_dir = self._job_dir(request.job_id)
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
        for i, slot in enumerate(request.nodes):
            marker = self._cluster_dir(request.cluster.name) / "nodes" / str(slot) / request.job_id
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, f"{i}\n")
        # launch.json last: from here on a repeated start_job only completes this launch.
        write_atomic(run_dir / "launch.json", json.dumps(launch, indent=1))
        return result, len(request.nodes)

    def _process_spec(
        self,
        proc: ProcessPlan,
        plan: LaunchPlan,
        request: LaunchRequest,
        docker: str | None,
    ) -> ProcessSpec:
        wd = str(self._job_dir(request.job_id) / "wd")
        job_env = {"PYTHONUNBUFFERED": "1", **proc.env}  # live logs unless the job says otherwise
        env = {**_host_env(HOST_ENV_KEEP), **job_env}
        wrapper: tuple[str, ...] = ()
        stop: tuple[str, ...] = ()
        if docker is not None and plan.container_image is not None:
            name = f"job-{request.job_id}-{proc.role}-{proc.rank}"
            settings = request.spec.properties.container_settings
            wrapper = docker_argv(
                docker=docker,
                name=name,
                image=plan.container_image,
                argv=(),
                env_names=list(job_env),
                volumes=self._container_volumes(request, plan),
                workdir=wd,
                shm_size=settings.shm_size if settings else None,
            )
            env = {**_host_env(HOST_ENV_KEEP + DOCKER_ENV_KEEP), **job_env}
            stop = (docker, "rm", "-f", name)
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
        )

    def _container_volumes(self, request: LaunchRequest, plan: LaunchPlan) -> list[str]:
        # The mount roots hold relative links into shares/, so the shares go in too.
        cdir = self._cluster_dir(request.cluster.name)
        return [
            str(self._shares()),
            str(cdir / "mounts"),
            str(self._job_dir(request.job_id)),
            plan.job_temp,
        ]

    def _write_runner_specs(
        self, request: LaunchRequest, plan: LaunchPlan, docker: str | None
    ) -> None:
        run_dir = self._run_dir(request.job_id)
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
            )
            # The spec holds the job's secrets: readable by the bot's user only.
            write_atomic(run_dir / f"node-{i}.json", json.dumps(spec.to_json()), mode=0o600)

    async def _spawn_missing(self, run_dir: Path, count: int) -> None:
        todo = [
            i
            for i in range(count)
            if not (run_dir / f"node-{i}" / noderunner.PID).exists()
            and not (run_dir / f"node-{i}" / noderunner.EXIT_CODE).exists()
        ]
        if (run_dir / TERMINATE).exists():
            _end_unstarted(run_dir, todo)  # terminated before it got going: start nothing
            return
        codes = await asyncio.gather(*(self._spawn(run_dir, i) for i in todo))
        failed = [i for i, code in zip(todo, codes, strict=True) if code != 0]
        if failed:
            await self._signal_runners(run_dir, count, signal.SIGTERM)
            raise BackendError(f"could not start the node runner for node(s) {failed}")

    async def _spawn(self, run_dir: Path, index: int) -> int:
        env = _host_env(HOST_ENV_KEEP)
        env["PYTHONPATH"] = str(_PROJECT_ROOT)
        env["PYTHONSAFEPATH"] = "1"  # the job's working dir must not shadow our modules
        # The runner is ours and runs with our interpreter; `python` is the jobs' (JOB_PYTHON).
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            RUNNER_MODULE,
            str(run_dir / f"node-{index}.json"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=str(run_dir.parent / "wd"),
            env=env,
            start_new_session=True,
        )
        # It forks the real runner off and exits once that runner has written its pid.
        return await proc.wait()

    # ---------------------------------------------------------------- jobs: status, terminate

    def _launch_info(self, job_id: str) -> dict[str, Any]:
        raw = _read(self._run_dir(job_id) / "launch.json")
        if raw is None:
            raise NotFound(f"job {job_id} is not known to the local backend")
        info: dict[str, Any] = json.loads(raw)
        return info

    def _node_run(self, job_id: str, index: int) -> NodeRun:
        sdir = self._run_dir(job_id) / f"node-{index}"
        code_text = _read(sdir / noderunner.EXIT_CODE)
        pid_text = _read(sdir / noderunner.PID)
        alive = False
        if code_text is None and pid_text and pid_text.isdigit():
            alive = _pid_alive(int(pid_text), job_id)
            if not alive:  # it may have written its exit code and gone between the two reads
                code_text = _read(sdir / noderunner.EXIT_CODE)
        return NodeRun(
            index=index,
            alive=alive,
            pending=pid_text is None and code_text is None,
            exit_code=None if code_text is None else int(code_text),
            reason=_read(sdir / noderunner.REASON) or "",
            phase=_read(sdir / noderunner.PHASE),
            started=_read_float(sdir / noderunner.STARTED),
            ended=_read_float(sdir / noderunner.ENDED),
        )

    def _spawning_here(self, job_id: str) -> bool:
        lock = self._locks.get(job_id)
        return lock is not None and lock.locked()

    def _still_spawning(self, job_id: str) -> bool:
        """A start_job is under way here, or began so recently that its runners may be coming."""
        if self._spawning_here(job_id):
            return True
        try:
            age = time.time() - (self._run_dir(job_id) / "launch.json").stat().st_mtime
        except FileNotFoundError:
            return False
        return age < SPAWN_GRACE_SECONDS

    def _runs(self, job_id: str) -> list[NodeRun]:
        count = len(self._launch_info(job_id)["nodes"])
        return [self._node_run(job_id, i) for i in range(count)]

    async def get_job_status(self, job_id: str) -> RunStatus:
        runs = self._runs(job_id)
        started = min((r.started for r in runs if r.started is not None), default=None)
        if all(r.exit_code is not None for r in runs):
            return exited_status(runs)
        live = [r for r in runs if r.alive]
        if any(r.pending for r in runs) and self._still_spawning(job_id):
            return RunStatus(phase="preparing", started_at=from_epoch(started))
        if not live:
            return RunStatus(
                phase="lost", detail="node runner disappeared", started_at=from_epoch(started)
            )
        preparing = any(r.phase in (None, "prep") for r in live)
        return RunStatus(
            phase="preparing" if preparing else "running", started_at=from_epoch(started)
        )

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        """Move the wall-clock limit (an approved extension); the node runners re-read it."""
        run_dir = self._run_dir(job_id)
        if run_dir.is_dir():
            deadline = time.time() + remaining.total_seconds()
            write_atomic(run_dir / DEADLINE, f"{deadline:.3f}\n")

    async def terminate_job(self, job_id: str) -> None:
        """SIGTERM the job's runners and return; a job never started here is nothing to stop."""
        try:
            count = len(self._launch_info(job_id)["nodes"])
        except NotFound:
            return
        run_dir = self._run_dir(job_id)
        write_atomic(run_dir / TERMINATE, "")
        await self._signal_runners(run_dir, count, signal.SIGTERM)
        if not self._spawning_here(job_id):
            # Nodes whose runner never started (a launch cut short) end here, as the runner would.
            _end_unstarted(run_dir, [r.index for r in self._runs(job_id) if r.pending])

    async def _signal_runners(self, run_dir: Path, count: int, sig: signal.Signals) -> None:
        job_id = run_dir.parent.name
        for i in range(count):
            run = self._node_run(job_id, i)
            pid = _read(run_dir / f"node-{i}" / noderunner.PID)
            if run.alive and pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), sig)

    async def ping(self) -> None:
        """The local stand-in for "the service answers": its root is a writable directory."""
        if not (self._root.is_dir() and os.access(self._root, os.W_OK | os.X_OK)):
            raise BackendError("the local backend's data directory is not a writable directory")

    async def aclose(self) -> None:
        # Runners are detached on purpose: jobs outlive the bot, as on Batch AI.
        self._locks.clear()


def _end_unstarted(run_dir: Path, nodes: Sequence[int]) -> None:
    for i in nodes:
        status = run_dir / f"node-{i}"
        status.mkdir(parents=True, exist_ok=True)
        write_atomic(status / noderunner.ENDED, f"{time.time():.3f}\n")
        write_atomic(status / noderunner.REASON, "terminated by user\n")
        write_atomic(status / noderunner.EXIT_CODE, f"{noderunner.EXIT_TERMINATED}\n")


def _host_env(keep: Sequence[str]) -> dict[str, str]:
    return {k: os.environ[k] for k in keep if k in os.environ}
