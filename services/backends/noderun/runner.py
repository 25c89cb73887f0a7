"""Per-node job runner: `python -m services.backends.noderun.runner SPEC.json` (a detached daemon).

With `run_as` in its spec the runner (root) starts the job's processes as that uid/gid with no
supplementary groups, and creates the job's share directories and opens its log files as that
user too, so a symbolic link a job planted on a share cannot make root write elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

EXIT_LAUNCH_ERROR = 127
EXIT_WALL_CLOCK = 124  # what timeout(1) reports
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports
EXIT_RUNNER_ERROR = 70  # EX_SOFTWARE: the runner itself broke
POLL_SECONDS = 0.25  # a child's exit is seen within this; 300 idle runners stay cheap
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
PEER_POLL_SECONDS = 0.25

# Status files the backend reads; `exit_code` is written last and marks the end.
PID, PHASE, HEARTBEAT, EXIT_CODE, REASON, STARTED, ENDED = (
    "pid",
    "phase",
    "heartbeat",
    "exit_code",
    "reason",
    "started_at",
    "ended_at",
)
# The process groups the runner started, one per line: a node runner killed from outside leaves
# them behind, and the backend ends them as a lost node would (local backend).
PGIDS = "pgids"
# GPU use while the job runs, beside the heartbeat: one JSON object (noderun/gpu.py reads it).
GPU = "gpu"
GPU_QUERY = (
    "nvidia-smi",
    "--query-gpu=utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
)
GPU_QUERY_TIMEOUT = 10.0  # a hung driver costs one sample, never the job


# The log journal (`<status_dir>/logs.journal`): what the job wrote to each of its logs, copied by
# the runner into ONE append-only file, so the bot learns every log's news from one ranged read
# a round instead of one per log. Records: `D <name> <offset> <length> <size>\n` followed by
# `length` bytes of log `name` from `offset` (`size`: the log's size then), and `H <epoch>\n`
# every heartbeat while nothing was written. The logs stay the truth: a record that starts past
# what the bot has read (a gap) makes it read the log itself.
JOURNAL = "logs.journal"
JOURNAL_CHUNK = 1 << 20  # bytes of one log copied per pass; further behind, the copy skips ahead


def journal_data(name: str, offset: int, data: bytes, size: int) -> bytes:
    """One data record of the log journal."""
    return f"D {quote(name, safe='')} {offset} {len(data)} {size}\n".encode() + data


def journal_beat(at: float) -> bytes:
    return f"H {at:.3f}\n".encode()


class _Journal:
    """Copies the new bytes of the job's logs into the journal every pass (see JOURNAL)."""

    def __init__(self, path: Path, heartbeat_seconds: float) -> None:
        self._out = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._logs: dict[str, list[int]] = {}  # name -> [read fd, bytes copied up to]
        self._every = heartbeat_seconds
        self._last = time.monotonic()
        self._out.write(journal_beat(time.time()))
        self._out.flush()

    def watch(self, name: str, path: Path) -> None:
        """Follow log `name` from its current end (an earlier run's part is the bot's to read).
        The read descriptor is opened while the file is surely ours, before the job runs, so a
        link the job puts in its place later is never followed."""
        if name in self._logs:
            return
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._logs[name] = [fd, os.fstat(fd).st_size]

    def pump(self) -> None:
        wrote = False
        for name, entry in self._logs.items():
            fd, done = entry
            size = os.fstat(fd).st_size
            if size < done:  # truncated: say so with an empty record at its new size
                self._out.write(journal_data(name, size, b"", size))
                entry[1], wrote = size, True
                continue
            if size == done:
                continue
            start = max(done, size - JOURNAL_CHUNK)
            data = os.pread(fd, size - start, start)
            self._out.write(journal_data(name, start, data, size))
            entry[1], wrote = start + len(data), True
        now = time.monotonic()
        if not wrote and now - self._last >= self._every:
            self._out.write(journal_beat(time.time()))
            wrote = True
        if wrote:
            self._last = now
            self._out.flush()
            os.fsync(self._out.fileno())  # on a share, visible to the bot's next read

    def close(self) -> None:
        for fd, _ in self._logs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._logs.clear()
        with contextlib.suppress(OSError):
            self._out.close()


