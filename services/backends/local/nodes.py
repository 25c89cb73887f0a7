"""Clusters on this machine: `<root>/clusters/<c>/` with `cluster.json` (the target node count),
its mount links and one slot per node, all on 127.0.0.1 (remote-login port 50000 + slot).

A node is busy while a job's marker `nodes/<slot>/<job_id>` names it and that job's runner for
the node is alive; nothing is held in memory. A slot is checked once when it is made (the node
health check of `noderun.health`, against the `nvidia-smi` on PATH for a GPU size): its result is
`nodes/<slot>/health`, and a slot that failed it is unusable, with the reason.

A cluster's setup task runs before that check, once per slot (`bash -c`, in its own session,
as the bot's user: this machine has no root to give it), with the host's plain environment plus
the task's; while it runs, `nodes/<slot>/setup-running` names its process and the slot is
preparing. A task that exits non-zero writes the slot's result itself: failed, with the exit
code and the log to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from services.backends.local import processes
from services.backends.local.paths import SEGMENT_RE, DataDir, clean_rel, link, read
from services.backends.local.processes import HOST_ENV_KEEP, host_env
from services.backends.noderun import health
from services.backends.noderun.launch import check_share_name
from services.backends.noderun.runner import write_atomic
from services.clusters import setuptask
from services.core.errors import NotFound, UserError
from services.models import Cluster, Node

BASE_PORT = 50000  # Batch AI's remote-login ports start here, one per node
LOCAL_HOST = "127.0.0.1"
# How a GPU size's slots are checked: "auto" against the nvidia-smi on PATH when there is one
# (a machine without one runs GPU sizes on its CPU), "require" also fails them without one,
# "off" checks the share mounts only.
GPU_CHECKS = ("auto", "require", "off")
SETUP_MARK = "setup-running"  # in a slot's directory while its setup task runs: the process id
SETUP_STILL_RUNNING = "its setup task is still running"


class ClusterDirs:
    """Create, resize, delete and list the clusters under a data directory."""

    def __init__(
        self,
        data: DataDir,
        *,
        gpus_of: Callable[[str], int] = lambda size: 0,
        gpu_check: str = "auto",
    ) -> None:
        if gpu_check not in GPU_CHECKS:
            raise ValueError(f"gpu_check must be one of {', '.join(GPU_CHECKS)}")
        self._data = data
        self._gpus_of = gpus_of
        self._gpu_check = gpu_check

    async def create(self, cluster: Cluster) -> None:
        cdir = self._data.cluster_dir(cluster.name)
        for sub in ("mounts", "nodes", "jobs"):
            (cdir / sub).mkdir(parents=True, exist_ok=True)
        for mount in cluster.mounts:
            if mount.kind != "nfs":
                check_share_name(mount.share)
            target = self._data.volume(mount.kind, mount.share)
            target.mkdir(parents=True, exist_ok=True)
            link(cdir / "mounts" / clean_rel(mount.mount_path), target)
        meta = cdir / "cluster.json"
        if not meta.exists():
            self._write_meta(cluster.name, cluster.target_nodes)
        await self.check_slots(cluster)

    def _write_meta(self, name: str, target: int) -> None:
        cdir = self._data.cluster_dir(name)
        for slot in range(target):
            (cdir / "nodes" / str(slot)).mkdir(parents=True, exist_ok=True)
        write_atomic(cdir / "cluster.json", json.dumps({"name": name, "target_nodes": target}))

    async def resize(self, cluster: Cluster, target: int) -> None:
        if target < 0:
            raise UserError("a cluster cannot have fewer than 0 nodes")
        if not (self._data.cluster_dir(cluster.name) / "cluster.json").exists():
            raise NotFound(f"cluster {cluster.name} does not exist")
        self._write_meta(cluster.name, target)
        await self.check_slots(cluster)

    async def delete(self, cluster: Cluster) -> None:
        # rmtree removes the mount links themselves, never what they point at (the shares).
        await asyncio.to_thread(shutil.rmtree, self._data.cluster_dir(cluster.name), True)

    def target(self, name: str) -> int:
        raw = read(self._data.cluster_dir(name) / "cluster.json")
        if raw is None:
            raise NotFound(f"cluster {name} does not exist")
        return int(json.loads(raw)["target_nodes"])

    def held(self) -> int:
        """The node slots of every cluster here (their target counts)."""
        root = self._data.root / "clusters"
        if not root.is_dir():
            return 0
        return sum(self.target(d.name) for d in root.iterdir() if (d / "cluster.json").is_file())

    def expected_gpus(self, vm_size: str) -> int:
        """The GPUs a slot of `vm_size` must show (0: the GPU part is skipped)."""
        if self._gpu_check == "off":
            return 0
        if self._gpu_check == "auto" and shutil.which("nvidia-smi") is None:
            return 0
        return self._gpus_of(vm_size)

    async def check_slots(self, cluster: Cluster) -> None:
        """Run the setup task (if any) and then the health check for every slot that has no
        result yet and is not being set up now (one check serves them all: they share this
        machine's GPUs and mounts)."""
        cdir = self._data.cluster_dir(cluster.name)
        slots = [
            slot
            for slot in range(self.target(cluster.name))
            if not (cdir / "nodes" / str(slot) / health.HEALTH_FILE).exists()
            and not self.setting_up(cluster.name, slot)
        ]
        if not slots:
            return
        claimed = list(slots)
        for slot in claimed:  # claimed before the first await: a second check skips them
            (cdir / "nodes" / str(slot)).mkdir(parents=True, exist_ok=True)
            write_atomic(cdir / "nodes" / str(slot) / SETUP_MARK, str(os.getpid()))
        try:
            if cluster.setup_task:
                codes = await asyncio.gather(*(self._set_up(cluster, s) for s in claimed))
                for slot, code in zip(claimed, codes, strict=True):
                    if code != 0:
                        self._write_failed(cluster.name, slot, code)
                slots = [s for s, code in zip(claimed, codes, strict=True) if code == 0]
            if slots:
                await self._health_check(cluster, slots)
        finally:
            for slot in claimed:
                with contextlib.suppress(FileNotFoundError):
                    (cdir / "nodes" / str(slot) / SETUP_MARK).unlink()

    async def _health_check(self, cluster: Cluster, slots: list[int]) -> None:
        cdir = self._data.cluster_dir(cluster.name)
        todo = [cdir / "nodes" / str(slot) for slot in slots]
        mounts = [str(cdir / "mounts" / clean_rel(m.mount_path)) for m in cluster.mounts]
        out = [shlex.quote(str(d / health.HEALTH_FILE)) for d in todo]
        lines = health.check_lines(gpus=self.expected_gpus(cluster.vm_size), mounts=mounts, out=out)
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            "\n".join(lines),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()

    def setting_up(self, name: str, slot: int) -> bool:
        """The slot's setup (task or check) is under way: its marker names a live process."""
        pid = read(self._data.cluster_dir(name) / "nodes" / str(slot) / SETUP_MARK)
        if pid is None or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False  # the bot stopped mid-setup: the (idempotent) task runs again
        except PermissionError:
            return True
        return True

    async def _set_up(self, cluster: Cluster, slot: int) -> int:
        """One slot's setup task: its logs in the cluster's setup-log directory on the share,
        its exit status returned (a shell's: 128 + N for death by signal N)."""
        logs = setuptask.logs_of(cluster)
        assert logs is not None and cluster.setup_task
        cdir = self._data.cluster_dir(cluster.name)
        mount_root = str(cdir / "mounts")
        out_dir = Path(logs.node_dir(mount_root))
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        stdout_name, stderr_name = setuptask.log_names(f"{cluster.name}-node-{slot}")
        env = setuptask.environment(cluster, mount_root=mount_root, stdouterr=str(out_dir))
        with open(out_dir / stdout_name, "wb") as out, open(out_dir / stderr_name, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                cluster.setup_task,
                cwd=mount_root,
                env={**host_env(HOST_ENV_KEEP), **env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            write_atomic(cdir / "nodes" / str(slot) / SETUP_MARK, str(proc.pid))
            code = await proc.wait()
        return 128 - code if code < 0 else code

    def _write_failed(self, name: str, slot: int, code: int) -> None:
        reason = setuptask.failed_reason(code, f"{name}-node-{slot}")
        write_atomic(
            self._data.cluster_dir(name) / "nodes" / str(slot) / health.HEALTH_FILE,
            f"status=failed\ngpus=0\nreason={reason}\n",
        )

    def slot_health(self, name: str, slot: int) -> health.Health | None:
        return health.parse(
            read(self._data.cluster_dir(name) / "nodes" / str(slot) / health.HEALTH_FILE)
        )

    async def unusable(self, cluster: Cluster) -> dict[int, str]:
        """Slot -> why no job may be placed there (its health check failed)."""
        await self.check_slots(cluster)
        found = {}
        for slot in range(self.target(cluster.name)):
            if self.setting_up(cluster.name, slot):
                found[slot] = SETUP_STILL_RUNNING
                continue
            result = self.slot_health(cluster.name, slot)
            if result is None or not result.ok:
                found[slot] = result.reason if result else "its health check left no result"
        return found

    def failed(self, cluster: str | None = None) -> list[tuple[str, str, str]]:
        """(cluster, node, reason) of every slot here (of `cluster`'s only, when named) that
        failed its health check (`cluster show` asks for its own cluster's). Paths are joined as
        text: pathlib's joins were most of the work."""
        root = self._data.root / "clusters"
        if cluster is not None:
            names = [cluster]
        else:
            names = sorted(d.name for d in root.iterdir()) if root.is_dir() else []
        found: list[tuple[str, str, str]] = []
        for name in names:
            cdir = os.fspath(self._data.cluster_dir(name))
            meta = read(f"{cdir}/cluster.json")
            if meta is None:
                continue
            for slot in range(int(json.loads(meta)["target_nodes"])):
                result = health.parse(read(f"{cdir}/nodes/{slot}/{health.HEALTH_FILE}"))
                if result is not None and not result.ok:
                    found.append((name, f"{name}-node-{slot}", result.reason))
        return found

    async def list_nodes(self, cluster: Cluster) -> list[Node]:
        target = self.target(cluster.name)
        nodes_dir = self._data.cluster_dir(cluster.name) / "nodes"
        problems = await self.unusable(cluster)
        nodes = []
        for slot in range(target):
            if slot in problems:
                preparing = problems[slot] == SETUP_STILL_RUNNING
                nodes.append(
                    Node(
                        id=f"{cluster.name}-node-{slot}",
                        index=slot,
                        ip=LOCAL_HOST,
                        port=BASE_PORT + slot,
                        state="preparing" if preparing else "unusable",
                        detail=problems[slot],
                    )
                )
                continue
            busy = False
            with contextlib.suppress(FileNotFoundError):
                for marker in (nodes_dir / str(slot)).iterdir():
                    position = read(marker)
                    if SEGMENT_RE.match(marker.name) and position and position.isdigit():
                        run_dir = self._data.run_dir(marker.name)
                        run = processes.node_run(run_dir, int(position))
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
