"""Slack listeners: ack at once, turn the payload into a typed request, call one handler, reply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slack_bolt.async_app import AsyncApp

from handlers import home, modals, views
from handlers.actions import ActionHandler
from handlers.commands import CommandHandler, Reply
from handlers.commandspec import (
    ClusterAutoScale,
    ClusterDelete,
    ClusterResize,
    ClusterUpdate,
    Command,
    JobCreate,
)
from services import context
from services.access import AccessPolicy
from services.errors import BatchAIError, Conflict, NotFound, SpecError, UserError
from services.jobs import JobRequest, JobService
from services.models import Actor, AuditEntry, ConfigSource, Conversation

log = logging.getLogger(__name__)

DESTRUCTIVE = (ClusterDelete, ClusterResize, ClusterAutoScale, ClusterUpdate)
SLOW = (
    "ClusterCreate",
    "ClusterDelete",
    "ClusterResize",
    "ClusterAutoScale",
    "JobCreate",
    "JobListFiles",
    "JobStreamFile",
    "JobTerminate",
    "JobDelete",
)
AUDITED = ("JobTerminate", "JobDelete", "BudgetSet", "ScheduleDelete")
MODAL_DEADLINE = 2.0  # seconds we give a submission before acking (Slack allows 3)

Audit = Callable[[AuditEntry], Awaitable[None]]


@dataclass(frozen=True)
class SlackHandlers:
    """What the listeners need; built by bot/bootstrap.py."""

    commands: CommandHandler
    actions: ActionHandler
    jobs: JobService
    dashboard: Callable[[str], Awaitable[dict[str, Any]]]  # user id -> App Home view
    submit_form: Callable[..., Awaitable[dict[str, Any]]]  # channel id[, prefill] -> job modal
    mount_paths: Callable[[], Awaitable[dict[str, str]]]  # cluster -> first share mount path
    access: AccessPolicy
    audit: Audit
    now: Callable[[], datetime]


def register(app: AsyncApp, h: SlackHandlers, *, command: str = "/batchai") -> None:
    """Attach every listener of the bot to a Bolt app."""
    app.middleware(_bind_context)

    @app.command(command)
    async def on_command(ack: Any, body: dict[str, Any], respond: Any, client: Any) -> None:
        user, channel = body["user_id"], body["channel_id"]
        parsed = h.commands.parse(body.get("text", ""), source="slack")
        if not isinstance(parsed, Reply):
            context.set_field("command", _name(parsed))
        if isinstance(parsed, Reply):  # a typo: answer at once, only to the typist
            await ack(**_payload(parsed, ephemeral=True))
            return
        decision = h.access.check(
            user=user, channel=channel, destructive=isinstance(parsed, DESTRUCTIVE)
        )
        if not decision.allowed:
            await ack(**_payload(Reply(views.error(decision.reason), failed=True), ephemeral=True))
            await h.audit(_audit(h, user, channel, _name(parsed), "denied", decision.reason))
            return
        if isinstance(parsed, JobCreate) and (parsed.config is None or parsed.name is None):
            await ack()  # the form asks for what is missing, starting from what was given
            view = await h.submit_form(channel, modals.prefill_of(parsed))
            await client.views_open(trigger_id=body["trigger_id"], view=view)
            return
        slow = type(parsed).__name__ in SLOW
        if slow:
            await ack(text=":hourglass_flowing_sand: working on it…", response_type="ephemeral")
        else:
            await ack()
        actor = _actor(h, user, channel)
        reply = await h.commands.run(parsed, actor=actor, source="slack")
        log.info("%s by %s in %s: %s", _name(parsed), user, channel, _outcome(reply))
        if isinstance(parsed, DESTRUCTIVE) or type(parsed).__name__ in AUDITED:
            outcome = "denied" if reply.failed else "allowed"
            await h.audit(_audit(h, user, channel, _name(parsed), outcome, body.get("text")))
        # An ephemeral "working on it…" can be replaced by an ephemeral answer only; a public
        # answer is a new message in the channel.
        replace = slow and not reply.public
        await respond(**_payload(reply, ephemeral=not reply.public), replace_original=replace)

    async def on_button(
        ack: Any, body: dict[str, Any], respond: Any, action: dict[str, Any]
    ) -> None:
        await ack()
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id")
        # Keep / Scale down now change a cluster's size: the rules of `cluster resize` apply.
        manage = action["action_id"] in views.IDLE_ACTIONS
        decision = h.access.check(user=user, channel=channel, destructive=manage)
        if not decision.allowed:
            await respond(
                **_payload(Reply(views.error(decision.reason)), ephemeral=True),
                replace_original=False,
            )
            await h.audit(_audit(h, user, channel, action["action_id"], "denied", decision.reason))
            return
        reply = await h.actions.handle(
            action["action_id"], action.get("value", ""), actor=_actor(h, user, channel)
        )
        log.info("%s by %s in %s: %s", action["action_id"], user, channel, _outcome(reply))
        thread = (body.get("message") or {}).get("thread_ts") or (body.get("message") or {}).get(
            "ts"
        )
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
            actor=_actor(h, user, None),
            reason=reason,
        )
        if reply.failed:  # refused, or decided already: say so inside the modal
            await ack(response_action="errors", errors={views.BLOCK_REASON: reply.message.text})
            return
        await ack()

    @app.action(home.ACTION_OPEN_SUBMIT)
    async def on_open_submit(ack: Any, body: dict[str, Any], client: Any) -> None:
        await ack()
        view = await h.submit_form((body.get("channel") or {}).get("id") or body["user"]["id"])
        await client.views_open(trigger_id=body["trigger_id"], view=view)

    @app.action(home.ACTION_HOME_REFRESH)
    async def on_refresh_home(ack: Any, body: dict[str, Any], client: Any) -> None:
        await ack()
        user = body["user"]["id"]
        await client.views_publish(user_id=user, view=await h.dashboard(user))

    @app.event("app_home_opened")
    async def on_home(event: dict[str, Any], client: Any) -> None:
        if event.get("tab", "home") != "home":
            return
        await client.views_publish(user_id=event["user"], view=await h.dashboard(event["user"]))

    @app.view(modals.CALLBACK_JOB_CREATE)
    async def on_submit(ack: Any, body: dict[str, Any], client: Any) -> None:
        user = body["user"]["id"]
        parsed = modals.parse_job_create(body["view"], mount_paths=await h.mount_paths())
        if isinstance(parsed, dict):
            await ack(response_action="errors", errors=parsed)
            return
        decision = h.access.check(user=user, channel=parsed.channel_id, destructive=False)
        if not decision.allowed:
            await ack(response_action="errors", errors={modals.BLOCK_NAME: decision.reason})
            return
        source = (
            ConfigSource("manifest", parsed.manifest)
            if parsed.manifest
            else ConfigSource("inline", parsed.config_json or "")
        )
        request = JobRequest(parsed.name, parsed.cluster, source)
        creating = asyncio.ensure_future(
            h.jobs.create_job(request, actor=_actor(h, user, parsed.channel_id))
        )
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


def _actor(h: SlackHandlers, user: str, channel: str | None) -> Actor:
    conversation = Conversation(channel, None, user) if channel else None
    return Actor(user=user, conversation=conversation, is_admin=h.access.is_admin(user))


def _outcome(reply: Reply) -> str:
    return "refused" if reply.failed else "done"


def _name(command: Command) -> str:
    return type(command).__name__


def _audit(
    h: SlackHandlers, user: str, channel: str | None, action: str, outcome: str, detail: Any
) -> AuditEntry:
    return AuditEntry(
        at=h.now(),
        actor=user,
        action=action,
        outcome=outcome,
        channel=channel,
        detail=None if detail is None else str(detail)[:500],
    )


def _payload(reply: Reply, *, ephemeral: bool) -> dict[str, Any]:
    return {
        "text": reply.message.text[:3000],
        "blocks": reply.message.blocks,
        "response_type": "ephemeral" if ephemeral else "in_channel",
    }
