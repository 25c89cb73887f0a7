"""Log streaming into ONE Slack channel: N jobs writing R lines/s each, through the real bot.

This process is the bot: `bot.lifecycle.running(settings, periodic=True)` in HTTP mode with the
production defaults (poll every 1 s, relay every 0.5 s, ~1 post/s per channel, ~50 edits/min).
The fake Slack Web API runs in a child process with Slack's rate limits ON (defaults) and a
wall clock, so every call it receives carries its arrival time; this process's CPU and RSS are
the bot's own.

Setup goes through Slack like a user would: a signed `/batchai cluster create ... -t N`, then N
signed `/batchai job create` commands. Each job waits for a common start gate, then prints
`<job> <seq> <time.time()>` lines at the given rate (seq == the line number in stdout.txt). After
the writing period the bench waits (bounded) for the jobs to end and the relay to drain, then
accounts for every written line (read back from the jobs' stdout.txt files):

- posted: the line appears in a thread reply the fake accepted (first arrival counts);
- skipped: covered by a snippet's "N lines skipped" note (the oldest lines of that snippet);
- pending: still in an undelivered log snippet in the bot's store when the bench stopped waiting;
- lost: written - posted - skipped (must be 0; pending lines are a subset of it).

Latency of a posted line = fake's receive time - job's write time (same machine, same clock).

    .venv/bin/python bench/slack_stream_bench.py --jobs 100 --rate 20 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import re
import resource
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from bot.bootstrap import Bot  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.lifecycle import running  # noqa: E402
from services.events import LogSnippet  # noqa: E402
from services.states import ClusterState, JobState  # noqa: E402
from tests.fakes.slack import (  # noqa: E402
    BOT_TOKEN,
    FakeSlack,
    form_body,
    signed_headers,
    slash_command_form,
)

SECRET = "bench-signing-secret"
CHANNEL = "C0STREAM"
USER = "U0BENCH"
CLUSTER = "c1"
LINE_RE = re.compile(r"^(s\d+) (\d+) (\d+\.\d+)$")
HEADER_RE = re.compile(r"`([^`]+)` lines (\d+)-(\d+)")
SKIPPED_RE = re.compile(r"(\d+) lines skipped")

# The job: wait for the gate (it holds the common start time), then write on a fixed schedule.
JOB_SCRIPT = """
import os, sys, time
name, rate, seconds, index, jobs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), \\
    int(sys.argv[4]), int(sys.argv[5])
gate = os.path.join(os.environ["AZ_BATCHAI_MOUNT_ROOT"], "afs", "gate")
give_up = time.time() + 900
while not os.path.exists(gate):
    if time.time() > give_up:
        sys.exit(3)
    time.sleep(0.02)
start = float(open(gate).read()) + index / (rate * jobs)  # spread the writers over a tick
for seq in range(1, int(rate * seconds) + 1):
    delay = start + (seq - 1) / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    print(f"{name} {seq} {time.time():.6f}", flush=True)
"""


# --------------------------------------------------------------------------------------------
# the fake Slack, in its own process
# --------------------------------------------------------------------------------------------


def fake_main(conn: Connection, urls: int) -> None:
    asyncio.run(_fake(conn, urls))


async def _fake(conn: Connection, urls: int) -> None:
    async with FakeSlack(trigger_ttl=None, clock=time.time) as fake:  # default rate limits
        conn.send((fake.base_url, [fake.response_url() for _ in range(urls)]))
        loop = asyncio.get_running_loop()
        while True:
            request = await loop.run_in_executor(None, conn.recv)
            if request == "stop":
                return
            if request == "stats":
                conn.send(
                    {
                        "calls": dict(Counter(c.method for c in fake.calls)),
                        "statuses": dict(Counter(c.status for c in fake.calls)),
                        "ratelimited": dict(fake.ratelimited),
                        "not_ok": dict(
                            Counter(
                                f"{c.method}:{c.error}"
                                for c in fake.calls
                                if c.status == 200 and not c.ok
                            )
                        ),
                        "responses": len(fake.responses),
                    }
                )
            elif request == "progress":
                conn.send(
                    (
                        len(fake.calls_to("chat.postMessage", ok=True)),
                        len(fake.calls_to("chat.update", ok=True)),
                        sum(fake.ratelimited.values()),
                    )
                )
            elif request == "snippets":
                conn.send(_snippets(fake))


def _snippets(fake: FakeSlack) -> dict[str, Any]:
    """What the channel received: posted (job, seq, write time, arrival) and skipped ranges."""
    posted: list[tuple[str, int, float, float]] = []
    skipped: list[tuple[str, int, int]] = []  # job, first seq, count
    notes_without_job = 0
    replies = 0
    for call in fake.calls:
        if call.method != "chat.postMessage" or not call.ok or not call.args.get("thread_ts"):
            continue
        replies += 1
        texts: list[str] = []
        _collect(call.json_arg("blocks") or [], texts)
        header = skip = None
        job = None
        for text in texts:
            if (m := HEADER_RE.search(text)) is not None:
                header = (m.group(1), int(m.group(2)), int(m.group(3)))
            if (m := SKIPPED_RE.search(text)) is not None:
                skip = int(m.group(1))
            for line in text.strip("`").split("\n"):
                if (m := LINE_RE.match(line.strip().strip("`"))) is not None:
                    job = m.group(1)
                    posted.append((job, int(m.group(2)), float(m.group(3)), call.at))
        if skip:
            if job is None or header is None:
                notes_without_job += skip
            else:
                skipped.append((job, header[1], skip))
    return {
        "posted": posted,
        "skipped": skipped,
        "orphan_skips": notes_without_job,
        "replies": replies,
    }


def _collect(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                out.append(value)
            else:
                _collect(value, out)
    elif isinstance(node, list):
        for item in node:
            _collect(item, out)


# --------------------------------------------------------------------------------------------
# the bot, in this process
# --------------------------------------------------------------------------------------------


class CountingHandler(logging.Handler):
    """Counts the bot's warnings and errors by logger and message shape (nothing printed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        shape = re.sub(r"\d+", "#", str(record.msg))[:70]
        self.counts[f"{record.levelname} {record.name}: {shape}"] += 1


