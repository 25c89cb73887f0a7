"""Crash recovery: `kill -9` the real bot in the middle of 20 streaming jobs, a sweep of 3 and
3 pending approvals, start it again on the same data dir, and check what Slack received.

The bot is `python -m bot run` in HTTP mode, a real subprocess; Slack is the fake Web API in this
process; commands and clicks are signed requests to the bot's /slack/events. After the restart:
exactly one completion receipt per job, every log line 1..N of every job in its thread exactly
once (shown, or counted in an "N lines skipped" note), one status card per job that was edited,
never posted again, and every approval that was pending at the crash decided by a click, once;
the sweep has one card, every line of its jobs once in its one thread, one summary receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from bot.outbox import SlackOutbox
from handlers import views
from handlers.views import Message as ViewMessage
from handlers.views import section
from services.core.clock import utcnow
from services.core.errors import TransientError
from services.store import SqlStore
from tests.fakes.slack import (
    BOT_TOKEN,
    FakeSlack,
    Message,
    block_actions_payload,
    form_body,
    interactive_body,
    signed_headers,
    slash_command_form,
    view_submission_payload,
)
from tests.slack.conftest import answer_of

ROOT = Path(__file__).resolve().parents[1]
SECRET = "restart-signing-secret"
CHANNEL = "C0RESTART"
APPROVALS = "C0APPROVE"
ALICE, BOB, BOSS = "U0ALICE", "U0BOB", "U0BOSS"
RUNNING_JOBS = 20
TIMEOUT = 150.0  # generous: a loaded 2-core machine; nothing here asserts on time
POLICY = {
    "default_limit_usd": 50,
    "user_limits": {BOB: 0},  # every job of Bob's needs approval
    "approvers": [BOSS],
    "approvals_channel": APPROVALS,
}
# Numbered lines at a steady pace; the job's name on each line proves which thread it is in.
JOB_SCRIPT = """
import sys, time
name, count, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for i in range(1, count + 1):
    print(f"{name} line {i}", flush=True)
    time.sleep(pause)