def end_files(exit_code: int, reason: str, ended: float) -> tuple[tuple[str, str], ...]:
    """A node's end as (status file, text) in the order they are written: `exit_code` last,
    since it marks the end. The runner writes it, and so does a backend for a node whose runner
    never started."""
    return (
        (ENDED, f"{ended:.3f}\n"),
        (REASON, reason + "\n" if reason else ""),
        (EXIT_CODE, f"{exit_code}\n"),
    )


@dataclass(frozen=True)
class ProcessSpec:
    """One process to run: a literal argv (never a shell), its environment and log file names."""

    rank: int
    role: str
    argv: tuple[str, ...]
    env: dict[str, str]
    stdout: str
    stderr: str
    cwd: str | None = None
    wrapper: tuple[str, ...] = ()  # e.g. a `docker run ...` prefix; argv follows it
    # Run when the process must be stopped: killing the docker CLI does not stop its container.
    stop_argv: tuple[str, ...] = ()
    # False: the wrapper itself needs root (the docker CLI) and drops privileges (`--user`).
    drop: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "role": self.role,
            "argv": list(self.argv),
            "env": self.env,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "cwd": self.cwd,
            "wrapper": list(self.wrapper),
            "stop_argv": list(self.stop_argv),
            "drop": self.drop,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProcessSpec:
        return cls(
            rank=int(raw["rank"]),
            role=str(raw["role"]),
            argv=tuple(str(a) for a in raw["argv"]),
            env={str(k): str(v) for k, v in raw["env"].items()},
            stdout=str(raw["stdout"]),
            stderr=str(raw["stderr"]),
            cwd=None if raw.get("cwd") is None else str(raw["cwd"]),
            wrapper=tuple(str(a) for a in raw.get("wrapper", ())),
            stop_argv=tuple(str(a) for a in raw.get("stop_argv", ())),
            drop=bool(raw.get("drop", True)),
        )


