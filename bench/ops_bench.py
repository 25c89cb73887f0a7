"""Operations: N jobs writing R lines/s for S s through the bot as its own process, which is
SIGKILLed mid-run and started again on the same data dir.

The bot is `python -m bot run` (HTTP mode, production pacing: poll 1 s, ~1 post/s per channel,
~50 edits/min) against the fake Slack in a child process with Slack's rate limits on. Setup goes
through signed slash commands. Each job waits for a common start gate, then prints
`<job> <seq> <time.time()>` lines (see bench/_common.py). At `--kill-at` of the writing period
the bench sends SIGKILL to the bot alone (the jobs keep writing), waits `--down` seconds, starts
it again, and times, from the new process's start:

- web: the web app listens (its "web app on" log line);
- ready: GET /readyz answers 200;
- resumed: every job's stored stdout.txt offset (the log_offsets row, read on a separate SQLite
  connection) has moved past where the killed bot left it, i.e. the new bot read the first new
  line of every job from its stored offset;
- first post: the fake received the first chat.postMessage of the new process.

At the end every written line is accounted for (posted / skipped / lost, and lines posted
twice); lost and twice must be 0. CPU % and peak RSS are the bot process's own, from /proc
(the jobs and node runners are not included).

    .venv/bin/python bench/ops_bench.py --jobs 300 --rate 10 --seconds 120 --channels 10
    .venv/bin/python bench/ops_bench.py --jobs 20 --rate 10 --seconds 15 --channels 4  # a look

With `--sweep` each channel's jobs are one sweep (`job create -n wKK --sweep "i=…"`, one
approval and one sweep card per channel, a sweep on one cluster); the bench then also prints how
stale the sweep cards were (per job state change, until a card version Slack accepted shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    JOB_SCRIPT,
    FakeSlackProcess,
    account,
    card_staleness,
    job_config,
    open_gate,
    pending_by_kind,
    pending_lines,
    print_accounting,
    print_card_staleness,
    print_post_rate,
    print_slack_stats,
    state_changes,
    written_lines,
)
from tests.fakes.slack import (  # noqa: E402
    BOT_TOKEN,
    form_body,
    signed_headers,
    slash_command_form,
)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "ops-bench-signing-secret"
CHANNEL = "C0OPS"  # + a two-digit number per channel
USER = "U0BENCH"
CLUSTER_NODES = 100  # the most nodes one cluster may have (Batch AI's limit)
TICK = os.sysconf("SC_CLK_TCK")
FINISHED = ("succeeded", "failed", "terminated")


@dataclass
class Usage:
    """One bot process's CPU seconds and memory, read from /proc."""

    cpu: float = 0.0
    hwm_mb: float = 0.0  # peak RSS (VmHWM)
    rss_mb: float = 0.0
    threads: int = 0


def usage(pid: int) -> Usage | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(
        line.split(":", 1) for line in status.splitlines() if ":" in line
    )  # "VmHWM": "  123 kB"

    def mb(name: str) -> float:
        return int(fields.get(name, "0 kB").split()[0]) / 1024

    return Usage(
        cpu=(int(stat[11]) + int(stat[12])) / TICK,
        hwm_mb=mb("VmHWM"),
        rss_mb=mb("VmRSS"),
        threads=int(fields.get("Threads", "0").strip()),
    )


@dataclass
class BotProcess:
    env: dict[str, str]
    cwd: Path
    proc: asyncio.subprocess.Process | None = None
    log: str = ""
    url: str = ""
    probe_url: str = ""  # /readyz listens apart from the public web app
    started: float = 0.0  # time.time() just before the spawn
    last: Usage = field(default_factory=Usage)
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> float:
        """Spawn; returns seconds until the web app listened."""
        self.log, self.url = "", ""
        self.started = time.time()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        while not (found := re.search(r"web app on (http://[\d.]+:\d+)", self.log)):
            if self.proc.returncode is not None:
                raise SystemExit(f"the bot exited:\n{self.log[-3000:]}")
            await asyncio.sleep(0.01)
        self.url = found.group(1)
        probes = re.search(r"probes \(.*\) on (http://[\d.]+:\d+)", self.log)
        self.probe_url = probes.group(1) if probes else self.url
        return time.time() - self.started

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self.log += line.decode(errors="replace")

    def sample(self) -> Usage:
        if self.proc is not None and (now := usage(self.proc.pid)) is not None:
            self.last = now
        return self.last

    async def kill(self, sig: int = signal.SIGKILL) -> Usage:
        """Signal the bot (alone: its node runners are in their own sessions); its last usage."""
        assert self.proc is not None
        last = self.sample()
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return last


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return list(conn.execute(sql).fetchall())


