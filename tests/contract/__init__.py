"""The backend contract kit: a job script, job.json builders, polling helpers, backend harnesses."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.backends.links import LinkSigner
from services.backends.local import LocalBackend, LocalShare
from services.clusters.lifecycle import ClusterState
from services.core.errors import NotFound
from services.core.ports import ComputeBackend, FileShare, LaunchRequest, LaunchResult, RunStatus
from services.jobspec import JobSpec, load_job_spec
from services.models import Cluster, FileLocation, ShareMount

SHARE = "data"
MOUNT = "afs"
SCRIPT_PATH = "scripts/job.py"
SCHEMA = "https://raw.githubusercontent.com/Azure/BatchAI/master/schemas/2018-05-01/job.json"
TIMEOUT = 30.0

# The one program every contract job runs; the first argument picks what it does.
JOB_SCRIPT = r"""
import json, os, subprocess, sys, time

mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
if mode == "ok":
    print(json.dumps({"argv": sys.argv[1:], "task": os.environ.get("AZ_BATCHAI_TASK_INDEX"),
                      "env": dict(os.environ)}))
    out = os.environ.get("AZ_BATCHAI_OUTPUT_MODEL")
    if out:
        with open(os.path.join(out, "model.txt"), "w") as f:
            f.write("weights of task %s\n" % os.environ.get("AZ_BATCHAI_TASK_INDEX"))
    print("Epoch 1/1 - loss: 0.5", file=sys.stderr)
elif mode == "stream":
    # argv: stream LINES GATE: LINES lines on stdout, then wait for the file GATE to exist.
    for i in range(int(sys.argv[2])):
        print(f"line {i + 1}", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.05)
elif mode == "argv":
    print(json.dumps(sys.argv[2:]))
elif mode == "fail":
    print("failing on purpose", file=sys.stderr)
    sys.exit(int(sys.argv[2]))
elif mode == "sleep":
    # A child in the same process group: terminate must take it down too.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "child": child.pid}),
          flush=True)
    time.sleep(600)
elif mode == "rank-fail":
    if os.environ.get("RANK") == "1":
        print("rank 1 gives up", file=sys.stderr)
        sys.exit(5)
    print(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0)}), flush=True)
    time.sleep(600)