"""
HEADER_RE = re.compile(r"`stdout\.txt` lines (\d+)-(\d+)")
SKIPPED_RE = re.compile(r"(\d+) lines skipped")
LINE_RE = re.compile(r"^(\w+) line (\d+)$")


def job_json(name: str, lines: int, pause: float) -> str:
    command = f"{sys.executable} $AZ_BATCHAI_MOUNT_ROOT/afs/job.py {name} {lines} {pause}"
    return json.dumps(
        {
            "properties": {
                "nodeCount": 1,
                "constraints": {"maxWallClockTime": "1:00:00"},
                "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
                "customToolkitSettings": {"commandLine": command},
            }
        },
        separators=(",", ":"),
    )


# 20 jobs of 48..67 lines, one every 0.3 s (15-20 s each); Bob's 3 are short.
RUNNING = {f"r{i:02d}": 48 + i for i in range(RUNNING_JOBS)}
WAITING = {"a0": 12, "a1": 12, "a2": 12}  # a0, a1 approved after the restart; a2 denied
ALL_LINES = {**RUNNING, "a0": 12, "a1": 12}
SWEEP = {f"sw-{k}": 40 for k in (1, 2, 3)}  # one sweep, `--sweep k=1,2,3`: its jobs print swK


class BotProcess:
    """`python -m bot run` as a child: its log is collected, its port read from it."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.log = ""
        self.url = ""
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
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
        deadline = time.monotonic() + TIMEOUT
        while not (found := re.search(r"web app on (http://[\d.]+:\d+)", self.log)):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"the bot did not start:\n{self.log[-4000:]}")
            await asyncio.sleep(0.05)
        self.url = found.group(1)
        self.log = ""  # the next start announces its own port

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self.log += line.decode(errors="replace")

    async def kill(self) -> None:
        """SIGKILL the bot alone; its node runners live in their own sessions and keep going."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader


class Rig:
    def __init__(self, fake: FakeSlack, bot: BotProcess, http: aiohttp.ClientSession, db: Path):
        self.fake, self.bot, self.http, self.db = fake, bot, http, db

    async def post(self, body: bytes) -> tuple[int, str]:
        url = f"{self.bot.url}/slack/events"
        async with self.http.post(url, data=body, headers=signed_headers(body, SECRET)) as r:
            return r.status, await r.text()

    async def command(self, text: str, *, user: str = ALICE) -> str:
        """A signed slash command; returns its answer (in the ack or on its response_url)."""
        response_url = self.fake.response_url()
        form = slash_command_form(
            text,
            user_id=user,
            channel_id=CHANNEL,
            response_url=response_url,
            trigger_id=self.fake.issue_trigger(),
        )
        status, ack = await self.post(form_body(form))
        assert status == 200, (status, ack)
        answer = await answer_of(
            self.fake, json.loads(ack) if ack else None, response_url, timeout=TIMEOUT
        )
        return answer["text"] + json.dumps(answer["blocks"])

    async def click(self, action_id: str, value: str, message: Message) -> str:
        """Press a button on a message; returns what the bot answered on the response_url."""
        response_url = self.fake.response_url(
            channel=message.channel, message_ts=message.ts, user_id=BOSS
        )
        payload = block_actions_payload(
            action_id,
            value,
            user_id=BOSS,
            channel_id=message.channel,
            trigger_id=self.fake.issue_trigger(),
            message_ts=message.ts,
            response_url=response_url,
        )
        status, _ = await self.post(interactive_body(payload))
        assert status == 200
        await self.fake.wait_for(lambda: bool(self.fake.responses_to(response_url)), TIMEOUT)
        return self.fake.responses_to(response_url)[-1].text or ""

    async def deny(self, approval_id: str, message: Message, why: str) -> str:
        """Deny: the button opens a modal asking why; submitting it decides."""
        opened = len(self.fake.calls_to("views.open", ok=True))
        payload = block_actions_payload(
            views.ACTION_DENY,
            approval_id,
            user_id=BOSS,
            channel_id=message.channel,
            trigger_id=self.fake.issue_trigger(),
            message_ts=message.ts,
            response_url=self.fake.response_url(),
        )
        status, _ = await self.post(interactive_body(payload))
        assert status == 200
        await self.fake.wait_for(
            lambda: len(self.fake.calls_to("views.open", ok=True)) > opened, TIMEOUT
        )
        modal = self.fake.calls_to("views.open", ok=True)[-1].json_arg("view")
        submission = view_submission_payload(
            views.CALLBACK_DENY,
            {views.BLOCK_REASON: {views.BLOCK_REASON: {"type": "plain_text_input", "value": why}}},
            user_id=BOSS,
            private_metadata=modal.get("private_metadata", ""),
        )
        status, answer = await self.post(interactive_body(submission))
        assert status == 200
        return answer

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if self.bot.proc is not None and self.bot.proc.returncode is not None:
                raise AssertionError(f"the bot died waiting for {what}:\n{self.bot.log[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.bot.log[-4000:]}")
            await asyncio.sleep(0.1)

    def pending_events(self) -> int:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as conn:
            (n,) = conn.execute("SELECT count(*) FROM events WHERE delivered_at IS NULL").fetchone()
        return int(n)

    # -- what Slack holds ----------------------------------------------------------------------

    def cards(self) -> dict[str, list[Message]]:
        """Job name -> the top-level messages in the jobs channel that are its status card."""
        found: dict[str, list[Message]] = {}
        for m in self.fake.messages_in(CHANNEL, include_replies=False):
            if ":bar_chart: sweep" in m.block_text():
                continue  # the sweep's card: see sweep_cards()
            name = re.search(r"\*([ra]\d+)\*", m.block_text())
            found.setdefault(name.group(1) if name else "?", []).append(m)
        return found

    def thread_of(self, name: str) -> list[Message]:
        (card,) = self.cards()[name]
        return self.fake.replies(CHANNEL, card.ts)

    def receipts(self, name: str) -> list[Message]:
        return [m for m in self.thread_of(name) if m.reply_broadcast]

    def sweep_cards(self) -> list[Message]:
        return [
            m
            for m in self.fake.messages_in(CHANNEL, include_replies=False)
            if ":bar_chart: sweep *sw*" in m.block_text()
        ]

    def sweep_thread(self) -> list[Message]:
        cards = self.sweep_cards()
        return self.fake.replies(CHANNEL, cards[0].ts) if cards else []

    def sweep_lines_seen(self, job: str) -> list[int]:
        """lines_seen() for a job of the sweep: its snippets in the sweep's thread, named."""
        mine = [m for m in self.sweep_thread() if _tag(m) == f"*{job}*"]
        return self.lines_seen(job.replace("-", ""), replies=mine)

    def lines_seen(self, name: str, *, replies: list[Message] | None = None) -> list[int]:
        """Every line number the thread accounts for (shown, or counted as skipped), in order
        of arrival, with repeats; also checks each snippet's numbering against its header."""
        seen: list[int] = []
        for reply in self.thread_of(name) if replies is None else replies:
            text = reply.block_text()
            header = HEADER_RE.search(text)
            if header is None:
                continue
            first, last = int(header.group(1)), int(header.group(2))
            skipped = SKIPPED_RE.search(text)
            n_skipped = int(skipped.group(1)) if skipped else 0
            shown = []
            for raw in text.replace("```", "\n").splitlines():
                if (m := LINE_RE.match(raw.strip())) is not None:
                    assert m.group(1) == name, f"{name}'s thread shows {raw!r}"
                    shown.append(int(m.group(2)))
            expected = list(range(first + n_skipped, last + 1))
            assert shown == expected, f"{name}: snippet {first}-{last} shows {shown}"
            seen += list(range(first, last + 1))
        return seen

    def approval_messages(self) -> dict[str, Message]:
        """Job name -> its approval request (the test fails on a second one)."""
        found: dict[str, Message] = {}
        for m in self.fake.messages_in(APPROVALS, include_replies=False):
            name = re.search(r"GPU time for \*(\w+)\*", m.block_text())
            assert name is not None, m.block_text()
            assert name.group(1) not in found, f"second approval request for {name.group(1)}"
            found[name.group(1)] = m
        return found


