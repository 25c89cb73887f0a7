"""A cluster's setup task (nodeSetup.setupTask): who may give one, where its logs go (pure).

The task runs as root on every node after its mounts, before its health check; its output goes
to `<stdOutErrPathPrefix>/<stdOutErrPathSuffix>/stdout-<node>.txt` (and stderr-), on one of the
cluster's Azure File shares so that `cluster file list` can hand out links to it.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.core.errors import NotAllowed, UserError
from services.models import Actor, Cluster, FileLocation, ShareMount

ADMIN_ONLY = (
    "only an admin may give a cluster a setup task: it runs as root on every node, where the "
    "storage key and the bot's control share are; ask one of the bot's admins (ADMIN_USERS)"
)
MOUNT_ROOT = "AZ_BATCHAI_MOUNT_ROOT"
_ROOT_RE = re.compile(r"^\$(?:AZ_BATCHAI_MOUNT_ROOT|\{AZ_BATCHAI_MOUNT_ROOT\})(?:/|$)")
_NAMESPACE = uuid.UUID("7d9f5c1e-3a52-4f0e-9f43-51b7c2a1d0b4")  # the bot's own, for the suffix
_RESERVED = frozenset({MOUNT_ROOT, "AZ_BATCHAI_STDOUTERR_DIR"})
MAX_COMMAND_CHARS = 16_000
MIN_LINK_MINUTES, MAX_LINK_MINUTES = 5, 600  # as job file list's --expiry


@dataclass(frozen=True)
class SetupLogs:
    """Where one cluster's setup-task logs are: the mount they are on and the directory below
    it, and that directory as a share location (what `cluster file list` lists)."""

    mount: ShareMount
    rel_dir: str  # below the mount point: <rest of the prefix>/<suffix>
    location: FileLocation

    def node_dir(self, mount_root: str) -> str:
        """The directory on a node whose cluster mounts are under `mount_root`."""
        return posixpath.join(mount_root, self.mount.mount_path.strip("/"), self.rel_dir)


def check_may_give(actor: Actor) -> None:
    if not actor.is_admin:
        raise NotAllowed(ADMIN_ONLY)


def check_command(command: str) -> str:
    text = command.strip()
    if not text:
        raise UserError("--setup-task is empty; give the command line to run on each node")
    if len(text) > MAX_COMMAND_CHARS:
        raise UserError(f"--setup-task is {len(text)} characters; at most {MAX_COMMAND_CHARS}")
    if "\x00" in text:
        raise UserError("--setup-task holds a NUL character; type the command as text")
    return text


def check_env(pairs: Sequence[tuple[str, str]], what: str) -> None:
    for name, _ in pairs:
        if name in _RESERVED:
            raise UserError(f"nodeSetup.setupTask.{what}: {name} is set by the bot; pick another")


def suffix(cluster: Cluster, subscription: str) -> str:
    """stdOutErrPathSuffix: `<sub>/<rg>/workspaces/<ws>/clusters/<name>/<uuid>`, the uuid fixed
    by the cluster's name and creation time (a re-created cluster writes elsewhere)."""
    made = cluster.created_at.isoformat() if cluster.created_at else ""
    key = f"{cluster.resource_group}/{cluster.workspace}/{cluster.name}/{made}"
    return (
        f"{subscription}/{cluster.resource_group}/workspaces/{cluster.workspace}"
        f"/clusters/{cluster.name}/{uuid.uuid5(_NAMESPACE, key).hex}"
    )


def locate(prefix: str, mounts: Sequence[ShareMount], suffix_: str = "") -> SetupLogs:
    """The Azure File share mount `prefix` is on (`$AZ_BATCHAI_MOUNT_ROOT/<mount path>/...`,
    or `<mount path>/...` read as below the mount root); UserError naming the mounts if none."""
    rest = _ROOT_RE.sub("", prefix.strip()).strip("/")
    norm = posixpath.normpath(rest) if rest else ""
    shares = [m for m in mounts if m.kind == "afs"]
    if norm and not norm.startswith(("/", "..")) and "\\" not in norm:
        for m in sorted(shares, key=lambda m: -len(m.mount_path)):
            base = m.mount_path.strip("/")
            if norm == base or norm.startswith(base + "/"):
                inner = norm[len(base) :].strip("/")
                rel = "/".join(x for x in (inner, suffix_.strip("/")) if x)
                return SetupLogs(m, rel, FileLocation(m.share, rel))
    known = ", ".join(f"$AZ_BATCHAI_MOUNT_ROOT/{m.mount_path}" for m in shares)
    where = (
        f"one of the cluster's Azure File shares ({known})"
        if known
        else ("an Azure File share of the cluster (give --afs-name or --use-auto-storage)")
    )
    raise UserError(
        f"--setup-task-output {prefix!r} must be on {where}, where the logs can be listed"
    )


def logs_of(cluster: Cluster) -> SetupLogs | None:
    """Where the cluster's setup task writes (None: it has none)."""
    if not cluster.setup_task or not cluster.setup_task_output:
        return None
    return locate(cluster.setup_task_output, cluster.mounts, cluster.setup_task_suffix or "")


def log_names(node_id: str) -> tuple[str, str]:
    return f"stdout-{node_id}.txt", f"stderr-{node_id}.txt"


def failed_reason(exit_code: int, node_id: str) -> str:
    return f"setup task failed (exit {exit_code}), see {log_names(node_id)[0]}"


def task_env(cluster: Cluster) -> list[tuple[str, str]]:
    """The task's own variables, then its secrets (a secret wins over a variable of its name)."""
    secret_names = {n for n, _ in cluster.setup_task_secrets}
    own = [(n, v) for n, v in cluster.setup_task_env if n not in secret_names]
    return own + list(cluster.setup_task_secrets)


def environment(cluster: Cluster, *, mount_root: str, stdouterr: str) -> dict[str, str]:
    """The task's environment on top of a minimal base: its variables, its secrets, then the
    two Batch AI gives it (nothing of the bot's own environment)."""
    env = dict(task_env(cluster))
    env[MOUNT_ROOT] = mount_root
    env["AZ_BATCHAI_STDOUTERR_DIR"] = stdouterr
    return env
