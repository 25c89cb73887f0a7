"""EventRelay: delivers stored events once each, in order per job, merging log snippets."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Set
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from services.core import context
from services.core.downloads import download_links
from services.core.errors import BatchAIError, TransientError
from services.core.events import (
    ApprovalDecided,
    ApprovalRequested,
    Event,
    JobFinished,
    JobStateChanged,
    JobSubmitted,
    LogSnippet,
)
from services.core.ports import Clock, Delivery, FileShare, Notifier, event_key
from services.jobs.lifecycle import JobState
from services.jobs.sweeps import best_job
from services.models import DownloadLink, FileLocation, Job, SweepView
from services.store import SqlStore

log = logging.getLogger(__name__)

# Events of one job read at a time: a page, not the whole backlog — a hundred jobs behind a
# busy channel each held every pending snippet (all their lines) in memory.
MAX_BATCH = 200
MAX_MERGED_LINES = 20_000  # a merged snippet beyond this starts a new delivery
MAX_ATTEMPTS = 3  # drains a permanently refused event is tried in
MAX_LINKS = 20  # download links of a sweep's best job in its summary
CROWDED = 3  # a channel with more live jobs than this gets no post per quiet lifecycle step
QUIET_HOLD = timedelta(seconds=60)  # how long a quiet step waits for a post to ride on
LIVE_REFRESH = timedelta(seconds=5)  # how often the live jobs per channel are counted
# Lifecycle steps the card shows anyway: in a crowded channel they ride on the next post.
QUIET = frozenset({JobState.QUEUED.value, JobState.PREPARING.value, JobState.RUNNING.value})

Unit = tuple[tuple[int, ...], Event, tuple[Event, ...]]  # ids, event, the quiet steps it carries


def _quiet(event: Event) -> bool:
    """A step the card shows anyway: in a crowded channel it needs no post of its own."""
    return isinstance(event, JobSubmitted) or (
        isinstance(event, JobStateChanged) and event.new in QUIET
    )


def _submission(units: list[Unit]) -> tuple[tuple[int, ...], Event] | None:
    """A submission carried by (or waiting in) these units: a job's first event, so first."""
    if not units:
        return None
    ids, event, prelude = units[0]
    first = prelude[0] if prelude else event
    return ((ids[0],), first) if isinstance(first, JobSubmitted) else None


@runtime_checkable
class CardEdits(Protocol):
    """A notifier whose card edits outlive `deliver` (they wait for a budget of their own)."""

    def card_edit(self, event_ids: tuple[int, ...]) -> Awaitable[None] | None: ...


@runtime_checkable
class Turns(Protocol):
    """A notifier that can hold a snippet's post slot while the relay puts the snippet together."""

    def turn(self, job: Job, snippet: LogSnippet) -> AbstractAsyncContextManager[None]: ...


@dataclass
class _Page:
    """A job's pending events as read: what to send, which were already posted, whether more
    wait beyond this page, how many were marked without sending."""

    todo: list[tuple[int, Event]]
    posted: set[int]
    more: bool
    marked: int


@dataclass
class _Sent:
    """How a round of a job's deliveries went: how many events went out, whether all of them
    did (else the job waits for the next drain), and a snippet turn to wait for before the
    next round (a busy channel)."""

    count: int
    finished: bool
    turn: AbstractAsyncContextManager[None] | None = None