async def stream_every_job(rig: Rig, share: Path) -> None:
    """A cluster, the running jobs streaming and the waiting ones asking approval: mid-stream."""
    share.mkdir(parents=True, exist_ok=True)
    (share / "job.py").write_text(JOB_SCRIPT)
    created = await rig.command(
        f"cluster create -n c1 -s Standard_NC6 -t {RUNNING_JOBS + 6}"
        " --afs-name data --afs-mount-path afs"
    )
    assert "c1" in created, created
    for name, lines in RUNNING.items():
        answer = await rig.command(f"job create -n {name} -r c1 -c {job_json(name, lines, 0.3)}")
        assert "submitted" in answer, answer + rig.bot.log[-3000:]
    for name, lines in WAITING.items():
        answer = await rig.command(
            f"job create -n {name} -r c1 -c {job_json(name, lines, 0.05)}", user=BOB
        )
        assert "approval" in answer, answer

    sweep = job_json("sw$k", 40, 0.3)
    answer = await rig.command(f'job create -n sw -r c1 -c {sweep} --sweep "k=1,2,3"')
    assert "sweep *sw* submitted" in answer, answer

    # Mid-stream: every job has log lines in its thread, every approval request is out.
    await rig.until(
        lambda: (
            all(rig.cards().get(n) and rig.lines_seen(n) for n in RUNNING)
            and all(rig.sweep_lines_seen(n) for n in SWEEP)
            and len(rig.approval_messages()) == len(WAITING)
        ),
        "log lines from every job and the approval requests",
    )


