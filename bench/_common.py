"""Shared by the streaming benches: the fake Slack in a child process, the writing job, and the
accounting of every written line (posted, skipped, pending, lost)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import re
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.slack import FakeSlack  # noqa: E402

LINE_RE = re.compile(r"^(s\d+) (\d+) (\d+\.\d+)$")
# A row of a sweep card: the job's name, then its state after the values (sweepviews._row).
CARD_ROW_RE = re.compile(r"^(?::trophy: )?[`*]([a-z]\w*-\d+)[`*][^·\n]* · (?::\w+: )?(\w+)", re.M)
CARD_HEAD_RE = re.compile(r":bar_chart: sweep \*([^*]+)\*")
STATE_ORDER = ["pending_approval", "queued", "preparing", "running", "terminating", "ended"]
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


def job_config(name: str, *, rate: float, seconds: float, index: int | str, jobs: int) -> str:
    """The job.json of one writer (the share is mounted at `afs`, job.py is on it); a sweep's
    gives `$i` for the name's number and the index (each job its own value)."""
    command = (
        f"{sys.executable} $AZ_BATCHAI_MOUNT_ROOT/afs/job.py {name} {rate} {seconds} {index} {jobs}"
    )
    spec = {
        "properties": {
            "nodeCount": 1,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            "customToolkitSettings": {"commandLine": command},
        }
    }
    return json.dumps(spec, separators=(",", ":"))


def open_gate(share: Path, start: float) -> None:
    (share / "gate.tmp").write_text(f"{start:.6f}")
    (share / "gate.tmp").replace(share / "gate")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def pending_by_kind(db: Path) -> dict[str, int]:
    """Undelivered events by kind, read on a separate SQLite connection (WAL: no blocking).

    Every connection here is closed explicitly: `with sqlite3.connect(...)` only commits, and on
    Python 3.11 a connection and its statement cache form a cycle, so an unclosed one (and its
    page cache, up to 2 MB, in the executor thread's malloc arena) waits for a full collection.
    slack_stream_bench.py runs the bot in this process and asks this twice a second while
    draining: that was the 780-846 MB "bot" peak, the bench measuring itself."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute(
            "SELECT kind, count(*) FROM events WHERE delivered_at IS NULL GROUP BY kind"
        ).fetchall()
    return {str(kind): int(n) for kind, n in rows}


def pending_lines(db: Path) -> set[tuple[str, int]]:
    """(job, seq) of every line still in an undelivered log snippet."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute(
            "SELECT payload FROM events WHERE delivered_at IS NULL AND kind = 'log_snippet'"
        ).fetchall()
    found: set[tuple[str, int]] = set()
    for (payload,) in rows:
        for line in json.loads(payload).get("lines", ()):
            if (m := LINE_RE.match(line)) is not None:
                found.add((m.group(1), int(m.group(2))))
    return found


def written_lines(stdout_files: Iterator[Path]) -> dict[tuple[str, int], float]:
    """(job, seq) -> write time, read back from the jobs' stdout.txt files."""
    written: dict[tuple[str, int], float] = {}
    for stdout in stdout_files:
        for line in stdout.read_text(errors="replace").splitlines():
            if (m := LINE_RE.match(line)) is not None:
                written[(m.group(1), int(m.group(2)))] = float(m.group(3))
    return written


