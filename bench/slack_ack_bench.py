"""Slash-command ack latency: the real bot in HTTP mode vs a bare Bolt app that only acks.

Three kinds of process, so that no target shares an event loop with the load or with Slack:

- the fake Slack Web API (rate limits off) that takes the bot's response_url answers;
- one process per target: (a) the bot, `bot.lifecycle.running(settings)` in HTTP mode with its
  periodic work on, (b) a bare `AsyncApp` whose `/batchai` listener only acks, served by its own
  aiohttp app through `slack_bolt.adapter.aiohttp`;
- this process: the load generator (aiohttp client), real signed HTTP POSTs to `/slack/events`.

Latency = from sending the request (open loop: from when it was due) to having read the whole
HTTP response (the ack). Each target gets a warm-up, then one continuous run whose first
requests are not counted (in a closed loop the first wave leaves together and queues behind
itself, as no later wave does: with 2,000 requests those 50 alone made the bare app's p99).
Closed loop (the default): `--concurrency` senders, each sending again as soon as it has read
its ack, so the target is saturated and its latency is bound by its requests a second. Open
loop (`--rate`): Poisson arrivals at that rate whatever the acks do, as a workspace's users type.
The bot gets a mix of fast commands (`cluster list -o table`, `help`) and a slower one
(`cluster show -n c1`). The bot answers a quick command in the ack itself
(handlers/slack/slash.py); an ack without the answer ("working on it…") is counted as owed, and
the run waits for every owed answer to reach the fake's response_urls before it reads the bot's
CPU.

Printed: p50/p99 of both targets in the same run, CPU per command (the whole process, every
thread; the work after the ack included), where the answers came (in the ack, on response_url)
and the bot's periodic runs skipped under the load.

    .venv/bin/python bench/slack_ack_bench.py --requests 2000
    .venv/bin/python bench/slack_ack_bench.py --requests 3000 --rate 300   # open loop
    .venv/bin/python bench/slack_ack_bench.py --requests 500 --profile ack.prof
    .venv/bin/python bench/slack_ack_bench.py --requests 500 --calls   # work per command
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from handlers.slack.slash import WORKING  # noqa: E402
from tests.fakes.slack import (  # noqa: E402
    BOT_TOKEN,
    FakeSlack,
    form_body,
    signed_headers,
    slash_command_form,
)

SECRET = "bench-signing-secret"
CHANNEL = "C0BENCH"
USER = "U0BENCH"
WARMUP = 10
OPEN_LOOP_IN_FLIGHT = 1000  # connections an open-loop run may hold to one target
COMMANDS = ("cluster list -o table", "help", "cluster show -n c1")
CLUSTER = "cluster create -n c1 -s STANDARD_NC6 -t 2 --afs-name data --afs-mount-path afs"


# --------------------------------------------------------------------------------------------
# child processes: they serve, and answer the parent's questions over a pipe
# --------------------------------------------------------------------------------------------


async def _serve_pipe(conn: Connection, answers: dict[str, Any]) -> None:
    """Answer "name" requests from the parent until it says "stop"."""
    loop = asyncio.get_running_loop()
    while True:
        request = await loop.run_in_executor(None, conn.recv)
        if request == "stop":
            return
        value = answers.get(request)
        conn.send(value() if callable(value) else value)


def fake_main(conn: Connection, urls: int) -> None:
    asyncio.run(_fake(conn, urls))


async def _fake(conn: Connection, urls: int) -> None:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as fake:
        minted = [fake.response_url() for _ in range(urls)]
        conn.send((fake.base_url, minted))
        await _serve_pipe(
            conn,
            {
                "responses": lambda: len(fake.responses),
                "stats": lambda: {
                    "responses": len(fake.responses),
                    "bad_responses": sum(1 for r in fake.responses if r.status != 200),
                    "calls": dict(Counter(c.method for c in fake.calls)),
                },
            },
        )


def target_main(
    conn: Connection, kind: str, slack_api: str, profile: str | None, calls: bool
) -> None:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        os.environ.pop(name, None)
    if kind == "bot":
        asyncio.run(_bot(conn, slack_api, profile, calls))
    else:
        asyncio.run(_bare(conn, slack_api))


class _Calls:
    """Python function calls (and calls into C) on the event loop's thread: a measure of the
    work per command that, unlike CPU time, does not grow when other processes share the
    machine's cores. The hook slows the bot down: the latencies of such a run mean nothing."""

    def __init__(self) -> None:
        self.count = 0

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            self.count += 1

    def start(self) -> None:
        self.count = 0
        sys.setprofile(self._hook)

    def stop(self) -> None:
        sys.setprofile(None)


