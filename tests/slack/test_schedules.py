"""Scheduled jobs through the real Bolt app and the fake Slack: schedule, list, fire, approve
the run with the usual buttons, delete (audited)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from bot.lifecycle import running
from handlers import views
from services.core.clock import FakeClock
from services.jobs.lifecycle import JobState
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import CHANNEL, JOB_SCRIPT, USER, SlackRig, job_json, rig_settings

BOSS, BOB = "U0BOSS", "U0BOB"
T4 = "cluster create -n t4 -s Standard_NC4as_T4_v3 -t 2 --afs-name data --afs-mount-path afs"


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[SlackRig]:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps({"default_limit_usd": 1, "approvers": [BOSS]}))
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    settings = rig_settings(tmp_path, fake, approvals_file=policy, admin_users=BOSS)
    async with (
        running(settings, periodic=False, clock=clock) as bot,
        aiohttp.ClientSession() as http,
    ):
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        r = SlackRig(fake, bot, http, settings)
        r.clock = clock  # type: ignore[attr-defined]
        yield r
        for job in await bot.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await bot.backend.terminate_job(job.id)


async def test_schedule_fire_approve_list_and_delete_through_slack(rig: SlackRig) -> None:
    assert (await rig.answer(T4, user=BOSS))["response_type"] == "in_channel"
    config = job_json(1, hours=2)
    bad = await rig.answer(f'job create -n nightly -r t4 -c {config} --cron "0 25 * * *"')
    assert "is not valid" in bad["text"] and await rig.bot.store.list_schedules() == []

    answer = await rig.answer(
        f'job create -n nightly -r t4 -c {config} --cron "0 2 * * *" --tz Europe/Berlin'
    )
    (schedule,) = await rig.bot.store.list_schedules()
    shown = json.dumps(answer["blocks"])
    assert answer["response_type"] == "ephemeral" and f"`{schedule.id}`" in answer["text"]
    assert "2026-01-02 02:00 Europe/Berlin (01:00 UTC)" in shown
    assert "will wait for approval" in shown and "schedule delete -n" in shown

    listed = await rig.answer("schedule list")
    assert schedule.id in listed["text"] and 'cron "0 2 * * *" (Europe/Berlin)' in listed["text"]

    rig.clock.advance(timedelta(hours=13))  # type: ignore[attr-defined]
    assert await rig.bot.schedules.run_due() == 1
    await rig.bot.relay.drain()
    top = [m for m in rig.fake.messages_in(CHANNEL) if not m.is_reply]
    fired = [m for m in top if f"schedule `{schedule.id}` submitted job" in m.text]
    assert len(fired) == 1 and "nightly-20260102-0200" in fired[0].text
    job = await rig.bot.store.find_job("nightly-20260102-0200")
    assert job is not None and job.state is JobState.PENDING_APPROVAL and job.requester == USER
    (approval,) = await rig.bot.store.list_approvals(job_id=job.id)
    request = [m for m in top if views.ACTION_APPROVE in json.dumps(m.blocks)]
    assert request, "the approval request with its buttons"
    status, _ = await rig.click(views.ACTION_APPROVE, approval.id, user=BOSS)
    assert status == 200
    await rig.until(
        lambda: _state(rig, job.name, JobState.QUEUED, JobState.PREPARING, JobState.RUNNING),
        "the approved run to be queued",
    )

    refused = await rig.answer(f"schedule delete -n {schedule.id}", user=BOB)
    assert "only <@U0ALICE> or an admin" in refused["text"]
    deleted = await rig.answer(f"schedule delete -n {schedule.id}")
    assert deleted["response_type"] == "in_channel"
    assert await rig.bot.store.get_schedule(schedule.id) is None
    audit = [e for e in await rig.bot.store.list_audit() if e.action == "ScheduleDelete"]
    assert [(e.actor, e.outcome) for e in audit] == [(USER, "allowed"), (BOB, "denied")]


async def _state(rig: SlackRig, name: str, *states: JobState) -> bool:
    job = await rig.bot.store.find_job(name)
    return job is not None and job.state in states