class EventRelay:
    """The transactional outbox's reader.

    Each job with pending events gets one delivery task, which sends its events in order and
    keeps going while more arrive; jobs go out side by side. While a job waits for a busy
    channel its log snippets pile up, and the next message carries all of them: the newest
    lines, plus "N lines skipped" with a link to the full log — a slow channel gets one message
    per job instead of a queue of many. An event is marked delivered after the notifier took
    it; one whose key the transport already recorded (sent just before a crash) is marked
    without being sent again.

    Card edits leave the job's path: a notifier that edits cards in the background (CardEdits)
    hands the edit back, the job's next events go out at once, and the event is marked only
    when the edit is done — after a crash it is delivered again: its post is recorded (not
    repeated), its edit is made. In a busy channel (more than `crowded` live jobs) quiet
    lifecycle steps wait, up to `quiet_hold`, for the job's next log snippet and ride on it;
    a channel with more jobs than that waiting for their posts is busy too (its jobs ended,
    their posts still queue).

    In a busy channel a snippet is put together when its post slot comes (a notifier that
    can hold one, Turns): the job waits for the slot first, then reads its pending events, so
    the post carries every line written while it waited, and every log's lines (stdout and
    stderr) go in that one post. Read earlier, a hundred jobs' snippets were a hundred posts
    old when they went out, and each job needed a second post for the rest."""

    def __init__(
        self,
        *,
        store: SqlStore,
        share: FileShare,
        notifier: Notifier,
        clock: Clock,
        link_ttl: timedelta = timedelta(hours=1),
        crowded: int = CROWDED,
        quiet_hold: timedelta = QUIET_HOLD,
    ) -> None:
        self._store = store
        self._share = share
        self._notifier = notifier
        self._clock = clock
        self._link_ttl = link_ttl
        self._failures: dict[int, int] = {}
        self._tasks: dict[str | None, asyncio.Task[int]] = {}
        self._crowded = crowded
        self._quiet_hold = quiet_hold
        self._live: Counter[str | None] = Counter()  # live jobs per channel (None: default)
        self._live_at: datetime | None = None
        self._counted: set[str | None] = {None}  # the jobs the live count has seen
        # Jobs with events still to deliver, per channel, and the channel each was last seen in:
        # a channel whose jobs ended is still busy while their posts queue.
        self._backlog: Counter[str | None] = Counter()
        self._channel_of: dict[str | None, str | None] = {}
        self._held_since: dict[int, datetime] = {}  # quiet steps waiting for a post to ride on
        self._in_flight: set[int] = set()  # posted, their card edit not yet made
        self._settling: set[asyncio.Task[None]] = set()

    async def drain(self, *, wait: bool = True) -> int:
        """Start delivering for every job with pending events. With `wait`, return when all of
        it went out (or was deferred) and say how many events that was; without, return at once
        (the scheduler's way: a slow channel must not hold up the other jobs' deliveries)."""
        pending = await self._store.pending_job_ids()
        # A job the last count did not see (just submitted) makes it stale: a batch of jobs
        # submitted within LIVE_REFRESH would all be judged by a count taken before them.
        await self._count_live(force=any(j not in self._counted for j in pending))
        self._counted.update(pending)
        self._channel_of = {j: self._channel_of[j] for j in pending if j in self._channel_of}
        self._backlog = Counter(self._channel_of.values())
        tasks = [self._task_for(job_id) for job_id in pending]
        if not wait:
            return 0
        results = await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
        if self._settling:  # the card edits those deliveries started
            await asyncio.gather(*map(asyncio.shield, list(self._settling)), return_exceptions=True)
        return sum(r for r in results if isinstance(r, int))

    async def _count_live(self, *, force: bool = False) -> None:
        """Live jobs per channel, counted every few seconds (or now, when `force`): is a
        channel crowded?"""
        now = self._clock.now()
        if not force and self._live_at is not None and now - self._live_at < LIVE_REFRESH:
            return
        self._live_at = now
        live = await self._store.list_jobs(states=[s for s in JobState if not s.finished])
        self._live = Counter(j.conversation.channel if j.conversation else None for j in live)
        self._counted = {None, *(j.id for j in live)}

    async def start_delivery(self) -> None:
        """The periodic entry point: start what is pending, do not wait for slow channels."""
        await self.drain(wait=False)

    async def aclose(self) -> None:
        """Stop the delivery tasks; what they did not send stays pending for the next start."""
        running = [*self._tasks.values(), *self._settling]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._tasks.clear()

    def _task_for(self, job_id: str | None) -> asyncio.Task[int]:
        task = self._tasks.get(job_id)
        if task is None or task.done():
            task = self._tasks[job_id] = asyncio.ensure_future(self._run_job(job_id))
            task.add_done_callback(functools.partial(self._finished, job_id))
        return task

    def _finished(self, job_id: str | None, task: asyncio.Task[int]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery for job %s failed", job_id, exc_info=task.exception())

    async def _run_job(self, job_id: str | None) -> int:
        if job_id is None:
            return await self._deliver_all(job_id)
        with context.bound(**context.for_job(job_id)):
            return await self._deliver_all(job_id)

    async def _deliver_all(self, job_id: str | None) -> int:
        delivered = 0
        turn: AbstractAsyncContextManager[None] | None = None
        while True:
            if turn is None:
                page = await self._read(job_id)
                sent = _Sent(0, True) if page is None else await self._deliver_job(job_id, page)
            else:
                async with turn:  # the snippet's slot came: read now, every line so far in it
                    page = await self._read(job_id)
                    sent = _Sent(0, True)
                    if page is not None:
                        sent = await self._deliver_job(job_id, page, in_turn=True)
            if page is None:
                return delivered
            delivered += page.marked + sent.count
            turn = sent.turn
            if not sent.finished:
                return delivered  # deferred (or held): the next drain tries again

    async def _read(self, job_id: str | None) -> _Page | None:
        """The job's next page of pending events, or None when nothing is pending."""
        page = await self._store.pending_events(MAX_BATCH, job_id=job_id, of_job=True)
        pending = [(i, e) for i, e in page if i not in self._in_flight]
        if not pending:
            return None
        # A snippet sent just before a crash is marked, not re-merged with newer lines; other
        # events are delivered again and the transport's keys keep it from posting twice
        # (that is how a card's ts recorded before the crash gets stored after it).
        sent = await self._store.recorded_keys(
            [event_key(i) for i, e in pending if isinstance(e, LogSnippet | JobStateChanged)]
        )
        done = [i for i, e in pending if isinstance(e, LogSnippet) and event_key(i) in sent]
        if done:
            await self._store.mark_all_delivered(done, self._clock.now())
        todo = [(i, e) for i, e in pending if i not in done]
        # A step already posted (its card edit was cut short) must not carry lines: its key
        # would make the transport answer "sent" and the lines would never go out.
        posted = {i for i, e in todo if event_key(i) in sent}
        return _Page(todo, posted, len(page) == MAX_BATCH, len(done))

    async def _deliver_job(
        self, job_id: str | None, page: _Page, *, in_turn: bool = False
    ) -> _Sent:
        """Send in order. In a busy channel a log snippet first waits for its post slot and is
        read again when it comes (`in_turn`: this round was read in that slot, so it sends its
        first unit only, and the next round waits for a slot of its own)."""
        job = await self._store.get_job(job_id) if job_id else None
        channel = job.conversation.channel if job and job.conversation else None
        self._channel_of[job_id] = channel
        busy = job is not None and max(self._live[channel], self._backlog[channel]) > self._crowded
        # A sweep's jobs post no quiet steps at all (their card shows them): nothing to hold.
        crowded = busy and job is not None and job.sweep_id is None
        units = _merge_snippets(page.todo, carry_quiet=crowded, posted=page.posted)
        held = self._held_tail(units, page.posted) if crowded and not page.more else 0
        waiting, units = units[len(units) - held :], units[: len(units) - held]
        delivered = 0
        for n, (ids, event, prelude) in enumerate(units):
            if in_turn and n:
                return _Sent(delivered, True)
            if not in_turn and busy and (turn := self._turn(job, event)) is not None:
                return _Sent(delivered, True, turn)
            try:
                if prelude and (carried := _submission([(ids, event, prelude)])) is not None:
                    job = await self._card_of(job, *carried)  # the thread hangs from it
                delivery = replace(await self._enrich(ids, event, job), prelude=prelude)
                if in_turn and isinstance(event, LogSnippet):  # one post for every log's lines
                    delivery = await self._with_other_logs(delivery, units[1:])
                    ids = delivery.event_ids
                conversation = await self._notifier.deliver(delivery)
            except TransientError as err:
                log.warning("delivery of events %s deferred: %s", list(ids), err)
                return _Sent(delivered, False)  # keep this job's order: the rest waits
            except Exception:
                failures = self._failures[ids[0]] = self._failures.get(ids[0], 0) + 1
                if failures < MAX_ATTEMPTS:
                    log.exception("delivery of events %s failed (%d)", list(ids), failures)
                    return _Sent(delivered, False)
                # Refused for good (e.g. an archived channel): it must not block the story.
                log.error("giving up on events %s after %d attempts", list(ids), failures)
                conversation = None
            self._failures.pop(ids[0], None)
            for i in ids:
                self._held_since.pop(i, None)
            if job is not None and conversation is not None and conversation != job.conversation:
                await self._store.set_conversation(job.id, conversation)
                job = replace(job, conversation=conversation)
            edit = self._notifier.card_edit(ids) if isinstance(self._notifier, CardEdits) else None
            if edit is None:
                await self._store.mark_all_delivered(ids, self._clock.now())
            else:
                self._settle_later(ids, edit)
            delivered += len(ids)
            if job is not None and isinstance(event, JobStateChanged | JobFinished):
                job = await self._store.get_job(job.id) or job  # cards show the newest state
        if not waiting:
            return _Sent(delivered, True)
        try:  # a waiting submission still gets its card now: the card shows the job
            if (pending := _submission(waiting)) is not None:
                await self._card_of(job, *pending)
        except Exception as err:
            log.warning("card of events %s deferred: %s", [u[0] for u in waiting], err)
        return _Sent(delivered, False)

    async def _with_other_logs(self, delivery: Delivery, units: list[Unit]) -> Delivery:
        """The snippets of the job's other logs right after this one (nothing between them)."""
        also: list[tuple[LogSnippet, str | None]] = []
        ids = list(delivery.event_ids)
        for unit_ids, event, prelude in units:
            if prelude or not isinstance(event, LogSnippet):
                break
            also.append((event, await self._log_url(event, delivery.job)))
            ids += unit_ids
        return replace(delivery, event_ids=tuple(ids), also=tuple(also))

    def _turn(self, job: Job | None, event: Event) -> AbstractAsyncContextManager[None] | None:
        """The post slot a job's snippet waits for in a busy channel (None: post it now)."""
        if job is None or not isinstance(event, LogSnippet):
            return None
        return self._notifier.turn(job, event) if isinstance(self._notifier, Turns) else None

    async def _card_of(self, job: Job | None, ids: tuple[int, ...], event: Event) -> Job | None:
        """Post a submission's card alone (its reply rides on a later post); keyed, so once."""
        delivery = await self._with_sweep(Delivery(ids, event, job, card_only=True))
        conversation = await self._notifier.deliver(delivery)
        if job is not None and conversation is not None and conversation != job.conversation:
            await self._store.set_conversation(job.id, conversation)
            job = replace(job, conversation=conversation)
        return job

    def _held_tail(self, units: list[Unit], posted: set[int]) -> int:
        """How many trailing units are quiet steps that may still wait for a post to ride on
        (all of them, or none once the oldest waited `quiet_hold`)."""
        tail = 0
        for ids, event, prelude in reversed(units):
            if prelude or not _quiet(event) or any(i in posted for i in ids):
                break
            tail += 1
        if not tail:
            return 0
        now = self._clock.now()
        since = min(self._held_since.setdefault(i, now) for u in units[-tail:] for i in u[0])
        return tail if now - since < self._quiet_hold else 0

    def _settle_later(self, ids: tuple[int, ...], edit: Awaitable[None]) -> None:
        self._in_flight.update(ids)
        task = asyncio.ensure_future(self._settle(ids, edit))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, ids: tuple[int, ...], edit: Awaitable[None]) -> None:
        """Mark the events once the card shows them; a transient failure leaves them pending
        (the next drain delivers them again: the post is recorded, the edit is made)."""
        try:
            try:
                await edit
            except TransientError as err:
                log.info("card edit for events %s deferred: %s", list(ids), err)
                return
            except Exception:
                log.exception("card edit for events %s refused; not tried again", list(ids))
            await self._store.mark_all_delivered(ids, self._clock.now())
        finally:
            self._in_flight.difference_update(ids)

    async def _enrich(self, ids: tuple[int, ...], event: Event, job: Job | None) -> Delivery:
        return await self._with_sweep(await self._enrich_event(ids, event, job))

    async def _with_sweep(self, delivery: Delivery) -> Delivery:
        """A sweep's job: the sweep and all its jobs as they are now (for the card); at the
        sweep's last receipt, every run's metrics and the best job's output links too."""
        job = delivery.job
        if job is None or job.sweep_id is None:
            return delivery
        sweep = await self._store.get_sweep(job.sweep_id)
        if sweep is None:
            return delivery
        jobs = await self._store.list_jobs(sweep_id=sweep.id, include_deleted=True)
        view = SweepView(sweep, tuple(jobs))
        if not isinstance(delivery.event, JobFinished) or not all(j.state.finished for j in jobs):
            return replace(delivery, sweep=view)
        runs = tuple([(j.name, tuple(await self._store.list_metrics(j.id))) for j in jobs])
        best = best_job(view)
        links = () if best is None else await self._output_links(best)
        return replace(delivery, sweep=view, sweep_metrics=runs, best_links=links)

    async def _output_links(self, job: Job) -> tuple[DownloadLink, ...]:
        """Links to the files of a job's output directories (the best of a sweep), fresh."""
        if job.layout is None:
            return ()
        expires = self._clock.now() + self._link_ttl
        links: list[DownloadLink] = []
        for directory_id, loc in sorted(job.layout.outputs.items()):
            try:
                listed = await self._share.list_files(loc, recursive=True)
                files = [e for e in listed if not e.is_directory]
                found = await download_links(
                    self._share, loc, files[: MAX_LINKS - len(links)], expires_at=expires
                )
            except BatchAIError as err:
                log.info("no links for %s of %s: %s", directory_id, job.name, err)
                continue
            links += [replace(k, name=f"{directory_id}/{k.name}") for k in found.values()]
        return tuple(links)

    async def _enrich_event(self, ids: tuple[int, ...], event: Event, job: Job | None) -> Delivery:
        delivery = Delivery(ids, event, job)
        if isinstance(event, ApprovalRequested | ApprovalDecided):
            return replace(delivery, approval=await self._store.get_approval(event.approval_id))
        if isinstance(event, JobFinished):
            metrics = tuple(await self._store.list_metrics(job.id)) if job else ()
            return replace(delivery, links=await self._links(event), metrics=metrics)
        if isinstance(event, LogSnippet):
            return replace(delivery, log_url=await self._log_url(event, job))
        return delivery

    async def _log_url(self, snippet: LogSnippet, job: Job | None) -> str | None:
        """A fresh link to the whole log a snippet is from (for "N lines skipped")."""
        stdouterr = job.layout.stdouterr if job is not None and job.layout is not None else None
        if stdouterr is None:
            return None
        expires = self._clock.now() + self._link_ttl
        return await self._share.get_download_url(stdouterr.child(snippet.file), expires_at=expires)

    async def _links(self, event: JobFinished) -> tuple[DownloadLink, ...]:
        """Links are made at delivery time, fresh even after a long outage, for the files that
        are still there."""
        expires = self._clock.now() + self._link_ttl
        links = []
        for o in event.outputs:
            loc = FileLocation(o.share, o.path, o.container)
            try:
                if await self._share.stat(loc) is None:
                    continue
                url = await self._share.get_download_url(loc, expires_at=expires)
            except BatchAIError as err:
                log.info("no link for %s: %s", o.path, err)
                continue
            links.append(DownloadLink(f"{o.directory_id}/{o.name}", o.size, url, expires))
        return tuple(links)


