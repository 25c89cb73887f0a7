"""Scale: J running jobs on C clusters (default 5,000 on 200) in one bot process, for M minutes.

The bot side is this process: the real JobRunner (dispatch, status poll, log tailing) on a real
SQLite store, reading logs through the real AzureShare (Azure SDK clients, real HTTP) from the
fake Azure Files server. Compute is a SYNTHETIC backend (`SyntheticCompute`, below): it answers
the ComputeBackend port from memory (every job "running"), so no ARM request is made and none
is counted: the azure backend's ARM figure (one VM list per cluster per cycle, whatever the
number of jobs) is `azure_poll_bench.py`'s. Slack is not part of this bench: log lines count as
delivered when the store holds them (the outbox to Slack is `slack_stream_bench.py`'s subject).

A child process runs the fake Files server and the jobs' writers: every `--write-every` seconds
each job appends `--rate × write-every` lines (`<job> <seq> <time>`) to its stdout.txt; stderr.txt
stays empty, as a quiet second log. The writer also does what the node runner does on an azure
node: it copies what it wrote into the job's log journal (`node-0/logs.journal`, the runner's own
record format), which the bot reads instead of the logs; `--no-journal` measures the bot reading
each log by itself (what a runner without a journal, or the local backend, gets). The child's CPU
is not the bot's. The bot ticks every
`--poll-seconds` (a tick that runs longer starts the next one late, as the scheduler does).
At the end the writers stop, the bot reads what is left, and every written line must be in the
store (`log_offsets` line counts): lines lost = written - stored. Then `--idle-seconds` of ticks
with nothing written measure the requests an idle job costs.

    .venv/bin/python bench/scale_bench.py --jobs 5000 --clusters 200 --minutes 10
    .venv/bin/python bench/scale_bench.py --jobs 20 --clusters 4 --minutes 0.1   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from inspect import signature
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.backends.azure.config import AzureConfig  # noqa: E402
from services.backends.azure.files import AzureShare  # noqa: E402
from services.backends.noderun.runner import JOURNAL, journal_data  # noqa: E402
from services.clusters.service import ClusterRequest, ClusterService  # noqa: E402
from services.core.clock import SystemClock  # noqa: E402
from services.core.errors import UserError  # noqa: E402
from services.core.ports import LaunchRequest, LaunchResult, RunStatus  # noqa: E402
from services.jobs.runner import JobRunner  # noqa: E402
from services.jobs.service import JobRequest, JobService  # noqa: E402
from services.jobs.sources import ConfigLoader  # noqa: E402
from services.models import (  # noqa: E402
    Actor,
    Cluster,
    ConfigSource,
    Conversation,
    FileLocation,
    JobLayout,
    Node,
    NodeOutput,
    NodeProblem,
    Usage,
)
from services.store import SqlStore  # noqa: E402

SHARE = "data"
LOGS = ("stdout.txt", "stderr.txt")
OPS = {"GetFile": "GET", "GetFileProperties": "HEAD", "ListDirectoriesAndFiles": "list"}


def log_dir(job_id: str) -> str:
    return f"jobs/{job_id}/stdouterr"


def journal_path(job_id: str) -> str:
    return f"jobs/{job_id}/node-0/{JOURNAL}"


# --------------------------------------------------------------------------- the child


def files_main(
    conn: Connection, root: str, rate: float, every: float, latency: float, journal: bool
) -> None:
    asyncio.run(_files(conn, Path(root), rate, every, latency, journal))


async def _files(
    conn: Connection, root: Path, rate: float, every: float, latency: float, journal: bool
) -> None:
    """The fake Files server and the writers; answers the bench's questions on `conn`."""
    from tests.fakes.azure_files import FakeAzureFiles

    loop = asyncio.get_running_loop()
    written: dict[str, int] = {}
    writing = asyncio.Event()
    async with FakeAzureFiles(root, latency=latency) as files:
        share = files.create_share(SHARE)
        conn.send({"url": files.account_url, "account": files.account, "key": files.key})

        async def write() -> None:
            carry = 0.0
            while True:
                await asyncio.sleep(every)
                if not writing.is_set():
                    continue
                carry += rate * every
                n, carry = int(carry), carry - int(carry)
                now = time.time()
                for job in written:
                    seq = written[job]
                    data = "".join(f"{job} {seq + i + 1} {now:.3f}\n" for i in range(n)).encode()
                    with (share / log_dir(job) / "stdout.txt").open("ab") as f:
                        f.write(data)
                        size = f.tell()
                    if journal and data:
                        with (share / journal_path(job)).open("ab") as f:
                            f.write(journal_data("stdout.txt", size - len(data), data, size))
                    written[job] += n

        writer = asyncio.create_task(write())
        while True:
            msg = await loop.run_in_executor(None, conn.recv)
            what = msg[0]
            if what == "jobs":
                for job in msg[1]:
                    (share / log_dir(job)).mkdir(parents=True, exist_ok=True)
                    for name in LOGS:
                        (share / log_dir(job) / name).touch()
                    if journal:
                        (share / journal_path(job)).parent.mkdir(parents=True, exist_ok=True)
                        (share / journal_path(job)).touch()
                    written[job] = 0
                conn.send(len(written))
            elif what == "write":
                writing.set() if msg[1] else writing.clear()
                conn.send(True)
            elif what == "counters":
                ops = Counter({OPS.get(k, k): v for k, v in files.ops.items()})
                conn.send({"ops": dict(ops), "served": files.bytes_served})
            elif what == "written":
                conn.send(dict(written))
            elif what == "stop":
                writer.cancel()
                conn.send(True)
                return


