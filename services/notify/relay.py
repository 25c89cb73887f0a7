"""EventRelay: delivers stored events once each, in order per job, merging log snippets."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import replace
from datetime import timedelta

from services.core import context
from services.core.errors import BatchAIError, TransientError
from services.core.events import (
    ApprovalDecided,
    ApprovalRequested,
    Event,
    JobFinished,
    JobStateChanged,
    LogSnippet,
)
from services.core.ports import Clock, Delivery, FileShare, Notifier, event_key
from services.models import DownloadLink, FileLocation, Job
from services.store import SqlStore

log = logging.getLogger(__name__)

MAX_BATCH = 5000  # events of one job read at a time
MAX_MERGED_LINES = 100_000  # a merged snippet beyond this starts a new delivery
MAX_ATTEMPTS = 3  # drains a permanently refused event is tried in


class EventRelay:
    """The transactional outbox's reader.

    Each job with pending events gets one delivery task, which sends its events in order and
    keeps going while more arrive; jobs go out side by side. While a job waits for a busy
    channel its log snippets pile up, and the next message carries all of them: the newest
    lines, plus "N lines skipped" with a link to the full log — a slow channel gets one message
    per job instead of a queue of many. An event is marked delivered after the notifier took
    it; one whose key the transport already recorded (sent just before a crash) is marked
    without being sent again."""

    def __init__(
        self,
        *,
        store: SqlStore,
        share: FileShare,
        notifier: Notifier,
        clock: Clock,
        link_ttl: timedelta = timedelta(hours=1),
    ) -> None:
        self._store = store
        self._share = share
        self._notifier = notifier
        self._clock = clock
        self._link_ttl = link_ttl
        self._failures: dict[int, int] = {}
        self._tasks: dict[str | None, asyncio.Task[int]] = {}

    async def drain(self, *, wait: bool = True) -> int:
        """Start delivering for every job with pending events. With `wait`, return when all of
        it went out (or was deferred) and say how many events that was; without, return at once
        (the scheduler's way: a slow channel must not hold up the other jobs' deliveries)."""
        tasks = [self._task_for(job_id) for job_id in await self._store.pending_job_ids()]
        if not wait or not tasks:
            return 0
        results = await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
        return sum(r for r in results if isinstance(r, int))

    async def start_delivery(self) -> None:
        """The periodic entry point: start what is pending, do not wait for slow channels."""
        await self.drain(wait=False)

    async def aclose(self) -> None:
        """Stop the delivery tasks; what they did not send stays pending for the next start."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
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
        while True:
            pending = await self._store.pending_events(MAX_BATCH, job_id=job_id, of_job=True)
            if not pending:
                return delivered
            # A snippet sent just before a crash is marked, not re-merged with newer lines; other
            # events are delivered again and the transport's keys keep it from posting twice
            # (that is how a card's ts recorded before the crash gets stored after it).
            sent = await self._store.recorded_keys(
                [event_key(i) for i, e in pending if isinstance(e, LogSnippet)]
            )
            done = [i for i, _ in pending if event_key(i) in sent]
            if done:
                await self._store.mark_all_delivered(done, self._clock.now())
            todo = [(i, e) for i, e in pending if event_key(i) not in sent]
            count, finished = await self._deliver_job(job_id, todo)
            delivered += len(done) + count
            if not finished:
                return delivered  # deferred: the next drain tries again

    async def _deliver_job(
        self, job_id: str | None, events: list[tuple[int, Event]]
    ) -> tuple[int, bool]:
        """Send in order; returns how many went out and whether all of them did."""
        job = await self._store.get_job(job_id) if job_id else None
        delivered = 0
        for ids, event in _merge_snippets(events):
            try:
                conversation = await self._notifier.deliver(await self._enrich(ids, event, job))
            except TransientError as err:
                log.warning("delivery of events %s deferred: %s", list(ids), err)
                return delivered, False  # keep this job's order: the rest waits
            except Exception:
                failures = self._failures[ids[0]] = self._failures.get(ids[0], 0) + 1
                if failures < MAX_ATTEMPTS:
                    log.exception("delivery of events %s failed (%d)", list(ids), failures)
                    return delivered, False
                # Refused for good (e.g. an archived channel): it must not block the story.
                log.error("giving up on events %s after %d attempts", list(ids), failures)
                conversation = None
            self._failures.pop(ids[0], None)
            if job is not None and conversation is not None and conversation != job.conversation:
                await self._store.set_conversation(job.id, conversation)
                job = replace(job, conversation=conversation)
            await self._store.mark_all_delivered(ids, self._clock.now())
            delivered += len(ids)
            if job is not None and isinstance(event, JobStateChanged | JobFinished):
                job = await self._store.get_job(job.id) or job  # cards show the newest state
        return delivered, True

    async def _enrich(self, ids: tuple[int, ...], event: Event, job: Job | None) -> Delivery:
        delivery = Delivery(ids, event, job)
        if isinstance(event, ApprovalRequested | ApprovalDecided):
            return replace(delivery, approval=await self._store.get_approval(event.approval_id))
        if isinstance(event, JobFinished):
            metrics = tuple(await self._store.list_metrics(job.id)) if job else ()
            return replace(delivery, links=await self._links(event), metrics=metrics)
        if isinstance(event, LogSnippet) and job is not None and job.layout is not None:
            stdouterr = job.layout.stdouterr
            if stdouterr is not None:
                url = await self._share.get_download_url(
                    stdouterr.child(event.file), expires_at=self._clock.now() + self._link_ttl
                )
                return replace(delivery, log_url=url)
        return delivery

    async def _links(self, event: JobFinished) -> tuple[DownloadLink, ...]:
        """Links are made at delivery time, fresh even after a long outage, for the files that
        are still there."""
        expires = self._clock.now() + self._link_ttl
        links = []
        for o in event.outputs:
            loc = FileLocation(o.share, o.path)
            try:
                if await self._share.stat(loc) is None:
                    continue
                url = await self._share.get_download_url(loc, expires_at=expires)
            except BatchAIError as err:
                log.info("no link for %s: %s", o.path, err)
                continue
            links.append(DownloadLink(f"{o.directory_id}/{o.name}", o.size, url, expires))
        return tuple(links)


def _merge_snippets(events: list[tuple[int, Event]]) -> list[tuple[tuple[int, ...], Event]]:
    """Between two other events, the snippets of each file become one snippet with all their
    lines (files interleave freely: stdout and stderr have no order between them); state
    changes waiting back to back become one."""
    units: list[tuple[tuple[int, ...], Event]] = []
    run: dict[str, tuple[tuple[int, ...], LogSnippet]] = {}

    def flush() -> None:
        units.extend(run.values())
        run.clear()

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
            and held[1].first_line + len(held[1].lines) == event.first_line
            and len(held[1].lines) + len(event.lines) <= MAX_MERGED_LINES
        ):
            run[event.file] = (
                (*held[0], event_id),
                replace(held[1], lines=held[1].lines + event.lines),
            )
        else:
            if held is not None:  # not contiguous: send what is held, start again
                units.append(run.pop(event.file))
            run[event.file] = ((event_id,), event)
    flush()
    return units
