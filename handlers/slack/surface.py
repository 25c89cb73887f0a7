"""What every Slack surface shares: its dependencies and how a Reply becomes a Slack payload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from handlers.actions import ActionHandler
from handlers.commands import CommandHandler, Reply
from handlers.commandspec import Command
from services.access import AccessGuard
from services.jobs.service import JobService
from services.jobs.sweeps import SweepService
from services.models import Actor


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
    sweeps: SweepService | None = None


def payload(reply: Reply, *, ephemeral: bool) -> dict[str, Any]:
    return {
        "text": reply.message.text[:3000],
        "blocks": reply.message.blocks,
        "response_type": "ephemeral" if ephemeral else "in_channel",
    }


def outcome(reply: Reply) -> str:
    return "refused" if reply.failed else "done"


def name_of(command: Command) -> str:
    return type(command).__name__


def channel_of(body: dict[str, Any]) -> str | None:
    channel = (
        body.get("channel_id") or body.get("channel") or (body.get("event") or {}).get("channel")
    )
    if isinstance(channel, dict):
        channel = channel.get("id")
    return channel if isinstance(channel, str) else None
