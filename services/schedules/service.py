"""ScheduleService: `job create --at/--cron` stored, armed, fired exactly once, re-armed at start.

The store is the truth: a schedule's `next_run_at` is the run it waits for, and a run is
claimed by moving it on in the transaction that stores the run's job (or its failure). So a
run fires once whoever wakes first (its timer, the sweep, the start after a crash)."""

from __future__ import annotations

import difflib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache, partial
from typing import Protocol
from zoneinfo import ZoneInfo, available_timezones

from services.access import AccessPolicy
from services.core.errors import BatchAIError, NotAllowed, NotFound, NotOwner, UserError
from services.core.events import Event, ScheduleFailed, ScheduleMissed
from services.core.ports import Clock, Store
from services.jobs.service import JobRequest, JobService
from services.models import Actor, Conversation, Job, Schedule, ScheduledJob, ScheduleRun
from services.schedules.timer import cron_trigger, next_runs

log = logging.getLogger(__name__)

MISFIRE_GRACE = timedelta(hours=1)  # a run found late by more than this is missed, not run
SWEEP_SECONDS = 60  # how often due runs are looked for besides their own timers
SUFFIX = "-20261201-0200"  # cron runs name their job <name>-<YYYYMMDD-HHMM>, in local time
_AT = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{1,2}:\d{2}(?::\d{2})?)(Z|[+-]\d{2}:?\d{2})?|(\d{1,2}:\d{2})",
    re.ASCII,
)


Work = Callable[[], Awaitable[object]]


class Timer(Protocol):
    """One-off wake-ups by stable id (services.schedules.timer.Scheduler)."""

    def at(self, job_id: str, when: datetime, work: Work) -> None: ...

    def cancel(self, job_id: str) -> None: ...


@dataclass(frozen=True)
class ScheduleRequest:
    job: JobRequest
    at: str | None = None
    cron: str | None = None
    timezone: str | None = None


@dataclass(frozen=True)
class ScheduleCreated:
    schedule: Schedule
    upcoming: tuple[datetime, ...]  # the next runs (UTC): one for `at`, three for `cron`
    preview: Job  # the job as its first run would submit it today (estimate, approval)


def zone_of(name: str) -> tzinfo:
    """An IANA time zone by name; UserError naming a close match otherwise."""
    if name.upper() == "UTC":
        return UTC
    if name not in _zones():
        close = difflib.get_close_matches(name, sorted(_zones()), n=1)
        hint = f'; did you mean "{close[0]}"?' if close else " (e.g. Europe/Berlin)"
        raise UserError(f"--tz {name[:64]!r} is not an IANA time zone{hint}")
    return ZoneInfo(name)


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def parse_at(text: str, zone: tzinfo, now: datetime) -> datetime:
    """`YYYY-MM-DD HH:MM[:SS]` (or ISO with T, Z or an offset) in `zone`, or `HH:MM` for the
    next such time; returns UTC. Refuses times that do not exist in the zone and past times."""
    match = _AT.fullmatch(text.strip())
    if match is None:
        raise UserError(
            f'--at {text[:40]!r} is not a time: use "YYYY-MM-DD HH:MM" (e.g. "2026-12-01 02:00")'
            ' or "HH:MM"'
        )
    date, clock, offset, only_clock = match.groups()
    try:
        if only_clock:
            local_now = now.astimezone(zone)
            hours, minutes = (int(x) for x in only_clock.split(":"))
            wall = local_now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
            if wall.replace(tzinfo=zone).astimezone(UTC) <= now:
                wall += timedelta(days=1)
            naive = wall.replace(tzinfo=None)
        else:
            naive = datetime.fromisoformat(f"{date}T{clock}")
    except ValueError:
        raise UserError(f"--at {text[:40]!r} is not a real date and time") from None
    if offset:
        moment = datetime.fromisoformat(f"{naive.isoformat()}{offset.replace('Z', '+00:00')}")
    else:
        moment = naive.replace(tzinfo=zone)
        if _wall(moment.astimezone(UTC).astimezone(zone)) != naive:
            raise UserError(
                f"--at {naive:%Y-%m-%d %H:%M} does not exist in {_zone_name(zone)}: the clocks "
                "go forward over it; pick a time outside that hour"
            )
    when = moment.astimezone(UTC)
    if when <= now:
        raise UserError(f"--at {fmt_time(when, zone)} has passed (now it is {fmt_time(now, zone)})")
    return when


