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

With `--sweep` the N jobs are one sweep (`job create -n s --sweep "i=0,…,N-1"`): one sweep card
and one thread in the channel. The bench then also measures how stale the card is: for every
state change of every job (stored at time t), the arrival time of the first version of the
sweep card that shows the job in that state or a later one, minus t.

    .venv/bin/python bench/slack_stream_bench.py --jobs 100 --rate 20 --seconds 60
    .venv/bin/python bench/slack_stream_bench.py --jobs 100 --rate 20 --seconds 60 --sweep
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    JOB_SCRIPT,
    LINE_RE,
    FakeSlackProcess,
    MemoryTrace,
    account,
    card_staleness,
    job_config,
    open_gate,
    pending_by_kind,
    print_accounting,
    print_card_staleness,
    print_order,
    print_post_rate,
    print_slack_stats,
    state_changes,
)
from bot.bootstrap import Bot  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.lifecycle import running  # noqa: E402
from services.clusters.lifecycle import ClusterState  # noqa: E402
from services.core.events import LogSnippet  # noqa: E402
from services.jobs.lifecycle import JobState  # noqa: E402
from tests.fakes.slack import (  # noqa: E402
    BOT_TOKEN,
    form_body,
    signed_headers,
    slash_command_form,
)

SECRET = "bench-signing-secret"
CHANNEL = "C0STREAM"
USER = "U0BENCH"
CLUSTER = "c1"


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
        if args.sweep:
            values = ",".join(str(i) for i in range(args.jobs))
            config = job_config(
                "s$i", rate=args.rate, seconds=args.seconds, index="$i", jobs=args.jobs
            )
            acks = [
                await self.command(f'job create -n s -r {CLUSTER} -c {config} --sweep "i={values}"')
            ]
        else:
            acks = await self.create_jobs()
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
            f" {time.time() - t0:.1f} s (all through signed /slack/events commands"
            + (", one --sweep" if args.sweep else "")
            + ")"
        )

    async def create_jobs(self) -> list[int]:
        args = self.args
        gate = asyncio.Semaphore(10)

        async def create_job(i: int) -> int:
            async with gate:
                name = f"s{i:03d}"
                return await self.command(
                    f"job create -n {name} -r {CLUSTER} -c "
                    + job_config(
                        name, rate=args.rate, seconds=args.seconds, index=i, jobs=args.jobs
                    )
                )

        return list(await asyncio.gather(*(create_job(i) for i in range(args.jobs))))

    async def run(self, counting: CountingHandler) -> None:
        args, bot = self.args, self.bot
        trace = MemoryTrace(after=args.trace_after) if args.trace_memory else None
        if trace is not None:
            trace.start()
        await self.setup()
        start = time.time() + 1.0
        share = bot.share.share_dir("data")
        open_gate(share, start)
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
        posts = await self.ask("posts")
        order = await self.ask("order") if args.show_order else []
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
            posts=posts,
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
        if order:
            print_order(order, start=start, first=args.show_order)
        if self.args.sweep:
            await self.report_sweep_card()
        if trace is not None:
            await trace.stop()
            trace.print()

    async def report_sweep_card(self) -> None:
        """How stale the sweep card was: per state change, until a card version showed it."""
        changes = await asyncio.get_running_loop().run_in_executor(None, state_changes, self.db)
        print_card_staleness(card_staleness(changes, await self.ask("cards")))

    def report(
        self,
        *,
        written: dict[tuple[str, int], float],
        received: dict[str, Any],
        stats: dict[str, Any],
        posts: list[float],
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
        acc = account(written, received, pending_lines)
        print()
        print_accounting(acc, expected=int(args.jobs * args.rate * args.seconds), start=start)
        print_slack_stats(stats)
        print_post_rate(posts, start=start, channels=1)
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

    fake = FakeSlackProcess(args.jobs + 10)
    await fake.start()

    tmp = tempfile.TemporaryDirectory(prefix="streambench-")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SECRET,
        slack_mode="http",
        slack_api_url=fake.api_url,
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
                await Stream(args, bot, http, (fake.ask, fake.urls)).run(counting)
            finally:
                for job in await bot.store.list_jobs(include_deleted=True):
                    if not job.state.finished and job.layout is not None:
                        await bot.backend.terminate_job(job.id)
                await bot.scheduler.aclose()
    finally:
        fake.stop()
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
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="submit the jobs as one sweep (one card, one thread) and measure the card's staleness",
    )
    parser.add_argument(
        "--show-order",
        type=int,
        default=0,
        metavar="N",
        help="print what Slack accepted before the first log snippet, and the first N posts",
    )
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="print RSS over time and tracemalloc's top allocations at the peak (slows the bot)",
    )
    parser.add_argument(
        "--trace-after",
        type=float,
        default=0.0,
        help="with --trace-memory: sample RSS from the start, trace allocations only after this"
        " many seconds (tracing slows the bot; start it where the growth is)",
    )
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
