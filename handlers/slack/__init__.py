"""The Slack surfaces, one module each: every listener acks (at once, or a quick slash command
with its answer), turns the payload into a typed request, calls one handler and replies.
`register` is the one call the bot makes."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from handlers.slack import apphome, buttons, forms, requests, slash
from handlers.slack.surface import SlackHandlers

__all__ = ["SlackHandlers", "register"]


def register(
    app: AsyncApp,
    h: SlackHandlers,
    *,
    command: str = "/batchai",
    answer_budget: float = slash.ANSWER_BUDGET,
) -> None:
    """Attach every listener of the bot to a Bolt app: the request middleware first.
    `answer_budget`: seconds a quick slash command may run for its answer to go in the ack."""
    requests.register(app, h)
    slash.register(app, h, command=command, answer_budget=answer_budget)
    buttons.register(app, h)
    forms.register(app, h)
    apphome.register(app, h)
