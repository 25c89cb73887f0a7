"""The outbox against a fake Slack that enforces its limits: pacing, 429s, 5xx, edits, records."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.outbox import SlackOutbox
from handlers.views import Message, section
from services.core.clock import utcnow
from services.core.errors import TransientError
from services.store import SqlStore
from tests.fakes.slack import FakeSlack

CHANNEL = "C0OUT"


def message(text: str) -> Message:
    return Message(text, [section(text)])


async def test_posts_are_paced_per_channel_so_slack_never_says_429(store: SqlStore) -> None:
    async with FakeSlack(post_per_channel_per_second=10.0, post_burst=1) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.1)
        for i in range(8):
            await outbox.post(CHANNEL, message(f"line {i}"))
        assert fake.ratelimited["chat.postMessage"] == 0
        assert [m.text for m in fake.messages_in(CHANNEL)] == [f"line {i}" for i in range(8)]


async def test_a_429_is_waited_out_and_the_lane_slows_down(store: SqlStore) -> None:
    clock = {"now": 0.0}
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the outbox's waits, seen and not waited for
        slept.append(seconds)
        clock["now"] += seconds

    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(
            fake.client(),
            store,
            now=utcnow,
            post_interval=0.0,
            monotonic=lambda: clock["now"],
            sleep=sleep,
        )
        fake.fail_next("chat.postMessage", status=429, retry_after=1)
        await outbox.post(CHANNEL, message("after a 429"))
        assert sum(slept) >= 1.0  # Retry-After was honoured, not hammered
        assert outbox.stats["ratelimited"] == 1
        assert [m.text for m in fake.messages_in(CHANNEL)] == ["after a 429"]


async def test_server_errors_are_retried_then_reported_as_transient(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0, max_attempts=2)
        fake.fail_next("chat.postMessage", status=500, count=1)
        await outbox.post(CHANNEL, message("survived a 500"))
        fake.fail_next("chat.postMessage", status=503, count=2)
        with pytest.raises(TransientError):
            await outbox.post(CHANNEL, message("never arrives"))
        assert [m.text for m in fake.messages_in(CHANNEL)] == ["survived a 500"]


async def test_waiting_edits_of_one_message_collapse_into_the_newest(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(
            fake.client(), store, now=utcnow, post_interval=0.0, updates_per_minute=120
        )
        ts = (await outbox.post(CHANNEL, message("v0"))).ts
        await asyncio.gather(*(outbox.update(CHANNEL, ts, message(f"v{i}")) for i in range(1, 6)))
        card = fake.message(CHANNEL, ts)
        assert card.text == "v5"
        assert card.edits < 5  # fewer chat.update calls than edits asked for
        assert outbox.stats["coalesced_edits"] >= 1


async def test_a_recorded_key_is_never_sent_again_even_after_a_restart(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        first = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        ts = await first.post(CHANNEL, message("receipt"), keys=["event-7"])
        restarted = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        again = await restarted.post(CHANNEL, message("receipt"), keys=["event-7"])
        assert again == ts
        assert len(fake.calls_to("chat.postMessage")) == 1
        assert await store.recorded_keys(["event-7", "event-8"]) == {"event-7"}


async def test_permanent_errors_are_not_retried(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        fake.fail_next("chat.postMessage", status=200, error="channel_not_found")
        with pytest.raises(Exception, match="channel_not_found"):
            await outbox.post(CHANNEL, message("to nowhere"))
        assert len(fake.calls_to("chat.postMessage")) == 1


async def test_receipts_overtake_waiting_log_snippets(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.05)
        snippets = [
            asyncio.create_task(outbox.post(CHANNEL, message(f"log {i}"), low_priority=True))
            for i in range(5)
        ]
        await asyncio.sleep(0)  # the first snippet holds the lane, the others queue
        receipt = asyncio.create_task(outbox.post(CHANNEL, message("receipt")))
        await asyncio.gather(*snippets, receipt)
        texts = [m.text for m in fake.messages_in(CHANNEL)]
        assert texts.index("receipt") == 1
        assert [t for t in texts if t != "receipt"] == [f"log {i}" for i in range(5)]


async def test_a_cancelled_waiter_does_not_block_the_lane(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.05)
        first = asyncio.create_task(outbox.post(CHANNEL, message("first")))
        waiting = asyncio.create_task(outbox.post(CHANNEL, message("never")))
        await asyncio.sleep(0)
        waiting.cancel()
        await first
        await asyncio.wait_for(outbox.post(CHANNEL, message("after")), timeout=5)
        assert [m.text for m in fake.messages_in(CHANNEL)] == ["first", "after"]


async def test_a_merged_edit_learns_that_the_sent_one_failed(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(
            fake.client(), store, now=utcnow, post_interval=0.0, updates_per_minute=120
        )
        ts = (await outbox.post(CHANNEL, message("v0"))).ts
        fake.fail_next("chat.update", status=200, error="cant_update_message", count=2)
        blocker = asyncio.create_task(outbox.update(CHANNEL, ts, message("v1")))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(outbox.update(CHANNEL, ts, message("v2")))
        merged = asyncio.create_task(outbox.update(CHANNEL, ts, message("v3")))
        results = await asyncio.gather(blocker, waiting, merged, return_exceptions=True)
        assert isinstance(results[1], Exception) and isinstance(results[2], Exception)
        assert fake.message(CHANNEL, ts).text == "v0"  # nothing pretended to succeed


# -- answers that never came: Slack may have the post ------------------------------------------


async def test_a_post_slack_took_before_answering_500_is_found_not_sent_again(
    store: SqlStore,
) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        fake.fail_next("chat.postMessage", status=500, landed=True)
        ref = await outbox.post(CHANNEL, message("receipt"), keys=["event-1"])
        posted = fake.messages_in(CHANNEL)
        assert [m.text for m in posted] == ["receipt"]  # the retry found it: no second copy
        assert ref.ts == posted[0].ts
        assert await store.get_delivery(["event-1"]) == (CHANNEL, posted[0].ts)
        assert len(fake.calls_to("chat.postMessage")) == 1


async def test_a_timed_out_post_that_landed_in_a_thread_is_found_there(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(
            fake.client(timeout=0.3, retry_handlers=[]), store, now=utcnow, post_interval=0.0
        )
        card = await outbox.post(CHANNEL, message("card"), keys=["card"])
        # Slack posts the reply at once, then answers after 2 s: the client gave up at 0.3 s
        fake.fail_next("chat.postMessage", status=200, delay=2.0, landed=True)
        ref = await outbox.post(CHANNEL, message("epoch 1"), thread=card.ts, keys=["log-1"])
        replies = fake.replies(CHANNEL, card.ts)
        assert [m.text for m in replies] == ["epoch 1"]
        assert ref.ts == replies[0].ts
        assert fake.calls_to("conversations.replies")  # looked for in its thread


async def test_when_slack_cannot_say_whether_it_took_a_post_the_post_waits(
    store: SqlStore,
) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0, max_attempts=2)
        fake.fail_next("chat.postMessage", status=503, landed=True)
        fake.fail_next("conversations.history", status=500)
        with pytest.raises(TransientError):  # the relay defers it and tries again later
            await outbox.post(CHANNEL, message("receipt"), keys=["event-2"])
        assert len(fake.messages_in(CHANNEL)) == 1
        ref = await outbox.post(CHANNEL, message("receipt"), keys=["event-2"])  # the next try
        posted = fake.messages_in(CHANNEL)
        assert [m.text for m in posted] == ["receipt"]
        assert ref.ts == posted[0].ts
        assert await store.recorded_keys(["event-2"]) == {"event-2"}


async def test_a_lost_post_that_slack_does_not_have_is_sent(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        fake.fail_next("chat.postMessage", status=502)  # refused before anything was posted
        await outbox.post(CHANNEL, message("receipt"), keys=["event-3"])
        assert [m.text for m in fake.messages_in(CHANNEL)] == ["receipt"]
        assert len(fake.calls_to("conversations.history")) == 1
        assert len(fake.calls_to("chat.postMessage")) == 2


async def test_a_post_whose_record_was_cut_short_is_recorded_on_its_next_try(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'cut.db'}")  # its lock held below
    await store.migrate()
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        # Slack takes the post and answers half a second later; meanwhile another writer
        # holds the database, so the record waits, and the delivery is cancelled there
        # (a shutdown, a lost lease): Slack has the post, the store does not know it.
        fake.fail_next("chat.postMessage", status=200, delay=0.5, landed=True)
        sending = asyncio.create_task(outbox.post(CHANNEL, message("receipt"), keys=["event-4"]))
        await fake.wait_for(lambda: len(fake.messages_in(CHANNEL)) == 1)
        db = sqlite3.connect(tmp_path / "cut.db", isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            await fake.wait_for(lambda: fake.faults_served["chat.postMessage"] == 1)
            await asyncio.sleep(0.8)  # the answer came: the record waits for the lock
            assert not sending.done()
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert await store.recorded_keys(["event-4"]) == set()
        ref = await outbox.post(CHANNEL, message("receipt"), keys=["event-4"])
        posted = fake.messages_in(CHANNEL)
        assert [m.text for m in posted] == ["receipt"]
        assert ref.ts == posted[0].ts
        assert await store.recorded_keys(["event-4"]) == {"event-4"}
    await store.aclose()
