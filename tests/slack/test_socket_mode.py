"""Socket Mode over a local websocket: the same listeners, acked through the socket."""

from __future__ import annotations

from pathlib import Path

from bot.lifecycle import running
from handlers.slack.slash import WORKING
from tests.fakes.slack import APP_TOKEN, FakeSlack, slash_command_form
from tests.slack.conftest import CHANNEL, USER, answer_of, answered_in_ack, rig_settings


async def test_slash_command_over_socket_mode(tmp_path: Path, fake: FakeSlack) -> None:
    settings = rig_settings(
        tmp_path, fake, slack_mode="socket", slack_app_token=APP_TOKEN, slack_signing_secret=None
    )
    async with running(settings, periodic=False):
        await fake.socket_connected(timeout=10)
        url = fake.response_url()
        form = slash_command_form(
            "job fly",
            user_id=USER,
            channel_id=CHANNEL,
            response_url=url,
            trigger_id=fake.issue_trigger(),
        )
        ack = await fake.socket_send("slash_commands", form, timeout=10)
        assert ack["response_type"] == "ephemeral" and "unknown command" in str(ack["blocks"])

        form = slash_command_form(
            "cluster list -o table",
            user_id=USER,
            channel_id=CHANNEL,
            response_url=url,
            trigger_id=fake.issue_trigger(),
        )
        ack = await fake.socket_send("slash_commands", form, timeout=10)
        # a quick command: its answer rides in the envelope's ack, nothing on the response_url
        assert answered_in_ack(ack) and "No clusters" in str(ack["blocks"]), ack
        assert ack["response_type"] == "ephemeral"

        slow = fake.response_url()
        form = slash_command_form(
            "cluster delete -n nope -y",
            user_id=USER,
            channel_id=CHANNEL,
            response_url=slow,
            trigger_id=fake.issue_trigger(),
        )
        ack = await fake.socket_send("slash_commands", form, timeout=10)
        assert ack["text"] == WORKING and ack["response_type"] == "ephemeral"
        answer = await answer_of(fake, ack, slow, timeout=10)
        assert answer["in"] == "response_url" and "nope" in answer["text"], answer
        assert fake.responses_to(url) == []
    assert fake.calls_to("apps.connections.open")[0].token == APP_TOKEN
