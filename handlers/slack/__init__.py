"""The Slack surfaces, one module each: every listener acks at once, turns the payload into a
typed request, calls one handler and replies. `register` is the one call the bot makes."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from handlers.slack import apphome, buttons, forms, requests, slash
from handlers.slack.surface import SlackHandlers

__all__ = ["SlackHandlers", "register"]


def register(app: AsyncApp, h: SlackHandlers, *, command: str = "/batchai") -> None:
    """Attach every listener of the bot to a Bolt app: the request middleware first."""
    requests.register(app, h)
    slash.register(app, h, command=command)
    buttons.register(app, h)
    forms.register(app, h)
    apphome.register(app, h)
