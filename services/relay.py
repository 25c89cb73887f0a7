"""EventRelay: delivers stored events once each, in order per job, merging log snippets."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta

from services.errors import BatchAIError, TransientError
from services.events import ApprovalDecided, ApprovalRequested, Event, JobFinished, LogSnippet
from services.models import DownloadLink, FileLocation, Job
from services.ports import Clock, Delivery, FileShare, Notifier, event_key
from services.store import SqlStore

log = logging.getLogger(__name__)

MAX_PARALLEL_JOBS = 16
MAX_MERGED_LINES = 5000  # a merged snippet beyond this starts a new delivery
MAX_ATTEMPTS = 3  # drains a permanently refused event is tried in


class EventRelay:
    """The transactional outbox's reader.

    Events of one job go out in order; different jobs go out side by side. Consecutive log
    snippets of the same file are merged into one delivery, so a slow channel gets one message
    with the newest lines instead of a queue of many. An event is marked delivered after the
    notifier took it; one whose key the transport already recorded (sent just before a crash)
    is marked without being sent again."""

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
        self._lock = asyncio.Lock()
        self._failures: dict[int, int] = {}

    async def drain(self, *, limit: int = 1000) -> int:
        """Deliver what is pending; returns how many events went out."""
        async with self._lock:  # one drain at a time keeps per-job order
            pending = await self._store.pending_events(limit)
            if not pending:
                return 0
            sent = await self._store.recorded_keys([event_key(i) for i, _ in pending])
            done = [i for i, _ in pending if event_key(i) in sent]
            if done:
                await self._store.mark_all_delivered(done, self._clock.now())
            by_job: dict[str | None, list[tuple[int, Event]]] = defaultdict(list)
            for event_id, event in pending:
                if event_key(event_id) not in sent:
                    by_job[event.job_id].append((event_id, event))
            gate = asyncio.Semaphore(MAX_PARALLEL_JOBS)
            counts = await asyncio.gather(
                *(self._deliver_job(job_id, events, gate) for job_id, events in by_job.items())
            )
            return len(done) + sum(counts)

    async def _deliver_job(
        self, job_id: str | None, events: list[tuple[int, Event]], gate: asyncio.Semaphore
    ) -> int:
        async with gate:
            job = await self._store.get_job(job_id) if job_id else None
            delivered = 0
            for ids, event in _merge_snippets(events):
                try:
                    conversation = await self._notifier.deliver(await self._enrich(ids, event, job))
                except TransientError as err:
                    log.warning("delivery of events %s deferred: %s", list(ids), err)
                    break  # keep this job's order: the rest waits for the next drain
                except Exception:
                    failures = self._failures[ids[0]] = self._failures.get(ids[0], 0) + 1
                    if failures < MAX_ATTEMPTS:
                        log.exception("delivery of events %s failed (%d)", list(ids), failures)
                        break
                    # Refused for good (e.g. an archived channel): it must not block the story.
                    log.error("giving up on events %s after %d attempts", list(ids), failures)
                    conversation = None
                self._failures.pop(ids[0], None)
                if (
                    job is not None
                    and conversation is not None
                    and conversation != job.conversation
                ):
                    await self._store.set_conversation(job.id, conversation)
                    job = replace(job, conversation=conversation)
                await self._store.mark_all_delivered(ids, self._clock.now())
                delivered += len(ids)
            return delivered

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
    """Runs of snippets of the same file become one snippet carrying all their lines."""
    units: list[tuple[tuple[int, ...], Event]] = []
    for event_id, event in events:
        if units and isinstance(event, LogSnippet):
            ids, last = units[-1]
            if (
                isinstance(last, LogSnippet)
                and last.file == event.file
                and last.first_line + len(last.lines) == event.first_line
                and len(last.lines) + len(event.lines) <= MAX_MERGED_LINES
            ):
                units[-1] = ((*ids, event_id), replace(last, lines=last.lines + event.lines))
                continue
        units.append(((event_id,), event))
    return units
