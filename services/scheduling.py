"""The only module that touches APScheduler: periodic work with stable ids, started in the loop."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[object]]


class Scheduler:
    """Interval jobs that never overlap themselves and coalesce missed runs."""

    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._work: dict[str, Work] = {}
        self.failures: Counter[str] = Counter()  # rounds that raised, by job id (for /metrics)

    def every(self, job_id: str, seconds: float, work: Work, *, now: bool = False) -> None:
        """Run `work` every `seconds` (and once at start when `now`)."""
        self._work[job_id] = work
        extra = {"next_run_time": datetime.now(UTC)} if now else {}
        self._scheduler.add_job(
            _run,
            "interval",
            seconds=seconds,
            args=[self, job_id],
            id=job_id,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(seconds * 5)),
            **extra,
        )

    def start(self) -> None:
        """Must be called inside the running event loop (APScheduler binds to it)."""
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)


async def _run(scheduler: Scheduler, job_id: str) -> None:
    """Module-level callback taking an id, so the scheduler never pickles bound methods."""
    work = scheduler._work.get(job_id)
    if work is None:
        return
    try:
        await work()
    except Exception:  # a periodic loop must never die of one bad round
        scheduler.failures[job_id] += 1
        log.exception("periodic work %s failed", job_id)
