"""The node runners as processes on this machine: spawn them detached, read their status files,
tell a live runner from a recycled pid, signal them, and end the nodes that never started.

A job's control directory is `<root>/jobs/<job_id>/run/`: `node-<i>.json` (the runner's spec),
`node-<i>/` (its status files), `terminate` and `deadline` (see `noderun.specs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from services.backends.local.paths import read, read_float
from services.backends.noderun import runner as noderunner
from services.backends.noderun.launch import NodeRun
from services.backends.noderun.specs import TERMINATE
from services.core.errors import BackendError

# Taken from the bot's environment for a job; nothing else is (the bot holds tokens and keys).
HOST_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
# Only the docker CLI gets these, never the container.
DOCKER_ENV_KEEP = ("DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH")
_PROJECT_ROOT = Path(noderunner.__file__).resolve().parents[3]
RUNNER_MODULE = "services.backends.noderun.runner"


def host_env(keep: Sequence[str]) -> dict[str, str]:
    return {k: os.environ[k] for k in keep if k in os.environ}


def docker_socket_reachable() -> bool:
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


async def docker_login(
    docker: str, *, server: str | None, username: str, password: str, config_dir: Path
) -> str | None:
    """`docker login --password-stdin` into `config_dir` (the job's own DOCKER_CONFIG), fed from
    a 0600 file removed right after; None on success, else docker's last line of complaint."""
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = config_dir / "registry-password"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(password)
        env = {**host_env(("PATH", "HOME", *DOCKER_ENV_KEEP)), "DOCKER_CONFIG": str(config_dir)}
        argv = [docker, "login", "--username", username, "--password-stdin"]
        with secret.open("rb") as stdin:
            proc = await asyncio.create_subprocess_exec(
                *argv, *([server] if server else []),
                stdin=stdin, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                env=env, cwd=config_dir,
            )  # fmt: skip
            _, err = await proc.communicate()
    finally:
        secret.unlink(missing_ok=True)
    if proc.returncode == 0:
        return None
    lines = err.decode(errors="replace").strip().splitlines()
    return (lines[-1] if lines else f"exit {proc.returncode}")[:300]


def pid_alive(pid: int, job_id: str) -> bool:
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


def node_run(run_dir: Path, index: int) -> NodeRun:
    """What node `index`'s status directory says, with a liveness check of its runner's pid."""
    job_id = run_dir.parent.name
    sdir = run_dir / f"node-{index}"
    code_text = read(sdir / noderunner.EXIT_CODE)
    pid_text = read(sdir / noderunner.PID)
    alive = False
    if code_text is None and pid_text and pid_text.isdigit():
        alive = pid_alive(int(pid_text), job_id)
        if not alive:  # it may have written its exit code and gone between the two reads
            code_text = read(sdir / noderunner.EXIT_CODE)
    return NodeRun(
        index=index,
        alive=alive,
        pending=pid_text is None and code_text is None,
        exit_code=None if code_text is None else int(code_text),
        reason=read(sdir / noderunner.REASON) or "",
        phase=read(sdir / noderunner.PHASE),
        started=read_float(sdir / noderunner.STARTED),
        ended=read_float(sdir / noderunner.ENDED),
    )


async def spawn_missing(python: str, run_dir: Path, count: int) -> None:
    """Start the runner of every node that has none yet; a failed start stops the others."""
    todo = [
        i
        for i in range(count)
        if not (run_dir / f"node-{i}" / noderunner.PID).exists()
        and not (run_dir / f"node-{i}" / noderunner.EXIT_CODE).exists()
    ]
    if (run_dir / TERMINATE).exists():
        end_unstarted(run_dir, todo)  # terminated before it got going: start nothing
        return
    codes = await asyncio.gather(*(spawn(python, run_dir, i) for i in todo))
    failed = [i for i, code in zip(todo, codes, strict=True) if code != 0]
    if failed:
        await signal_runners(run_dir, count, signal.SIGTERM)
        raise BackendError(f"could not start the node runner for node(s) {failed}")


async def spawn(python: str, run_dir: Path, index: int) -> int:
    env = host_env(HOST_ENV_KEEP)
    env["PYTHONPATH"] = str(_PROJECT_ROOT)
    env["PYTHONSAFEPATH"] = "1"  # the job's working dir must not shadow our modules
    proc = await asyncio.create_subprocess_exec(
        python,
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


async def signal_runners(run_dir: Path, count: int, sig: signal.Signals) -> None:
    for i in range(count):
        run = node_run(run_dir, i)
        pid = read(run_dir / f"node-{i}" / noderunner.PID)
        if run.alive and pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), sig)


def end_unstarted(run_dir: Path, nodes: Sequence[int]) -> None:
    """End nodes whose runner never started, as the runner would have (exit_code last)."""
    for i in nodes:
        status = run_dir / f"node-{i}"
        status.mkdir(parents=True, exist_ok=True)
        end = noderunner.end_files(noderunner.EXIT_TERMINATED, "terminated by user", time.time())
        for name, text in end:
            noderunner.write_atomic(status / name, text)


def kill_orphans(run_dir: Path, count: int) -> None:
    """SIGKILL what the dead runners of a job left running: the process groups they recorded
    that still belong to this launch (their environment names its directory), as the node's
    loss would have taken them. A live runner's groups are its own to stop."""
    marker = f"/jobs/{run_dir.parent.name}/".encode()
    for i in range(count):
        sdir = run_dir / f"node-{i}"
        if node_run(run_dir, i).alive:
            continue
        for line in (read(sdir / noderunner.PGIDS) or "").split():
            if line.isdigit() and _of_launch(int(line), marker):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(line), signal.SIGKILL)


def _of_launch(pgid: int, marker: bytes) -> bool:
    """Whether `pgid` still leads a group of this launch, not a recycled pid of another."""
    try:
        return marker in Path(f"/proc/{pgid}/environ").read_bytes()
    except OSError:
        return False