def _merge_snippets(
    events: list[tuple[int, Event]], *, carry_quiet: bool = False, posted: Set[int] = frozenset()
) -> list[Unit]:
    """Between two other events, the snippets of each file become one snippet with all their
    lines (files interleave freely: stdout and stderr have no order between them); state
    changes waiting back to back become one. With `carry_quiet` (a crowded channel), quiet
    steps followed by a snippet ride on it: one post says "preparing → running" and the lines."""
    units: list[tuple[tuple[int, ...], Event]] = []
    # file -> (ids, first snippet, its lines so far): lists, so a long run is not copied per merge
    run: dict[str, tuple[list[int], LogSnippet, list[str]]] = {}

    def close(file: str) -> None:
        ids, first, lines = run.pop(file)
        units.append((tuple(ids), replace(first, lines=tuple(lines))))

    def flush() -> None:
        for file in list(run):
            close(file)

    for event_id, event in events:
        if isinstance(event, JobStateChanged) and units and not run:
            ids, last = units[-1]
            if isinstance(last, JobStateChanged) and last.new == event.old:
                # preparing -> running waiting together: one thread reply, "preparing → running"
                merged = replace(
                    last,
                    new=event.new,
                    detail=event.detail or last.detail,
                    passed=(*last.passed, last.new),
                )
                units[-1] = ((*ids, event_id), merged)
                continue
        if not isinstance(event, LogSnippet):
            flush()
            units.append(((event_id,), event))
            continue
        held = run.get(event.file)
        if (
            held is not None
            and held[1].first_line + len(held[2]) == event.first_line
            and len(held[2]) + len(event.lines) <= MAX_MERGED_LINES
        ):
            held[0].append(event_id)
            held[2].extend(event.lines)
        else:
            if held is not None:  # not contiguous: send what is held, start again
                close(event.file)
            run[event.file] = ([event_id], event, list(event.lines))
    flush()
    out: list[Unit] = []
    for ids, event in units:
        if carry_quiet and isinstance(event, LogSnippet):
            steps: list[Unit] = []  # the quiet steps just before: this snippet carries them
            while out and _quiet(out[-1][1]) and not out[-1][2]:
                if any(i in posted for i in out[-1][0]):
                    break
                steps.insert(0, out.pop())
            if steps:
                carried = tuple(i for unit in steps for i in unit[0])
                out.append(((*carried, *ids), event, tuple(unit[1] for unit in steps)))
                continue
        out.append((ids, event, ()))
    return out
