"""The notification presenter: stored domain events -> messages on a chat transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from handlers import sweepviews, views
from handlers.charts import loss_curve_png, sweep_curves_png
from handlers.views import Message
from services.core.events import (
    ApprovalDecided,
    ApprovalRequested,
    ClusterChanged,
    Event,
    GpuIdleWarning,
    GpuIdleWarningClosed,
    IdleWarning,
    IdleWarningClosed,
    JobFinished,
    JobNote,
    JobRequeued,
    JobStateChanged,
    JobSubmitted,
    LogSnippet,
    NodeUnusable,
    ScheduleFailed,
    ScheduleFired,
    ScheduleMissed,
    WallClockWarning,
)
from services.core.ports import Delivery
from services.jobs.lifecycle import FINISHED, JobState
from services.jobs.sweeps import ranking_metric
from services.models import Conversation, Job, SweepView

FINISHED_NAMES = frozenset(state.value for state in FINISHED)
# Lifecycle steps the card already shows: their thread replies queue behind nothing.
QUIET = frozenset({JobState.QUEUED.value, JobState.PREPARING.value, JobState.RUNNING.value})


@dataclass(frozen=True)
class MessageRef:
    """A sent message: the channel the chat surface put it in and its id (Slack's ts).

    The channel can differ from the one asked for: Slack posts a message addressed to a user id
    (U…) into the bot's DM with that user and answers with the DM's id (D…). Edits, thread
    replies and uploads must name that channel."""

    channel: str
    ts: str


class Transport(Protocol):
    """A chat surface. `post` says where the message went, for threads and edits.

    `keys` are idempotency keys: a transport records them with the message it sent and, asked
    again for any of them, returns that message's id instead of sending a second one."""

    async def post(
        self,
        channel: str,
        message: Message,
        *,
        thread: str | None = None,
        broadcast: bool = False,
        keys: Sequence[str] = (),
        low_priority: bool = False,
    ) -> MessageRef: ...

    async def update(
        self, channel: str, message_id: str, message: Message, *, priority: int = 1
    ) -> None:
        """Edit a message; `priority` 0 goes before 1 when edits queue for a budget."""
        ...

    async def lookup(self, key: str) -> MessageRef | None:
        """The message sent with this key, if any."""
        ...

    async def upload(
        self,
        channel: str,
        *,
        thread: str | None,
        filename: str,
        content: bytes,
        title: str,
        keys: Sequence[str] = (),
    ) -> None: ...


@runtime_checkable
class TakesTurns(Protocol):
    """A transport that paces posts per channel and lets a caller hold the next slot."""

    def turn(
        self, channel: str, *, low_priority: bool = False
    ) -> AbstractAsyncContextManager[None]: ...


class Presenter:
    """One status card per job, edited in place, and a thread under it for the story.

    A card edit is off the thread's path: `deliver` starts it and returns once the thread post
    went out, so no post waits for the (scarce, workspace-wide) edit budget. The relay takes the
    running edit with `card_edit` and marks the event delivered only when the card shows it."""

    def __init__(
        self,
        transport: Transport,
        *,
        default_channel: str,
        clock: Callable[[], datetime],
        approvals_channel: str | None = None,
        approvers: str = "an approver",
        extend_hours: str = "2 h",
    ) -> None:
        self._transport = transport
        self._default_channel = default_channel
        self._now = clock
        self._approvals_channel = approvals_channel
        self._approvers = approvers
        self._extend_hours = extend_hours
        self._card_edits: dict[tuple[int, ...], asyncio.Future[None]] = {}
        # A sweep's card and summary are posted once whichever of its jobs gets there first.
        self._sweep_locks: dict[str, asyncio.Lock] = {}

    def card_edit(self, event_ids: tuple[int, ...]) -> asyncio.Future[None] | None:
        """The card edit the delivery of these events started and that may still be waiting."""
        return self._card_edits.pop(event_ids, None)

    def turn(self, job: Job, snippet: LogSnippet) -> AbstractAsyncContextManager[None]:
        """The post slot a snippet of this job will take in its thread (its priority as
        `deliver` gives it), held while the relay puts the snippet together: in a busy
        channel it then carries every line written while it waited for the slot."""
        conv = job.conversation
        if conv is None or conv.thread is None or not isinstance(self._transport, TakesTurns):
            return contextlib.nullcontext()  # no thread yet: its card goes first, untimed
        return self._transport.turn(conv.channel, low_priority=_yields(job, snippet))

    async def deliver(self, delivery: Delivery) -> Conversation | None:
        event, job = delivery.event, delivery.job
        if isinstance(event, IdleWarning):
            await self._idle(event, delivery.keys)
            return None
        if isinstance(event, ScheduleFailed | ScheduleMissed):
            await self._schedule_notice(event, delivery.keys)
            return None
        if isinstance(event, NodeUnusable):
            channel = event.channel or self._default_channel
            await self._transport.post(channel, views.node_unusable(event), keys=delivery.keys)
            return None
        if isinstance(event, ClusterChanged) or job is None:
            return None  # cluster changes are answered by the command that caused them
        conv = job.conversation or Conversation(self._default_channel, None, job.requester)
        keys = delivery.keys
        if delivery.sweep is not None and isinstance(
            event, JobSubmitted | JobStateChanged | LogSnippet | JobFinished
        ):
            return await self._sweep_step(delivery, delivery.sweep, job, conv)
        if isinstance(event, ScheduleFired):  # in the channel, just before the job's card
            message = views.schedule_fired(event.schedule_id, event.job_name)
            await self._transport.post(conv.channel, message, keys=keys)
            return None
        if isinstance(event, JobSubmitted):
            conv = await self._ensure_card(job, conv, f"{keys[0]}-card")
            if not delivery.card_only:  # else its reply rides on a later post
                submitted = views.submitted_reply(job, event.warnings, event.estimate)
                await self._reply(conv, submitted, keys, low_priority=True)  # the card says it
            return conv
        if isinstance(event, JobStateChanged):
            ended = event.new in FINISHED_NAMES
            edit = self._refresh_card(job, conv, priority=0 if ended else 1)
            if not ended and not _requeue(event):  # the receipt (or the requeue) tells it
                reply = views.state_reply(job, event.new, event.detail, passed=event.passed)
                await self._reply(conv, reply, keys, low_priority=event.new in QUIET)
            if edit is not None:
                self._card_edits[delivery.event_ids] = edit
        elif isinstance(event, LogSnippet):
            snippet = _snippets(delivery, event)
            # A crowded channel: the quiet steps ride on the lines, the card shows the state.
            edit = self._refresh_card(job, conv, priority=1) if delivery.prelude else None
            for step in reversed(delivery.prelude):
                said = _quiet_reply(job, step)
                snippet = Message(f"{said.text}\n{snippet.text}", [*said.blocks, *snippet.blocks])
            # A job's first lines go with cards and receipts, in turn: in a crowded channel no
            # job shows nothing while others' receipts go out; later lines yield to receipts.
            await self._reply(conv, snippet, keys, low_priority=_yields(job, event))
            if edit is not None:
                self._card_edits[delivery.event_ids] = edit
        elif isinstance(event, JobRequeued):
            await self._reply(conv, views.requeued_reply(job, event), keys)
        elif isinstance(event, JobNote):
            await self._reply(conv, views.note_reply(event.text, event.by), keys)
        elif isinstance(event, ApprovalRequested) and delivery.approval is not None:
            approval = delivery.approval
            where = self._approvals_channel or conv.channel
            request = views.approval_request(approval, job, approvers=self._approvers)
            await self._transport.post(where, request, keys=[_approval_key(approval.id)])
            await self._reply(conv, views.waiting_for_approval(approval, self._approvers), keys)
        elif isinstance(event, ApprovalDecided) and delivery.approval is not None:
            approval = delivery.approval
            sent = await self._transport.lookup(_approval_key(approval.id))
            if sent is not None:
                request = views.approval_request(approval, job, approvers=self._approvers)
                await self._transport.update(sent.channel, sent.ts, request)
            if approval.kind == "extend" and approval.state != "pending":
                await self._reply(conv, views.decision_note(approval), keys)
        elif isinstance(event, GpuIdleWarningClosed):
            sent = await self._transport.lookup(_gpu_key(event))
            if sent is not None:
                await self._transport.update(sent.channel, sent.ts, views.gpu_idle_warning(event))
        elif isinstance(event, GpuIdleWarning):
            message = views.gpu_idle_warning(event)
            await self._reply(conv, message, [*keys, _gpu_key(event)])
        elif isinstance(event, WallClockWarning):
            deadline = datetime.fromisoformat(event.deadline)
            warning = views.wall_clock_warning(job, deadline, extend_hours=self._extend_hours)
            await self._reply(conv, warning, keys)
        elif isinstance(event, JobFinished):
            png = loss_curve_png(delivery.metrics, title=f"{job.name}: training curve")
            if png is not None:
                await self._transport.upload(
                    conv.channel,
                    thread=conv.thread,
                    filename=f"{job.name}-loss.png",
                    content=png,
                    title=f"{job.name} loss curve",
                    keys=[f"{keys[0]}-chart"],
                )
            receipt = views.receipt(job, delivery.links)
            await self._reply(conv, receipt, keys, broadcast=True)
        return None

    async def _sweep_step(
        self, delivery: Delivery, view: SweepView, job: Job, conv: Conversation
    ) -> Conversation:
        """A job of a sweep: no card of its own. Its thread is the sweep card's; its state shows
        in the card's row; its snippets and receipt go in the thread, named; the last receipt
        of the sweep is followed by the sweep's summary."""
        event, keys = delivery.event, delivery.keys
        conv = await self._sweep_card(view, conv)
        if delivery.card_only:
            return conv
        ended = isinstance(event, JobFinished) or (
            isinstance(event, JobStateChanged) and event.new in FINISHED_NAMES
        )
        edit = self._refresh_sweep_card(view, conv, priority=0 if ended else 1)
        if isinstance(event, JobStateChanged) and event.new not in QUIET and not ended:
            reply = views.state_reply(job, event.new, event.detail, passed=event.passed)
            await self._reply(conv, sweepviews.thread_line(job, reply), keys)
        elif isinstance(event, LogSnippet):
            snippet = _snippets(delivery, event)
            line = sweepviews.thread_line(job, snippet)
            await self._reply(conv, line, keys, low_priority=_yields(job, event))
        elif isinstance(event, JobFinished):
            receipt = sweepviews.thread_line(job, views.receipt(job, delivery.links))
            await self._reply(conv, receipt, keys)
            if all(j.state.finished for j in view.jobs):
                await self._sweep_summary(delivery, view, conv)
        self._card_edits[delivery.event_ids] = edit
        return conv

    async def _sweep_card(self, view: SweepView, conv: Conversation) -> Conversation:
        """The sweep's card (posted by the first of its jobs to get here, keyed: once)."""
        if conv.thread is not None:  # a sweep's job only ever hangs from its sweep's card
            return conv
        sweep = view.sweep
        lock = self._sweep_locks.setdefault(sweep.id, asyncio.Lock())
        async with lock:
            sent = await self._transport.lookup(_sweep_key(sweep.id, "card"))
            if sent is None:
                card = sweepviews.sweep_card(view, now=self._now())
                sent = await self._transport.post(
                    conv.channel, card, keys=[_sweep_key(sweep.id, "card")]
                )
        return Conversation(sent.channel, sent.ts, conv.user)

    def _refresh_sweep_card(
        self, view: SweepView, conv: Conversation, *, priority: int
    ) -> asyncio.Future[None]:
        """One edit of the one card; the outbox coalesces the edits its jobs start."""
        assert conv.thread is not None
        card = sweepviews.sweep_card(view, now=self._now())
        edit = asyncio.ensure_future(
            self._transport.update(conv.channel, conv.thread, card, priority=priority)
        )
        edit.add_done_callback(_seen)
        return edit

    async def _sweep_summary(self, delivery: Delivery, view: SweepView, conv: Conversation) -> None:
        """The sweep's one receipt: the chart of every run's curve, then the ranking."""
        sweep = view.sweep
        async with self._sweep_locks.setdefault(sweep.id, asyncio.Lock()):
            if await self._transport.lookup(_sweep_key(sweep.id, "summary")) is not None:
                return
            metric = ranking_metric(view)
            if metric is not None:
                order = sweepviews.ranked_names(view, metric)
                runs = dict(delivery.sweep_metrics)
                png = sweep_curves_png(
                    [(name, runs.get(name, ())) for name in order],
                    metric=metric.name,
                    title=f"sweep {sweep.name}: {metric.name}",
                )
                if png is not None:
                    await self._transport.upload(
                        conv.channel,
                        thread=conv.thread,
                        filename=f"{sweep.name}-{metric.name}.png",
                        content=png,
                        title=f"sweep {sweep.name}: {metric.name} of every run",
                        keys=[_sweep_key(sweep.id, "chart")],
                    )
            summary = sweepviews.sweep_summary(view, delivery.best_links, now=self._now())
            await self._transport.post(
                conv.channel,
                summary,
                thread=conv.thread,
                broadcast=True,
                keys=[_sweep_key(sweep.id, "summary")],
            )

    async def _idle(self, event: IdleWarning, keys: Sequence[str]) -> None:
        """One warning message per warning id, edited in place when it is answered."""
        channel = event.channel or self._default_channel
        key = f"idle-{event.cluster}-{event.warning_id}"
        if not isinstance(event, IdleWarningClosed):
            await self._transport.post(channel, views.idle_warning(event), keys=[*keys, key])
            return
        sent = await self._transport.lookup(key)
        if sent is not None:
            await self._transport.update(sent.channel, sent.ts, views.idle_warning(event))

    async def _schedule_notice(
        self, event: ScheduleFailed | ScheduleMissed, keys: Sequence[str]
    ) -> None:
        following = datetime.fromisoformat(event.next_run) if event.next_run else None
        if isinstance(event, ScheduleFailed):
            message = views.schedule_failed(
                event.schedule_id, event.error, following, event.timezone
            )
        else:
            missed = datetime.fromisoformat(event.missed)
            message = views.schedule_missed(event.schedule_id, missed, following, event.timezone)
        await self._transport.post(event.channel or self._default_channel, message, keys=keys)

    async def _ensure_card(self, job: Job, conv: Conversation, key: str) -> Conversation:
        if conv.thread is not None:
            return conv
        card = views.status_card(job, now=self._now())
        sent = await self._transport.post(conv.channel, card, keys=[key])
        return Conversation(sent.channel, sent.ts, conv.user)

    async def _reply(
        self,
        conv: Conversation,
        message: Message,
        keys: Sequence[str],
        *,
        broadcast: bool = False,
        low_priority: bool = False,
    ) -> None:
        await self._transport.post(
            conv.channel,
            message,
            thread=conv.thread,
            broadcast=broadcast,
            keys=keys,
            low_priority=low_priority,
        )

    def _refresh_card(
        self, job: Job, conv: Conversation, *, priority: int
    ) -> asyncio.Future[None] | None:
        """Start the card's edit; the transport coalesces it with any edit still waiting."""
        if conv.thread is None:
            return None
        card = views.status_card(job, now=self._now())
        edit = asyncio.ensure_future(
            self._transport.update(conv.channel, conv.thread, card, priority=priority)
        )
        edit.add_done_callback(_seen)
        return edit


def _snippets(delivery: Delivery, first: LogSnippet) -> Message:
    """A delivery's log lines: its snippet, then the other logs' it carries, one after another."""
    message = views.log_snippet(
        first.file, first.first_line, first.lines, full_log_url=delivery.log_url
    )
    for snippet, url in delivery.also:
        more = views.log_snippet(snippet.file, snippet.first_line, snippet.lines, full_log_url=url)
        message = Message(f"{message.text}\n{more.text}", [*message.blocks, *more.blocks])
    return message


def _yields(job: Job, snippet: LogSnippet) -> bool:
    """Whether a snippet's post lets receipts and cards go first: a sweep's always (its card
    shows every job), another job's once its first lines are out."""
    return job.sweep_id is not None or snippet.first_line > 1


def _requeue(event: JobStateChanged) -> bool:
    """A lost attempt going back to the queue: its JobRequeued event says why and at what cost."""
    back = (JobState.QUEUED.value, JobState.PENDING_APPROVAL.value)
    lost = (JobState.PREPARING.value, JobState.RUNNING.value)
    return event.new in back and event.old in lost and not event.passed


def _quiet_reply(job: Job, step: Event) -> Message:
    """The thread reply a quiet step would have had of its own."""
    if isinstance(step, JobSubmitted):
        return views.submitted_reply(job, step.warnings, step.estimate)
    if isinstance(step, JobStateChanged):
        return views.state_reply(job, step.new, step.detail, passed=step.passed)
    raise TypeError(f"not a quiet step: {step.kind}")


def _seen(edit: asyncio.Future[None]) -> None:
    """An edit nobody took (its thread post failed): its outcome is not an unhandled error."""
    if not edit.cancelled():
        edit.exception()


def _gpu_key(event: GpuIdleWarning) -> str:
    return f"gpu-idle-{event.job_id}-{event.warning_id}"


def _sweep_key(sweep_id: str, what: str) -> str:
    return f"sweep-{sweep_id}-{what}"


def _approval_key(approval_id: str) -> str:
    return f"approval-{approval_id}"
