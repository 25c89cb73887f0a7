"""Every Slack request, before any surface sees it: a correlation id and who asked what for the
log lines, and a refusal of workspaces not on ALLOWED_TEAMS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from handlers import home
from handlers.slack.surface import SlackHandlers, channel_of
from services.access import Caller, Origin
from services.core import context


def register(app: AsyncApp, h: SlackHandlers) -> None:
    """The global middleware: one object, which Bolt calls as is (a middleware function gets
    its arguments built anew for each request: some 75 calls)."""
    app.middleware(EveryRequest(h))


class EveryRequest(AsyncMiddleware):
    """A correlation id (Slack's trigger_id, else a fresh one) and who asked what, for every
    log line written while the request is handled; then the workspaces the request comes from
    (command, button, view, event; HTTP or Socket Mode): one not on ALLOWED_TEAMS is answered
    with one line. Each request has its own task in HTTP and in Socket Mode, so the fields
    hold for the rest of it."""

    def __init__(self, h: SlackHandlers) -> None:
        self._h = h

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],  # noqa: A002  # Bolt's keyword
    ) -> BoltResponse | None:
        body = req.body
        fields = request_context(body)
        for name, value in fields.items():
            context.set_field(name, value)
        caller = Caller(fields["user"] or "unknown", channel_of(body))
        decision = await self._h.guard.admit_origin(
            caller, origin_of(body), action=fields["command"] or "request"
        )
        if decision.allowed:
            return await next()
        return await _refuse_foreign(body, decision.reason, req.context)


def request_context(body: dict[str, Any]) -> dict[str, str | None]:
    user = body.get("user_id") or (body.get("user") or {}).get("id")
    event = body.get("event") or {}
    command: str | None
    if body.get("command"):
        command = str(body["command"])
    elif body.get("type") == "block_actions":
        command = str(((body.get("actions") or [{}])[0]).get("action_id"))
    elif body.get("view") and body.get("type", "").startswith("view_"):
        command = str(body["view"].get("callback_id"))
    else:
        command = event.get("type")
        user = user or event.get("user")
    correlation = body.get("trigger_id") or body.get("event_id") or context.new_id()
    return {"correlation_id": str(correlation), "user": user, "command": command}


def origin_of(body: dict[str, Any]) -> Origin:
    """Every workspace and Grid org a Slack request names, wherever its kind puts them: a slash
    command's `team_id`/`enterprise_id`, an interaction's `team.id`, `user.team_id` and
    `enterprise.id`, a view's `team_id`, an event's `team_id` (the actor's, in a Slack Connect
    channel), `event.user_team`/`source_team`/`team`."""
    teams: set[str] = set()
    enterprises: set[str] = set()
    event, user, view = (_dict(body.get(key)) for key in ("event", "user", "view"))
    team = body.get("team")
    enterprise = body.get("enterprise")
    named = [
        body.get("team_id"),
        team.get("id") if isinstance(team, dict) else team,
        user.get("team_id"),
        view.get("team_id"),
        event.get("user_team"),
        event.get("source_team"),
        event.get("team"),
    ]
    orgs = [
        body.get("enterprise_id"),
        enterprise.get("id") if isinstance(enterprise, dict) else enterprise,
        team.get("enterprise_id") if isinstance(team, dict) else None,
        user.get("enterprise_id"),
    ]
    for value in named:
        if isinstance(value, str) and value:
            (enterprises if value.startswith("E") else teams).add(value)
    enterprises.update(v for v in orgs if isinstance(v, str) and v)
    return Origin(frozenset(teams), frozenset(enterprises))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


async def _refuse_foreign(
    body: dict[str, Any], reason: str, bolt: AsyncBoltContext
) -> BoltResponse:
    """One line where the surface can show one: in the slash command's ack, beside the clicked
    button, in the submitted form, on the Home tab; other events are acked and dropped."""
    line = f":no_entry: {reason}"
    if body.get("command"):
        return BoltResponse(status=200, body={"response_type": "ephemeral", "text": line})
    kind = body.get("type")
    respond = bolt.respond
    if kind == "block_actions" and body.get("response_url") and respond is not None:
        await respond(text=line, response_type="ephemeral", replace_original=False)
    elif kind == "view_submission":
        inputs = [b for b in body["view"].get("blocks", []) if b.get("type") == "input"]
        if inputs and inputs[0].get("block_id"):
            errors = {inputs[0]["block_id"]: reason}
            return BoltResponse(status=200, body={"response_action": "errors", "errors": errors})
        return BoltResponse(status=200, body={"response_action": "clear"})
    event = body.get("event") or {}
    if event.get("type") == "app_home_opened" and event.get("tab", "home") == "home":
        await bolt.client.views_publish(user_id=event["user"], view=home.refused_view(reason))
    return BoltResponse(status=200, body="")