def job_config(name: str, args: argparse.Namespace, index: int) -> str:
    command = (
        f"{sys.executable} $AZ_BATCHAI_MOUNT_ROOT/afs/job.py"
        f" {name} {args.rate} {args.seconds} {index} {args.jobs}"
    )
    spec = {
        "properties": {
            "nodeCount": 1,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            "customToolkitSettings": {"commandLine": command},
        }
    }
    return json.dumps(spec, separators=(",", ":"))


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def pending_by_kind(db: Path) -> dict[str, int]:
    """Undelivered events by kind, read on a separate SQLite connection (WAL: no blocking)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute(
            "SELECT kind, count(*) FROM events WHERE delivered_at IS NULL GROUP BY kind"
        ).fetchall()
    return {str(kind): int(n) for kind, n in rows}


class Stream:
    def __init__(
        self, args: argparse.Namespace, bot: Bot, http: aiohttp.ClientSession, fake: Any
    ) -> None:
        self.args = args
        self.bot = bot
        self.http = http
        self.fake = fake  # (ask, url pool)
        self.db = bot.settings.batchai_data_dir / "batchai.db"
        self._triggers = 0

    async def command(self, text: str) -> int:
        self._triggers += 1
        form = slash_command_form(
            text,
            user_id=USER,
            channel_id=CHANNEL,
            response_url=next(self.fake[1]),
            trigger_id=f"{self._triggers}.bench.trigger",
        )
        body = form_body(form)
        url = f"{self.bot.web_url}/slack/events"
        async with self.http.post(url, data=body, headers=signed_headers(body, SECRET)) as r:
            await r.read()
            return r.status

    async def ask(self, what: str) -> Any:
        return await self.fake[0](what)

    async def pending(self) -> dict[str, int]:
        return await asyncio.get_running_loop().run_in_executor(None, pending_by_kind, self.db)

    async def progress(self, t0: float, label: str) -> None:
        posts, updates, limited = await self.ask("progress")
        pending = await self.pending()
        shown = ", ".join(f"{k} {v}" for k, v in sorted(pending.items())) or "none"
        print(
            f"  t={time.time() - t0:6.1f}s {label:<8} Slack accepted {posts} posts, {updates}"
            f" edits, {limited} x 429; undelivered events: {shown}",
            flush=True,
        )

    async def setup(self) -> None:
        args, bot = self.args, self.bot
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        t0 = time.time()
        create = (
            f"cluster create -n {CLUSTER} -s STANDARD_NC6 -t {args.jobs}"
            " --afs-name data --afs-mount-path afs"
        )
        if (status := await self.command(create)) != 200:
            raise SystemExit(f"cluster create was answered {status}")
        deadline = time.monotonic() + 60
        while True:
            cluster = await bot.store.get_cluster(CLUSTER)
            if cluster is not None and cluster.state is ClusterState.STEADY:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"cluster {CLUSTER} not steady: {cluster}")
            await asyncio.sleep(0.2)
        gate = asyncio.Semaphore(10)

        async def create_job(i: int) -> int:
            async with gate:
                name = f"s{i:03d}"
                return await self.command(
                    f"job create -n {name} -r {CLUSTER} -c " + job_config(name, args, i)
                )

        acks = await asyncio.gather(*(create_job(i) for i in range(args.jobs)))
        if bad := [s for s in acks if s != 200]:
            raise SystemExit(f"{len(bad)} job create commands were answered {Counter(bad)}")
        deadline = time.monotonic() + args.setup_timeout
        while True:
            jobs = await bot.store.list_jobs(include_deleted=True)
            states = Counter(j.state.value for j in jobs)
            if len(jobs) == args.jobs and states[JobState.RUNNING.value] == args.jobs:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"jobs not all running after {args.setup_timeout} s: {states}")
            await asyncio.sleep(0.5)
        print(
            f"setup: cluster of {args.jobs} nodes + {args.jobs} jobs running in"
            f" {time.time() - t0:.1f} s (all through signed /slack/events commands)"
        )

    async def run(self, counting: CountingHandler) -> None:
        args, bot = self.args, self.bot
        await self.setup()
        start = time.time() + 1.0
        share = bot.share.share_dir("data")
        (share / "gate.tmp").write_text(f"{start:.6f}")
        os.replace(share / "gate.tmp", share / "gate")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await self.progress(start, "gate")
        end_writing = start + args.seconds
        bound = end_writing + args.drain_timeout
        next_report = start + 10
        jobs_done_at: float | None = None
        drained_at: float | None = None
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            if now >= next_report:
                label = "writing" if now < end_writing else "draining"
                await self.progress(start, label)
                next_report += 10
            if now < end_writing:
                continue
            if jobs_done_at is None:
                jobs = await bot.store.list_jobs(include_deleted=True)
                if all(j.state.finished for j in jobs):
                    jobs_done_at = now
            if jobs_done_at is not None and not await self.pending():
                drained_at = now
                break
            if now > bound:
                break
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        warnings = Counter(counting.counts)
        await self.progress(start, "end")
        # Store first, then the fake: a line delivered in between is seen as posted.
        pending_lines: set[tuple[str, int]] = set()
        for _, event in await bot.store.pending_events(limit=10_000_000):
            if isinstance(event, LogSnippet):
                for line in event.lines:
                    if (m := LINE_RE.match(line)) is not None:
                        pending_lines.add((m.group(1), int(m.group(2))))
        received = await self.ask("snippets")
        stats = await self.ask("stats")
        jobs = await bot.store.list_jobs(include_deleted=True)
        written: dict[tuple[str, int], float] = {}
        stderr_bytes = 0
        for job in jobs:
            if job.layout is None or job.layout.stdouterr is None:
                continue
            stdout = bot.share.local_path(job.layout.stdouterr.child("stdout.txt"))
            for line in stdout.read_text(errors="replace").splitlines():
                if (m := LINE_RE.match(line)) is not None:
                    written[(m.group(1), int(m.group(2)))] = float(m.group(3))
            stderr = stdout.with_name("stderr.txt")
            if stderr.exists():
                stderr_bytes += stderr.stat().st_size
        self.report(
            written=written,
            received=received,
            stats=stats,
            pending_lines=pending_lines,
            jobs=jobs,
            start=start,
            jobs_done_at=jobs_done_at,
            drained_at=drained_at,
            cpu=cpu,
            wall=wall,
            rss_mb=rss_mb,
            warnings=warnings,
            stderr_bytes=stderr_bytes,
        )

    def report(
        self,
        *,
        written: dict[tuple[str, int], float],
        received: dict[str, Any],
        stats: dict[str, Any],
        pending_lines: set[tuple[str, int]],
        jobs: list[Any],
        start: float,
        jobs_done_at: float | None,
        drained_at: float | None,
        cpu: float,
        wall: float,
        rss_mb: float,
        warnings: Counter[str],
        stderr_bytes: int,
    ) -> None:
        args = self.args
        arrivals: dict[tuple[str, int], float] = {}
        duplicates = 0
        for job, seq, _, at in received["posted"]:
            if (job, seq) in arrivals:
                duplicates += 1
                arrivals[(job, seq)] = min(arrivals[(job, seq)], at)
            else:
                arrivals[(job, seq)] = at
        skipped: set[tuple[str, int]] = set()
        for job, first, count in received["skipped"]:
            skipped.update((job, seq) for seq in range(first, first + count))
        written_keys = set(written)
        posted = written_keys & set(arrivals)
        skipped_ok = (written_keys & skipped) - posted
        lost = written_keys - posted - skipped_ok
        pending = lost & pending_lines
        unaccounted = lost - pending
        phantom = set(arrivals) - written_keys
        latencies = [arrivals[k] - written[k] for k in posted]

        expected = int(args.jobs * args.rate * args.seconds)
        print()
        print(f"lines written            {len(written):>9}  (expected {expected})")
        print(f"lines posted             {len(posted):>9}  in {received['replies']} thread replies")
        print(f'lines counted as skipped {len(skipped_ok):>9}  ("N lines skipped" notes)')
        print(f"lines lost               {len(lost):>9}  (written - posted - skipped)")
        if lost:
            print(
                f"  !!! LINES LOST: {len(lost)} !!!  of which {len(pending)} were still waiting"
                f" in the bot's event outbox when the bench stopped waiting, and"
                f" {len(unaccounted)} are nowhere (neither in Slack nor pending)"
            )
            per_job = Counter(job for job, _ in lost)
            print(f"  jobs with lost lines: {len(per_job)}; most: {per_job.most_common(3)}")
        if duplicates or phantom or received["orphan_skips"]:
            print(
                f"  duplicates {duplicates}, posted lines never written {len(phantom)},"
                f" skip notes without a job {received['orphan_skips']}"
            )
        if latencies:
            first = min(arrivals[k] for k in posted) - start
            print(
                f"line-to-Slack latency    p50 {pct(latencies, 50):7.2f} s   p95"
                f" {pct(latencies, 95):7.2f} s   max {max(latencies):7.2f} s"
                f"   (first log line in Slack {first:.1f} s after writing began)"
            )
        else:
            print("line-to-Slack latency    no line was posted")
        print(f"Slack calls by method    {dict(sorted(stats['calls'].items()))}")
        print(
            f"429s received            {sum(stats['ratelimited'].values())}"
            f"  {stats['ratelimited'] or ''}"
        )
        if stats["not_ok"]:
            print(f"Slack errors (HTTP 200, ok=false) {stats['not_ok']}")
        outbox = getattr(self.bot.transport, "stats", None)
        if outbox:
            print(f"bot outbox stats         {outbox}")
        print(
            f"bot process CPU          {100 * cpu / wall:.1f}% of one core"
            f" ({cpu:.1f} s CPU over {wall:.1f} s wall, gate to end)"
        )
        print(f"bot peak RSS             {rss_mb:.1f} MB")
        states = Counter(j.state.value for j in jobs)
        ended = f"{jobs_done_at - start:.1f} s" if jobs_done_at else "not all ended"
        drained = (
            f"{drained_at - start:.1f} s"
            if drained_at
            else (f"NOT drained within --drain-timeout {args.drain_timeout:g} s")
        )
        print(f"jobs                     {dict(states)}; all ended at {ended}; relay {drained}")
        if stderr_bytes:
            print(f"  note: the jobs wrote {stderr_bytes} bytes to stderr.txt")
        if warnings:
            print("bot warnings/errors logged:")
            for shape, n in warnings.most_common(8):
                print(f"  {n:>6} x {shape}")


async def bench(args: argparse.Namespace) -> None:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        os.environ.pop(name, None)
    counting = CountingHandler()
    logging.getLogger().addHandler(counting)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "max instances reached" noise

    ctx = mp.get_context("spawn")
    fake_conn, fake_child = ctx.Pipe()
    fake = ctx.Process(target=fake_main, args=(fake_child, args.jobs + 10), daemon=True)
    fake.start()
    loop = asyncio.get_running_loop()
    slack_api, urls = await loop.run_in_executor(None, fake_conn.recv)

    async def ask(what: str) -> Any:
        fake_conn.send(what)
        return await loop.run_in_executor(None, fake_conn.recv)

    tmp = tempfile.TemporaryDirectory(prefix="streambench-")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SECRET,
        slack_mode="http",
        slack_api_url=slack_api,
        batchai_data_dir=Path(tmp.name) / "data",
        port=0,
        link_secret="bench-link-secret",
        poll_seconds=1.0,
        log_level="WARNING",
        price_refresh_hours=0,  # no calls to the Azure Retail Prices API
    )
    print(
        f"log streaming: {args.jobs} jobs x {args.rate:g} lines/s x {args.seconds:g} s into one"
        f" channel; fake Slack rate limits on; bot poll {settings.poll_seconds:g} s, post"
        f" interval {settings.slack_post_interval:g} s, {settings.slack_updates_per_minute:g}"
        " edits/min",
        flush=True,
    )
    try:
        async with running(settings, periodic=True) as bot, aiohttp.ClientSession() as http:
            try:
                await Stream(args, bot, http, (ask, iter(urls))).run(counting)
            finally:
                for job in await bot.store.list_jobs(include_deleted=True):
                    if not job.state.finished and job.layout is not None:
                        await bot.backend.terminate_job(job.id)
                bot.scheduler.shutdown()
    finally:
        with contextlib.suppress(OSError):
            fake_conn.send("stop")
        fake.join(10)
        if fake.is_alive():
            fake.terminate()
        tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="lines per second per job")
    parser.add_argument("--seconds", type=float, default=60.0, help="writing period")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="after the writing period, wait at most this long for jobs to end and the relay"
        " to drain",
    )
    parser.add_argument("--setup-timeout", type=float, default=180.0)
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
