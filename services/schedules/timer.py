"""The only module that touches APScheduler: periodic and one-off work with stable ids, started
in the loop, and the cron arithmetic of user schedules (APScheduler's CronTrigger)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[object]]


class Scheduler:
    """Interval jobs that never overlap themselves and never drop a tick: a tick that comes due
    while its round is still under way is run right after it (any number coalesce into one).

    APScheduler alone would skip such a tick ("maximum number of running instances reached")
    and leave the work to the next one, a whole interval later: under a burst of commands the
    delivery and poll rounds took longer than their interval and lost every other tick."""

    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._work: dict[str, Work] = {}
        self.failures: Counter[str] = Counter()  # rounds that raised, by job id (for /metrics)
        self.skipped: Counter[str] = Counter()  # ticks APScheduler dropped, by job id
        self.follow_ups: Counter[str] = Counter()  # rounds run late, right after the previous
        self._at: dict[str, datetime] = {}
        self._rounds: set[asyncio.Task[object]] = set()  # work under way, awaited by aclose
        self._busy: set[str] = set()  # interval jobs with a round under way
        self._again: set[str] = set()  # ... and a tick that came due meanwhile
        self._paused = False
        self._closing = False

    def _skipped(self, event: JobEvent) -> None:
        """Counted for the bench and /metrics; APScheduler logs the warning itself."""
        self.skipped[event.job_id] += 1

    def every(self, job_id: str, seconds: float, work: Work, *, now: bool = False) -> None:
        """Run `work` every `seconds` (and once at start when `now`)."""
        self._work[job_id] = work
        extra = {"next_run_time": datetime.now(UTC)} if now else {}
        self._scheduler.add_job(
            _fire,
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

    def at(self, job_id: str, when: datetime, work: Work) -> None:
        """Run `work` once at `when` (at once when that has passed), replacing what this id had.

        The jobstore is in memory on purpose: whoever arms these keeps the truth in the store
        and arms them again at start."""
        self._work[job_id] = work
        self._at[job_id] = when
        self._scheduler.add_job(
            _run_once,
            "date",
            run_date=when,
            args=[self, job_id],
            id=job_id,
            replace_existing=True,
            misfire_grace_time=None,  # late is the caller's call (it knows its grace)
        )

    def cancel(self, job_id: str) -> None:
        """Forget a one-off run; cancelling what is not armed succeeds."""
        self._work.pop(job_id, None)
        self._at.pop(job_id, None)
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(job_id)

    def armed(self, job_id: str) -> datetime | None:
        """When the one-off run of this id will happen, if one is armed."""
        return self._at.get(job_id)

    def start(self, *, paused: bool = False) -> None:
        """Must be called inside the running event loop (APScheduler binds to it). Paused, it
        keeps what is armed but fires nothing until `resume` (a standby replica's)."""
        self._paused = paused
        self._scheduler.start(paused=paused)

    def resume(self) -> None:
        """Fire again; runs missed while paused coalesce into one."""
        self._paused = False
        self._scheduler.resume()

    async def pause(self, *, grace: float = 10.0) -> None:
        """Fire nothing more and wait (up to `grace` seconds) for the rounds under way."""
        if not self._scheduler.running:
            return
        self._paused = True
        self._scheduler.pause()
        rounds = {task for task in self._rounds if task is not asyncio.current_task()}
        if rounds:
            await asyncio.wait(rounds, timeout=grace)

    async def aclose(self, *, grace: float = 10.0) -> None:
        """Stop firing, let the rounds under way finish, then stop APScheduler (it cancels the
        rounds still running after `grace` seconds; they end quietly). So nothing outlives the
        store it works on, and no round dies as a CancelledError traceback when the loop ends."""
        self._closing = True
        if not self._scheduler.running:
            return
        self._scheduler.pause()
        rounds = {task for task in self._rounds if task is not asyncio.current_task()}
        late: set[asyncio.Task[object]] = set()
        if rounds:
            _, late = await asyncio.wait(rounds, timeout=grace)
        for task in late:
            log.warning(
                "stopping %s: still running %.0fs after shutdown began", task.get_name(), grace
            )
            task.cancel()  # rounds run in tasks of their own (_fire): APScheduler cannot
        self._scheduler.shutdown(wait=False)
        await asyncio.gather(*late, return_exceptions=True)


async def _guarded(scheduler: Scheduler, job_id: str, work: Work, failures: str) -> None:
    """One round of `work`, counted and logged when it raises."""
    task = asyncio.current_task()
    if task is not None:
        task.set_name(f"scheduled work {job_id}")
    try:
        await work()
    except asyncio.CancelledError:
        if not scheduler._closing:
            raise
        # aclose cancelled a round that outlived its grace: that is the orderly end, said there
    except Exception:  # a periodic loop must never die of one bad round
        scheduler.failures[failures] += 1
        log.exception("scheduled work %s failed", job_id)


async def _fire(scheduler: Scheduler, job_id: str) -> None:
    """APScheduler's callback for interval jobs: it starts the round and returns at once, so
    APScheduler never finds an instance still running, and never drops a tick. (A coroutine:
    APScheduler's asyncio executor runs a plain function in a thread.)"""
    task = asyncio.ensure_future(_run(scheduler, job_id))
    scheduler._rounds.add(task)  # from now on: aclose waits for it, pause too
    task.add_done_callback(scheduler._rounds.discard)


async def _run(scheduler: Scheduler, job_id: str) -> None:
    """A round of an interval job; with one under way, a note that another is due, which that
    round runs when it ends. Module-level, taking an id, so nothing pickles bound methods."""
    if job_id in scheduler._busy:
        scheduler._again.add(job_id)
        return
    scheduler._busy.add(job_id)
    task = _tracked(scheduler)
    try:
        while (work := scheduler._work.get(job_id)) is not None:
            if scheduler._closing or scheduler._paused:
                return
            await _guarded(scheduler, job_id, work, job_id)
            if job_id not in scheduler._again:
                return
            scheduler._again.discard(job_id)
            scheduler.follow_ups[job_id] += 1
    finally:
        scheduler._busy.discard(job_id)
        scheduler._again.discard(job_id)
        scheduler._rounds.discard(task)


async def _run_once(scheduler: Scheduler, job_id: str) -> None:
    """The one-off twin of `_run`; forgets the work first, so the work may arm the id again."""
    work = scheduler._work.pop(job_id, None)
    scheduler._at.pop(job_id, None)
    if work is None or scheduler._closing:
        return
    task = _tracked(scheduler)
    try:
        await _guarded(scheduler, job_id, work, "one-off")
    finally:
        scheduler._rounds.discard(task)


def _tracked(scheduler: Scheduler) -> asyncio.Task[object]:
    """The task running a round, among those Scheduler.pause and aclose wait for."""
    task: asyncio.Task[object] | None = asyncio.current_task()
    assert task is not None  # rounds run in tasks: APScheduler's, _fire's or a test's
    scheduler._rounds.add(task)
    return task


# -- cron arithmetic ------------------------------------------------------------------------

CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_ITEM = re.compile(r"(?:\*|[0-9a-z]{1,3}(?:-[0-9a-z]{1,3})?)(?:/[0-9]{1,2})?", re.ASCII)
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab: 0 and 7 are Sunday
_MICROSECOND = timedelta(microseconds=1)


def cron_trigger(expression: str, zone: tzinfo) -> BaseTrigger:
    """A standard 5-field crontab line (or @daily, @hourly, ...) as an APScheduler trigger.

    Two differences from APScheduler's own `from_crontab` are undone here: crontab counts the
    days of the week from Sunday (0 or 7), APScheduler from Monday; and when both the day of the
    month and the day of the week are restricted, crontab runs on either, APScheduler on both.
    Raises ValueError with a one-line reason."""
    text = CRON_ALIASES.get(expression.strip().lower(), expression.strip().lower())
    if text.startswith("@"):
        known = ", ".join(CRON_ALIASES)
        raise ValueError(f"{expression.strip()} is not a schedule shortcut (use {known})")
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"not {len(fields)}"
        )
    for name, field in zip(_FIELDS, fields, strict=True):
        if not all(_ITEM.fullmatch(item) for item in field.split(",")):
            raise ValueError(f"the {name} field {field!r} is not crontab syntax")
    minute, hour, day, month, weekday = fields
    days = _weekdays(weekday)

    def cron(day: str, day_of_week: str) -> CronTrigger:
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, timezone=zone
        )

    try:
        if day.startswith("*") or weekday.startswith("*"):
            return cron(day, days)
        return OrTrigger([cron(day, "*"), cron("*", days)])
    except ValueError as err:
        raise ValueError(_apscheduler_reason(err)) from None