async def _bot(conn: Connection, slack_api: str, profile: str | None, calls: bool) -> None:
    from bot.config import Settings
    from bot.lifecycle import running

    profiler = cProfile.Profile(time.thread_time)  # CPU of the event loop, not waits
    counter = _Calls()
    with tempfile.TemporaryDirectory(prefix="ackbench-") as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            slack_bot_token=BOT_TOKEN,
            slack_signing_secret=SECRET,
            slack_mode="http",
            slack_api_url=slack_api,
            batchai_data_dir=Path(tmp) / "data",
            port=0,
            link_secret="bench-link-secret",
            poll_seconds=1.0,
            log_level="WARNING",
            price_refresh_hours=0,  # no calls to the Azure Retail Prices API
        )
        skips = _Skips()
        logging.getLogger("apscheduler").addHandler(skips)
        async with running(settings) as bot:
            bot.share.create_share("data")

            async def cluster_ready() -> bool:
                return await bot.store.get_cluster("c1") is not None

            stalls = _Stalls()
            watch = asyncio.create_task(stalls.watch())
            conn.send(f"{bot.web_url}/slack/events")
            loop = asyncio.get_running_loop()
            # The parent creates c1 through Slack; "ready" waits for the cluster to exist.
            while True:
                request = await loop.run_in_executor(None, conn.recv)
                if request == "ready":
                    deadline = time.monotonic() + 60
                    while not await cluster_ready() and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    conn.send(await cluster_ready())
                elif request == "cpu":
                    conn.send(_cpu())
                elif request == "stalls":
                    conn.send(stalls.take())
                elif request == "periodic":
                    follow_ups = getattr(bot.scheduler, "follow_ups", None)  # not before
                    conn.send((skips.count, dict(follow_ups) if follow_ups is not None else "-"))
                elif request == "profile-on":
                    if profile:
                        profiler.enable()
                    if calls:
                        counter.start()
                    conn.send(True)
                elif request == "profile-off":
                    if calls:
                        counter.stop()
                    if profile:
                        profiler.disable()
                        profiler.dump_stats(profile)
                    conn.send(True)
                elif request == "calls":
                    conn.send(counter.count)
                elif request == "stop":
                    watch.cancel()
                    return


class _Skips(logging.Handler):
    """Counts the periodic runs APScheduler says it skipped or missed, from its own warnings
    (so the figure means the same for any version of the bot's scheduler)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "skipped: maximum number of running instances" in message or "was missed" in message:
            self.count += 1


class _Stalls:
    """How late the event loop runs a 5 ms timer: the longest stalls, for the tail."""

    def __init__(self) -> None:
        self.worst: list[float] = []

    async def watch(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            self.worst.append(time.perf_counter() - t0 - 0.005)
            self.worst = sorted(self.worst)[-5:]

    def take(self) -> list[float]:
        worst, self.worst = self.worst, []
        return worst


def _cpu() -> tuple[float, float]:
    """CPU seconds of the whole process (every thread: aiosqlite runs one per connection) and
    of this thread, the event loop's."""
    return time.process_time(), time.thread_time()


