"""What both backends share about a launched job: its launch context, share names, the `docker run`
line, the node runner's status (NodeRun, exited_status), the job's layout on its shares and its
JSON record.

The azure backend runs the same node runner on its VMs that the local backend runs here, so both
read its files the same way; neither backend imports the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from services.core.errors import Conflict, UserError
from services.core.ports import LaunchRequest, LaunchResult, RunStatus
from services.jobspec import LaunchContext, LaunchPlan, NodeInfo
from services.models import FileLocation, JobLayout, location_from_json, location_json

SHARE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,61}[a-z0-9]$|^[a-z0-9]$")


def check_share_name(name: str) -> str:
    """Azure's share rule: 1-63 lower-case letters, digits and single inner hyphens."""
    if not SHARE_NAME_RE.match(name):
        raise UserError(
            f"share name {name!r} must be lower-case letters, digits and single hyphens "
            "(at most 63, not starting or ending with a hyphen)"
        )
    return name


def share_from_url(url: str) -> str:
    """`https://<account>.file.core.windows.net/<share>` -> `<share>`."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if not parts:
        raise UserError(f"azureFileUrl {url!r} does not name a share")
    return check_share_name(parts[-1])


def docker_argv(
    *,
    docker: str,
    name: str,
    image: str,
    argv: Sequence[str],
    env_names: Sequence[str],
    volumes: Sequence[str],
    workdir: str,
    shm_size: str | None = None,
    gpus: int = 0,
    user: tuple[int, int] | None = None,
) -> tuple[str, ...]:
    """`docker run` for one process. Values travel in the CLI's environment (`-e NAME`), never
    on its command line, where any local user could read them in /proc. With `user` the
    container runs as that uid:gid and can gain no privileges (setuid programs do nothing)."""
    out = [docker, "run", "--rm", "--name", name, "--network", "host", "--init"]
    if user is not None:
        out += ["--user", f"{user[0]}:{user[1]}", "--security-opt", "no-new-privileges"]
    for path in volumes:
        out += ["-v", f"{path}:{path}"]
    out += ["-w", workdir]
    if shm_size:
        out += ["--shm-size", shm_size]
    if gpus:
        out += ["--gpus", "all"]
    for env_name in sorted(env_names):
        out += ["-e", env_name]
    out += [image, *argv]
    return tuple(out)


def check_node_count(request: LaunchRequest) -> None:
    """A launch runs on exactly as many nodes as its job asks for: a Conflict otherwise."""
    wanted = request.spec.properties.node_count
    if len(request.nodes) != wanted:
        raise Conflict(f"job {request.job_name} needs {wanted} nodes, got {len(request.nodes)}")


def launch_context(
    request: LaunchRequest,
    *,
    subscription: str,
    mount_root: str,
    job_mount_root: str,
    job_temp_root: str,
    nodes: Sequence[NodeInfo],
    python: str,
    extra_env: Mapping[str, str] | None = None,
) -> LaunchContext:
    """The plan's context: the request's names, and the backend's roots, nodes and interpreter;
    `extra_env` under the job's own variables (the fabric's, say)."""
    return LaunchContext(
        subscription=subscription,
        resource_group=request.resource_group,
        workspace=request.workspace,
        experiment=request.experiment,
        cluster_name=request.cluster.name,
        job_name=request.job_name,
        job_uuid=request.uuid,
        mount_root=mount_root,
        job_mount_root=job_mount_root,
        job_temp_root=job_temp_root,
        nodes=tuple(nodes),
        python=python,
        attempt=request.attempt,
        extra_env=dict(extra_env or {}),
    )


def from_epoch(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class NodeRun:
    """What one node's status directory says (shared with the azure backend)."""

    index: int
    alive: bool
    pending: bool  # no runner has been started for it yet
    exit_code: int | None
    reason: str
    phase: str | None
    started: float | None
    ended: float | None


def exited_status(runs: Sequence[NodeRun]) -> RunStatus:
    """A job whose every node has an exit code: the first failure (by end time) decides."""
    started = min((r.started for r in runs if r.started is not None), default=None)
    failures = sorted(
        (r for r in runs if r.exit_code),
        key=lambda r: (r.ended if r.ended is not None else float("inf"), r.index),
    )
    first = failures[0] if failures else None
    ended = max((r.ended for r in runs if r.ended is not None), default=None)
    return RunStatus(
        phase="exited",
        exit_code=first.exit_code if first else 0,
        detail=(first.reason or None) if first else None,
        started_at=from_epoch(started),
        ended_at=from_epoch(ended),
    )


def layout_to_json(result: LaunchResult) -> dict[str, Any]:
    lay = result.layout

    def loc(value: FileLocation | None) -> dict[str, Any] | None:
        return None if value is None else location_json(value)

    return {
        "stdouterr": loc(lay.stdouterr),
        "outputs": {k: loc(v) for k, v in lay.outputs.items()},
        "log_files": list(lay.log_files),
        "primary_log": lay.primary_log,
        "journals": [loc(j) for j in lay.journals],
        "notes": list(result.notes),
    }


def layout_from_json(raw: Mapping[str, Any]) -> LaunchResult:
    def loc(value: Mapping[str, Any] | None) -> FileLocation | None:
        return None if value is None else location_from_json(value)

    outputs = {k: loc(v) for k, v in raw["outputs"].items()}
    layout = JobLayout(
        stdouterr=loc(raw["stdouterr"]),
        outputs={k: v for k, v in outputs.items() if v is not None},
        log_files=tuple(raw["log_files"]),
        primary_log=raw["primary_log"],
        journals=tuple(location_from_json(j) for j in raw.get("journals", ())),
    )
    return LaunchResult(layout=layout, notes=tuple(raw["notes"]))


def share_layout(
    plan: LaunchPlan, on_share: Callable[[str], FileLocation | None], notes: list[str]
) -> JobLayout:
    """Where a launched job's logs and outputs are on a share (outputs: or in a blob
    container); what is not gets a note."""
    stdouterr = on_share(plan.stdouterr_dir)
    if stdouterr is not None and stdouterr.container:
        # blobfuse2 uploads a file when it is closed: a log there shows nothing while it runs
        notes.append(
            f"stdout/stderr go to {plan.stdouterr_dir}, on blob container {stdouterr.share}, "
            "where a log shows nothing until the job closes it, so the logs cannot be "
            "streamed; set stdOutErrPathPrefix to an Azure File share"
        )
        stdouterr = None
    elif stdouterr is None:
        notes.append(
            f"stdout/stderr go to {plan.stdouterr_dir}, which is not on a file share, so the "
            "logs cannot be streamed; set stdOutErrPathPrefix to a mounted share"
        )
    outputs: dict[str, FileLocation] = {}
    for out in plan.output_dirs:
        loc = on_share(out.path)
        if loc is None:
            notes.append(f"output directory {out.id} is not on a file share; it cannot be listed")
        else:
            outputs[out.id] = loc
    return JobLayout(
        stdouterr=stdouterr,
        outputs=outputs,
        log_files=log_files(plan),
        primary_log=plan.processes[0].stderr_name,
    )


def log_files(plan: LaunchPlan) -> tuple[str, ...]:
    names: list[str] = []
    for proc in (*plan.preparation, *plan.processes):
        names += [proc.stdout_name, proc.stderr_name]
    return tuple(dict.fromkeys(names))