def state_changes(db: Path) -> list[tuple[str, str, float]]:
    """(job name, new state, stored at) of every submission and state change of a sweep's
    jobs, from the events table (read on a separate SQLite connection)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        names = dict(conn.execute("SELECT id, name FROM jobs WHERE sweep_id IS NOT NULL"))
        rows = conn.execute(
            "SELECT kind, job_id, payload, created_at FROM events"
            " WHERE kind IN ('job_state_changed', 'job_submitted')"
        ).fetchall()
    changes = []
    for kind, job_id, payload, created in rows:
        state = "queued" if kind == "job_submitted" else json.loads(payload).get("new", "")
        at = datetime.fromisoformat(str(created)).replace(tzinfo=UTC).timestamp()
        if job_id in names:
            changes.append((str(names[job_id]), state, at))
    return changes


def _rank(state: str) -> int:
    return STATE_ORDER.index(state if state in STATE_ORDER else "ended")


@dataclass
class CardStaleness:
    """How stale the sweep cards were: per state change of a sweep's job (stored at t), the
    arrival of the first version of its sweep's card that shows the job in that state or a later
    one, minus t."""

    stale: list[float]
    never: int  # state changes no accepted card version ever showed
    changes: int
    jobs: int
    cards: int  # sweep cards (first posts)
    versions: int  # accepted versions of them (posts + edits)
    other_tops: int  # top-level messages that are not a sweep card


def card_staleness(
    changes: list[tuple[str, str, float]], versions: list[tuple[float, str, str]]
) -> CardStaleness:
    cards = [(at, ts, text) for at, ts, text in versions if CARD_HEAD_RE.search(text)]
    shown: dict[str, list[tuple[float, int]]] = {}  # job -> (arrival, rank shown), in order
    for at, _, text in sorted(cards):
        for name, state in CARD_ROW_RE.findall(text):
            shown.setdefault(name, []).append((at, _rank(state)))
    stale, never = [], 0
    for name, state, at in changes:
        wanted = _rank(state)
        seen = next((t for t, rank in shown.get(name, ()) if t >= at and rank >= wanted), None)
        if seen is None:
            never += 1
        else:
            stale.append(seen - at)
    return CardStaleness(
        stale=stale,
        never=never,
        changes=len(changes),
        jobs=len({name for name, _, _ in changes}),
        cards=len({ts for _, ts, _ in cards}),
        versions=len(cards),
        other_tops=len(versions) - len(cards),
    )


def print_card_staleness(s: CardStaleness) -> None:
    if not s.stale:
        print(f"sweep card staleness     no state change was shown ({s.never} never shown)")
        return
    print(
        f"sweep card staleness p95 {pct(s.stale, 95):7.2f} s   p50 {pct(s.stale, 50):7.2f} s"
        f"   max {max(s.stale):7.2f} s   over {len(s.stale)} state changes of {s.jobs} jobs"
        f" (goal: p95 <= 15 s); {s.never} never shown"
    )
    print(
        f"sweep cards              {s.cards} card(s), {s.versions} versions accepted"
        f" ({s.cards} posts + {s.versions - s.cards} edits); {s.other_tops} other top-level"
        " messages"
    )


# --------------------------------------------------------------------------------------------
# the fake Slack, in its own process (rate limits on, wall clock: `Call.at` is an arrival time)
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
            elif request == "cards":
                conn.send(_card_versions(fake))
            elif request == "posts":  # arrival of every post Slack accepted
                conn.send([c.at for c in fake.calls_to("chat.postMessage", ok=True)])
            elif request == "order":  # every post Slack accepted, in order: what it was
                conn.send(_post_order(fake))


class FakeSlackProcess:
    """The fake Slack in a spawned child; `ask("progress" | "stats" | "snippets")`."""

    def __init__(self, response_urls: int) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=fake_main, args=(child, response_urls), daemon=True)
        self.api_url = ""
        self.urls: Iterator[str] = iter(())

    async def start(self) -> None:
        self._proc.start()
        loop = asyncio.get_running_loop()
        self.api_url, urls = await loop.run_in_executor(None, self._conn.recv)
        self.urls = iter(urls)

    async def ask(self, what: str) -> Any:
        self._conn.send(what)
        return await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()


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


def post_kind(thread: bool, text: str) -> str:
    """What a post was, from its text: the bench's view of the channel's order."""
    if not thread:
        return "card"
    if HEADER_RE.search(text) or SKIPPED_RE.search(text):
        return "snippet"
    for word in ("submitted", "queued", "preparing", "running", "receipt", "succeeded", "failed"):
        if word in text.lower():
            return word
    return "other"


def _post_order(fake: FakeSlack) -> list[tuple[float, str, str]]:
    """(arrival, kind, first words) of every post Slack accepted, in arrival order."""
    out = []
    for call in fake.calls_to("chat.postMessage", ok=True):
        texts: list[str] = []
        _collect(call.json_arg("blocks") or [], texts)
        text = " ".join(texts) or str(call.args.get("text") or "")
        kind = post_kind(bool(call.args.get("thread_ts")), text)
        out.append((call.at, kind, " ".join(text.split())[:90]))
    return out


def _card_versions(fake: FakeSlack) -> list[tuple[float, str, str]]:
    """Every version of every top-level message Slack accepted: (arrival, ts, its text)."""
    versions = []
    for call in fake.calls:
        if not call.ok or call.method not in ("chat.postMessage", "chat.update"):
            continue
        if call.method == "chat.postMessage" and call.args.get("thread_ts"):
            continue
        ts = str(call.args.get("ts") or (call.response or {}).get("ts") or "")
        texts: list[str] = []
        _collect(call.json_arg("blocks") or [], texts)
        versions.append((call.at, ts, "\n".join(texts)))
    return versions


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
# accounting
# --------------------------------------------------------------------------------------------


@dataclass
class Accounting:
    """The fate of every written line."""

    written: set[tuple[str, int]]
    posted: set[tuple[str, int]]
    skipped: set[tuple[str, int]]
    lost: set[tuple[str, int]]
    pending: set[tuple[str, int]]  # lost, but still waiting in the bot's outbox
    duplicates: int  # posts of a line already posted
    phantom: set[tuple[str, int]]  # posted, never written
    orphan_skips: int
    replies: int
    latencies: list[float] = field(default_factory=list)
    first_arrival: float | None = None


def account(
    written: dict[tuple[str, int], float],
    received: dict[str, Any],
    waiting: set[tuple[str, int]],
) -> Accounting:
    arrivals: dict[tuple[str, int], float] = {}
    duplicates = 0
    for job, seq, _, at in received["posted"]:
        if (job, seq) in arrivals:
            duplicates += 1
            arrivals[(job, seq)] = min(arrivals[(job, seq)], at)
        else:
            arrivals[(job, seq)] = at
    covered: set[tuple[str, int]] = set()
    for job, first, count in received["skipped"]:
        covered.update((job, seq) for seq in range(first, first + count))
    keys = set(written)
    posted = keys & set(arrivals)
    skipped = (keys & covered) - posted
    lost = keys - posted - skipped
    return Accounting(
        written=keys,
        posted=posted,
        skipped=skipped,
        lost=lost,
        pending=lost & waiting,
        duplicates=duplicates,
        phantom=set(arrivals) - keys,
        orphan_skips=int(received["orphan_skips"]),
        replies=int(received["replies"]),
        latencies=[arrivals[k] - written[k] for k in posted],
        first_arrival=min((arrivals[k] for k in posted), default=None),
    )


def print_accounting(acc: Accounting, *, expected: int, start: float) -> None:
    print(f"lines written            {len(acc.written):>9}  (expected {expected})")
    print(f"lines posted             {len(acc.posted):>9}  in {acc.replies} thread replies")
    print(f'lines counted as skipped {len(acc.skipped):>9}  ("N lines skipped" notes)')
    print(f"lines lost               {len(acc.lost):>9}  (written - posted - skipped)")
    if acc.lost:
        unaccounted = len(acc.lost) - len(acc.pending)
        print(
            f"  !!! LINES LOST: {len(acc.lost)} !!!  of which {len(acc.pending)} were still"
            f" waiting in the bot's event outbox when the bench stopped waiting, and"
            f" {unaccounted} are nowhere (neither in Slack nor pending)"
        )
        per_job = Counter(job for job, _ in acc.lost)
        print(f"  jobs with lost lines: {len(per_job)}; most: {per_job.most_common(3)}")
    print(f"lines posted twice       {acc.duplicates:>9}")
    if acc.phantom or acc.orphan_skips:
        print(
            f"  posted lines never written {len(acc.phantom)},"
            f" skip notes without a job {acc.orphan_skips}"
        )
    if acc.latencies and acc.first_arrival is not None:
        lat = acc.latencies
        print(
            f"line-to-Slack latency    p50 {pct(lat, 50):7.2f} s   p95 {pct(lat, 95):7.2f} s"
            f"   max {max(lat):7.2f} s   (first log line in Slack"
            f" {acc.first_arrival - start:.1f} s after writing began)"
        )
    else:
        print("line-to-Slack latency    no line was posted")


def print_slack_stats(stats: dict[str, Any]) -> None:
    print(f"Slack calls by method    {dict(sorted(stats['calls'].items()))}")
    print(
        f"429s received            {sum(stats['ratelimited'].values())}"
        f"  {stats['ratelimited'] or ''}"
    )
    if stats["not_ok"]:
        print(f"Slack errors (HTTP 200, ok=false) {stats['not_ok']}")


def print_order(order: list[tuple[float, str, str]], *, start: float, first: int) -> None:
    """What went out before the first log snippet (by kind), then the first posts in order."""
    before = Counter()
    for _, kind, _ in order:
        if kind == "snippet":
            break
        before[kind] += 1
    print(f"posts before the first snippet: {sum(before.values())} {dict(before)}")
    for at, kind, text in order[:first]:
        print(f"  {at - start:7.1f}s {kind:<9} {text[:70]}")


def print_post_rate(posts: list[float], *, start: float, channels: int) -> None:
    """How many posts a second Slack accepted, from the gate to the last post, and in the
    busiest minute; the fake allows ~1 post/s per channel."""
    after = sorted(t for t in posts if t >= start)
    if not after:
        print("Slack posts per second   no post after the gate")
        return
    span = max(after[-1] - start, 1.0)
    busiest, lo = 0, 0
    for hi, t in enumerate(after):
        while after[lo] < t - 60:
            lo += 1
        busiest = max(busiest, hi - lo + 1)
    window = min(60.0, span)
    print(
        f"Slack posts per second   {len(after) / span:.2f} ({len(after)} posts from the gate to the"
        f" last post, {span:.0f} s); busiest minute {busiest / window:.2f}; {channels} channel(s)"
        f" allow ~{channels}/s"
    )


def proc_status(pid: int | str = "self") -> dict[str, str]:
    """The fields of /proc/<pid>/status (VmRSS, VmHWM, Threads ...), as text."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = row.partition(":")
            fields[name] = value.strip()
    return fields