def next_runs(
    trigger: BaseTrigger,
    zone: tzinfo,
    *,
    after: datetime,
    previous: datetime | None = None,
    count: int = 1,
) -> list[datetime]:
    """The next `count` runs strictly after `after`, in UTC; fewer when it stops firing.

    Clocks going forward: a run in the skipped hour happens an hour later (02:30 -> 03:30).
    Clocks going back: the repeated hour runs once (a run whose wall-clock time is not later
    than `previous`'s is skipped, as cron does)."""
    out: list[datetime] = []
    start = after.astimezone(UTC) + _MICROSECOND
    while len(out) < count:
        found = trigger.get_next_fire_time(None, start)
        if found is None:
            break
        local = found.astimezone(zone)
        start = found.astimezone(UTC) + _MICROSECOND  # in UTC: local arithmetic drops the fold
        if previous is not None and _wall(local) <= _wall(previous.astimezone(zone)):
            continue
        out.append(local.astimezone(UTC))
        previous = local
    return out


def _wall(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def _weekdays(field: str) -> str:
    """A crontab day-of-week field (Sunday = 0 or 7) as APScheduler's day names."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        part, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if step == 0:
            raise ValueError(f"the day of week step in {item!r} must be at least 1")
        if part == "*":
            low, high = 0, 6
        elif "-" in part:
            first, _, last = part.partition("-")
            low, high = _weekday(first), _weekday(last)
        else:
            low = _weekday(part)
            high = 6 if step_text else low
        if low > high:
            raise ValueError(f"the day of week range {part!r} runs backwards")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_DAYS[day] for day in sorted(days))


def _weekday(value: str) -> int:
    if value.isdigit() and int(value) <= 7:
        return int(value)
    if value in _DAYS:
        return _DAYS.index(value)
    raise ValueError(f"day of week {value!r} must be 0-7 (0 and 7 are Sunday) or sun-sat")


def _apscheduler_reason(err: ValueError) -> str:
    """APScheduler's "Error validating expression 'x': the last value (61) is higher than the
    maximum value (59)" without the prefix, on one line."""
    text = " ".join(str(err).split())
    return re.sub(r"^Error validating expression ('[^']*')", r"\1", text)
