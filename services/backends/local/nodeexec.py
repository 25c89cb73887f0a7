"""`node exec` on the local backend: one bash command line as a subprocess of its own session,
in the node's $AZ_BATCHAI_MOUNT_ROOT, with the host's plain environment (never the bot's), a
time limit, and the end of its output kept."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from services.backends.local.processes import HOST_ENV_KEEP, host_env
from services.models import NodeOutput

OUTPUT_KEEP = 64 * 1024  # bytes of a command's output kept (its end); the answer shows less
DRAIN_SECONDS = 1.0  # after the command exits, what its leftovers still write is read this long


async def run_command(
    command: str, *, node_id: str, cwd: Path, env: dict[str, str], timeout: float
) -> NodeOutput:
    """Run `command` with `bash -c` (the command line is the node's business, as on Batch AI,
    where it ran in the node's shell); stdout and stderr interleaved, as in a terminal. At the
    end, and at the time limit, the command's whole process group is killed."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        cwd=str(cwd),
        env={**host_env(HOST_ENV_KEEP), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own group: a kill reaches what it started
    )
    assert proc.stdout is not None
    kept = bytearray()
    total = 0

    async def pump() -> None:
        nonlocal total
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            total += len(chunk)
            kept.extend(chunk)
            del kept[:-OUTPUT_KEEP]

    reader = asyncio.ensure_future(pump())
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        await proc.wait()
        # A background child may hold the pipe open: read what it wrote, briefly, then stop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), DRAIN_SECONDS)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return NodeOutput(
        node_id=node_id,
        exit_code=None if timed_out else _exit_code(proc.returncode),
        output=bytes(kept).decode("utf-8", errors="replace"),
        truncated=total > len(kept),
        timed_out=timed_out,
        limit=f"the last {OUTPUT_KEEP // 1024} KB are kept" if total > len(kept) else "",
    )


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exit_code(code: int | None) -> int | None:
    """A shell's way: death by signal N is 128 + N."""
    if code is None:
        return None
    return 128 - code if code < 0 else code
