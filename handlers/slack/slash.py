"""The /batchai slash command: parse, admit, run one handler, answer. A quick command's answer
goes in the ack itself (the HTTP 200 body, or the Socket Mode envelope: Slack shows it as the
command's reply) when it is ready within the answer budget; a slow command, or a quick one that
outlives the budget, is acked with an ephemeral "working on it…" and answered through
response_url when it is done. `job create` without a config or a name opens the job form
instead, filled in from what was typed."""

from __future__ import annotations

import asyncio
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

WORKING = ":hourglass_flowing_sand: working on it…"
# Seconds a quick command may run for its answer to go in the ack: Slack waits 3 s for an ack
# (and Bolt's listener runner as long), so this leaves the request a second on the way back.
ANSWER_BUDGET = 2.0


def register(
    app: AsyncApp, h: SlackHandlers, *, command: str, answer_budget: float = ANSWER_BUDGET
) -> None:
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
        run = asyncio.ensure_future(h.commands.run(admitted, source="slack"))
        in_ack = False
        if not parsed.slow:
            # Waited for, never cancelled: a command that outlives the budget (it may have
            # changed state already) runs on and answers on response_url.
            await asyncio.wait((run,), timeout=answer_budget)
            in_ack = run.done()
        if not in_ack:
            await ack(text=WORKING, response_type="ephemeral")
        reply = await run
        log.info("%s by %s in %s: %s", name_of(parsed), caller.user, caller.channel, outcome(reply))
        if in_ack:
            await ack(**payload(reply, ephemeral=not reply.public))
            return
        # The ephemeral "working on it…" can be replaced by an ephemeral answer only; a public
        # answer is a new message in the channel.
        await respond(
            **payload(reply, ephemeral=not reply.public), replace_original=not reply.public
        )