def stdout_offsets(db: Path) -> dict[str, int]:
    rows = query(db, "SELECT job_id, \"offset\" FROM log_offsets WHERE file = 'stdout.txt'")
    return {str(job): int(offset) for job, offset in rows}


def job_states(db: Path) -> Counter[str]:
    return Counter(
        {str(s): int(n) for s, n in query(db, "SELECT state, count(*) FROM jobs GROUP BY state")}
    )


class Bench:
    def __init__(self, args: argparse.Namespace, fake: FakeSlackProcess, data: Path) -> None:
        self.args = args
        self.fake = fake
        self.data = data
        self.db = data / "batchai.db"
        self.share = data / "shares" / "data"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLACK_", "BATCHAI_", "DATABASE", "APPROVAL", "MALLOC_"))
        }
        env.update(
            PYTHONPATH=str(ROOT),
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_MODE="http",
            SLACK_API_URL=fake.api_url,
            BATCHAI_DATA_DIR=str(data),
            LINK_SECRET="ops-bench-link-secret",
            PORT="0",
            PRICE_REFRESH_HOURS="0",  # no calls to the Azure Retail Prices API
            LOG_LEVEL="INFO",
        )
        if args.malloc_arena_max:
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
        self.bot = BotProcess(env, data.parent)
        self._triggers = 0

    async def command(self, http: aiohttp.ClientSession, text: str, channel: int = 0) -> int:
        self._triggers += 1
        form = slash_command_form(
            text,
            user_id=USER,
            channel_id=f"{CHANNEL}{channel:02d}",
            response_url=next(self.fake.urls),
            trigger_id=f"{self._triggers}.bench.trigger",
        )
        body = form_body(form)
        url = f"{self.bot.url}/slack/events"
        async with http.post(url, data=body, headers=signed_headers(body, SECRET)) as r:
            await r.read()
            return r.status

    async def until(self, what: str, condition: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.get_running_loop().run_in_executor(None, condition):
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}:\n{self.bot.log[-3000:]}")
            await asyncio.sleep(0.2)

    async def setup(self, http: aiohttp.ClientSession) -> None:
        args = self.args
        self.share.mkdir(parents=True, exist_ok=True)
        (self.share / "job.py").write_text(JOB_SCRIPT)
        t0 = time.time()
        sizes = self.cluster_sizes()
        clusters = [f"c{k + 1}" for k in range(len(sizes))]
        for name, nodes in zip(clusters, sizes, strict=True):
            create = (
                f"cluster create -n {name} -s STANDARD_NC6 -t {nodes}"
                " --afs-name data --afs-mount-path afs"
            )
            if (status := await self.command(http, create)) != 200:
                raise SystemExit(f"cluster create was answered {status}")
        await self.until(
            "the clusters",
            lambda: query(self.db, "SELECT state FROM clusters") == [("steady",)] * len(clusters),
            60,
        )
        if args.sweep:
            acks = await self.create_sweeps(http, clusters)
        else:
            acks = await self.create_jobs(http, clusters)
        if bad := [s for s in acks if s != 200]:
            raise SystemExit(f"{len(bad)} job create commands were answered {Counter(bad)}")
        await self.until(
            "every job running", lambda: job_states(self.db)["running"] == args.jobs, 600
        )
        print(
            f"setup: {len(clusters)} cluster(s), {args.jobs} nodes + {args.jobs} jobs running in"
            f" {time.time() - t0:.1f} s (signed /slack/events commands"
            + (f", one --sweep per channel: {len(self.sweeps())} sweeps" if args.sweep else "")
            + ")",
            flush=True,
        )

    def sweeps(self) -> list[list[int]]:
        """With --sweep: the jobs of each channel's sweep (job i goes to channel i % channels)."""
        args = self.args
        return [list(range(k, args.jobs, args.channels)) for k in range(args.channels)]

    def cluster_sizes(self) -> list[int]:
        """Nodes per cluster: blocks of CLUSTER_NODES jobs, or with --sweep whole sweeps packed
        into clusters of at most CLUSTER_NODES nodes (a sweep runs on one cluster)."""
        args = self.args
        if not args.sweep:
            return [
                min(CLUSTER_NODES, args.jobs - k * CLUSTER_NODES)
                for k in range(-(-args.jobs // CLUSTER_NODES))
            ]
        sizes: list[int] = []
        for group in self.sweeps():
            if sizes and sizes[-1] + len(group) <= CLUSTER_NODES:
                sizes[-1] += len(group)
            else:
                sizes.append(len(group))
        return sizes

    async def create_jobs(self, http: aiohttp.ClientSession, clusters: list[str]) -> list[int]:
        args = self.args
        gate = asyncio.Semaphore(10)

        async def create_job(i: int) -> int:
            async with gate:
                name = f"s{i:03d}"
                config = job_config(
                    name, rate=args.rate, seconds=args.seconds, index=i, jobs=args.jobs
                )
                text = f"job create -n {name} -r {clusters[i // CLUSTER_NODES]} -c {config}"
                return await self.command(http, text, channel=i % args.channels)

        return list(await asyncio.gather(*(create_job(i) for i in range(args.jobs))))

    async def create_sweeps(self, http: aiohttp.ClientSession, clusters: list[str]) -> list[int]:
        """One `job create --sweep` per channel: its jobs write as `s<i>` (i: the job's index)."""
        args = self.args
        config = job_config("s$i", rate=args.rate, seconds=args.seconds, index="$i", jobs=args.jobs)
        acks, cluster, used = [], 0, 0
        for k, group in enumerate(self.sweeps()):
            if used + len(group) > self.cluster_sizes()[cluster]:
                cluster, used = cluster + 1, 0
            used += len(group)
            values = ",".join(map(str, group))
            text = f'job create -n w{k:02d} -r {clusters[cluster]} -c {config} --sweep "i={values}"'
            acks.append(await self.command(http, text, channel=k))
        return acks

    async def progress(self, start: float, label: str) -> None:
        posts, updates, limited = await self.fake.ask("progress")
        pending = await asyncio.get_running_loop().run_in_executor(None, pending_by_kind, self.db)
        shown = ", ".join(f"{k} {v}" for k, v in sorted(pending.items())) or "none"
        u = self.bot.sample()
        print(
            f"  t={time.time() - start:6.1f}s {label:<9} Slack accepted {posts} posts, {updates}"
            f" edits, {limited} x 429; undelivered: {shown}; bot RSS {u.rss_mb:.0f} MB,"
            f" {u.threads} threads",
            flush=True,
        )

    async def restart(self, http: aiohttp.ClientSession) -> dict[str, float | None]:
        """SIGKILL, wait, start again; time the resume from the new process's start."""
        first = await self.bot.kill(signal.SIGKILL)
        self.before_kill = first
        posts_before = (await self.fake.ask("progress"))[0]
        await asyncio.sleep(self.args.down)
        left_at = stdout_offsets(self.db)
        web = await self.bot.start()
        started = self.bot.started
        ready = resumed = first_post = None
        deadline = time.monotonic() + self.args.resume_timeout
        while (ready is None or resumed is None or first_post is None) and (
            time.monotonic() < deadline
        ):
            now = time.time() - started
            if ready is None:
                try:
                    async with http.get(f"{self.bot.probe_url}/readyz") as r:
                        if r.status == 200:
                            ready = now
                except aiohttp.ClientError:
                    pass
            if resumed is None:
                offsets = stdout_offsets(self.db)
                if all(offsets.get(job, 0) > at for job, at in left_at.items()):
                    resumed = now
            if first_post is None and (await self.fake.ask("progress"))[0] > posts_before:
                first_post = now
            await asyncio.sleep(0.02)
        return {"web": web, "ready": ready, "resumed": resumed, "first_post": first_post}

    async def run(self) -> None:
        args = self.args
        async with aiohttp.ClientSession() as http:
            await self.bot.start()
            await self.setup(http)
            start = time.time() + 1.0
            open_gate(self.share, start)
            cpu0 = self.bot.sample().cpu
            await self.progress(start, "gate")
            kill_at = start + args.seconds * args.kill_at
            end_writing = start + args.seconds
            bound = end_writing + args.drain_timeout
            next_report = start + 10
            timings: dict[str, float | None] = {}
            cpu_first = 0.0
            drained_at = None
            while True:
                await asyncio.sleep(0.5)
                now = time.time()
                if not timings and now >= kill_at:
                    await self.progress(start, "kill -9")
                    timings = await self.restart(http)
                    cpu_first = self.before_kill.cpu - cpu0
                    await self.progress(start, "restarted")
                    continue
                if now >= next_report:
                    await self.progress(start, "writing" if now < end_writing else "draining")
                    next_report += 10
                if now < end_writing or not timings:
                    continue
                states = job_states(self.db)
                finished = sum(n for s, n in states.items() if s in FINISHED)
                if finished == args.jobs and not pending_by_kind(self.db):
                    drained_at = now
                    break
                if now > bound:
                    break
            wall = time.time() - start
            second = self.bot.sample()
            await self.progress(start, "end")
            waiting = pending_lines(self.db)  # the store first: a line sent meanwhile is posted
            received = await self.fake.ask("snippets")
            stats = await self.fake.ask("stats")
            cards = await self.fake.ask("cards") if args.sweep else []
            posts = await self.fake.ask("posts")
            written = written_lines(self.share.glob("**/stdout.txt"))
            await self.bot.kill(signal.SIGTERM)
        acc = account(written, received, waiting)
        print()
        print_accounting(acc, expected=int(args.jobs * args.rate * args.seconds), start=start)
        print("  (latency includes the lines written while the bot was down)")
        print_slack_stats(stats)
        print_post_rate(posts, start=start, channels=args.channels)
        cpu = cpu_first + second.cpu
        print(
            f"bot process CPU          {100 * cpu / wall:.1f}% of one core ({cpu:.1f} s CPU over"
            f" {wall:.1f} s wall, gate to end, both processes)"
        )
        print(
            f"bot peak RSS             {max(self.before_kill.hwm_mb, second.hwm_mb):.1f} MB"
            f" (before the kill {self.before_kill.hwm_mb:.1f} MB, after {second.hwm_mb:.1f} MB;"
            f" threads {self.before_kill.threads}/{second.threads})"
        )

        def fmt(v: float | None) -> str:
            return f"{v:.2f} s" if v is not None else "not within --resume-timeout"

        print(
            f"restart after SIGKILL    web app listening {fmt(timings.get('web'))}, /readyz 200"
            f" {fmt(timings.get('ready'))}, every job's tail resumed {fmt(timings.get('resumed'))},"
            f" first Slack post {fmt(timings.get('first_post'))} (from process start;"
            f" {args.jobs} jobs, down {args.down:g} s)"
        )
        if args.sweep:
            print_card_staleness(card_staleness(state_changes(self.db), cards))
        states = job_states(self.db)
        drained = f"{drained_at - start:.1f} s" if drained_at else "NOT drained in time"
        print(f"jobs                     {dict(states)}; relay drained at {drained}")
        errors = Counter(
            re.sub(r"\d+", "#", m)[:80]
            for m in re.findall(r" (?:WARNING|ERROR) (.*)", self.bot.log)
        )
        for shape, n in errors.most_common(6):
            print(f"  {n:>6} x {shape}")


async def main_async(args: argparse.Namespace) -> None:
    fake = FakeSlackProcess(args.jobs + 10)
    await fake.start()
    tmp = tempfile.TemporaryDirectory(prefix="opsbench-")
    data = Path(tmp.name) / "data"
    print(
        f"operations: {args.jobs} jobs x {args.rate:g} lines/s x {args.seconds:g} s in"
        f" {args.channels} channels; bot as a"
        f" process, SIGKILLed at {100 * args.kill_at:.0f}% of the writing, down {args.down:g} s;"
        f" fake Slack rate limits on"
        + ("; one sweep per channel" if args.sweep else "")
        + (f"; MALLOC_ARENA_MAX={args.malloc_arena_max}" if args.malloc_arena_max else ""),
        flush=True,
    )
    bench = Bench(args, fake, data)
    try:
        await bench.run()
    finally:
        if bench.bot.proc is not None:
            await bench.bot.kill(signal.SIGTERM)
        for pid_file in data.glob("**/node-*/pid"):  # node runners end their job on SIGTERM
            text = pid_file.read_text().strip()
            if text.isdigit() and not (pid_file.parent / "exit_code").exists():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(text), signal.SIGTERM)
        fake.stop()
        tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0, help="lines per second per job")
    parser.add_argument("--seconds", type=float, default=120.0, help="writing period")
    parser.add_argument(
        "--channels",
        type=int,
        default=10,
        help="the jobs are spread over this many channels (Slack allows ~1 post/s in each)",
    )
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the writing")
    parser.add_argument("--down", type=float, default=2.0, help="seconds without a bot")
    parser.add_argument("--resume-timeout", type=float, default=120.0)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="after writing, wait at most this long for the relay (Slack allows ~50 edits/min)",
    )
    parser.add_argument("--malloc-arena-max", type=int, default=0, help="set for the bot")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="submit each channel's jobs as one sweep (one approval, one sweep card per channel)"
        " and measure how stale the sweep cards are",
    )
    args = parser.parse_args()
    if args.sweep and -(-args.jobs // args.channels) > CLUSTER_NODES:
        parser.error(
            f"--sweep puts each channel's jobs in one sweep on one cluster of at most"
            f" {CLUSTER_NODES} nodes: use more --channels"
        )
    if not 0 < args.kill_at < 0.9:
        parser.error("--kill-at must be between 0 and 0.9 (the jobs must still be writing)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