class FilesProcess:
    def __init__(
        self, root: Path, rate: float, every: float, latency: float, journal: bool
    ) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        args = (child, str(root), rate, every, latency, journal)
        self.proc = ctx.Process(target=files_main, args=args)
        self.proc.start()
        self.info: dict[str, str] = self.conn.recv()

    async def ask(self, *msg: Any) -> Any:
        def call() -> Any:
            self.conn.send(msg)
            return self.conn.recv()

        return await asyncio.get_running_loop().run_in_executor(None, call)

    def stop(self) -> None:
        if self.proc.is_alive():
            self.conn.send(("stop",))
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# --------------------------------------------------------------------------- synthetic compute


class SyntheticCompute:
    """A ComputeBackend answered from memory: clusters exist, every started job runs until the
    bench ends it. Named for what it is: no ARM, no nodes; it costs the bot nothing but the
    calls, so the figures are the bot's own work (store, poll loop, log tailing over HTTP)."""

    name = "synthetic"

    def __init__(self, *, journal: bool) -> None:
        self.journal = journal
        self.started: dict[str, str] = {}  # job id -> cluster
        self.ended: set[str] = set()
        self.status_calls = 0

    @property
    def reserved_shares(self) -> frozenset[str]:
        return frozenset()

    async def create_cluster(self, cluster: Cluster) -> None:
        return None

    async def resize_cluster(self, cluster: Cluster, target: int) -> None:
        return None

    async def delete_cluster(self, cluster: Cluster) -> None:
        return None

    async def list_nodes(self, cluster: Cluster) -> list[Node]:
        return []

    async def unusable_nodes(self, cluster: Cluster) -> dict[int, str]:
        return {}  # every node passed its health check

    async def failed_nodes(self, *, cluster: str | None = None) -> list[NodeProblem]:
        return []

    async def start_job(self, request: LaunchRequest) -> LaunchResult:
        self.started[request.job_id] = request.cluster.name
        stdouterr = FileLocation(SHARE, log_dir(request.job_id))
        journals = (FileLocation(SHARE, journal_path(request.job_id)),) if self.journal else ()
        layout = JobLayout(stdouterr, log_files=LOGS, primary_log="stdout.txt", journals=journals)
        return LaunchResult(layout)

    async def get_job_status(self, job_id: str) -> RunStatus:
        self.status_calls += 1
        if job_id in self.ended:
            return RunStatus("exited", exit_code=0)
        return RunStatus("running")

    async def terminate_job(self, job_id: str) -> None:
        self.ended.add(job_id)

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        return None

    async def run_on_node(
        self, cluster: Cluster, node_id: str, command: str, *, timeout: float, job_id: str | None
    ) -> NodeOutput:
        raise UserError("the synthetic backend has no nodes to run a command on")

    async def usages(self, location: str | None) -> list[Usage]:
        return []

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def job_config() -> ConfigSource:
    props = {
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "customToolkitSettings": {"commandLine": "python train.py"},
    }
    return ConfigSource("inline", json.dumps({"properties": props}))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# --------------------------------------------------------------------------- the run


