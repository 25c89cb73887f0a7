"""The modals' submissions: the job form (submitted as the `job create` it stands for, through
the same request builder as the slash command) and the reason a Deny asks for."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncApp

from handlers import modals, views
from handlers.commands import job_request
from handlers.slack.surface import SlackHandlers
from services.access import Caller
from services.core.errors import BatchAIError, Conflict, NotFound, UserError
from services.models import Actor

log = logging.getLogger(__name__)

MODAL_DEADLINE = 2.0  # seconds we give a submission before acking (Slack allows 3)


def register(app: AsyncApp, h: SlackHandlers) -> None:
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
        creating = asyncio.ensure_future(_submit(h, parsed, h.guard.actor(caller)))
        try:
            # shield: a slow store must not cancel a submission halfway through its commit
            await asyncio.wait_for(asyncio.shield(creating), MODAL_DEADLINE)
        except (UserError, Conflict, NotFound) as err:
            block = modals.error_block(err, parsed, body["view"])
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


async def _submit(h: SlackHandlers, form: modals.JobForm, actor: Actor) -> object:
    """The form's job, or its sweep (the sweep field, or a sweep section in its job.json)."""
    request = job_request(form.command)
    if h.sweeps is not None:
        swept = await h.sweeps.create_sweep(
            request, actor=actor, flags=form.sweep, metric=form.sweep_metric
        )
        if swept is not None:
            return swept
    return await h.jobs.create_job(request, actor=actor)


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
