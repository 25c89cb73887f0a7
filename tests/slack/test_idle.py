"""Idle scale-down through the real Bolt app and outbox against the fake Slack, with a fake clock:
the warning, Keep 1 h, Scale down now, nobody answering, refused clicks, a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.lifecycle import running
from handlers import views
from services.clusters.idle import STALE
from services.clusters.lifecycle import ClusterState
from services.core.clock import FakeClock
from tests.fakes.slack import FakeSlack, Message
from tests.slack.conftest import CHANNEL, SlackRig, rig_settings

START = datetime(2026, 11, 27, 14, 2, tzinfo=UTC)
ALICE, BOSS, MALLORY = "U0ALICE", "U0BOSS", "U0MALLORY"
GPU = (
    "cluster create -n gpu -s Standard_NC4as_T4_v3 --min 0 --max 2 -t 2 "
    "--afs-name data --afs-mount-path afs --idle-timeout 20"
)


@asynccontextmanager
async def started(
    tmp_path: Path, fake: FakeSlack, clock: FakeClock, **overrides: Any
) -> AsyncIterator[SlackRig]:
    settings = rig_settings(tmp_path, fake, **overrides)
    async with (
        running(settings, periodic=False, clock=clock) as bot,
        aiohttp.ClientSession() as http,
    ):
        bot.share.create_share("data")
        yield SlackRig(fake, bot, http, settings)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return FakeClock(START)


@pytest.fixture
async def slack(tmp_path: Path, fake: FakeSlack, clock: FakeClock) -> AsyncIterator[SlackRig]:
    async with started(tmp_path, fake, clock) as rig:
        yield rig


async def at(rig: SlackRig, clock: FakeClock, hh: int, mm: int, *, deliver: bool = True) -> None:
    """Move the clock to hh:mm that day and run the scheduler's "idle" work (then deliver)."""
    clock.advance(START.replace(hour=hh, minute=mm) - clock.now())
    await rig.bot.idle.check()
    if deliver:
        await rig.bot.relay.drain()


def warnings(fake: FakeSlack) -> list[Message]:
    return [m for m in fake.messages_in(CHANNEL) if "is idle since" in m.text]


def buttons(message: Message) -> list[dict[str, Any]]:
    return [e for b in message.blocks or [] if b["type"] == "actions" for e in b["elements"]]


async def click(rig: SlackRig, action_id: str, message: Message, user: str = ALICE) -> str:
    """Press a button of `message`; the one-line answer the clicker gets."""
    value = _value(message, action_id)
    status, url = await rig.click(action_id, value, user=user, message_ts=message.ts)
    assert status == 200
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    await rig.bot.relay.drain()
    return rig.fake.responses_to(url)[-1].text or ""


def _value(message: Message, action_id: str) -> str:
    """The value a button carried when posted (an answered warning has no buttons left)."""
    first = message.versions[0]["blocks"] if message.versions else message.blocks
    elements = [e for b in first or [] if b["type"] == "actions" for e in b["elements"]]
    return str(next(e["value"] for e in elements if e["action_id"] == action_id))


async def nodes(rig: SlackRig) -> int:
    cluster = await rig.bot.store.get_cluster("gpu")
    assert cluster is not None and cluster.state is ClusterState.STEADY
    return cluster.target_nodes


async def warned(rig: SlackRig, clock: FakeClock) -> Message:
    answer = await rig.answer(GPU)
    assert "is ready" in answer["text"], answer
    await at(rig, clock, 14, 2)
    await at(rig, clock, 14, 16)
    assert warnings(rig.fake) == []
    await at(rig, clock, 14, 17)
    (warning,) = warnings(rig.fake)
    return warning


