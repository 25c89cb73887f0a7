"""Slack faults: 429s, 5xx and timeouts are retried with backoff, the delivery loop lives on,
every message arrives exactly once, and /readyz says when Slack does not answer."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import BotMetrics
from bot.outbox import SlackOutbox
from handlers.views import Message
from services.store import SqlStore
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.slack.conftest import CHANNEL, SlackRig, job_json

CREATE = "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data --afs-mount-path afs"
EPOCHS = 12


def utcnow() -> datetime:
    return datetime.now(UTC)


async def get(rig: SlackRig, path: str) -> tuple[int, str]:
    async with rig.http.get(f"{rig.bot.probe_url}{path}") as response:
        return response.status, await response.text()


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


async def test_a_story_through_429s_5xx_and_timeouts_arrives_exactly_once(rig: SlackRig) -> None:
    fake = rig.fake
    fake.fail_next("chat.postMessage", 500, count=2)
    fake.fail_next("chat.postMessage", 429, retry_after=1)
    fake.fail_next("chat.postMessage", 200, error="service_unavailable")
    fake.fail_next("chat.update", 503)
    fake.fail_next("chat.update", 429, retry_after=1)
    await rig.answer(CREATE)
    await rig.answer(f"job create -n flaky -r c1 -c {job_json(EPOCHS)}")

    async def finished() -> bool:
        job = await rig.bot.store.find_job("flaky")
        return job is not None and job.state.finished and not await rig.bot.store.pending_events(1)

    await rig.until(finished, "the story to be told")
    assert sum(fake.faults_served.values()) == 6  # every fault was met and outlived
    texts = [m.block_text() for m in fake.messages_in(CHANNEL)]
    everything = "\n".join(texts)
    for i in range(1, EPOCHS + 1):
        assert len(re.findall(rf"Epoch {i}/{EPOCHS} ", everything)) == 1, f"epoch {i}"
    receipts = [t for t in texts if t.startswith("flaky succeeded (exit 0)")]
    assert len(receipts) == 1  # one receipt
    top = [m for m in fake.messages_in(CHANNEL) if not m.is_reply]
    assert len(top) == 1  # one status card, never posted twice

    status, text = await get(rig, "/metrics")
    assert status == 200
    post = "chat.postMessage"
    assert sample(text, "batchai_slack_ratelimited_total", method=post) == 1
    assert sample(text, "batchai_slack_calls_total", method=post, outcome="server_error") == 3
    assert sample(text, "batchai_slack_calls_total", method=post, outcome="ok") >= 3
    assert sample(text, "batchai_slack_retries_total", method=post) == 4
    assert sample(text, "batchai_slack_ratelimited_total", method="chat.update") == 1


async def test_a_timed_out_call_is_tried_again_and_posts_once(
    fake: FakeSlack, store: SqlStore
) -> None:
    metrics = BotMetrics()
    # the fake answers 500 after 2 s; the client gives up after 0.3 s and the outbox retries
    fake.fail_next("chat.postMessage", 500, delay=2.0)
    outbox = SlackOutbox(
        fake.client(BOT_TOKEN, timeout=0.3, retry_handlers=[]),
        store,
        now=utcnow,
        post_interval=0.0,
        metrics=metrics,
    )
    await outbox.post(CHANNEL, Message("hello"), keys=["k1"])
    await outbox.post(CHANNEL, Message("hello"), keys=["k1"])  # a repeat: recorded, not sent
    assert [m.text for m in fake.messages_in(CHANNEL)] == ["hello"]
    calls = metrics.registry.get_sample_value
    labels = {"method": "chat.postMessage", "outcome": "network"}
    assert calls("batchai_slack_calls_total", labels) == 1
    assert calls("batchai_slack_calls_total", {**labels, "outcome": "ok"}) == 1


async def test_readyz_names_each_check_and_caches_slack(rig: SlackRig) -> None:
    before = len(rig.fake.calls_to("auth.test"))
    status, text = await get(rig, "/readyz")
    assert status == 200, text
    assert '"database": "ok"' in text and '"backend": "ok"' in text and '"slack": "ok"' in text
    await get(rig, "/readyz")
    assert len(rig.fake.calls_to("auth.test")) == before + 1  # the second probe: from the cache


async def test_readyz_is_503_when_slack_does_not_answer(rig: SlackRig) -> None:
    await rig.fake.close()
    status, text = await get(rig, "/readyz")
    assert status == 503
    assert '"slack": "failed: ' in text and '"database": "ok"' in text
    assert BOT_TOKEN not in text and "xox" not in text and "127.0.0.1" not in text


async def test_readyz_gives_up_on_a_slow_slack_after_two_seconds(rig: SlackRig) -> None:
    rig.fake.fail_next("auth.test", 200, delay=10.0)
    async with aiohttp.ClientSession() as http, http.get(f"{rig.bot.probe_url}/readyz") as response:
        assert response.status == 503
        assert "no answer within 2 s" in await response.text()


async def test_a_slack_outage_longer_than_the_retry_budget_defers_then_delivers_once(
    rig: SlackRig,
) -> None:
    fake = rig.fake
    await rig.answer(CREATE)
    await rig.bot.relay.drain()
    fake.fail_next("chat.postMessage", 429, retry_after=1, count=5)  # the outbox's whole budget
    await rig.answer(f"job create -n patient -r c1 -c {job_json(1, gate='never')}")
    await rig.bot.relay.drain()  # gives up for now, and returns: the loop lives on
    assert fake.faults_served["chat.postMessage"] == 5
    assert await rig.bot.store.pending_events(1)
    assert not [m for m in fake.messages_in(CHANNEL) if "patient" in m.block_text()]
    await rig.bot.relay.drain()
    cards = [m for m in fake.messages_in(CHANNEL) if not m.is_reply and "patient" in m.text]
    assert len(cards) == 1
    sent = len(fake.calls_to("chat.postMessage", ok=True))
    await rig.bot.relay.drain()  # nothing is sent again
    assert len(fake.calls_to("chat.postMessage", ok=True)) == sent