def assert_every_job_told_once(rig: Rig, killed_at: dict[str, int]) -> None:
    """One receipt per job saying how it ended, every line once, no reply twice."""
    for name in ALL_LINES:
        (receipt,) = rig.receipts(name)
        assert "succeeded" in receipt.block_text(), receipt.block_text()
    (receipt,) = rig.receipts("a2")
    assert "denied" in receipt.block_text(), receipt.block_text()

    # Every line of every job once: no gap, no repeat (stdout.txt has them all).
    for name, count in ALL_LINES.items():
        seen = rig.lines_seen(name)
        repeats = [n for n, k in Counter(seen).items() if k > 1]
        assert not repeats, f"{name}: lines posted twice: {repeats}"
        assert sorted(seen) == list(range(1, count + 1)), f"{name}: gap in {sorted(seen)}"
    # ... and the crash really was mid-stream for the jobs (lines came after the restart).
    assert any(killed_at[n] < RUNNING[n] for n in RUNNING), killed_at

    # The sweep: one card, each job's lines once and its receipt once, one summary receipt.
    (card,) = rig.sweep_cards()
    assert "3 jobs: 3 succeeded" in card.block_text(), card.block_text()
    thread = rig.sweep_thread()
    for name, count in SWEEP.items():
        seen = rig.sweep_lines_seen(name)
        assert sorted(seen) == list(range(1, count + 1)), f"{name}: {sorted(seen)}"
        receipts = [m for m in thread if _tag(m) == f"*{name}*" and "exit code" in m.block_text()]
        assert len(receipts) == 1, f"{name} has {len(receipts)} receipts"
    assert sum("sweep *sw* finished" in m.block_text() for m in thread) == 1

    # No notification twice: within a thread no two replies are the same message.
    for thread in [*(rig.thread_of(n) for n in (*ALL_LINES, "a2")), rig.sweep_thread()]:
        bodies = Counter(json.dumps([m.text, m.blocks]) for m in thread)
        twice = [body[:200] for body, k in bodies.items() if k > 1]
        assert not twice, f"replies posted twice: {twice}"


def _tag(message: Message) -> str:
    """The job a message in a sweep's thread is about: its first block names it."""
    first = (message.blocks or [{}])[0]
    return str((first.get("elements") or [{}])[0].get("text", "")) if first else ""


def approval_id(message: Message) -> str:
    for block in message.versions[0]["blocks"] or []:
        for element in block.get("elements", []):
            if element.get("action_id") == views.ACTION_APPROVE:
                return str(element["value"])
    raise AssertionError(f"no Approve button on {message.block_text()}")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps(POLICY))
    data = tmp_path / "data"
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as fake:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLACK_", "BATCHAI_", "DATABASE", "APPROVAL"))
        }
        env.update(
            PYTHONPATH=str(ROOT),
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_MODE="http",
            SLACK_API_URL=fake.base_url,
            SLACK_POST_INTERVAL="0",
            SLACK_UPDATES_PER_MINUTE="1000",
            BATCHAI_DATA_DIR=str(data),
            APPROVALS_FILE=str(policy),
            ADMIN_USERS=ALICE,  # a policy needs admins; Alice creates the cluster
            LINK_SECRET="restart-link-secret",
            PORT="0",
            POLL_SECONDS="0.3",
            PRICE_REFRESH_HOURS="0",  # no test reaches the internet
            LOG_LEVEL="INFO",
        )
        bot = BotProcess(env, tmp_path)
        async with aiohttp.ClientSession() as http:
            try:
                yield Rig(fake, bot, http, data / "batchai.db")
            finally:
                await bot.stop()
                _terminate_runners(data)


def _terminate_runners(data: Path) -> None:
    """Whatever a failed test left running: a node runner ends its job when terminated."""
    for pid_file in data.glob("**/node-*/pid"):
        text = pid_file.read_text().strip()
        if text.isdigit() and not (pid_file.parent / "exit_code").exists():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(text), signal.SIGTERM)