@dataclass(frozen=True)
class RunnerSpec:
    """What one node runs for one job; the backend writes it as `<run_dir>/node-<i>.json`."""

    job_id: str
    node_index: int
    status_dir: str  # pid, phase, heartbeat, exit_code, reason
    stdouterr_dir: str
    deadline: float  # epoch seconds
    max_wall_clock: str  # as the user wrote it, for the reason text
    processes: tuple[ProcessSpec, ...]
    preparation: ProcessSpec | None = None
    grace_seconds: float = 10.0
    heartbeat_seconds: float = 5.0
    gpu_seconds: float = 30.0  # how often GPU use is sampled while the job runs; 0: never
    peers: tuple[str, ...] = ()  # status dirs of the job's other nodes (gang semantics)
    # Its existence means "terminate": covers a runner started after the SIGTERMs went out.
    terminate_file: str | None = None
    # When present, holds a later deadline (epoch seconds): an approved extension.
    deadline_file: str | None = None
    run_as: tuple[int, int] | None = None  # (uid, gid) of the job's processes; None: ours
    job_dirs: tuple[str, ...] = ()  # created as `run_as` before anything runs (logs, outputs)
    # Batch AI's `execution-<node>.log` in stdouterr: what was started on this node, when, and
    # how it ended. None: the job's API version had none (2017-09-01-preview).
    execution_log: str | None = None
    job_name: str = ""
    cluster: str = ""
    node_id: str = ""
    node_count: int = 1
    job_nodes: tuple[str, ...] = ()  # the ids of all the job's nodes, in rank order
    journal: bool = False  # keep `<status_dir>/logs.journal` (see JOURNAL)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "node_index": self.node_index,
            "status_dir": self.status_dir,
            "stdouterr_dir": self.stdouterr_dir,
            "deadline": self.deadline,
            "max_wall_clock": self.max_wall_clock,
            "grace_seconds": self.grace_seconds,
            "heartbeat_seconds": self.heartbeat_seconds,
            "gpu_seconds": self.gpu_seconds,
            "peers": list(self.peers),
            "terminate_file": self.terminate_file,
            "deadline_file": self.deadline_file,
            "run_as": None if self.run_as is None else list(self.run_as),
            "job_dirs": list(self.job_dirs),
            "execution_log": self.execution_log,
            "job_name": self.job_name,
            "cluster": self.cluster,
            "node_id": self.node_id,
            "node_count": self.node_count,
            "job_nodes": list(self.job_nodes),
            "journal": self.journal,
            "preparation": None if self.preparation is None else self.preparation.to_json(),
            "processes": [p.to_json() for p in self.processes],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunnerSpec:
        prep = raw.get("preparation")
        run_as = raw.get("run_as")
        return cls(
            job_id=str(raw["job_id"]),
            node_index=int(raw["node_index"]),
            status_dir=str(raw["status_dir"]),
            stdouterr_dir=str(raw["stdouterr_dir"]),
            deadline=float(raw["deadline"]),
            max_wall_clock=str(raw["max_wall_clock"]),
            grace_seconds=float(raw.get("grace_seconds", 10.0)),
            heartbeat_seconds=float(raw.get("heartbeat_seconds", 5.0)),
            gpu_seconds=float(raw.get("gpu_seconds", 30.0)),
            peers=tuple(str(p) for p in raw.get("peers", ())),
            terminate_file=raw.get("terminate_file"),
            deadline_file=raw.get("deadline_file"),
            run_as=None if run_as is None else (int(run_as[0]), int(run_as[1])),
            job_dirs=tuple(str(d) for d in raw.get("job_dirs", ())),
            execution_log=None if raw.get("execution_log") is None else str(raw["execution_log"]),
            job_name=str(raw.get("job_name", "")),
            cluster=str(raw.get("cluster", "")),
            node_id=str(raw.get("node_id", "")),
            node_count=int(raw.get("node_count", 1)),
            job_nodes=tuple(str(n) for n in raw.get("job_nodes", ())),
            journal=bool(raw.get("journal", False)),
            preparation=None if prep is None else ProcessSpec.from_json(prep),
            processes=tuple(ProcessSpec.from_json(p) for p in raw["processes"]),
        )


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Readers see the old content or the new one, never half a file.

    `mode` applies from creation on, so a private file is never readable by others, even briefly.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def acting_as(run_as: tuple[int, int] | None) -> Iterator[None]:
    """File access as `run_as` (effective ids only, no supplementary groups), then back."""
    if run_as is None:
        yield
        return
    uid, gid = run_as
    groups = os.getgroups()
    os.setgroups([gid])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def returncode_to_exit(code: int) -> int:
    """Popen reports death by signal N as -N; a shell (and Batch AI) says 128 + N."""
    return 128 - code if code < 0 else code


@dataclass
class _Running:
    spec: ProcessSpec
    popen: subprocess.Popen[bytes]
    exit_code: int | None = None


@dataclass
class _Outcome:
    exit_code: int = 0
    reason: str = ""  # names the failing rank when a multi-process job fails