async def test_warning_then_keep_edits_it_and_warns_again_after_the_hour(
    slack: SlackRig, clock: FakeClock
) -> None:
    warning = await warned(slack, clock)
    assert warning.text.startswith(
        "Cluster *gpu* is idle since 14:02 UTC — scaling to 0 nodes at 14:22 UTC (saves $1.05"
    )
    assert [b["text"]["text"] for b in buttons(warning)] == ["Keep 1 h", "Scale down now"]
    answer = await click(slack, views.ACTION_IDLE_KEEP, warning)
    assert answer == "*gpu* kept at 2 nodes until 2026-11-27 15:17 UTC"
    assert warning.edits == 1 and buttons(warning) == []
    assert "kept by <@U0ALICE> until 15:17 UTC" in warning.block_text()
    await at(slack, clock, 14, 22)
    await at(slack, clock, 15, 16)
    assert await nodes(slack) == 2 and len(warnings(slack.fake)) == 1
    await at(slack, clock, 15, 17)
    assert len(warnings(slack.fake)) == 2
    (entry,) = [
        e for e in await slack.bot.store.list_audit(target="gpu") if e.action == "idle keep"
    ]
    assert (entry.actor, entry.outcome, entry.channel) == (ALICE, "allowed", CHANNEL)


async def test_scale_down_now_through_slack(slack: SlackRig, clock: FakeClock) -> None:
    warning = await warned(slack, clock)
    answer = await click(slack, views.ACTION_IDLE_SCALE, warning)
    assert answer == "*gpu* is scaled down to 0 nodes"
    assert await nodes(slack) == 0
    assert buttons(warning) == []
    assert "scaled down to 0 nodes by <@U0ALICE> at 14:17 UTC" in warning.block_text()
    assert await click(slack, views.ACTION_IDLE_KEEP, warning) == STALE
    assert await nodes(slack) == 0 and warning.edits == 1


async def test_nobody_answers_through_slack(slack: SlackRig, clock: FakeClock) -> None:
    warning = await warned(slack, clock)
    await at(slack, clock, 14, 21)
    assert await nodes(slack) == 2 and warning.edits == 0
    await at(slack, clock, 14, 22)
    assert await nodes(slack) == 0
    assert "scaled down to 0 nodes at 14:22 UTC (nobody answered)" in warning.block_text()
    assert buttons(warning) == [] and len(warnings(slack.fake)) == 1


async def test_only_people_who_may_resize_may_click(
    tmp_path: Path, fake: FakeSlack, clock: FakeClock
) -> None:
    async with started(tmp_path, fake, clock, admin_users=BOSS) as rig:
        warning = await warned(rig, clock)
        answer = await click(rig, views.ACTION_IDLE_SCALE, warning, user=MALLORY)
        assert answer == "only an admin may do this"
        assert await nodes(rig) == 2 and warning.edits == 0 and len(buttons(warning)) == 2
        denied = await rig.bot.store.list_audit()
        assert (denied[0].actor, denied[0].action, denied[0].outcome) == (
            MALLORY,
            views.ACTION_IDLE_SCALE,
            "denied",
        )
        status, url = await rig.click(views.ACTION_IDLE_KEEP, "gpu:not-this-one", user=BOSS)
        await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
        assert rig.fake.responses_to(url)[-1].text == STALE
        assert warning.edits == 0
        assert await click(rig, views.ACTION_IDLE_KEEP, warning, user=BOSS) == (
            "*gpu* kept at 2 nodes until 2026-11-27 15:17 UTC"
        )


async def test_a_restart_neither_repeats_nor_loses_the_warning(
    tmp_path: Path, fake: FakeSlack, clock: FakeClock
) -> None:
    async with started(tmp_path, fake, clock) as rig:
        assert "is ready" in (await rig.answer(GPU))["text"]
        await at(rig, clock, 14, 2)
        await at(rig, clock, 14, 17, deliver=False)  # stored; the bot stops before posting it
    assert warnings(fake) == []
    async with started(tmp_path, fake, clock) as rig:
        await rig.bot.relay.drain()
        (warning,) = warnings(fake)
        await at(rig, clock, 14, 18)
    async with started(tmp_path, fake, clock) as rig:
        await at(rig, clock, 14, 19)
        assert len(warnings(fake)) == 1
        assert len(fake.calls_to("chat.postMessage")) == 1
        answer = await click(rig, views.ACTION_IDLE_KEEP, warning)
        assert answer == "*gpu* kept at 2 nodes until 2026-11-27 15:19 UTC"
        assert "kept by <@U0ALICE> until 15:19 UTC" in warning.block_text()
