"""A crowded channel: the relay, presenter and outbox against a fake Slack that enforces limits.

Card edits are off the thread's path, edits are spent by priority, quiet lifecycle steps ride
on the next log snippet when a channel has more live jobs than its post budget serves, and
log snippets and receipts take turns across jobs. Waits are injected: nothing here is timed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from bot.outbox import SlackOutbox
from handlers.presenter import Presenter
from handlers.views import Message, section
from services.backends.links import LinkSigner
from services.backends.local import LocalShare
from services.core.clock import FakeClock, utcnow
from services.core.events import (
    Event,
    JobFinished,
    JobStateChanged,
    JobSubmitted,
    LogSnippet,
)
from services.jobs.lifecycle import JobState
from services.models import Conversation, Job
from services.notify.relay import EventRelay
from services.store import SqlStore
from tests.conftest import make_job
from tests.fakes.slack import FakeSlack

CHANNEL = "C0CROWD"
GUARD = 30.0  # seconds a wait may take before the test gives up (a hang, not a timing)


class Gate:
    """The outbox's injected sleep: every wait blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.waits = 0

    async def __call__(self, seconds: float) -> None:
        self.waits += 1
        await self.open.wait()


def message(text: str) -> Message:
    return Message(text, [section(text)])


def relay_for(store: SqlStore, outbox: SlackOutbox, tmp_path: Path, **kw: object) -> EventRelay:
    presenter = Presenter(outbox, default_channel=CHANNEL, clock=utcnow)
    share = LocalShare(tmp_path, LinkSigner(b"k" * 32, "http://127.0.0.1:1/files"))
    return EventRelay(store=store, share=share, notifier=presenter, clock=FakeClock(), **kw)  # type: ignore[arg-type]


async def job_with_card(
    store: SqlStore, outbox: SlackOutbox, name: str, state: JobState = JobState.RUNNING
) -> tuple[Job, str]:
    card = await outbox.post(CHANNEL, message(f"card of {name}"))
    job = make_job(name, state=state, conversation=Conversation(CHANNEL, card.ts, "U1"))
    await store.insert_job(job)
    return job, card.ts


def snippet(job: Job, first: int, count: int) -> LogSnippet:
    lines = tuple(f"{job.name} line {n}" for n in range(first, first + count))
    return LogSnippet(job_id=job.id, file="stdout.txt", first_line=first, lines=lines)


async def until(check: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), GUARD)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def replies(fake: FakeSlack, ts: str) -> list[str]:
    return [m.block_text() for m in fake.replies(CHANNEL, ts)]


async def test_a_thread_post_goes_out_while_its_cards_edit_waits_for_the_budget(
    store: SqlStore, tmp_path: Path
) -> None:
    gate = Gate()
    async with FakeSlack() as fake:  # Slack's limits on
        outbox = SlackOutbox(
            fake.client(), store, now=utcnow, post_interval=0.0, monotonic=lambda: 0.0, sleep=gate
        )
        job, ts = await job_with_card(store, outbox, "solo")
        await outbox.update(CHANNEL, ts, message("spent"))  # the edit budget is used up
        events: list[Event] = [
            JobStateChanged(job_id=job.id, old="queued", new="running"),
            snippet(job, 1, 3),
        ]
        await store.add_events(events)
        relay = relay_for(store, outbox, tmp_path)
        drain = asyncio.create_task(relay.drain())

        await until(lambda: any("solo line 3" in r for r in replies(fake, ts)), "the snippet")
        assert any("running" in r for r in replies(fake, ts))  # the state's thread reply too
        assert fake.message(CHANNEL, ts).text == "spent"  # the card edit still waits
        assert gate.waits >= 1 and not drain.done()
        # The snippet's post is in Slack before its reply reaches the relay, which then marks it;
        # the state change stays pending: its card edit waits.
        for _ in range(int(GUARD / 0.01)):
            if len(await store.pending_events(job_id=job.id, of_job=True)) == 1:
                break
            await asyncio.sleep(0.01)
        assert len(await store.pending_events(job_id=job.id, of_job=True)) == 1  # not marked

        gate.open.set()
        await asyncio.wait_for(drain, GUARD)
        assert "running" in fake.message(CHANNEL, ts).block_text()
        assert await store.pending_events() == []
        assert fake.ratelimited["chat.postMessage"] == fake.ratelimited["chat.update"] == 0