@dataclass
class NodeRunner:
    spec: RunnerSpec
    terminate_requested: bool = False
    _last_beat: float = 0.0
    _last_peer_check: float = 0.0
    _children: list[_Running] = field(default_factory=list)
    _dirs_made: bool = False
    _last_gpu: float | None = None  # None: not sampled yet; GPUs absent: sampling stops
    _gpu_samples: int = 0
    _gpu_util_sum: float = 0.0
    _sampling: bool = True
    _journal: _Journal | None = None

    # ---------------------------------------------------------------- status files

    def _status(self, name: str) -> Path:
        return Path(self.spec.status_dir) / name

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_beat >= self.spec.heartbeat_seconds:
            self._last_beat = now
            self._status(HEARTBEAT).touch()

    # ---------------------------------------------------------------- execution log

    def _note(self, text: str) -> None:
        """One line of the node's execution log: UTC time and what the runner did or saw.

        Only the runner's own words and the names the bot gave (job, cluster, node, ranks): never
        an argv, a variable or a byte the job wrote, so it holds no secret and nothing of the
        job's that a reader could take for an instruction. Appended (a re-run node adds to it),
        as the job's user like the logs beside it; a failure to write it never stops the job."""
        name = self.spec.execution_log
        if not name or not self._dirs_made:
            return
        now = time.time()
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        )
        line = f"{stamp} {_printable(text)}\n".encode()
        with contextlib.suppress(OSError), acting_as(self.spec.run_as):
            fd = os.open(
                Path(self.spec.stdouterr_dir) / name,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                0o644,
            )
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def _exited(self, r: _Running) -> None:
        self._note(f"{_what(r.spec)} exited with code {r.exit_code}")

    def _sample_gpus(self) -> None:
        """Every `gpu_seconds` while the job runs: what nvidia-smi says of each GPU, with the
        run's sample count and utilisation sum (the receipt's average) -> the `gpu` file."""
        now = time.monotonic()
        if not self._sampling or self.spec.gpu_seconds <= 0:
            return
        if self._last_gpu is not None and now - self._last_gpu < self.spec.gpu_seconds:
            return
        self._last_gpu = now
        try:
            done = subprocess.run(
                GPU_QUERY,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=GPU_QUERY_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            self._sampling = False  # no driver on this node: nothing to sample, ever
            return
        except (OSError, subprocess.SubprocessError):
            return
        gpus = []
        for line in done.stdout.decode(errors="replace").splitlines():
            try:
                util, used, total = (float(v) for v in line.split(","))
            except ValueError:
                continue  # "[N/A]" or a warning line
            gpus.append([util, used, total])
        if done.returncode != 0 or not gpus:
            return
        self._gpu_samples += 1
        self._gpu_util_sum += sum(g[0] for g in gpus) / len(gpus)
        record = {
            "at": round(time.time(), 3),
            "gpus": gpus,
            "samples": self._gpu_samples,
            "util_sum": round(self._gpu_util_sum, 3),
        }
        with contextlib.suppress(OSError):
            write_atomic(self._status(GPU), json.dumps(record) + "\n")

    def _open_journal(self) -> None:
        if self.spec.journal:
            try:
                self._journal = _Journal(self._status(JOURNAL), self.spec.heartbeat_seconds)
            except OSError:  # the bot then reads the logs themselves
                self._journal = None

    def _pump(self) -> None:
        if self._journal is not None:
            try:
                self._journal.pump()
            except OSError:  # a journal that cannot be kept stops; the logs are still there
                self._journal.close()
                self._journal = None

    # ---------------------------------------------------------------- processes

    def _open_logs(self, proc: ProcessSpec) -> tuple[IO[bytes], IO[bytes]]:
        out_dir = Path(self.spec.stdouterr_dir)
        # Appended, like Batch AI: a re-run node adds to its files rather than wiping them.
        with acting_as(self.spec.run_as):
            out = open(out_dir / proc.stdout, "ab")  # noqa: SIM115 - closed by the caller
            err = out if proc.stderr == proc.stdout else open(out_dir / proc.stderr, "ab")  # noqa: SIM115
            if self._journal is not None:
                try:
                    for name in dict.fromkeys((proc.stdout, proc.stderr)):
                        self._journal.watch(name, out_dir / name)
                except OSError:
                    self._journal.close()
                    self._journal = None
        return out, err

    def _identity(self, proc: ProcessSpec) -> dict[str, Any]:
        """Popen's arguments that start `proc` as the job's user."""
        if self.spec.run_as is None or not proc.drop:
            return {}
        uid, gid = self.spec.run_as
        return {"user": uid, "group": gid, "extra_groups": []}

    def make_job_dirs(self) -> None:
        """Group-writable, so the next job (another uid, the same group) can add its own below."""
        old = os.umask(0o007)
        try:
            with acting_as(self.spec.run_as):
                for d in self.spec.job_dirs:
                    Path(d).mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)

    def _launch(self, proc: ProcessSpec) -> _Running | int:
        """The started process, or the exit code of a launch error (one line in its stderr)."""
        out, err = self._open_logs(proc)
        try:
            popen = subprocess.Popen(
                [*proc.wrapper, *proc.argv],
                env=proc.env,
                cwd=proc.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, so a kill reaches its children
                close_fds=True,
                **self._identity(proc),
            )
        except OSError as exc:
            program = (proc.wrapper or proc.argv or ("",))[0]
            err.write(f"batchai: cannot start {program!r}: {exc.strerror or exc}\n".encode())
            self._note(f"{_what(proc)} could not start: {exc.strerror or type(exc).__name__}")
            return EXIT_LAUNCH_ERROR if not isinstance(exc, PermissionError) else 126
        finally:
            out.close()
            if err is not out:
                err.close()
        running = _Running(proc, popen)
        self._children.append(running)
        self._note(f"{_what(proc)} started, pid {popen.pid}")
        with contextlib.suppress(OSError), open(self._status(PGIDS), "a") as f:
            f.write(f"{popen.pid}\n")
        return running

    def _signal_groups(self, procs: Iterable[_Running], sig: signal.Signals) -> None:
        for r in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(r.popen.pid, sig)

    def _stop(self, procs: Sequence[_Running]) -> None:
        """SIGTERM the groups, wait the grace period, SIGKILL what is left, reap."""
        live = [r for r in procs if r.popen.poll() is None]
        self._signal_groups(live, signal.SIGTERM)
        for r in live:
            if r.spec.stop_argv:
                self._run_stop_command(r.spec)
        end = time.monotonic() + self.spec.grace_seconds
        while any(r.popen.poll() is None for r in live) and time.monotonic() < end:
            self._reap_orphans()
            time.sleep(POLL_SECONDS)
        # SIGKILL the whole group even when the leader has exited: its children may linger.
        self._signal_groups(procs, signal.SIGKILL)
        for r in procs:
            code = r.popen.wait()
            if r.exit_code is None:
                r.exit_code = returncode_to_exit(code)
                self._exited(r)

    def _run_stop_command(self, proc: ProcessSpec) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                list(proc.stop_argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=max(self.spec.grace_seconds, 1.0) + 5.0,
                check=False,
            )

    def _failed_peer(self) -> str | None:
        """The status dir name of another node of this job that ended with a failure."""
        now = time.monotonic()
        if now - self._last_peer_check < PEER_POLL_SECONDS:
            return None
        self._last_peer_check = now
        if self.spec.terminate_file and os.path.exists(self.spec.terminate_file):
            self.terminate_requested = True
        for peer in self.spec.peers:
            try:
                code = int((Path(peer) / EXIT_CODE).read_text().strip() or "0")
            except (FileNotFoundError, ValueError):
                continue
            if code != 0:
                return Path(peer).name
        return None

    def _deadline(self) -> float:
        """The spec's deadline, or the later one an extension wrote since."""
        if self.spec.deadline_file:
            try:
                with open(self.spec.deadline_file) as f:
                    return float(f.read().strip())
            except (OSError, ValueError):
                pass
        return self.spec.deadline

    def _wait(self, procs: list[_Running], *, sample: bool = False) -> _Outcome | None:
        """Wait for all to end. A non-None outcome means the run was cut short (stop them).
        With `sample` (the job's own processes) GPU use is sampled meanwhile."""
        while True:
            self._beat()
            if sample:
                self._sample_gpus()
            self._pump()
            if self.terminate_requested:
                return _Outcome(EXIT_TERMINATED, "terminated by user")
            peer = self._failed_peer()
            if peer is not None:
                # Gang semantics across nodes: a failed node fails the job, the rest stop.
                return _Outcome(EXIT_TERMINATED, f"stopped because {peer} failed")
            deadline = self._deadline()
            if time.time() >= deadline:
                limit = self.spec.max_wall_clock if deadline == self.spec.deadline else "(extended)"
                return _Outcome(EXIT_WALL_CLOCK, f"max wall clock time {limit} exceeded")
            pending = False
            for r in procs:
                if r.exit_code is not None:
                    continue
                code = r.popen.poll()
                if code is None:
                    pending = True
                    continue
                r.exit_code = returncode_to_exit(code)
                self._exited(r)
                if r.exit_code != 0 and len(procs) > 1:
                    # Gang semantics: one failed rank fails the job; do not let the rest hang.
                    return _Outcome(
                        r.exit_code,
                        f"rank {r.spec.rank} ({r.spec.role}) exited with code {r.exit_code}",
                    )
            if not pending:
                return None
            self._reap_orphans()
            time.sleep(POLL_SECONDS)

    # ---------------------------------------------------------------- the run

    def _prepare(self) -> _Outcome | None:
        prep = self.spec.preparation
        if prep is None:
            return None
        write_atomic(self._status(PHASE), "prep")
        started = self._launch(prep)
        if isinstance(started, int):
            code = started
        else:
            cut = self._wait([started])
            if cut is not None:
                self._stop([started])
                return cut
            code = started.exit_code or 0
        if code != 0:
            node = self.spec.node_index
            return _Outcome(code, f"job preparation failed on node {node} (exit {code})")
        return None

    def run(self) -> _Outcome:
        self._beat(force=True)
        self._open_journal()
        if self.spec.terminate_file and os.path.exists(self.spec.terminate_file):
            return _Outcome(EXIT_TERMINATED, "terminated by user")
        try:
            self.make_job_dirs()
        except OSError as exc:
            return _Outcome(EXIT_LAUNCH_ERROR, f"cannot create the job's directories: {exc}")
        self._dirs_made = True
        spec = self.spec
        self._note(
            f"job {spec.job_name} (id {spec.job_id}) on cluster {spec.cluster}, node "
            f"{spec.node_id} ({spec.node_index + 1} of {spec.node_count}): node runner started, "
            f"pid {os.getpid()}, {len(spec.processes)} process(es) to run"
        )
        if spec.node_count > 1:
            self._note(f"the job's nodes: {', '.join(spec.job_nodes)}")
        outcome = self._prepare()
        if outcome is not None:
            return outcome
        write_atomic(self._status(PHASE), "running")
        procs: list[_Running] = []
        for proc in self.spec.processes:
            if self.terminate_requested:
                break
            started = self._launch(proc)
            if isinstance(started, int):
                self._stop(procs)
                return _Outcome(started, f"rank {proc.rank} ({proc.role}) could not start")
            procs.append(started)
        cut = self._wait(procs, sample=True)
        if cut is not None:
            self._stop(procs)
            return cut
        failed = next((r for r in procs if r.exit_code), None)
        if failed is None:
            return _Outcome(0, "")
        code = failed.exit_code or 0
        if len(self.spec.processes) == 1 and not self.spec.peers:
            return _Outcome(code, "")  # a plain exit of a one-process job needs no story
        return _Outcome(
            code,
            f"rank {failed.spec.rank} ({failed.spec.role}) exited with code {code}",
        )

    def finish(self, outcome: _Outcome) -> None:
        # Stragglers (a daemon a job left behind) die with the job, as on a Batch AI node.
        self._kill_descendants()
        why = f" ({outcome.reason})" if outcome.reason else ""
        self._note(f"job ended on this node: exit code {outcome.exit_code}{why}")
        self._pump()  # the last lines, before exit_code says the logs are complete
        if self._journal is not None:
            self._journal.close()
        for name, text in end_files(outcome.exit_code, outcome.reason, time.time()):
            write_atomic(self._status(name), text)

    # ---------------------------------------------------------------- reaping

    def _reap_orphans(self) -> None:
        """Reap exited descendants that were re-parented to us (we are a child subreaper).

        Our own Popen children are left to Popen, which must see their exit status.
        """
        ours = {r.popen.pid: r for r in self._children}
        for _ in range(1000):  # bounded: never spin if the kernel keeps answering the same pid
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            if info.si_pid in ours:
                if ours.pop(info.si_pid).popen.poll() is None:
                    return
            else:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(info.si_pid, os.WNOHANG)

    def _kill_descendants(self) -> None:
        """SIGKILL every process group we started and every orphan re-parented to us, then reap,
        so nothing of the job outlives its exit_code."""
        self._signal_groups(self._children, signal.SIGKILL)
        for r in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.popen.wait(timeout=2.0)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            kids = _children_of(os.getpid())
            for pid in kids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self._reap_orphans()
            if not kids:
                return
            time.sleep(0.02)