def fmt_time(moment: datetime, zone: tzinfo) -> str:
    """`2026-12-01 02:00 Europe/Berlin (01:00 UTC)`, or `2026-12-01 02:00 UTC`."""
    local = moment.astimezone(zone)
    name = _zone_name(zone)
    if name == "UTC":
        return f"{local:%Y-%m-%d %H:%M} UTC"
    return f"{local:%Y-%m-%d %H:%M} {name} ({moment.astimezone(UTC):%H:%M} UTC)"


def _zone_name(zone: tzinfo) -> str:
    return "UTC" if zone is UTC else str(zone)


def _wall(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


class ScheduleService:
    def __init__(
        self,
        *,
        store: Store,
        jobs: JobService,
        clock: Clock,
        timer: Timer | None = None,
        grace: timedelta = MISFIRE_GRACE,
        access: AccessPolicy | None = None,
    ) -> None:
        self._access = access
        self._store = store
        self._jobs = jobs
        self._clock = clock
        self._timer = timer
        self._grace = grace

    # -- commands -------------------------------------------------------------------------

    async def create_schedule(self, request: ScheduleRequest, *, actor: Actor) -> ScheduleCreated:
        """Validate the time and the job exactly as a submit would, store, arm. Nothing is
        stored when anything is wrong."""
        if (request.at is None) == (request.cron is None):
            raise UserError("give --at or --cron (one of them) to schedule a job")
        if request.job.config is None:
            raise UserError("a scheduled job needs its job.json: give -f/--config")
        zone = zone_of(request.timezone or "UTC")
        now = self._clock.now()
        if request.at is not None:
            first = parse_at(request.at, zone, now)
            kind, expression, upcoming = "at", f"{first.astimezone(zone):%Y-%m-%d %H:%M}", [first]
        else:
            expression = " ".join(request.cron.split()) if request.cron else ""
            upcoming = _cron_runs(expression, zone, after=now, count=3)
            if not upcoming:
                raise UserError(f'--cron "{expression}" never fires: no such date exists')
            kind = "cron"
        if kind == "cron" and len(request.job.name) + len(SUFFIX) > 64:
            raise UserError(
                f"job name {request.job.name!r} is too long for a cron schedule: each run's job "
                f"is named <name>{SUFFIX}, at most 64 characters in all"
            )
        job = _scheduled_job(request.job, actor)
        preview = await self._jobs.check_job(
            replace(request.job, name=_run_name(kind, job.name, upcoming[0], zone)), actor=actor
        )
        schedule = Schedule(
            id=uuid.uuid4().hex[:8],
            kind=kind,
            expression=expression,
            timezone=_zone_name(zone),
            job=job,
            requester=actor.user,
            channel=actor.conversation.channel if actor.conversation else None,
            created_at=now,
            next_run_at=upcoming[0],
        )
        async with self._store.unit() as uow:
            await uow.schedules.add(schedule)
            await uow.commit()
        self._arm(schedule)
        return ScheduleCreated(schedule, tuple(upcoming), preview)

    async def list_schedules(self, *, actor: Actor, everywhere: bool = False) -> list[Schedule]:
        """This channel's schedules; every channel's for an admin who asks."""
        if everywhere:
            if not actor.is_admin:
                raise NotAllowed("only an admin may list the schedules of every channel")
            return await self._list()
        if actor.conversation is None:
            return await self._list()
        return await self._list(channel=actor.conversation.channel)

    async def get_schedule(self, schedule_id: str) -> tuple[Schedule, tuple[datetime, ...]]:
        """The schedule and its next runs (up to three)."""
        schedule = await self._get(schedule_id)
        if schedule is None:
            raise NotFound(f"no schedule {schedule_id}; /batchai schedule list shows them")
        return schedule, self.upcoming(schedule)

    def upcoming(self, schedule: Schedule, count: int = 3) -> tuple[datetime, ...]:
        if not schedule.active or schedule.next_run_at is None:
            return ()
        if schedule.kind == "at":
            return (schedule.next_run_at,)
        zone = zone_of(schedule.timezone)
        later = _cron_runs(
            schedule.expression,
            zone,
            after=schedule.next_run_at,
            count=count - 1,
            previous=schedule.next_run_at,
        )
        return (schedule.next_run_at, *later)

    async def delete_schedule(self, schedule_id: str, *, actor: Actor) -> Schedule | None:
        """Owner or admin; deleting what is gone succeeds (None)."""
        schedule = await self._get(schedule_id)
        if schedule is None:
            return None
        if actor.user != schedule.requester and not actor.is_admin:
            raise NotOwner(schedule.requester, f"delete schedule {schedule.id}")
        async with self._store.unit() as uow:
            await uow.schedules.delete(schedule.id)
            await uow.commit()
        if self._timer is not None:
            self._timer.cancel(_timer_id(schedule.id))
        return schedule

    # -- firing ---------------------------------------------------------------------------

    async def fire(self, schedule_id: str) -> Job | None:
        """Run the schedule if its run is due: submit its job through the job service as its
        owner, in its channel (approval rules of today apply), or record why not. Returns the
        submitted job; None when nothing was due, the run was missed or failed."""
        schedule = await self._get(schedule_id)
        if schedule is None or not schedule.active or schedule.next_run_at is None:
            return None
        now = self._clock.now()
        if schedule.next_run_at > now:  # woken early (or re-armed elsewhere): wait
            self._arm(schedule)
            return None
        zone = zone_of(schedule.timezone)
        slot, following = self._slot(schedule, zone, now)
        due = schedule.next_run_at
        if slot is None or now - slot > self._grace:
            await self._missed(schedule, due, following, now, zone)
            return None
        run = ScheduleRun(schedule.id, due=due, following=following, at=now)
        request = _job_request(schedule, _run_name(schedule.kind, schedule.job.name, slot, zone))
        try:
            self._check_access(schedule)
            job = await self._jobs.create_job(request, actor=_owner(schedule), run=run)
        except BatchAIError as err:
            event = ScheduleFailed(
                schedule_id=schedule.id,
                channel=schedule.channel,
                error=str(err),
                next_run=None if following is None else following.isoformat(),
                timezone=schedule.timezone,
            )
            # Only the first to claim the run records it: a run taken meanwhile says nothing.
            await self._close_run(run, str(err), event)
            job = None
        self._arm(replace(schedule, next_run_at=following, active=following is not None))
        return job

    async def run_due(self) -> int:
        """The sweep: fire every schedule whose run is due (timers do it on time; this catches
        what a busy loop let slip). Returns how many jobs it submitted."""
        now = self._clock.now()
        fired = 0
        for schedule in await self._list(active=True):
            if schedule.next_run_at is None or schedule.next_run_at > now:
                continue
            try:
                fired += await self.fire(schedule.id) is not None
            except Exception:  # one broken schedule must not hold up the others (or a start)
                log.exception("schedule %s could not run; the next sweep tries again", schedule.id)
        return fired

    async def rearm(self) -> int:
        """At start: runs that fell due while the bot was down fire now (within the grace) or
        are told as missed; every active schedule is armed again. Returns how many fired."""
        fired = await self.run_due()
        for schedule in await self._list(active=True):
            self._arm(schedule)
        return fired

    # -- internals ------------------------------------------------------------------------

    async def _get(self, schedule_id: str) -> Schedule | None:
        async with self._store.unit() as uow:
            return await uow.schedules.get(schedule_id)

    async def _list(
        self, *, channel: str | None = None, active: bool | None = None
    ) -> list[Schedule]:
        async with self._store.unit() as uow:
            return await uow.schedules.list(channel=channel, active=active)

    async def _close_run(self, run: ScheduleRun, error: str, event: Event) -> None:
        """A run that submitted nothing (failed, or missed): recorded with its event by the
        first to claim it; a run claimed meanwhile says nothing."""
        async with self._store.unit() as uow:
            if await uow.schedules.claim(run, error=error):
                uow.emit(event, at=run.at)
                await uow.commit()

    def _check_access(self, schedule: Schedule) -> None:
        """The allow-lists of today apply at fire time, not those of when it was scheduled
        (the spend gate, too, judges each run when it is submitted)."""
        if self._access is None:
            return
        decision = self._access.check(
            user=schedule.requester, channel=schedule.channel, destructive=False
        )
        if not decision.allowed:
            raise NotAllowed(f"the requester's run was refused: {decision.reason}")

    def _slot(
        self, schedule: Schedule, zone: tzinfo, now: datetime
    ) -> tuple[datetime | None, datetime | None]:
        """The run to make now (the latest one due, not older than the grace; None when all
        due runs are older) and the run after it."""
        due = schedule.next_run_at
        assert due is not None
        if schedule.kind == "at":
            return due, None
        trigger = cron_trigger(schedule.expression, zone)
        slot: datetime | None = None
        cursor = due if due >= now - self._grace else None
        if cursor is None:
            found = next_runs(trigger, zone, after=now - self._grace, previous=schedule.last_run_at)
            cursor = found[0] if found and found[0] <= now else None
        while cursor is not None and cursor <= now:  # coalesce: the latest due run stands
            slot = cursor
            found = next_runs(trigger, zone, after=cursor, previous=cursor)
            cursor = found[0] if found else None
        after = slot or now
        following = next_runs(trigger, zone, after=max(after, now), previous=slot or due)
        return slot, following[0] if following else None

    async def _missed(
        self,
        schedule: Schedule,
        due: datetime,
        following: datetime | None,
        now: datetime,
        zone: tzinfo,
    ) -> None:
        error = f"missed the run at {fmt_time(due, zone)}: the bot was down"
        event = ScheduleMissed(
            schedule_id=schedule.id,
            channel=schedule.channel,
            missed=due.isoformat(),
            next_run=None if following is None else following.isoformat(),
            timezone=schedule.timezone,
        )
        run = ScheduleRun(schedule.id, due=due, following=following, at=now)
        await self._close_run(run, error, event)
        self._arm(replace(schedule, next_run_at=following, active=following is not None))

    def _arm(self, schedule: Schedule) -> None:
        if self._timer is None:
            return
        if not schedule.active or schedule.next_run_at is None:
            self._timer.cancel(_timer_id(schedule.id))
            return
        self._timer.at(
            _timer_id(schedule.id), schedule.next_run_at, partial(self.fire, schedule.id)
        )


def _cron_runs(
    expression: str,
    zone: tzinfo,
    *,
    after: datetime,
    count: int,
    previous: datetime | None = None,
) -> list[datetime]:
    try:
        trigger = cron_trigger(expression, zone)
    except ValueError as err:
        raise UserError(f'--cron "{expression[:60]}" is not valid: {err}') from None
    return next_runs(trigger, zone, after=after, previous=previous, count=count)


def _timer_id(schedule_id: str) -> str:
    return f"schedule-{schedule_id}"


def _run_name(kind: str, name: str, slot: datetime, zone: tzinfo) -> str:
    """An `at` run's job takes the name as given; a cron run's gets its local run time."""
    return name if kind == "at" else f"{name}-{slot.astimezone(zone):%Y%m%d-%H%M}"


def _scheduled_job(request: JobRequest, actor: Actor) -> ScheduledJob:
    assert request.config is not None
    return ScheduledJob(
        name=request.name,
        cluster=request.cluster,
        config=request.config,
        resource_group=request.resource_group,
        workspace=request.workspace,
        experiment=request.experiment,
        may_read_paths=actor.may_read_paths,
        max_retries=request.max_retries,
        mounts=request.mounts,
    )


def _job_request(schedule: Schedule, name: str) -> JobRequest:
    job = schedule.job
    return JobRequest(
        name=name,
        cluster=job.cluster,
        config=job.config,
        resource_group=job.resource_group,
        workspace=job.workspace,
        experiment=job.experiment,
        max_retries=job.max_retries,
        mounts=job.mounts,
    )


def _owner(schedule: Schedule) -> Actor:
    """Who the run submits as: the requester, in the channel they scheduled it from."""
    conversation = (
        Conversation(schedule.channel, None, schedule.requester) if schedule.channel else None
    )
    return Actor(
        user=schedule.requester,
        conversation=conversation,
        may_read_paths=schedule.job.may_read_paths,
    )
