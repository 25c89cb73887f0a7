"""Clusters on this machine: `<root>/clusters/<c>/` with `cluster.json` (the target node count),
its mount links and one slot per node, all on 127.0.0.1 (remote-login port 50000 + slot).

A node is busy while a job's marker `nodes/<slot>/<job_id>` names it and that job's runner for
the node is alive; nothing is held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil

from services.backends.local import processes
from services.backends.local.paths import SEGMENT_RE, DataDir, clean_rel, link, read
from services.backends.noderun.launch import check_share_name
from services.backends.noderun.runner import write_atomic
from services.core.errors import NotFound, UserError
from services.models import Cluster, Node

BASE_PORT = 50000  # Batch AI's remote-login ports start here, one per node
LOCAL_HOST = "127.0.0.1"


class ClusterDirs:
    """Create, resize, delete and list the clusters under a data directory."""

    def __init__(self, data: DataDir) -> None:
        self._data = data

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

    async def list_nodes(self, cluster: Cluster) -> list[Node]:
        target = self.target(cluster.name)
        nodes_dir = self._data.cluster_dir(cluster.name) / "nodes"
        nodes = []
        for slot in range(target):
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