def _what(proc: ProcessSpec) -> str:
    if proc.role == "prep":
        return "job preparation"
    return f"rank {proc.rank}" if proc.role == "rank" else f"rank {proc.rank} ({proc.role})"


def _printable(text: str, limit: int = 500) -> str:
    """One line of printable characters: names come from the bot, but a log line stays a line."""
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def _children_of(parent: int) -> list[int]:
    """Pids whose parent is `parent` (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(parent) and fields[0] != "Z":
            found.append(int(entry.parent.name))
    return found


def _become_subreaper() -> None:
    """Orphans of the job re-parent to us (not to init), so we can reap and kill them."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _install_handlers(runner: NodeRunner) -> None:
    def on_term(signum: int, frame: object) -> None:
        runner.terminate_requested = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _serve(runner: NodeRunner) -> int:
    """Run the node's work and always leave an exit_code behind."""
    outcome = _Outcome(EXIT_RUNNER_ERROR, "node runner failed")
    try:
        outcome = runner.run()
    except BaseException as exc:  # whatever happens, an exit_code gets written
        outcome = _Outcome(EXIT_RUNNER_ERROR, f"node runner failed: {exc!r}")
        with contextlib.suppress(BaseException):
            runner._stop(runner._children)
    finally:
        runner.finish(outcome)
    return 0