async def test_a_finished_jobs_card_is_edited_before_running_ones(store: SqlStore) -> None:
    gate = Gate()
    async with FakeSlack() as fake:
        outbox = SlackOutbox(
            fake.client(), store, now=utcnow, post_interval=0.0, monotonic=lambda: 0.0, sleep=gate
        )
        cards = [(await outbox.post(CHANNEL, message(f"card {i}"))).ts for i in range(3)]
        await outbox.update(CHANNEL, cards[0], message("spent"))
        edits = [
            asyncio.create_task(outbox.update(CHANNEL, cards[0], message("running 0"))),
            asyncio.create_task(outbox.update(CHANNEL, cards[1], message("running 1"))),
            asyncio.create_task(outbox.update(CHANNEL, cards[2], message("failed 2"), priority=0)),
            asyncio.create_task(outbox.update(CHANNEL, cards[0], message("running 0 newer"))),
        ]
        await until(lambda: gate.waits >= 1, "the edits queue for the budget")
        gate.open.set()
        await asyncio.wait_for(asyncio.gather(*edits), GUARD)
        sent = [c.args["ts"] for c in fake.calls_to("chat.update", ok=True)][1:]
        assert sent == [cards[2], cards[0], cards[1]]  # finished first, then oldest first
        assert fake.message(CHANNEL, cards[0]).text == "running 0 newer"  # one edit, the newest
        assert outbox.stats["coalesced_edits"] == 1


async def test_quiet_steps_ride_on_the_next_snippet_in_a_crowded_channel(
    store: SqlStore, tmp_path: Path
) -> None:
    async with FakeSlack() as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        job = make_job("busy", state=JobState.RUNNING, conversation=Conversation(CHANNEL))
        await store.insert_job(job)
        await job_with_card(store, outbox, "other")  # two live jobs: crowded at 1
        clock = FakeClock()
        presenter = Presenter(outbox, default_channel=CHANNEL, clock=utcnow)
        share = LocalShare(tmp_path, LinkSigner(b"k" * 32, "http://127.0.0.1:1/files"))
        relay = EventRelay(
            store=store,
            share=share,
            notifier=presenter,
            clock=clock,
            crowded=1,
            quiet_hold=timedelta(seconds=60),
        )
        await store.add_events(
            [
                JobSubmitted(job_id=job.id),
                JobStateChanged(job_id=job.id, old="queued", new="preparing"),
                JobStateChanged(job_id=job.id, old="preparing", new="running"),
            ]
        )
        await relay.drain()
        stored = await store.get_job(job.id)
        assert stored is not None and stored.conversation is not None
        ts = stored.conversation.thread
        assert ts is not None  # the card is there: the thread hangs from it
        assert replies(fake, ts) == []  # the steps are held: no post of their own
        await store.add_events([snippet(job, 1, 2)])
        await relay.drain()

        (reply,) = replies(fake, ts)  # one post: the submission, the steps and the lines
        assert "queued on" in reply and "preparing → " in reply and "busy line 2" in reply
        assert "running" in fake.message(CHANNEL, ts).block_text()  # the card shows it
        assert await store.pending_events() == []

        # A step with nothing to ride on goes out alone once its hold is over (a restart of a
        # stopped run, not a lost attempt: those have a JobRequeued post of their own).
        await store.add_events([JobStateChanged(job_id=job.id, old="running", new="preparing")])
        await relay.drain()
        assert len(replies(fake, ts)) == 1
        clock.advance(timedelta(seconds=61))
        await relay.drain()
        assert len(replies(fake, ts)) == 2 and "preparing" in replies(fake, ts)[-1]


async def test_in_a_quiet_channel_each_step_has_its_own_post(
    store: SqlStore, tmp_path: Path
) -> None:
    async with FakeSlack() as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        job, ts = await job_with_card(store, outbox, "alone")
        relay = relay_for(store, outbox, tmp_path)
        await store.add_events(
            [JobStateChanged(job_id=job.id, old="queued", new="running"), snippet(job, 1, 2)]
        )
        await relay.drain()
        assert len(replies(fake, ts)) == 2


