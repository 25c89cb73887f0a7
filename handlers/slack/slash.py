"""The /batchai slash command: parse, admit, run one handler, answer. A quick command's answer
goes in the ack itself (the HTTP 200 body, or the Socket Mode envelope: Slack shows it as the
command's reply) when it is ready within the answer budget; a slow command, or a quick one that
outlives the budget, is acked with an ephemeral "working on it…" and answered through
response_url when it is done. `job create` without a config or a name opens the job form
instead, filled in from what was typed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
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
        if parsed.slow:
            await ack(text=WORKING, response_type="ephemeral")
            reply = await h.commands.run(admitted, source="slack")
            in_ack = False
        else:
            run = h.commands.run(admitted, source="slack")
            reply, in_ack = await _in_time(run, ack, answer_budget)
        log.info("%s by %s in %s: %s", name_of(parsed), caller.user, caller.channel, outcome(reply))
        if in_ack:
            await ack(**payload(reply, ephemeral=not reply.public))
            return
        # The ephemeral "working on it…" can be replaced by an ephemeral answer only; a public
        # answer is a new message in the channel.
        await respond(
            **payload(reply, ephemeral=not reply.public), replace_original=not reply.public
        )


async def _in_time(work: Awaitable[Reply], ack: Any, budget: float) -> tuple[Reply, bool]:
    """Run `work` in this task; if it still runs `budget` seconds on, ack "working on it…"
    meanwhile, from a timer: the work is never interrupted, let alone cancelled (it may have
    changed state already). Returns the reply and whether it was ready in time for the ack.

    A timer rather than a task waited for with a timeout: the ack bench's `--calls` counted
    about 1,650 calls per command this way, 1,760 with `asyncio.wait` and 1,810 with
    `asyncio.wait_for(asyncio.shield(task))` (1,990 when every answer went to response_url)."""
    late: list[asyncio.Future[Any]] = []

    def expired() -> None:
        late.append(asyncio.ensure_future(ack(text=WORKING, response_type="ephemeral")))

    timer = asyncio.get_running_loop().call_later(budget, expired)
    try:
        reply = await work
    finally:
        timer.cancel()
    if late:
        await late[0]  # "working on it…" is acked before the answer goes to response_url
    return reply, not late