"""


def job_json(
    args: str = "ok",
    *,
    node_count: int = 1,
    process_count: int | None = None,
    preparation: str | None = None,
    wall_clock: str | None = None,
    interpreter: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    torch: dict[str, Any] = {
        "pythonScriptFilePath": f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}/{SCRIPT_PATH}",
        "commandLineArgs": args,
    }
    if process_count is not None:
        torch["processCount"] = process_count
    if interpreter is not None:
        torch["pythonInterpreterPath"] = interpreter
    props: dict[str, Any] = {
        "nodeCount": node_count,
        "stdOutErrPathPrefix": f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}",
        "outputDirectories": [
            {"id": "MODEL", "pathPrefix": f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}", "pathSuffix": "model"}
        ],
        "pyTorchSettings": torch,
    }
    if preparation is not None:
        props["jobPreparation"] = {"commandLine": preparation}
    if wall_clock is not None:
        props["constraints"] = {"maxWallClockTime": wall_clock}
    props.update(extra or {})
    return {"$schema": SCHEMA, "properties": props}


def job_spec(args: str = "ok", **kwargs: Any) -> JobSpec:
    return load_job_spec(json.dumps(job_json(args, **kwargs)))


def cluster(
    name: str = "c1", nodes: int = 2, mounts: tuple[ShareMount, ...] | None = None
) -> Cluster:
    return Cluster(
        name=name,
        resource_group="rg",
        workspace="ws",
        vm_size="Standard_NC4as_T4_v3",
        image="UbuntuLTS",
        vm_priority="dedicated",
        min_nodes=0,
        max_nodes=nodes,
        target_nodes=nodes,
        autoscale=False,
        state=ClusterState.STEADY,
        mounts=(ShareMount(SHARE, MOUNT),) if mounts is None else mounts,
    )


def launch_request(
    spec: JobSpec, c: Cluster, nodes: tuple[int, ...] = (0,), *, name: str = "job1"
) -> LaunchRequest:
    return LaunchRequest(
        job_id=uuid.uuid4().hex,
        job_name=name,
        experiment="exp",
        resource_group="rg",
        workspace="ws",
        cluster=c,
        spec=spec,
        nodes=nodes,
    )


async def wait_for(
    backend: ComputeBackend,
    job_id: str,
    phases: Collection[str] = ("exited",),
    *,
    timeout: float = TIMEOUT,
) -> RunStatus:
    """Poll the status until it is in `phases`; AssertionError with the last status on timeout."""
    end = time.monotonic() + timeout
    status = await backend.get_job_status(job_id)
    while status.phase not in phases:
        if time.monotonic() > end:
            raise AssertionError(f"job {job_id} still {status} after {timeout}s")
        await asyncio.sleep(0.05)
        status = await backend.get_job_status(job_id)
    return status


async def read_text(share: FileShare, loc: FileLocation) -> str:
    entry = await share.stat(loc)
    if entry is None:
        return ""
    data = b""
    while chunk := await share.read_range(loc, len(data), 1 << 20):
        data += chunk
    return data.decode()


async def wait_for_text(
    share: FileShare, loc: FileLocation, needle: str, *, timeout: float = TIMEOUT
) -> str:
    end = time.monotonic() + timeout
    while needle not in (text := await read_text(share, loc)):
        if time.monotonic() > end:
            raise AssertionError(f"{loc} never contained {needle!r}; it has {text!r}")
        await asyncio.sleep(0.05)
    return text


def log_loc(result: LaunchResult, name: str) -> FileLocation:
    assert result.layout.stdouterr is not None, result.notes
    return result.layout.stdouterr.child(name)


@dataclass
class BackendKit:
    """One backend under test, with its share and what the contract needs to drive it."""

    compute: ComputeBackend
    share: FileShare
    put_file: Callable[[str, bytes], Awaitable[None]]  # a file on SHARE
    restart: Callable[[], ComputeBackend]  # a second instance over the same state
    started: list[str] = field(default_factory=list)

    async def start(self, request: LaunchRequest) -> LaunchResult:
        self.started.append(request.job_id)
        return await self.compute.start_job(request)

    async def cleanup(self) -> None:
        """Leave no job running behind a test."""
        for job_id in self.started:
            try:
                await self.compute.terminate_job(job_id)
                await wait_for(self.compute, job_id, ("exited", "lost"))
            except NotFound:
                continue
        await self.compute.aclose()
        await self.share.aclose()


def local_kit(root: Path, *, grace_seconds: float = 0.5) -> BackendKit:
    signer = LinkSigner(b"contract-secret", "http://127.0.0.1:8080/files")
    share = LocalShare(root, signer)

    def make() -> LocalBackend:
        return LocalBackend(
            root, python=sys.executable, grace_seconds=grace_seconds, heartbeat_seconds=0.5
        )

    async def put_file(path: str, data: bytes) -> None:
        target = share.create_share(SHARE) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    return BackendKit(compute=make(), share=share, put_file=put_file, restart=make)


async def azure_kit(tmp_path: Path, stack: AsyncExitStack) -> BackendKit:
    """The azure backend over the fake ARM and Files servers (see tests/azure/rig.py)."""
    from tests.azure.rig import azure_rig

    rig = await stack.enter_async_context(azure_rig(tmp_path))
    share = rig.share()

    async def put_file(path: str, data: bytes) -> None:
        target = rig.files.create_share(SHARE) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    return BackendKit(
        compute=rig.backend(share),
        share=share,
        put_file=put_file,
        restart=lambda: rig.backend(share),
    )