async def run(args: argparse.Namespace, data: Path) -> None:
    files = FilesProcess(
        data / "files", args.rate, args.write_every, args.latency_ms / 1000, args.journal
    )
    try:
        await _run(args, data, files)
    finally:
        files.stop()


async def _run(args: argparse.Namespace, data: Path, files: FilesProcess) -> None:
    db = data / "bot.db"
    store = SqlStore(f"sqlite+aiosqlite:///{db}")
    await store.migrate()
    clock = SystemClock()
    compute = SyntheticCompute(journal=args.journal)
    cfg = AzureConfig(
        subscription_id="sub",
        resource_group="rg",
        location="eastus",
        subnet_id="subnet",
        storage_account=files.info["account"],
        share=SHARE,
        storage_key=files.info["key"],
        storage_endpoint=files.info["url"],
    )
    share = AzureShare(cfg)
    actor = Actor("U0BENCH", Conversation("C0BENCH"))
    clusters = ClusterService(
        store=store,
        backend=compute,
        clock=clock,
        configs=ConfigLoader(data),
        resource_group="rg",
        workspace="ws",
    )
    jobs = JobService(
        store=store,
        share=share,
        clock=clock,
        configs=ConfigLoader(data),
        resource_group="rg",
        workspace="ws",
    )
    # An older runner (the "before" figures) has no `concurrency`: it walks jobs one by one.
    extra = (
        {"concurrency": args.concurrency}
        if "concurrency" in signature(JobRunner).parameters
        else {}
    )
    runner = JobRunner(
        store=store, backend=compute, share=share, clusters=clusters, clock=clock, **extra
    )
    try:
        setup = time.perf_counter()
        per_cluster = -(-args.jobs // args.clusters)
        for c in range(args.clusters):
            request = ClusterRequest(
                name=f"c{c:03d}",
                vm_size="STANDARD_NC6",
                afs_name=SHARE,
                afs_mount_path="afs",
                target_nodes=per_cluster,
            )
            await clusters.create_cluster(request, actor=actor)
        for j in range(args.jobs):
            name, cluster = f"j{j:05d}", f"c{j % args.clusters:03d}"
            await jobs.create_job(JobRequest(name, cluster, job_config()), actor=actor)
        await runner.tick()  # dispatch: every job gets its nodes and a layout
        await files.ask("jobs", list(compute.started))
        await runner.tick()  # preparing -> running
        print(
            f"setup         {args.clusters} clusters, {len(compute.started)} jobs started in "
            f"{time.perf_counter() - setup:.1f} s",
            flush=True,
        )

        await files.ask("write", True)
        before = await files.ask("counters")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        end = wall0 + args.minutes * 60
        cycles: list[float] = []
        next_report = wall0 + 30
        while time.perf_counter() < end:
            begin = time.perf_counter()
            await runner.tick()
            took = time.perf_counter() - begin
            cycles.append(took)
            if time.perf_counter() >= next_report:
                next_report += 30
                print(
                    f"  {time.perf_counter() - wall0:5.0f} s: {len(cycles)} cycles, "
                    f"last {took:.2f} s",
                    flush=True,
                )
            await asyncio.sleep(max(0.0, args.poll_seconds - took))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        after = await files.ask("counters")
        await files.ask("write", False)

        written: dict[str, int] = await files.ask("written")
        stored: dict[str, int] = {}
        drain_end = time.perf_counter() + args.drain_timeout
        while time.perf_counter() < drain_end:
            await runner.tick()
            stored = {
                job: (await store.get_log_offsets(job)).get("stdout.txt", (0, 0))[1]
                for job in written
            }
            if all(stored[j] >= written[j] for j in written):
                break
            await asyncio.sleep(args.poll_seconds)
        idle_before = await files.ask("counters")
        idle_cycles = 0
        idle_end = time.perf_counter() + args.idle_seconds
        while time.perf_counter() < idle_end:
            begin = time.perf_counter()
            await runner.tick()
            idle_cycles += 1
            await asyncio.sleep(max(0.0, args.poll_seconds - (time.perf_counter() - begin)))
        idle_after = await files.ask("counters")
    finally:
        await share.aclose()
        await store.aclose()

    ops = Counter(after["ops"])
    ops.subtract(before["ops"])
    idle = Counter(idle_after["ops"])
    idle.subtract(idle_before["ops"])
    n = max(len(cycles), 1)
    running = max(len(compute.started), 1)
    files_per_cycle = sum(ops.values()) / n
    breakdown = ", ".join(f"{op} {ops[op] / n:.0f}" for op in ("GET", "HEAD", "list"))
    total_written = sum(written.values())
    lost = sum(max(0, written[j] - stored.get(j, 0)) for j in written)
    db_bytes = sum(p.stat().st_size for p in data.glob("bot.db*"))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"shape                 {args.clusters} clusters, {running} running jobs")
    print(f"Files round trip      {args.latency_ms:g} ms a request (fake, like Azure's 5-15 ms)")
    print(
        f"run                   {wall:.0f} s real, {len(cycles)} poll cycles "
        f"(tick every {args.poll_seconds:g} s, {args.concurrency} jobs at once)"
    )
    print(
        f"poll cycle            p50 {pct(cycles, 0.5):.2f} s, p95 {pct(cycles, 0.95):.2f} s, "
        f"max {max(cycles, default=0):.2f} s  (goal <= 15 s)"
    )
    print("ARM requests/cycle    n/a: synthetic compute (see azure_poll_bench.py)")
    print(f"Files requests/cycle  {files_per_cycle:.0f}  ({breakdown})")
    how = "one log journal" if args.journal else "no journal: each of 2 logs"
    print(
        f"  per running job     {files_per_cycle / running:.2f}  "
        f"(writing; {how}; goal <= 1: GET only, no HEAD)"
    )
    idle_per_job = sum(idle.values()) / max(idle_cycles, 1) / running
    print(
        f"  per idle job        {idle_per_job:.2f}  "
        f"({idle_cycles} cycles in {args.idle_seconds:g} s with nothing written; quiet reads rest)"
    )
    print(f"bot CPU               {cpu / max(wall, 1e-9):.2f} cores  (goal <= 1)")
    print(f"peak RSS              {rss_mb:.0f} MB  (goal <= 500 MB)")
    print(f"database size         {db_bytes / 1e6:.1f} MB")
    print(f"lines written         {total_written}")
    print(f"lines stored          {sum(min(stored.get(j, 0), written[j]) for j in written)}")
    print(f"lines lost            {lost}")
    if statistics.fmean(cycles or [0.0]) > args.poll_seconds:
        print(f"note: cycles ran longer than the {args.poll_seconds:g} s tick")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=1.0, help="real minutes measured")
    parser.add_argument("--rate", type=float, default=1.0, help="lines per second per job")
    parser.add_argument("--write-every", type=float, default=2.0, help="seconds between writes")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument(
        "--latency-ms", type=float, default=10.0, help="each Files request's round trip"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="POLL_CONCURRENCY")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--no-journal",
        dest="journal",
        action="store_false",
        help="no log journal: the bot reads stdout.txt and stderr.txt each",
    )
    args = parser.parse_args()
    if args.jobs < 1 or args.clusters < 1 or args.clusters > args.jobs:
        parser.error("need 1 <= --clusters <= --jobs")
    if -(-args.jobs // args.clusters) > 100:
        parser.error("at most 100 jobs (1-node) per cluster: add clusters")
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        asyncio.run(run(args, Path(tmp)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
