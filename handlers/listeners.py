"""Slack listeners: ack at once, turn the payload into a typed request, call one handler, reply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse

from handlers import home, modals, views
from handlers.actions import ActionHandler
from handlers.commands import CommandHandler, Reply
from handlers.commandspec import Command, JobCreate
from services.access import AccessGuard, Caller, Origin
from services.core import context
from services.core.errors import BatchAIError, Conflict, NotFound, SpecError, UserError
from services.jobs.service import JobRequest, JobService
from services.models import Actor, ConfigSource

log = logging.getLogger(__name__)

MODAL_DEADLINE = 2.0  # seconds we give a submission before acking (Slack allows 3)


@dataclass(frozen=True)
class SlackHandlers:
    """What the listeners need; built by bot/bootstrap.py."""

    commands: CommandHandler
    actions: ActionHandler
    jobs: JobService
    dashboard: Callable[[Actor], Awaitable[dict[str, Any]]]  # reader -> App Home view
    submit_form: Callable[..., Awaitable[dict[str, Any]]]  # channel id[, prefill] -> job modal
    mount_paths: Callable[[], Awaitable[dict[str, str]]]  # cluster -> first share mount path
    guard: AccessGuard


def register(app: AsyncApp, h: SlackHandlers, *, command: str = "/batchai") -> None:
    """Attach every listener of the bot to a Bolt app."""
    app.middleware(_bind_context)

    @app.middleware
    async def only_allowed_teams(
        body: dict[str, Any], respond: Any, client: Any, next_: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Every request (command, button, view, event; HTTP or Socket Mode) names the
        workspaces it comes from: one not on ALLOWED_TEAMS is answered with one line."""
        fields = request_context(body)
        caller = Caller(fields["user"] or "unknown", _channel_of(body))
        decision = await h.guard.admit_origin(
            caller, origin_of(body), action=fields["command"] or "request"
        )
        if decision.allowed:
            return await next_()
        return await _refuse_foreign(body, decision.reason, respond, client)

    @app.command(command)
    async def on_command(ack: Any, body: dict[str, Any], respond: Any, client: Any) -> None:
        caller = Caller(body["user_id"], body["channel_id"])
        parsed = h.commands.parse(body.get("text", ""), source="slack")
        if isinstance(parsed, Reply):  # a typo: answer at once, only to the typist
            await ack(**_payload(parsed, ephemeral=True))
            return
        context.set_field("command", _name(parsed))
        admitted = await h.commands.admit(parsed, caller=caller, detail=body.get("text"))
        if isinstance(admitted, Reply):
            await ack(**_payload(admitted, ephemeral=True))
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
        log.info("%s by %s in %s: %s", _name(parsed), caller.user, caller.channel, _outcome(reply))
        # An ephemeral "working on it…" can be replaced by an ephemeral answer only; a public
        # answer is a new message in the channel.
        replace = parsed.slow and not reply.public
        await respond(**_payload(reply, ephemeral=not reply.public), replace_original=replace)

    async def on_button(
        ack: Any, body: dict[str, Any], respond: Any, action: dict[str, Any]
    ) -> None:
        await ack()
        caller = Caller(body["user"]["id"], (body.get("channel") or {}).get("id"))
        reply = await h.actions.handle(action["action_id"], action.get("value", ""), caller=caller)
        log.info(
            "%s by %s in %s: %s", action["action_id"], caller.user, caller.channel, _outcome(reply)
        )
        message = body.get("message") or {}
        thread = message.get("thread_ts") or message.get("ts")
        await respond(
            **_payload(reply, ephemeral=not reply.public),
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
    ):
        app.action(action_id)(on_button)

    @app.action(views.ACTION_DENY)
    async def on_deny(ack: Any, body: dict[str, Any], action: dict[str, Any], client: Any) -> None:
        """Deny asks why first: the reason goes to the requester and the audit log."""
        await ack()
        await client.views_open(
            trigger_id=body["trigger_id"], view=views.deny_modal(action.get("value", ""))
        )

    @app.view(views.CALLBACK_DENY)
    async def on_deny_reason(ack: Any, body: dict[str, Any]) -> None:
        user = body["user"]["id"]
        view = body["view"]
        state = view.get("state", {}).get("values", {})
        reason = ((state.get(views.BLOCK_REASON) or {}).get(views.BLOCK_REASON) or {}).get("value")
        if not reason or not reason.strip():
            await ack(response_action="errors", errors={views.BLOCK_REASON: "say why"})
            return
        reply = await h.actions.handle(
            views.ACTION_DENY,
            view.get("private_metadata", ""),
            caller=Caller(user, None),
            reason=reason,
        )
        if reply.failed:  # refused, or decided already: say so inside the modal
            await ack(response_action="errors", errors={views.BLOCK_REASON: reply.message.text})
            return
        await ack()

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

    @app.view(modals.CALLBACK_JOB_CREATE)
    async def on_submit(ack: Any, body: dict[str, Any], client: Any) -> None:
        user = body["user"]["id"]
        parsed = modals.parse_job_create(body["view"], mount_paths=await h.mount_paths())
        if isinstance(parsed, dict):
            await ack(response_action="errors", errors=parsed)
            return
        caller = Caller(user, parsed.channel_id)
        decision = await h.guard.admit(caller, action="JobCreate")
        if not decision.allowed:
            await ack(response_action="errors", errors={modals.BLOCK_NAME: decision.reason})
            return
        source = (
            ConfigSource("manifest", parsed.manifest)
            if parsed.manifest
            else ConfigSource("inline", parsed.config_json or "")
        )
        request = JobRequest(parsed.name, parsed.cluster, source)
        creating = asyncio.ensure_future(h.jobs.create_job(request, actor=h.guard.actor(caller)))
        try:
            # shield: a slow store must not cancel a submission halfway through its commit
            await asyncio.wait_for(asyncio.shield(creating), MODAL_DEADLINE)
        except (UserError, Conflict, NotFound) as err:
            block = _error_block(err, parsed, body["view"])
            await ack(response_action="errors", errors={block: str(err)[:2000]})
            return
        except TimeoutError:
            await ack()  # close the form; the outcome follows as a message
            _follow_up(creating, client, channel=parsed.channel_id, user=user)
            return
        except BatchAIError as err:
            log.warning("job submission from the form failed: %s", err)
            await ack(
                response_action="errors", errors={modals.BLOCK_NAME: f"could not submit: {err}"}
            )
            return
        await ack()  # closes the modal; the status card appears in the channel


