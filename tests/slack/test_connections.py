"""The bot talks to Slack over one HTTP session: answers and Web API calls reuse a connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.lifecycle import running
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import SlackRig, rig_settings

ANSWERS = 5


async def test_answers_on_response_urls_share_one_connection(rig: SlackRig) -> None:
    """Before: slack-bolt's respond opened a session, so a TCP connection, per answer."""
    urls = []
    for _ in range(ANSWERS):  # one after another: a kept-alive connection is free again
        # a slow command, answered on its response_url (a quick one is answered in the ack)
        reply = await rig.answer("cluster delete -n gone -y")
        assert reply["in"] == "response_url" and "gone" in reply["text"], reply
        urls.append(reply["all"][-1].url)
    posts = [post for post in rig.fake.responses if post.url in urls]
    assert len(posts) == ANSWERS and all(post.ok for post in posts)
    connections = {post.connection for post in posts}
    assert "" not in connections
    assert len(connections) == 1, connections


async def test_web_api_calls_of_the_listeners_share_one_connection(rig: SlackRig) -> None:
    """`job create` without a file opens the form: a views.open through Bolt's client."""
    for count in range(1, ANSWERS + 1):
        status, _, _ = await rig.command("job create")
        assert status == 200
        await rig.fake.wait_for_call("views.open", count=count)
    calls = rig.fake.calls_to("views.open", ok=True)
    assert len(calls) == ANSWERS
    assert len({call.connection for call in calls}) == 1


async def test_the_session_is_closed_when_the_bot_stops(
    tmp_path: Path, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    async with running(rig_settings(tmp_path, fake), periodic=False) as bot:
        assert bot.http is not None and not bot.http.closed
        session = bot.http
    assert session.closed
