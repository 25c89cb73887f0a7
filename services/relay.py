"""EventRelay: delivers stored events in order, once each, and marks them delivered."""

from __future__ import annotations

import logging
from datetime import timedelta

from services.errors import TransientError
from services.events import JobFinished
from services.models import DownloadLink, FileLocation
from services.ports import Clock, Delivery, FileShare, Notifier
from services.store import SqlStore

log = logging.getLogger(__name__)


class EventRelay:
    """The transactional outbox's reader: an event is marked delivered only after the notifier
    took it, so a crash re-delivers at most the one event in flight and never skips one."""

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

    async def drain(self, *, limit: int = 500) -> int:
        """Deliver what is pending; returns how many went out. Stops at the first failure."""
        sent = 0
        for event_id, event in await self._store.pending_events(limit):
            job = await self._store.get_job(event.job_id) if event.job_id else None
            links: tuple[DownloadLink, ...] = ()
            if isinstance(event, JobFinished):
                links = await self._links(event)
            try:
                conversation = await self._notifier.deliver(Delivery(event_id, event, job, links))
            except TransientError as err:
                log.warning("delivery of event %s deferred: %s", event_id, err)
                break
            if conversation is not None and job is not None and conversation != job.conversation:
                await self._store.set_conversation(job.id, conversation)
            await self._store.mark_delivered(event_id, self._clock.now())
            sent += 1
        return sent

    async def _links(self, event: JobFinished) -> tuple[DownloadLink, ...]:
        """Links are made at delivery time so they are fresh even after a long outage."""
        expires = self._clock.now() + self._link_ttl
        return tuple(
            [
                DownloadLink(
                    f"{o.directory_id}/{o.name}",
                    o.size,
                    await self._share.get_download_url(
                        FileLocation(o.share, o.path), expires_at=expires
                    ),
                    expires,
                )
                for o in event.outputs
            ]
        )