async def _bind_context(body: dict[str, Any], next_: Callable[[], Awaitable[Any]]) -> Any:
    """Every request gets a correlation id (Slack's trigger_id, else a fresh one) and says who
    asked what, for every log line written while it is handled. Bolt runs global middleware
    one after another, not nested, so the fields are set for the rest of the request's task
    (each request has its own task, in HTTP and in Socket Mode)."""
    for name, value in request_context(body).items():
        context.set_field(name, value)
    return await next_()


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


def _channel_of(body: dict[str, Any]) -> str | None:
    channel = (
        body.get("channel_id") or body.get("channel") or (body.get("event") or {}).get("channel")
    )
    if isinstance(channel, dict):
        channel = channel.get("id")
    return channel if isinstance(channel, str) else None


async def _refuse_foreign(body: dict[str, Any], reason: str, respond: Any, client: Any) -> Any:
    """One line where the surface can show one: in the slash command's ack, beside the clicked
    button, in the submitted form, on the Home tab; other events are acked and dropped."""
    line = f":no_entry: {reason}"
    if body.get("command"):
        return BoltResponse(status=200, body={"response_type": "ephemeral", "text": line})
    kind = body.get("type")
    if kind == "block_actions" and body.get("response_url"):
        await respond(text=line, response_type="ephemeral", replace_original=False)
    elif kind == "view_submission":
        inputs = [b for b in body["view"].get("blocks", []) if b.get("type") == "input"]
        if inputs and inputs[0].get("block_id"):
            errors = {inputs[0]["block_id"]: reason}
            return BoltResponse(status=200, body={"response_action": "errors", "errors": errors})
        return BoltResponse(status=200, body={"response_action": "clear"})
    event = body.get("event") or {}
    if event.get("type") == "app_home_opened" and event.get("tab", "home") == "home":
        await client.views_publish(user_id=event["user"], view=home.refused_view(reason))
    return BoltResponse(status=200, body="")


def _follow_up(creating: asyncio.Future[Any], client: Any, *, channel: str, user: str) -> None:
    """A submission that outlived the form's 3 s: when it fails, tell the user privately (when
    it succeeds, its status card says so)."""

    async def report() -> None:
        try:
            await creating
        except BatchAIError as err:
            await client.chat_postEphemeral(
                channel=channel, user=user, text=f":warning: the job was not submitted: {err}"
            )

    _LATE.add(task := asyncio.ensure_future(report()))
    task.add_done_callback(_LATE.discard)


_LATE: set[asyncio.Future[None]] = set()  # keeps late reports alive until they are done


def _error_block(err: Exception, form: modals.JobForm, view: dict[str, Any]) -> str:
    """The form field a refused submission is about, so Slack shows the error beside it."""
    if isinstance(err, Conflict):
        return modals.BLOCK_NAME
    if form.manifest:
        return modals.BLOCK_MANIFEST
    if isinstance(err, SpecError):
        pasted = (view.get("state", {}).get("values", {}).get(modals.BLOCK_JSON) or {}).values()
        return modals.BLOCK_JSON if any(v.get("value") for v in pasted) else modals.BLOCK_COMMAND
    if "node" in str(err):
        return modals.BLOCK_NODES
    return modals.BLOCK_CLUSTER


def _outcome(reply: Reply) -> str:
    return "refused" if reply.failed else "done"


def _name(command: Command) -> str:
    return type(command).__name__


def _payload(reply: Reply, *, ephemeral: bool) -> dict[str, Any]:
    return {
        "text": reply.message.text[:3000],
        "blocks": reply.message.blocks,
        "response_type": "ephemeral" if ephemeral else "in_channel",
    }
