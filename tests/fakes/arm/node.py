"""The simulated node side of the fake ARM server: bash scripts in their own sessions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tests.fakes.arm.clock import now

OUTPUT_LIMIT = 4096
SHIM_DIR = Path(__file__).resolve().parents[1] / "arm_node"


@dataclass
class Script:
    """One bash script on a node (a run command's or an extension's execution)."""

    state: str = "Pending"  # Pending | Running | Succeeded | Failed | TimedOut | Canceled
    exit_code: int | None = None
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    start_time: datetime | None = None
    end_time: datetime | None = None
    message: str | None = None
    pgid: int | None = None
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.done.is_set()


def tail(buf: bytearray | bytes) -> str:
    return bytes(buf[-OUTPUT_LIMIT:]).decode("utf-8", "replace")


def node_environment(node_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a script on a simulated node."""
    node = str(node_dir)
    return {
        "PATH": f"{node}/bin:{SHIM_DIR}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
        "HOME": node,
        "TMPDIR": node,
        "LANG": "C.UTF-8",
        "USER": "root",
        "LOGNAME": "root",
        "FAKE_NODE_DIR": node,
        "BATCHAI_NODE_ROOT": node,
        **extra,
    }


async def run_script(
    node_dir: Path,
    script: Script,
    text: str,
    *,
    where: Path,
    env: Mapping[str, str],
    args: list[str],
    timeout: float | None,
) -> None:
    """Run `text` as `bash <file>` in `node_dir`; fill `script` as the agent reports it."""
    if script.state == "Canceled":
        script.done.set()
        return
    where.mkdir(parents=True, exist_ok=True)
    path = where / "script.sh"
    path.write_text(text)
    script.start_time = now()
    script.state = "Running"
    try:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(path),
            *args,
            cwd=node_dir,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as err:
        script.state, script.exit_code, script.end_time = "Failed", 1, now()
        script.err.extend(str(err).encode())
        script.started.set()
        script.done.set()
        return
    script.pgid = proc.pid
    script.started.set()
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        asyncio.ensure_future(pump(proc.stdout, script.out)),
        asyncio.ensure_future(pump(proc.stderr, script.err)),
    ]
    final = "Canceled"
    code = -int(signal.SIGKILL)
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
        final = "Succeeded" if code == 0 else "Failed"
    except TimeoutError:
        killpg(proc.pid)
        code = await proc.wait()
        final = "TimedOut"
    except asyncio.CancelledError:
        killpg(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        code = await asyncio.shield(proc.wait())
        raise
    finally:
        # Background children that hold the pipes open do not hold the agent up.
        _, pending = await asyncio.wait(pumps, timeout=0.5)
        for p in pending:
            p.cancel()
        # The end is reported all at once: state, exit code, end time.
        script.exit_code = code if code >= 0 else 128 - code
        script.end_time = now()
        script.state = final
        script.done.set()


async def pump(stream: asyncio.StreamReader, buf: bytearray) -> None:
    while chunk := await stream.read(65536):
        buf.extend(chunk)
        if len(buf) > 4 * OUTPUT_LIMIT:
            del buf[:-OUTPUT_LIMIT]


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (a unit's supervisor is a child subreaper, so
    this is the unit's whole "cgroup")."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_unit(pidfile: Path) -> None:
    """SIGKILL a systemd-run unit: everything below its supervisor, then the supervisor (first
    the processes, so none is orphaned out of reach). Only if the pid is still the unit's."""
    try:
        supervisor = int(pidfile.read_text())
        cmdline = Path(f"/proc/{supervisor}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if str(pidfile).encode() not in cmdline:
        return
    for _ in range(3):  # a process may fork while we kill
        pids = descendants(supervisor)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    killpg(supervisor)


def killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_script(script: Script, *, leftovers: bool = False) -> None:
    """Kill a running script (and, with `leftovers`, what a finished one left in its group)."""
    if script.pgid is not None and (leftovers or not script.finished):
        killpg(script.pgid)
    if script.finished:
        return
    if script.task is not None and not script.task.done():
        script.task.cancel()
    if script.state == "Pending":
        script.state = "Canceled"
        script.done.set()
