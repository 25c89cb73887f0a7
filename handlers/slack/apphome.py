"""The App Home tab: published when it is opened or refreshed, through the same guard as
commands, and its "Open submit form" button."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from handlers import home
from handlers.slack.surface import SlackHandlers
from services.access import Caller


def register(app: AsyncApp, h: SlackHandlers) -> None:
    @app.action(home.ACTION_OPEN_SUBMIT)
    async def on_open_submit(ack: Any, body: dict[str, Any], client: Any) -> None:
        await ack()
        caller = Caller(body["user"]["id"], (body.get("channel") or {}).get("id"))
        if not (await h.guard.admit(caller, action=home.ACTION_OPEN_SUBMIT)).allowed:
            return  # the Home tab of a refused user has no such button: a stale one, audited
        view = await h.submit_form(caller.channel or caller.user)
        await client.views_open(trigger_id=body["trigger_id"], view=view)

    async def publish_home(user: str, client: Any) -> None:
        """The Home tab through the same guard as commands: refused, or what the user may read."""
        caller = Caller(user, None)
        decision = await h.guard.admit(caller, action="app_home")
        if decision.allowed:
            view = await h.dashboard(h.guard.actor(caller))
        else:
            view = home.refused_view(decision.reason)
        await client.views_publish(user_id=user, view=view)

    @app.action(home.ACTION_HOME_REFRESH)
    async def on_refresh_home(ack: Any, body: dict[str, Any], client: Any) -> None:
        await ack()
        await publish_home(body["user"]["id"], client)

    @app.event("app_home_opened")
    async def on_home(event: dict[str, Any], client: Any) -> None:
        if event.get("tab", "home") != "home":
            return
        await publish_home(event["user"], client)