async def test_sigkill_mid_stream_loses_and_repeats_nothing(rig: Rig) -> None:
    fake = rig.fake
    await rig.bot.start()
    await stream_every_job(rig, rig.db.parent / "shares" / "data")
    await rig.bot.kill()
    killed_at = {n: max(rig.lines_seen(n)) for n in RUNNING}
    killed_at.update({n: max(rig.sweep_lines_seen(n)) for n in SWEEP})
    await asyncio.sleep(2.0)  # the jobs keep writing while no bot is there
    await rig.bot.start()

    # The approvals that were pending at the crash are still clickable, and decided once.
    requests = rig.approval_messages()
    for name in ("a0", "a1"):
        answer = await rig.click(views.ACTION_APPROVE, approval_id(requests[name]), requests[name])
        assert "approved" in answer, answer
    denied = await rig.deny(approval_id(requests["a2"]), requests["a2"], "not this month")
    assert "errors" not in denied, denied
    again = await rig.click(views.ACTION_APPROVE, approval_id(requests["a0"]), requests["a0"])
    assert "already approved" in again, again

    await rig.until(
        lambda: (
            all(rig.cards().get(n) and rig.receipts(n) for n in (*ALL_LINES, "a2"))
            and any("sweep *sw* finished" in m.block_text() for m in rig.sweep_thread())
            and rig.pending_events() == 0
        ),
        "every receipt, and nothing left to deliver",
    )

    # Exactly one status card per job, edited in place; nothing else at the top of the channel.
    cards = rig.cards()
    assert sorted(cards) == sorted([*ALL_LINES, "a2"]), sorted(cards)
    for name, found in cards.items():
        assert len(found) == 1, f"{name} has {len(found)} status cards"
        assert found[0].edits >= 1, f"{name}'s card was never edited"
    card_ts = {m.ts for found in cards.values() for m in found} | {rig.sweep_cards()[0].ts}
    approval_ts = {m.ts for m in rig.approval_messages().values()}
    for call in fake.calls_to("chat.update", ok=True):
        assert call.args["ts"] in card_ts | approval_ts, call.args

    assert_every_job_told_once(rig, killed_at)

    # Each approval decided once; the request message edited to say so, its buttons gone.
    requests = rig.approval_messages()
    for name, word in (("a0", "approved"), ("a1", "approved"), ("a2", "denied")):
        text = requests[name].block_text()
        assert f"{word} by <@{BOSS}>" in text and f"*{word}*" in text, text
        assert views.ACTION_APPROVE not in json.dumps(requests[name].blocks)
        assert text.count(f"by <@{BOSS}>") == 1, text


# -- the outbox's crash window, close up: posted to Slack, killed before it was recorded ---------


async def test_a_message_sent_just_before_a_crash_is_found_in_slack_not_sent_again(
    store: SqlStore,
) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        card = (await fake.client().chat_postMessage(channel=CHANNEL, text="card"))["ts"]
        fake.fail_next("chat.postMessage", 200, delay=1.0)  # Slack takes it, answers late
        before = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        with pytest.raises(TimeoutError):  # the bot dies while waiting for the answer
            await asyncio.wait_for(
                before.post(CHANNEL, note("line 1"), thread=card, keys=["event-1"]), 0.2
            )
        await fake.wait_for(lambda: len(fake.replies(CHANNEL, card)) == 1, TIMEOUT)
        assert await store.get_delivery(["event-1"]) is None  # no record: only an intent

        after = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        assert await after.recover() == 1
        (sent,) = fake.replies(CHANNEL, card)
        assert await store.recorded_keys(["event-1"]) == {"event-1"}
        again = await after.post(CHANNEL, note("line 1"), thread=card, keys=["event-1"])
        assert again.ts == sent.ts
        assert len(fake.replies(CHANNEL, card)) == 1


async def test_a_message_that_never_reached_slack_is_sent_after_the_restart(
    store: SqlStore,
) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        fake.fail_next("chat.postMessage", 500)
        before = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0, max_attempts=1)
        with pytest.raises(TransientError):
            await before.post(CHANNEL, note("card"), keys=["event-2-card"])
        assert fake.messages_in(CHANNEL) == []

        after = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        assert await after.recover() == 0
        assert await store.recorded_keys(["event-2-card"]) == set()
        ts = (await after.post(CHANNEL, note("card"), keys=["event-2-card"])).ts
        assert [m.ts for m in fake.messages_in(CHANNEL)] == [ts]


def note(text: str) -> ViewMessage:
    return ViewMessage(text, [section(text)])