async def test_snippets_take_turns_across_jobs_and_a_receipt_goes_first(
    store: SqlStore, tmp_path: Path
) -> None:
    async with FakeSlack(post_per_channel_per_second=5.0) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.25)
        a, a_ts = await job_with_card(store, outbox, "a")
        b, b_ts = await job_with_card(store, outbox, "b")
        c, c_ts = await job_with_card(store, outbox, "c", state=JobState.SUCCEEDED)
        # A's backlog: five snippets that cannot be merged (gaps between them).
        await store.add_events([snippet(a, 1 + 10 * i, 2) for i in range(5)])
        await store.add_events([snippet(b, 1, 2)])
        await store.add_events([JobFinished(job_id=c.id, state="succeeded", exit_code=0)])
        relay = relay_for(store, outbox, tmp_path)
        await asyncio.wait_for(relay.drain(), GUARD)

        order = [
            ("a" if m.thread_ts == a_ts else "b" if m.thread_ts == b_ts else "c")
            for m in fake.messages_in(CHANNEL)
            if m.is_reply
        ]
        assert order.count("a") == 5 and order.count("b") == 1 and order.count("c") == 1
        assert order[: order.index("b")].count("a") <= 1  # B is not behind all of A's backlog
        assert order[: order.index("c")].count("a") <= 1  # the receipt overtakes waiting snippets
        assert fake.ratelimited["chat.postMessage"] == 0


async def test_a_batch_submitted_between_two_counts_is_crowded_at_once(
    store: SqlStore, tmp_path: Path
) -> None:
    """The live count is taken every few seconds; jobs it has not seen yet make it stale. A
    sweep-sized batch submitted just after a count must not each post their quiet steps."""
    async with FakeSlack() as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        relay = relay_for(store, outbox, tmp_path, crowded=2)
        await relay.drain()  # the count: nobody is live (the clock does not move after it)
        jobs = [make_job(f"b{i}", conversation=Conversation(CHANNEL)) for i in range(4)]
        for job in jobs:
            await store.insert_job(job)
            await store.add_events(
                [
                    JobSubmitted(job_id=job.id),
                    JobStateChanged(job_id=job.id, old="queued", new="running"),
                ]
            )
        await relay.drain()
        for job in jobs:
            stored = await store.get_job(job.id)
            assert stored is not None and stored.conversation is not None
            ts = stored.conversation.thread
            assert ts is not None  # the card is there
            assert replies(fake, ts) == []  # the steps wait for lines to ride on
        await store.add_events([snippet(jobs[0], 1, 2)])
        await relay.drain()
        stored = await store.get_job(jobs[0].id)
        assert stored is not None and stored.conversation is not None
        (reply,) = replies(fake, str(stored.conversation.thread))
        assert "queued on" in reply and "b0 line 2" in reply


async def test_a_snippet_waiting_for_its_slot_takes_the_lines_written_meanwhile(
    store: SqlStore, tmp_path: Path
) -> None:
    """In a busy channel a snippet is put together when its post slot comes, not when it
    started waiting: the lines stored while it waited go in the same post, not a second one."""
    gate, now = Gate(), [0.0]
    async with FakeSlack() as fake:
        outbox = SlackOutbox(
            fake.client(),
            store,
            now=utcnow,
            post_interval=1.0,
            monotonic=lambda: now[0],
            sleep=gate,
        )
        await job_with_card(store, outbox, "b")
        now[0] += 10.0
        a, a_ts = await job_with_card(store, outbox, "a")  # the lane's last post: a wait next
        await store.add_events([snippet(a, 1, 2)])
        relay = relay_for(store, outbox, tmp_path, crowded=1)
        drain = asyncio.create_task(relay.drain())
        await until(lambda: gate.waits >= 1, "the snippet waits for its slot")
        await store.add_events([snippet(a, 3, 2)])  # written while it waited

        gate.open.set()
        await asyncio.wait_for(drain, GUARD)
        (reply,) = replies(fake, a_ts)
        assert "a line 1" in reply and "a line 4" in reply
        assert await store.pending_events() == []
        assert fake.ratelimited["chat.postMessage"] == 0


async def test_in_a_busy_channel_stdout_and_stderr_share_one_post(
    store: SqlStore, tmp_path: Path
) -> None:
    async with FakeSlack() as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        a, a_ts = await job_with_card(store, outbox, "a")
        await job_with_card(store, outbox, "b")
        errors = LogSnippet(job_id=a.id, file="stderr.txt", first_line=1, lines=("a warning",))
        await store.add_events([snippet(a, 1, 2), errors, snippet(a, 3, 1)])
        relay = relay_for(store, outbox, tmp_path, crowded=1)
        await asyncio.wait_for(relay.drain(), GUARD)

        (reply,) = replies(fake, a_ts)
        assert "a line 3" in reply and "a warning" in reply
        assert "stdout.txt" in reply and "stderr.txt" in reply
        assert await store.pending_events() == []
