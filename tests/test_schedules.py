"""User schedules (`job create --at/--cron`, `schedule list|show|delete`) through the real bot:
store, job service, approvals, presenter and relay, with a fake clock and no Slack."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.bootstrap import Bot
from bot.config import Settings
from bot.console import ConsoleTransport
from bot.lifecycle import running
from handlers.commands import Reply
from services.access import Caller
from services.core.clock import FakeClock
from services.core.errors import UserError
from services.jobs.lifecycle import JobState
from services.models import Conversation
from services.schedules.service import parse_at
from services.schedules.timer import cron_trigger, next_runs

ALICE, BOB, ADMIN = "U0ALICE", "U0BOB", "U0ADMIN"
CHANNEL, OTHER = "C0JOBS", "C0OTHER"
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CONFIG = json.dumps(
    {"properties": {"nodeCount": 1, "customToolkitSettings": {"commandLine": "echo hi"}}},
    separators=(",", ":"),
)
CLUSTER = "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data --afs-mount-path afs"
BERLIN = ZoneInfo("Europe/Berlin")


@dataclass
class Rig:
    bot: Bot
    clock: FakeClock
    out: io.StringIO

    async def say(self, text: str, *, user: str = ALICE, channel: str = CHANNEL) -> Reply:
        return await self.bot.commands.handle(text, caller=Caller(user, channel), source="slack")

    async def schedule(self, when: str, *, name: str = "nightly", **kw: Any) -> str:
        reply = await self.say(f"job create -n {name} -r c1 -c {CONFIG} {when}", **kw)
        assert not reply.failed, reply.message.text
        return reply.message.text.split("`")[1]

    async def delivered(self) -> str:
        await self.bot.relay.drain()
        return self.out.getvalue()


def settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        _env_file=None,
        batchai_data_dir=tmp_path / "data",
        port=0,
        link_secret="link-secret-for-tests",
        price_refresh_hours=0,
        admin_users=ADMIN,
        **extra,
    )


@asynccontextmanager
async def started(
    tmp_path: Path, clock: FakeClock, *, first: bool = False, **extra: Any
) -> AsyncIterator[Rig]:
    out = io.StringIO()
    transport = ConsoleTransport(tmp_path / "files", out=out)
    async with running(
        settings(tmp_path, **extra), transport=transport, clock=clock, periodic=False
    ) as bot:
        rig = Rig(bot, clock, out)
        if first:
            bot.share.create_share("data")
            assert not (await rig.say(CLUSTER, user=ADMIN)).failed
        yield rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with started(tmp_path, FakeClock(START), first=True) as r:
        yield r


# -- times and expressions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ('--at "2025-12-31 23:00"', "has passed"),
        ('--at "2026-02-30 02:00"', "not a real date"),
        ('--at "tomorrow"', "not a time"),
        ('--at "2026-03-29 02:30" --tz Europe/Berlin', "does not exist in Europe/Berlin"),
        ('--at "2026-06-01 02:00" --tz Europe/Berln', 'did you mean "Europe/Berlin"'),
        ('--cron "0 2 * *"', "5 fields"),
        ('--cron "61 * * * *"', "higher than the maximum"),
        ('--cron "0 2 * * 8"', "0-7"),
        ('--cron "0 0 30 2 *"', "never fires"),
        ('--cron "@reboot"', "not a schedule shortcut"),
        ('--cron "0 2 * * *" --at "2026-06-01 02:00"', "do not go together"),
        ("--tz Europe/Berlin", "give one of them too"),
        ("--at 2026-06-01 02:00", "quote a value"),
        ('--cron "@daily" --afs-name ../up', "--afs-name"),  # checked as a submit checks it
    ],
)
async def test_bad_times_are_refused_in_one_line_with_usage_and_nothing_is_stored(
    rig: Rig, flags: str, expected: str
) -> None:
    reply = await rig.say(f"job create -n nightly -r c1 -c {CONFIG} {flags}")
    assert reply.failed
    assert expected in reply.message.text
    assert "\n" not in reply.message.text
    assert any("job create" in b["text"]["text"] for b in reply.message.blocks[1:])  # usage
    assert await rig.bot.store.list_schedules() == []


async def test_a_broken_job_is_refused_at_schedule_time(rig: Rig) -> None:
    reply = await rig.say('job create -n x -r nowhere -c {"properties":{}} --cron "@daily"')
    assert reply.failed
    reply = await rig.say(f'job create -n x -r nowhere -c {CONFIG} --cron "@daily"')
    assert reply.failed and "cluster nowhere not found" in reply.message.text
    assert await rig.bot.store.list_schedules() == []


def test_crontab_weekdays_count_from_sunday_and_either_day_field_matches() -> None:
    after = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
    sundays = next_runs(cron_trigger("0 2 * * 0", UTC), UTC, after=after, count=2)
    assert [d.strftime("%a %d") for d in sundays] == ["Sun 08", "Sun 15"]
    assert next_runs(cron_trigger("0 2 * * 7", UTC), UTC, after=after) == sundays[:1]
    either = next_runs(cron_trigger("0 2 10 * 1", UTC), UTC, after=after, count=3)
    assert [d.day for d in either] == [2, 9, 10]  # Mondays, and the 10th (a Tuesday)


def test_next_runs_across_dst_changes_keep_local_time_and_run_once() -> None:
    daily = cron_trigger("30 2 * * *", BERLIN)
    spring = next_runs(daily, BERLIN, after=datetime(2026, 3, 27, tzinfo=UTC), count=4)
    assert [f"{d:%d %H:%M}" for d in spring] == ["27 01:30", "28 01:30", "29 01:30", "30 00:30"]
    # 02:30 does not exist on the 29th: the run happens at 03:30 CEST (01:30 UTC)
    assert f"{spring[2].astimezone(BERLIN):%H:%M %Z}" == "03:30 CEST"
    autumn = next_runs(daily, BERLIN, after=datetime(2026, 10, 24, tzinfo=UTC), count=3)
    # 02:30 happens twice on the 25th: the schedule runs once
    assert [f"{d:%d %H:%M}" for d in autumn] == ["24 00:30", "25 00:30", "26 01:30"]


def test_an_at_time_is_read_in_its_zone() -> None:
    when = parse_at("2026-07-01 02:00", BERLIN, START)
    assert when == datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    assert parse_at("13:00", UTC, START) == datetime(2026, 1, 1, 13, tzinfo=UTC)
    assert parse_at("11:00", UTC, START) == datetime(2026, 1, 2, 11, tzinfo=UTC)  # tomorrow
    with pytest.raises(UserError, match="has passed"):
        parse_at("2026-01-01 11:59", UTC, START)


# -- create, list, show, delete -------------------------------------------------------------


async def test_the_reply_shows_id_zone_next_runs_estimate_and_how_to_delete(rig: Rig) -> None:
    reply = await rig.say(
        f'job create -n nightly -r c1 -c {CONFIG} --cron "0 2 * * *" --tz Europe/Berlin'
    )
    text = "\n".join(b.get("text", {}).get("text", "") or str(b) for b in reply.message.blocks)
    assert not reply.failed
    (schedule,) = await rig.bot.store.list_schedules()
    assert f"`{schedule.id}`" in text and "Europe/Berlin" in text
    for day in ("2026-01-02", "2026-01-03", "2026-01-04"):
        assert f"{day} 02:00 Europe/Berlin (01:00 UTC)" in text
    assert "each run: 1 ×" in text and "$" in text
    assert f"/batchai schedule delete -n {schedule.id}" in text
    assert schedule.next_run_at == datetime(2026, 1, 2, 1, 0, tzinfo=UTC)
    assert rig.bot.scheduler.armed(f"schedule-{schedule.id}") == schedule.next_run_at


async def test_list_show_and_delete_with_permissions(rig: Rig) -> None:
    mine = await rig.schedule('--at "2026-01-05 09:00"')
    theirs = await rig.schedule('--cron "@hourly"', name="hourly", user=BOB, channel=OTHER)
    listed = await rig.say("schedule list")
    assert mine in listed.message.text and theirs not in listed.message.text
    assert "2026-01-05 09:00 UTC" in listed.message.text
    refused = await rig.say("schedule list --all")
    assert refused.failed and "only an admin" in refused.message.text
    everything = await rig.say("schedule list --all -o json", user=ADMIN)
    assert {s["id"] for s in json.loads(everything.message.text)} == {mine, theirs}
    shown = await rig.say(f"schedule show -n {theirs}")
    assert (
        "next runs: 2026-01-01 13:00 UTC, 2026-01-01 14:00 UTC, 2026-01-01 15:00 UTC"
        in (shown.message.blocks[0]["text"]["text"])
    )
    denied = await rig.say(f"schedule delete -n {theirs}")
    assert denied.failed and "only <@U0BOB> or an admin" in denied.message.text
    assert await rig.bot.store.get_schedule(theirs) is not None
    assert not (await rig.say(f"schedule delete -n {theirs}", user=ADMIN)).failed
    assert await rig.bot.store.get_schedule(theirs) is None
    assert rig.bot.scheduler.armed(f"schedule-{theirs}") is None
    again = await rig.say(f"schedule delete -n {theirs}", user=ADMIN)
    assert not again.failed and "does not exist" in again.message.text


# -- firing ---------------------------------------------------------------------------------


async def test_a_cron_run_submits_once_through_the_job_service(rig: Rig) -> None:
    sid = await rig.schedule('--cron "0 2 * * *"')
    assert await rig.bot.schedules.run_due() == 0  # not yet
    rig.clock.advance(timedelta(hours=14, seconds=5))  # 02:00:05 next day
    assert await rig.bot.schedules.run_due() == 1
    assert await rig.bot.schedules.fire(sid) is None  # a second wake-up finds nothing due
    assert await rig.bot.schedules.run_due() == 0
    job = await rig.bot.store.find_job("nightly-20260102-0200")
    assert job is not None and job.state is JobState.QUEUED and job.requester == ALICE
    assert job.conversation == Conversation(CHANNEL, None, ALICE)
    schedule = await rig.bot.store.get_schedule(sid)
    assert schedule is not None and schedule.runs == 1 and schedule.last_job_id == job.id
    assert schedule.next_run_at == datetime(2026, 1, 3, 2, tzinfo=UTC)
    out = await rig.delivered()
    assert out.count(f"schedule `{sid}` submitted job nightly-20260102-0200") == 1
    assert out.index("submitted job nightly") < out.index("[queued]")  # before the card
    assert await rig.bot.store.count_events(kind="schedule_fired") == 1


async def test_a_run_above_the_limit_waits_for_approval(tmp_path: Path) -> None:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps({"default_limit_usd": 0.01, "approvers": [ADMIN]}))
    async with started(tmp_path, FakeClock(START), first=True, approvals_file=policy) as rig:
        reply = await rig.say(f'job create -n big -r c1 -c {CONFIG} --at "2026-01-01 13:00"')
        assert "will wait for approval" in str(reply.message.blocks)
        rig.clock.advance(timedelta(hours=1))
        assert await rig.bot.schedules.run_due() == 1
        job = await rig.bot.store.find_job("big")
        assert job is not None and job.state is JobState.PENDING_APPROVAL
        (approval,) = await rig.bot.store.list_approvals(job_id=job.id)
        assert approval.state == "pending" and approval.requester == ALICE
        assert "[Approve]" in await rig.delivered() or "Approve" in rig.out.getvalue()


async def test_a_failing_run_is_recorded_and_told_once_and_cron_goes_on(rig: Rig) -> None:
    sid = await rig.schedule('--cron "0 * * * *"')
    assert not (await rig.say("cluster delete -n c1 -y", user=ADMIN)).failed
    rig.clock.advance(timedelta(hours=1))
    assert await rig.bot.schedules.run_due() == 0
    assert await rig.bot.schedules.run_due() == 0
    schedule = await rig.bot.store.get_schedule(sid)
    assert schedule is not None and schedule.active
    assert schedule.last_error == "cluster c1 not found"
    assert schedule.next_run_at == datetime(2026, 1, 1, 14, tzinfo=UTC)
    out = await rig.delivered()
    assert out.count(f"schedule `{sid}` could not submit its job: cluster c1 not found") == 1
    assert "next run: 2026-01-01 14:00 UTC" in out


# -- restarts -------------------------------------------------------------------------------


async def test_a_restart_neither_loses_nor_repeats_a_run(tmp_path: Path) -> None:
    clock = FakeClock(START)
    async with started(tmp_path, clock, first=True) as rig:
        sid = await rig.schedule('--cron "0 13 * * *"')
        clock.advance(timedelta(hours=1))
        assert await rig.bot.schedules.run_due() == 1
    for _ in range(2):  # start twice on the same database at the same time
        async with started(tmp_path, clock) as rig:
            await rig.delivered()
            assert len(await rig.bot.store.list_jobs()) == 1
            assert await rig.bot.store.count_events(kind="schedule_fired") == 1
            schedule = await rig.bot.store.get_schedule(sid)
            assert schedule is not None and schedule.runs == 1
            assert rig.bot.scheduler.armed(f"schedule-{sid}") == datetime(
                2026, 1, 2, 13, tzinfo=UTC
            )


@pytest.mark.parametrize(
    ("late", "fires"), [(timedelta(minutes=50), True), (timedelta(hours=2), False)]
)
async def test_an_at_run_due_while_down_fires_within_the_grace_else_is_missed(
    tmp_path: Path, late: timedelta, fires: bool
) -> None:
    clock = FakeClock(START)
    async with started(tmp_path, clock, first=True) as rig:
        sid = await rig.schedule('--at "2026-01-01 13:00"', name="once")
    clock.advance(timedelta(hours=1) + late)  # the bot was down at 13:00
    async with started(tmp_path, clock) as rig:
        out = await rig.delivered()
        schedule = await rig.bot.store.get_schedule(sid)
        assert schedule is not None and not schedule.active and schedule.next_run_at is None
        assert (await rig.bot.store.find_job("once") is not None) is fires
        missed = f"schedule `{sid}` missed its run at 2026-01-01 13:00 UTC"
        assert out.count(missed) == (0 if fires else 1)
        assert out.count(f"schedule `{sid}` submitted job once") == (1 if fires else 0)
    async with started(tmp_path, clock) as rig:  # and a further restart tells nothing again
        assert missed not in await rig.delivered()
        assert len(await rig.bot.store.list_jobs()) == (1 if fires else 0)


async def test_a_cron_that_missed_many_runs_fires_once(tmp_path: Path) -> None:
    clock = FakeClock(START)
    async with started(tmp_path, clock, first=True) as rig:
        sid = await rig.schedule('--cron "*/10 * * * *"', name="often")
    clock.advance(timedelta(hours=3, minutes=5))  # down for 18 runs
    async with started(tmp_path, clock) as rig:
        jobs = await rig.bot.store.list_jobs()
        assert [j.name for j in jobs] == ["often-20260101-1500"]
        schedule = await rig.bot.store.get_schedule(sid)
        assert schedule is not None and schedule.next_run_at == datetime(
            2026, 1, 1, 15, 10, tzinfo=UTC
        )


async def test_wake_ups_racing_for_one_run_submit_one_job_and_tell_nothing_else(rig: Rig) -> None:
    sid = await rig.schedule('--at "2026-01-01 13:00"', name="race")
    rig.clock.advance(timedelta(hours=1))
    results = await asyncio.gather(*(rig.bot.schedules.fire(sid) for _ in range(4)))
    assert len([job for job in results if job is not None]) == 1
    assert [j.name for j in await rig.bot.store.list_jobs()] == ["race"]
    assert await rig.bot.store.count_events(kind="schedule_fired") == 1
    assert await rig.bot.store.count_events(kind="schedule_failed") == 0
    schedule = await rig.bot.store.get_schedule(sid)
    assert schedule is not None and schedule.runs == 1 and schedule.last_error is None


async def test_a_cron_expression_is_shown_in_a_code_span_so_slack_keeps_its_stars(
    rig: Rig,
) -> None:
    created = await rig.say(f'job create -n nightly -r c1 -c {CONFIG} --cron "0 2 * * *"')
    assert "on cron `0 2 * * *` (UTC)" in created.message.blocks[0]["text"]["text"]
    (schedule,) = await rig.bot.store.list_schedules()
    shown = await rig.say(f"schedule show -n {schedule.id}")
    assert "cron `0 2 * * *` (UTC)" in shown.message.blocks[0]["text"]["text"]


async def test_a_schedules_mount_flags_reach_every_run_and_a_key_stays_sealed(
    tmp_path: Path,
) -> None:
    """Mount flags are kept with the schedule and added to the job.json at each run, as a
    submit adds them; another account's key is sealed in the database and survives a restart."""
    key = "S3cretAccountKeyOfTheirs=="
    flags = (
        "--afs-name data --afs-mount-path afs2 --bfs-name models --bfs-mount-path bfs "
        f"--storage-account-name theirstore --storage-account-key {key}"
    )
    clock = FakeClock(START)
    async with started(tmp_path, clock, first=True) as rig:
        sid = await rig.schedule(f'--cron "0 2 * * *" {flags}')
    database = (tmp_path / "data" / "batchai.db").read_bytes()
    assert key.encode() not in database  # sealed at rest
    async with started(tmp_path, clock) as rig:
        rig.clock.advance(timedelta(hours=14, seconds=5))
        assert await rig.bot.schedules.run_due() == 1
        job = await rig.bot.store.find_job("nightly-20260102-0200")
        assert job is not None, await rig.bot.store.get_schedule(sid)
        volumes = json.loads(rig.bot.store.open_spec(job.spec_json))["properties"]["mountVolumes"]
        shares = {v["relativeMountPath"]: v for v in volumes["azureFileShares"]}
        blobs = {v["relativeMountPath"]: v for v in volumes["azureBlobFileSystems"]}
        assert shares["afs2"]["azureFileUrl"].endswith("theirstore.file.core.windows.net/data")
        assert blobs["bfs"]["containerName"] == "models"
        assert blobs["bfs"]["accountName"] == "theirstore"
        assert blobs["bfs"]["credentials"]["accountKey"] == key  # opened for the launch only
        shown = await rig.say(f"schedule show -n {sid}")
        said = json.dumps(shown.message.blocks, ensure_ascii=False)
        assert "afs2 ← share data of account theirstore" in said, said
        assert "bfs ← container models of account theirstore" in said
        assert key not in shown.message.text and key not in said
