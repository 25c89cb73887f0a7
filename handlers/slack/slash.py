"""The /batchai slash command: parse, admit, ack (at once, or with "working on it…" for a slow
command), run one handler, answer through response_url. `job create` without a config or a name
opens the job form instead, filled in from what was typed."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp

from handlers import modals
from handlers.commands import Reply
from handlers.commandspec import JobCreate
from handlers.slack.surface import SlackHandlers, name_of, outcome, payload
from services.access import Caller
from services.core import context

log = logging.getLogger(__name__)


def register(app: AsyncApp, h: SlackHandlers, *, command: str) -> None:
    @app.command(command)
    async def on_command(ack: Any, body: dict[str, Any], respond: Any, client: Any) -> None:
        caller = Caller(body["user_id"], body["channel_id"])
        parsed = h.commands.parse(body.get("text", ""), source="slack")
        if isinstance(parsed, Reply):  # a typo: answer at once, only to the typist
            await ack(**payload(parsed, ephemeral=True))
            return
        context.set_field("command", name_of(parsed))
        admitted = await h.commands.admit(parsed, caller=caller, detail=body.get("text"))
        if isinstance(admitted, Reply):
            await ack(**payload(admitted, ephemeral=True))
            return
        if isinstance(parsed, JobCreate) and (parsed.config is None or parsed.name is None):
            await ack()  # the form asks for what is missing, starting from what was given
            view = await h.submit_form(caller.channel or caller.user, modals.prefill_of(parsed))
            await client.views_open(trigger_id=body["trigger_id"], view=view)
            return
        if parsed.slow:
            await ack(text=":hourglass_flowing_sand: working on it…", response_type="ephemeral")
        else:
            await ack()
        reply = await h.commands.run(admitted, source="slack")
        log.info("%s by %s in %s: %s", name_of(parsed), caller.user, caller.channel, outcome(reply))
        # An ephemeral "working on it…" can be replaced by an ephemeral answer only; a public
        # answer is a new message in the channel.
        replace = parsed.slow and not reply.public
        await respond(**payload(reply, ephemeral=not reply.public), replace_original=replace)