async def _bare(conn: Connection, slack_api: str) -> None:
    from aiohttp import web
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    app = AsyncApp(
        client=AsyncWebClient(token=BOT_TOKEN, base_url=slack_api), signing_secret=SECRET
    )

    @app.command("/batchai")
    async def h(ack: Any) -> None:
        await ack()

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    web_app = web.Application()
    web_app.router.add_post("/slack/events", events)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    conn.send(f"http://127.0.0.1:{port}/slack/events")
    try:
        await _serve_pipe(conn, {"ready": True, "cpu": _cpu})
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------------------------
# the load generator
# --------------------------------------------------------------------------------------------


def answered_in_ack(raw: bytes) -> bool:
    """Whether an ack carries the command's answer (text or blocks other than "working on it…"):
    otherwise the answer is owed on the command's response_url."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return bool(raw.strip())  # a plain-text ack is shown as the answer too
    return isinstance(body, dict) and bool(
        body.get("blocks") or body.get("text") not in (None, "", WORKING)
    )


class Load:
    def __init__(self, http: aiohttp.ClientSession, urls: list[str]) -> None:
        self.http = http
        self._urls = iter(urls)
        self._triggers = 0
        self.owed: Counter[str] = Counter()  # target url -> acks without the answer
        self.in_ack: Counter[str] = Counter()  # target url -> acks carrying the answer

    def body(self, text: str) -> bytes:
        self._triggers += 1
        form = slash_command_form(
            text,
            user_id=USER,
            channel_id=CHANNEL,
            response_url=next(self._urls),
            trigger_id=f"{self._triggers}.bench.trigger",
        )
        return form_body(form)

    async def one(
        self, url: str, text: str, due: float | None = None
    ) -> tuple[str, float, int | str]:
        """One signed POST; the latency runs from `due` (open loop) or from sending."""
        body = self.body(text)
        headers = signed_headers(body, SECRET)
        raw = b""
        t0 = time.perf_counter() if due is None else due
        try:
            async with self.http.post(url, data=body, headers=headers) as response:
                raw = await response.read()
                status: int | str = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            status = type(err).__name__
        latency = time.perf_counter() - t0
        if status == 200 and answered_in_ack(raw):
            self.in_ack[url] += 1
        else:
            self.owed[url] += 1
        return text, latency, status

    async def run(
        self, url: str, texts: list[str], *, concurrency: int, rate: float | None = None
    ) -> tuple[list[tuple[str, float, int | str]], float]:
        """Send every text to `url`: the results in order, and the seconds they took.

        Closed loop (no rate): `concurrency` senders, each sending its next request as soon as
        it has read its ack, so that that many are always in flight (the target is saturated
        and its latency is bound by its requests a second). Open loop (`rate`): requests leave
        at Poisson arrivals, `rate` a second on average, whatever the acks do, as a workspace's
        users type; each latency runs from when its request was due, so that a stalled target
        is not measured only by the requests it let through."""
        results: list[tuple[str, float, int | str]] = [("", 0.0, "unsent")] * len(texts)
        t0 = time.perf_counter()
        if rate is None:
            todo = iter(enumerate(texts))

            async def sender() -> None:
                for i, text in todo:
                    results[i] = await self.one(url, text)

            await asyncio.gather(*(sender() for _ in range(concurrency)))
        else:
            arrivals = random.Random(16)
            due, sent = t0, []
            for i, text in enumerate(texts):
                due += arrivals.expovariate(rate)
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                sent.append(asyncio.ensure_future(self._at(results, i, url, text, due)))
            await asyncio.gather(*sent)
        return results, time.perf_counter() - t0

    async def _at(
        self, results: list[tuple[str, float, int | str]], i: int, url: str, text: str, due: float
    ) -> None:
        results[i] = await self.one(url, text, due)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def summary(
    name: str,
    results: list[tuple[str, float, int | str]],
    sent: int,
    wall: float,
    cpu: tuple[float, float],
    client: float,
) -> dict[str, float]:
    """Latencies of the counted requests; requests a second and CPU over all that were sent."""
    lat = [r[1] for r in results]
    errors = [r for r in results if r[2] != 200]
    p50, p99 = pct(lat, 50), pct(lat, 99)
    print(
        f"{name:<10} n={len(results):<4} p50 {ms(p50)}  p99 {ms(p99)}  max {ms(max(lat))}"
        f"  {sent / wall:7.1f} req/s  errors {len(errors)}"
        f"  target CPU {cpu[0] * 1000 / sent:.2f} ms/req"
        f" (event loop thread {cpu[1] * 1000 / sent:.2f})"
        f"  (load generator CPU {100 * client / wall:.0f}%)"
    )
    if errors:
        print(f"           non-200: {dict(Counter(str(r[2]) for r in errors))}")
    return {"p50": p50, "p99": p99, "errors": len(errors), "cpu": cpu[0] * 1000 / sent}


async def bench(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    # The first requests of each measured run are sent but not counted (`lead`): in a closed
    # loop the first wave leaves together and queues behind itself, as no later wave does.
    lead = max(50, round(args.rate)) if args.rate else 2 * args.concurrency
    needed = 2 * (args.requests + WARMUP + lead) + 10
    fake_conn, fake_child = ctx.Pipe()
    fake = ctx.Process(target=fake_main, args=(fake_child, needed), daemon=True)
    fake.start()
    loop = asyncio.get_running_loop()
    slack_api, urls = await loop.run_in_executor(None, fake_conn.recv)
    targets: dict[str, tuple[Any, Connection, str]] = {}
    try:
        for kind in ("bot", "bare"):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=target_main,
                args=(child, kind, slack_api, args.profile, args.calls),
                daemon=True,
            )
            proc.start()
            url = await loop.run_in_executor(None, parent.recv)
            targets[kind] = (proc, parent, url)

        async def ask(conn: Connection, what: str) -> Any:
            conn.send(what)
            return await loop.run_in_executor(None, conn.recv)

        # A pool per target (kept alive across the other's run): limit= would be shared.
        in_flight = OPEN_LOOP_IN_FLIGHT if args.rate else args.concurrency
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=in_flight)
        async with aiohttp.ClientSession(connector=connector) as http:
            load = Load(http, urls)
            bot_url, bare_url = targets["bot"][2], targets["bare"][2]
            _, _, status = await load.one(bot_url, CLUSTER)
            if status != 200 or not await ask(targets["bot"][1], "ready"):
                raise SystemExit(f"could not create cluster c1 in the bot (ack {status})")

            async def settle() -> None:
                """Wait until the bot's answers owed on response_url reached the fake."""
                deadline = time.monotonic() + 30
                while await ask(fake_conn, "responses") < load.owed[bot_url]:
                    if time.monotonic() > deadline:
                        print("warning: the bot still owes response_url answers")
                        return
                    await asyncio.sleep(0.05)

            commands = tuple(args.commands) or COMMANDS
            mix = [commands[i % len(commands)] for i in range(args.requests)]
            warm = [commands[i % len(commands)] for i in range(WARMUP)]
            await load.run(bot_url, warm, concurrency=min(WARMUP, args.concurrency))
            await load.run(bare_url, ["help"] * WARMUP, concurrency=min(WARMUP, args.concurrency))
            await settle()
            in_ack0, owed0 = load.in_ack[bot_url], load.owed[bot_url]

            shape = (
                f"Poisson arrivals at {args.rate:g} a second (open loop)"
                if args.rate
                else f"{args.concurrency} in flight (closed loop)"
            )
            print(
                f"slash-command ack latency: {args.requests} signed POSTs to /slack/events,"
                f" {shape}, after {WARMUP} warm-up requests per target and {lead} more sent"
                " first in the same run, not counted"
            )
            figures: dict[str, dict[str, float]] = {}
            for kind, texts in (("bot", mix), ("bare Bolt", ["help"] * args.requests)):
                texts = [texts[i % len(texts)] for i in range(lead)] + texts
                proc, conn, url = targets["bot" if kind == "bot" else "bare"]
                if kind == "bot":
                    skipped0, _ = await ask(conn, "periodic")
                    await ask(conn, "stalls")
                    await ask(conn, "profile-on")
                cpu0 = await ask(conn, "cpu")
                client0 = time.process_time()
                sent, wall = await load.run(
                    url, texts, concurrency=args.concurrency, rate=args.rate
                )
                results = sent[lead:]
                client = time.process_time() - client0
                if kind == "bot":
                    drain0 = time.perf_counter()
                    await settle()  # the work after the ack is the bot's cost too
                    drain = time.perf_counter() - drain0
                cpu1 = await ask(conn, "cpu")
                cpu = (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
                if kind == "bot":
                    await ask(conn, "profile-off")
                    if args.calls:
                        calls = await ask(conn, "calls")
                    skipped, follow_ups = await ask(conn, "periodic")
                    stalls = await ask(conn, "stalls")
                figures[kind] = summary(kind, results, len(sent), wall, cpu, client)
                if kind == "bot":
                    by_text: dict[str, list[float]] = defaultdict(list)
                    for text, lat, _ in results:
                        by_text[text].append(lat)
                    for text, lats in by_text.items():
                        print(
                            f"  {text:<24} n={len(lats):<4} p50 {ms(pct(lats, 50))}"
                            f"  p99 {ms(pct(lats, 99))}"
                        )
            if args.calls:
                print(
                    "Python calls on the bot's event loop:"
                    f" {calls / (args.requests + lead):.0f} per command (the work after the ack"
                    " included; with --calls the latencies above mean nothing)"
                )
            bot, bare = figures["bot"], figures["bare Bolt"]
            print(
                f"ratio bot/bare: p50 x{bot['p50'] / bare['p50']:.2f}"
                f"  p99 x{bot['p99'] / bare['p99']:.2f}"
            )
            print(f"errors (non-200): bot {int(bot['errors'])}, bare Bolt {int(bare['errors'])}")
            print(
                f"bot's periodic work during its load: {skipped - skipped0} runs skipped;"
                f" rounds run late, right after the one before (since start): {follow_ups or 0}"
            )
            print(
                f"bot's answers: {load.in_ack[bot_url] - in_ack0} in the ack,"
                f" {load.owed[bot_url] - owed0} owed on response_url;"
                f" the last owed one reached Slack {drain:.2f} s after the last ack"
            )
            print("bot's event loop, longest stalls: " + ", ".join(ms(s) for s in stalls))
            goals = (
                f"p99 x{bot['p99'] / bare['p99']:.2f} (goal <= x1.5),"
                f" CPU {bot['cpu']:.2f} ms/command (goal <= 1),"
                f" skipped {skipped - skipped0} (goal 0)"
            )
            print(f"goals: {goals}")
            stats = await ask(fake_conn, "stats")
            print(
                f"fake Slack: {stats['responses']} response_url answers"
                f" ({stats['bad_responses']} refused), Web API calls {stats['calls']}"
            )
    finally:
        for proc, conn, _ in targets.values():
            with contextlib.suppress(OSError):
                conn.send("stop")
            proc.join(15)
            if proc.is_alive():
                proc.terminate()
        with contextlib.suppress(OSError):
            fake_conn.send("stop")
        fake.join(10)
        if fake.is_alive():
            fake.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--rate",
        type=float,
        metavar="PER_SECOND",
        help="open loop: send at Poisson arrivals of this rate, whatever the acks do"
        " (default: closed loop, --concurrency in flight)",
    )
    parser.add_argument(
        "--command",
        dest="commands",
        action="append",
        default=[],
        metavar="TEXT",
        help="send the bot only these commands, in turn (repeatable; default: the mix above)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="write a cProfile of the bot's event loop under the load to FILE (pstats format)",
    )
    parser.add_argument(
        "--calls",
        action="store_true",
        help="count the Python calls on the bot's event loop per command (load-independent)",
    )
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
