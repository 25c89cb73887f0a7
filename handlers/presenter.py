"""The notification presenter: stored domain events -> messages on a chat transport."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from handlers import views
from handlers.views import Message
from services.events import (
    ClusterChanged,
    JobFinished,
    JobNote,
    JobStateChanged,
    JobSubmitted,
    LogSnippet,
)
from services.models import Conversation, Job
from services.ports import Delivery
from services.states import FINISHED

FINISHED_NAMES = frozenset(state.value for state in FINISHED)


class Transport(Protocol):
    """A chat surface. `post` returns the message id (Slack's ts) for threading and edits.

    `key` is the delivery's idempotency key: a transport that records what it sent uses it to
    avoid sending the same notification twice after a restart."""

    async def post(
        self,
        channel: str,
        message: Message,
        *,
        thread: str | None = None,
        broadcast: bool = False,
        key: str | None = None,
    ) -> str: ...

    async def update(self, channel: str, message_id: str, message: Message) -> None: ...


class Presenter:
    """One status card per job, edited in place, and a thread under it for the story."""

    def __init__(
        self,
        transport: Transport,
        *,
        default_channel: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._transport = transport
        self._default_channel = default_channel
        self._now = clock

    async def deliver(self, delivery: Delivery) -> Conversation | None:
        event, job = delivery.event, delivery.job
        if isinstance(event, ClusterChanged) or job is None:
            return None  # cluster changes are answered by the command that caused them
        key = f"event-{delivery.event_id}"
        conv = job.conversation or Conversation(self._default_channel, None, job.requester)
        if isinstance(event, JobSubmitted):
            if conv.thread is None:
                card = views.status_card(job, now=self._now())
                ts = await self._transport.post(conv.channel, card, key=f"{key}-card")
                conv = Conversation(conv.channel, ts, conv.user)
            await self._reply(conv, views.submitted_reply(job, event.warnings), key)
            return conv
        if isinstance(event, JobStateChanged):
            await self._refresh_card(job, conv)
            if event.new not in FINISHED_NAMES:  # the receipt tells the end
                await self._reply(conv, views.state_reply(job, event.new, event.detail), key)
        elif isinstance(event, LogSnippet):
            await self._reply(
                conv, views.log_snippet(event.file, event.first_line, event.lines), key
            )
        elif isinstance(event, JobNote):
            await self._reply(conv, views.note_reply(event.text), key)
        elif isinstance(event, JobFinished):
            receipt = views.receipt(job, delivery.links)
            await self._reply(conv, receipt, key, broadcast=True)
        return None

    async def _reply(
        self, conv: Conversation, message: Message, key: str, *, broadcast: bool = False
    ) -> None:
        await self._transport.post(
            conv.channel, message, thread=conv.thread, broadcast=broadcast, key=key
        )

    async def _refresh_card(self, job: Job, conv: Conversation) -> None:
        if conv.thread is not None:
            await self._transport.update(
                conv.channel, conv.thread, views.status_card(job, now=self._now())
            )
