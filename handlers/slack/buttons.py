"""The buttons on the bot's messages (Logs, Terminate, Refresh, Approve, Deny, Extend, Stop now,
Keep, Scale down now): ack, call the action handler, answer beside the message (or in its thread,
when the answer is public). Deny opens a modal that asks why first (see forms.py)."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp

from handlers import sweepviews, views
from handlers.slack.surface import SlackHandlers, outcome, payload
from services.access import Caller

log = logging.getLogger(__name__)


def register(app: AsyncApp, h: SlackHandlers) -> None:
    async def on_button(
        ack: Any, body: dict[str, Any], respond: Any, action: dict[str, Any]
    ) -> None:
        await ack()
        caller = Caller(body["user"]["id"], (body.get("channel") or {}).get("id"))
        reply = await h.actions.handle(action["action_id"], action.get("value", ""), caller=caller)
        log.info(
            "%s by %s in %s: %s", action["action_id"], caller.user, caller.channel, outcome(reply)
        )
        message = body.get("message") or {}
        thread = message.get("thread_ts") or message.get("ts")
        await respond(
            **payload(reply, ephemeral=not reply.public),
            replace_original=False,
            thread_ts=thread if reply.public else None,
        )

    for action_id in (
        views.ACTION_LOGS,
        views.ACTION_TERMINATE,
        views.ACTION_REFRESH,
        views.ACTION_APPROVE,
        views.ACTION_EXTEND,
        views.ACTION_STOP,
        *views.IDLE_ACTIONS,
        *views.GPU_IDLE_ACTIONS,
        *sweepviews.SWEEP_ACTIONS,
    ):
        app.action(action_id)(on_button)

    @app.action(views.ACTION_DENY)
    async def on_deny(ack: Any, body: dict[str, Any], action: dict[str, Any], client: Any) -> None:
        """Deny asks why first: the reason goes to the requester and the audit log."""
        await ack()
        await client.views_open(
            trigger_id=body["trigger_id"], view=views.deny_modal(action.get("value", ""))
        )