def _kb(value: str) -> float:
    return float(value.split()[0]) / 1024 if value else 0.0


class MemoryTrace:
    """`--trace-memory`: RSS and thread count sampled from /proc/self/status every `every`
    seconds, and tracemalloc's allocations by traceback at the highest traced peak seen.

    tracemalloc counts Python allocations only; the gap between it and RSS is C memory (SQLite
    page caches, thread stacks, malloc arenas kept by freed-but-fragmented heaps)."""

    def __init__(self, *, every: float = 2.0, frames: int = 12, after: float = 0.0) -> None:
        import tracemalloc

        self._tm = tracemalloc
        self._every = every
        self._frames = frames
        self._after = after  # seconds of RSS sampling before tracemalloc starts (it slows)
        self._rss_high = 0.0
        self.samples: list[tuple[float, float, float, int]] = []  # (t, rss MB, traced MB, threads)
        self._best = 0
        self._snapshot: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self._after:
            self._tm.start(self._frames)
        self._t0 = time.time()
        self._task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        while True:
            if not self._tm.is_tracing() and time.time() - self._t0 >= self._after:
                self._tm.start(self._frames)
            status = proc_status()
            current, _ = self._tm.get_traced_memory()
            threads = int(status.get("Threads", "0") or 0)
            rss = _kb(status.get("VmRSS", ""))
            self.samples.append((time.time() - self._t0, rss, current / 2**20, threads))
            # a snapshot costs: only on a new high of the traced heap or of RSS
            if self._tm.is_tracing() and (current > self._best * 1.05 or rss > self._rss_high):
                self._best = max(self._best, current)
                self._rss_high = rss * 1.05
                self._snapshot = self._tm.take_snapshot()
                self._snapshot_at = (time.time() - self._t0, rss, current / 2**20)
            await asyncio.sleep(self._every)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def print(self, *, top: int = 12, points: int = 24) -> None:
        if not self.samples:
            return
        _, peak_traced = self._tm.get_traced_memory()
        status = proc_status()
        print(
            f"memory: peak RSS {_kb(status.get('VmHWM', '')):.1f} MB, traced peak"
            f" {peak_traced / 2**20:.1f} MB (Python objects), threads now {status.get('Threads')}"
        )
        step = max(1, len(self.samples) // points)
        print("  RSS timeline (t s: RSS MB / traced MB / threads):")
        shown = self.samples[::step]
        for i in range(0, len(shown), 4):
            print(
                "   "
                + "   ".join(
                    f"{t:6.0f}: {rss:5.0f}/{tr:4.0f}/{th:<3d}"
                    for t, rss, tr, th in shown[i : i + 4]
                )
            )
        if self._snapshot is not None:
            stats = self._snapshot.statistics("traceback")
            total = sum(s.size for s in stats) / 2**20
            t, rss, traced = self._snapshot_at
            print(
                f"  top allocations at the last high (t={t:.0f} s: RSS {rss:.0f} MB, traced"
                f" {traced:.0f} MB; {total:.1f} MB live), by traceback:"
            )
            for stat in stats[:top]:
                frames = [
                    f"{Path(f.filename).name}:{f.lineno}"
                    for f in stat.traceback
                    if "site-packages" not in f.filename and "/lib/python" not in f.filename
                ][-4:] or [f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback][-2:]
                where = " < ".join(reversed(frames))
                print(f"    {stat.size / 2**20:7.1f} MB {stat.count:>8} blocks  {where}")
        self._tm.stop()
