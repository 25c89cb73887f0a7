"""Where a slash command's answer goes: a quick command's in the ack itself, a slow command's (or
a quick one's that outlives the answer budget) on its response_url after "working on it…"."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from bot.config import Settings
from bot.lifecycle import running
from handlers.slack import slash
from handlers.slack.slash import WORKING
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import CHANNEL, SlackRig, answer_of, rig_settings

BUDGET = 0.1  # seconds: the lowered answer budget of the rig below


@pytest.fixture
async def tight(
    tmp_path: Path, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SlackRig]:
    """The Slack rig with a short answer budget (SLACK_ACK_ANSWER_SECONDS)."""
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    settings = rig_settings(tmp_path, fake, slack_ack_answer_seconds=BUDGET)
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        yield SlackRig(fake, bot, http, settings)


@contextmanager
def write_lock(settings: Settings) -> Iterator[None]:
    """Another writer holds SQLite's write lock: the bot's writes wait for it (busy timeout),
    so a command that writes cannot finish until the block ends."""
    url = settings.database_url
    assert url is not None and url.startswith("sqlite+aiosqlite:///"), url
    db = sqlite3.connect(url.removeprefix("sqlite+aiosqlite:///"), isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_the_setting_defaults_to_the_listeners_budget() -> None:
    assert Settings(_env_file=None).slack_ack_answer_seconds == slash.ANSWER_BUDGET


async def test_a_quick_answer_comes_in_the_ack_and_nothing_on_its_response_url(
    rig: SlackRig,
) -> None:
    status, ack, help_url = await rig.command("help job")
    assert status == 200 and ack["response_type"] == "ephemeral"
    assert "job create" in str(ack["blocks"]), ack
    status, ack, budget_url = await rig.command("budget set --amount 5")
    assert status == 200 and ack["response_type"] == "in_channel"  # a public answer
    assert "set the monthly budget" in ack["text"], ack
    # a slow command after them, answered on its response_url: by then the quick ones' listeners
    # have long returned (their ack is the last thing they do)
    gone = await rig.answer("cluster delete -n gone -y")
    assert gone["in"] == "response_url" and gone["ack"]["text"] == WORKING
    assert rig.fake.responses_to(help_url) == [] and rig.fake.responses_to(budget_url) == []
    assert len(rig.fake.responses) == 1


async def test_an_error_answered_in_the_ack_stays_ephemeral(rig: SlackRig) -> None:
    reply = await rig.answer("cluster show -n nope")
    assert reply["in"] == "ack" and reply["response_type"] == "ephemeral"
    assert "nope" in reply["text"], reply
    reply = await rig.answer("job show -n nojob")
    assert reply["in"] == "ack" and reply["response_type"] == "ephemeral"
    assert "nojob" in reply["text"], reply
    assert rig.fake.responses == []


async def test_a_quick_command_past_the_budget_is_answered_once_on_its_response_url(
    tight: SlackRig,
) -> None:
    with write_lock(tight.settings):
        status, ack, url = await tight.command("budget set --amount 7")
        assert status == 200
        assert ack == {"text": WORKING, "response_type": "ephemeral"}
        assert tight.fake.responses_to(url) == []  # it cannot have finished: it waits to write
    answer = await answer_of(tight.fake, ack, url)
    assert answer["in"] == "response_url" and "set the monthly budget" in answer["text"]
    (post,) = answer["all"]
    # a public answer is a new message in the channel, not a replacement of "working on it…"
    assert post.response_type == "in_channel" and not post.replace_original
    # it ran to the end (never cancelled): the budget is set
    assert await tight.bot.spend.budget(CHANNEL) == Decimal("7.00")
    # and the next quick command that finishes in time is answered in its ack again
    reply = await tight.answer("help")
    assert reply["in"] == "ack"
    assert len(tight.fake.responses) == 1


async def test_an_ephemeral_answer_past_the_budget_replaces_working_on_it(
    tight: SlackRig,
) -> None:
    with write_lock(tight.settings):
        status, ack, url = await tight.command("schedule delete -n deadbeef")
        assert status == 200 and ack["text"] == WORKING
    answer = await answer_of(tight.fake, ack, url)
    (post,) = answer["all"]
    assert "does not exist" in (post.text or ""), post
    assert post.response_type == "ephemeral" and post.replace_original