def _start(runner: NodeRunner) -> None:
    """Handlers first, then the pid: a SIGTERM sent as soon as the pid is known is honoured."""
    _install_handlers(runner)
    _become_subreaper()
    status_dir = Path(runner.spec.status_dir)
    status_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(status_dir / STARTED, f"{time.time():.3f}\n")
    write_atomic(status_dir / PID, f"{os.getpid()}\n")


def _daemonize(runner: NodeRunner) -> int:
    """Fork the runner off and return once it has recorded its pid.

    The backend starts us with asyncio, whose transport kills a still-running child when it is
    closed or garbage collected; a grandchild re-parented away from the bot survives that and a
    SIGKILLed bot alike.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_fd)
        code = EXIT_RUNNER_ERROR
        try:
            with contextlib.suppress(OSError):
                os.setsid()
            _start(runner)
            os.write(write_fd, b"ok")
            os.close(write_fd)
            code = _serve(runner)
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        ack = pipe.read()
    return 0 if ack == b"ok" else 1


def load_spec(path: Path) -> RunnerSpec:
    return RunnerSpec.from_json(json.loads(path.read_text(encoding="utf-8")))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    foreground = bool(args) and args[0] == "--foreground"
    if foreground:
        args = args[1:]
    forget = bool(args) and args[0] == "--forget-spec"
    if forget:
        args = args[1:]
    if len(args) != 1:
        sys.stderr.write(
            "usage: python -m services.backends.noderun.runner [--foreground] [--forget-spec] "
            "SPEC.json\n"
        )
        return 2
    runner = NodeRunner(load_spec(Path(args[0])))
    if forget:  # it holds the job's secrets: read once, kept in memory only
        Path(args[0]).unlink(missing_ok=True)
    if foreground:
        _start(runner)
        return _serve(runner)
    return _daemonize(runner)


if __name__ == "__main__":
    sys.exit(main())
