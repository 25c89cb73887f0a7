"""The attacker's view of GPU spend: every way to commit money goes through the spend gate.

A workspace member with no approval rights tries to spend through every command that creates
capacity, clicks Extend again and again, approves their own requests through every path, lets a
schedule made before a policy change fire, and starts the bot with a policy but no admins."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from bot.config import Settings
from bot.console import Console, ConsoleTransport, console_caller
from bot.lifecycle import running
from handlers import views
from services.access import Caller
from services.core.clock import FakeClock
from services.jobs.lifecycle import JobState
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import CHANNEL, JOB_SCRIPT, SlackRig, job_json, rig_settings
from tests.test_schedules import ADMIN, CONFIG, START, started

ALICE, BOSS, CFO = "U0ALICE", "U0BOSS", "U0CFO"  # BOSS: admin and approver; CFO: approver
A100 = "-s Standard_NC24ads_A100_v4 --afs-name data --afs-mount-path afs"
POLICY = {"default_limit_usd": 50, "approvers": [BOSS, CFO], "approvals_channel": "C0APPROVE"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as server:
        yield server


async def _rig(tmp_path: Path, fake: FakeSlack, **settings: Any) -> AsyncIterator[SlackRig]:
    clock = FakeClock()
    values = rig_settings(tmp_path, fake, **settings)
    async with (
        running(values, periodic=False, clock=clock) as bot,
        aiohttp.ClientSession() as http,
    ):
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        rig = SlackRig(fake, bot, http, values)
        rig.clock = clock  # type: ignore[attr-defined]
        yield rig
        for job in await bot.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await bot.backend.terminate_job(job.id)


@pytest.fixture
async def guarded(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[SlackRig]:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps(POLICY))
    home = tmp_path / "guarded"  # a database of its own: SQLite serves one bot (a test may run two)
    home.mkdir()
    async for rig in _rig(home, fake, approvals_file=policy, admin_users=BOSS):
        yield rig


@pytest.fixture
async def open_bot(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[SlackRig]:
    home = tmp_path / "open"
    home.mkdir()
    async for rig in _rig(home, fake):
        yield rig


def caller(user: str) -> Caller:
    return Caller(user, CHANNEL)  # an admin or not as ADMIN_USERS says: the guard decides


async def say(rig: SlackRig, text: str, user: str) -> Any:
    """A command through the handler every transport shares (no Slack-only check in front)."""
    return await rig.bot.commands.handle(text, caller=caller(user), source="slack")


async def click(rig: SlackRig, action_id: str, value: str, user: str) -> str:
    status, url = await rig.click(action_id, value, user=user)
    assert status == 200
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    return rig.fake.responses_to(url)[-1].text or ""


async def running_job(rig: SlackRig, name: str, *, user: str, hours: int = 1) -> Any:
    config = job_json(1, nodes=4, hours=hours, gate="never")
    await rig.answer(f"job create -n {name} -r big -c {config}", user=user)

    async def started_running() -> bool:
        job = await rig.bot.store.find_job(name)
        return job is not None and job.state is JobState.RUNNING

    await rig.until(started_running, f"{name} to run")
    return await rig.bot.store.find_job(name)


async def warn(rig: SlackRig, minutes: int) -> None:
    rig.clock.advance(timedelta(minutes=minutes))  # type: ignore[attr-defined]
    await rig.bot.runner.tick()
    await rig.bot.relay.drain()


# -- capacity ---------------------------------------------------------------------------------


async def test_a_member_cannot_create_a_fixed_gpu_fleet(guarded: SlackRig) -> None:
    refused = await guarded.answer(f"cluster create -n fleet {A100} -t 100")
    assert "only an admin may commit standing capacity" in refused["text"]
    assert "100 × Standard_NC24ads_A100_v4" in refused["text"]
    assert await guarded.bot.store.list_clusters() == []
    # what costs nothing idle needs nobody: auto-scale from 0, scaled down when idle
    free = await guarded.answer(f"cluster create -n pool {A100} --min 0 --max 100")
    assert "is ready" in free["text"]
    by_admin = await guarded.answer(f"cluster create -n big {A100} -t 4", user=BOSS)
    assert "is ready" in by_admin["text"]


async def test_a_file_server_is_standing_capacity_a_member_cannot_commit(guarded: SlackRig) -> None:
    big = "-s Standard_NC96ads_A100_v4 --disk-count 2 --disk-size 10"
    refused = await guarded.answer(f"file-server create -n nfs {big}")
    assert "only an admin may commit standing capacity" in refused["text"]
    assert "1 × Standard_NC96ads_A100_v4 + 2 × 10 GB Premium_LRS disks" in refused["text"]
    assert "file server's VM is paid for until it is deleted" in refused["text"]
    assert await guarded.bot.store.list_file_servers() == []
    made = await guarded.answer(f"file-server create -n nfs {big}", user=BOSS)
    assert "nfs" in made["text"] and "only an admin" not in made["text"]
    assert [s.name for s in await guarded.bot.store.list_file_servers()] == ["nfs"]


async def test_a_file_server_s_data_disks_are_priced_with_its_vm(guarded: SlackRig) -> None:
    # A small VM with four 32 TiB Premium disks: the disks cost ~$24/h, far over the $50 limit.
    big = "-s Standard_D4s_v5 --disk-count 4 --disk-size 32767 --storage-sku Premium_LRS"
    refused = await guarded.answer(f"file-server create -n disks {big}")
    assert "only an admin may commit standing capacity" in refused["text"]
    assert "4 × 32767 GB Premium_LRS disks" in refused["text"]
    assert await guarded.bot.store.list_file_servers() == []
    small = "-s Standard_D4s_v5 --disk-count 1 --disk-size 64 --storage-sku Standard_LRS"
    made = await guarded.answer(f"file-server create -n small {small}")
    assert "only an admin" not in made["text"], made["text"]


async def test_resize_auto_scale_and_update_are_priced_too(guarded: SlackRig) -> None:
    await guarded.answer(f"cluster create -n pool {A100} --min 0 --max 8", user=BOSS)
    for command in (
        "cluster resize -n pool -t 8",
        "cluster auto-scale -n pool --min 8 --max 8",
        "cluster update -n pool --idle-timeout 0",  # never shrinks: 8 nodes stand
    ):
        reply = await say(guarded, command, ALICE)  # admin-only: the guard refuses it first
        assert reply.failed and "only an admin may" in reply.message.text, command
    pool = await guarded.bot.store.get_cluster("pool")
    assert pool is not None and (pool.min_nodes, pool.max_nodes, pool.target_nodes) == (0, 8, 0)
    assert pool.idle_timeout_s is None
    assert not (await say(guarded, "cluster resize -n pool -t 8", BOSS)).failed


async def test_keep_on_an_idle_warning_is_priced(guarded: SlackRig) -> None:
    await guarded.answer(f"cluster create -n idle {A100} --min 0 --max 20 -t 20")
    await guarded.bot.idle.check()  # idle from now
    guarded.clock.advance(timedelta(minutes=11))  # type: ignore[attr-defined]
    await guarded.bot.idle.check()
    cluster = await guarded.bot.store.get_cluster("idle")
    assert cluster is not None and cluster.idle.warning is not None
    value = f"idle:{cluster.idle.warning.id}"
    # through the action handler every transport shares (20 × $3.673 × 1 h = $73.46)
    refused = await guarded.bot.actions.handle(views.ACTION_IDLE_KEEP, value, caller=caller(ALICE))
    assert refused.failed and "only an admin may" in refused.message.text
    cluster = await guarded.bot.store.get_cluster("idle")
    assert cluster is not None and cluster.idle.keep_until is None
    kept = await click(guarded, views.ACTION_IDLE_KEEP, value, BOSS)
    assert "kept at 20 nodes" in kept


# -- extensions -------------------------------------------------------------------------------


async def test_extend_is_judged_on_the_whole_estimate_once_per_warning(guarded: SlackRig) -> None:
    await guarded.answer(f"cluster create -n big {A100} -t 4", user=BOSS)
    job = await running_job(guarded, "long", user=ALICE)  # 4 × $3.673 × 1 h = $14.69
    for _ in range(10):  # before any warning
        answer = await click(guarded, views.ACTION_EXTEND, job.id, ALICE)
        assert "once it is warned" in answer
    await warn(guarded, 51)
    assert "extended by 2 h" in await click(guarded, views.ACTION_EXTEND, job.id, ALICE)  # $44.08
    again = await click(guarded, views.ACTION_EXTEND, job.id, ALICE)
    assert "once it is warned" in again
    fresh = await guarded.bot.store.find_job("long")
    assert fresh is not None and fresh.max_wall_clock == timedelta(hours=3)
    await warn(guarded, 120)  # the next warning: 5 h would be $73.46, above the $50 limit
    asked = await click(guarded, views.ACTION_EXTEND, job.id, ALICE)
    assert "waits for" in asked and "5 h max = $73.46" in asked
    fresh = await guarded.bot.store.find_job("long")
    assert fresh is not None and fresh.max_wall_clock == timedelta(hours=3)


async def test_the_owner_never_approves_an_extension_of_their_own_job(guarded: SlackRig) -> None:
    await guarded.answer(f"cluster create -n big {A100} -t 4", user=BOSS)
    job = await running_job(guarded, "cfos", user=CFO)  # an approver's own job
    await guarded.answer("budget set --amount 1.00", user=BOSS)  # every extension needs asking
    await warn(guarded, 51)
    assert "waits for" in await click(guarded, views.ACTION_EXTEND, job.id, BOSS)
    (approval,) = [a for a in await guarded.bot.store.list_approvals() if a.kind == "extend"]
    by_button = await click(guarded, views.ACTION_APPROVE, approval.id, CFO)
    assert "your own request" in by_button
    by_command = await guarded.answer(f"approvals approve --id {approval.id}", user=CFO)
    assert "your own request" in by_command["text"]
    assert (await guarded.bot.approvals.get_approval(approval.id)).state == "pending"
    fresh = await guarded.bot.store.find_job("cfos")
    assert fresh is not None and fresh.max_wall_clock == timedelta(hours=1)


async def test_the_console_speaks_as_another_user_and_refuses_self_approval(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps(POLICY))
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        batchai_data_dir=tmp_path / "data",
        port=0,
        link_secret="link-secret-for-tests",
        price_refresh_hours=0,
        approvals_file=policy,
        admin_users=BOSS,
    )
    out = io.StringIO()
    transport = ConsoleTransport(tmp_path / "files", out=out)
    async with running(settings, transport=transport, periodic=False) as bot:
        bot.share.create_share("data")
        console = Console(
            commands=bot.commands,
            actions=bot.actions,
            transport=transport,
            caller=console_caller("console", "console-user"),
            live_jobs=lambda: None,
            interactive=False,
            out=out,
        )
        config = job_json(1, nodes=4, hours=8)  # $117.54: above Alice's limit
        await console.execute(f"as {ALICE} /batchai cluster create -n big {A100} -t 4")
        assert "only an admin may commit standing capacity" in out.getvalue()
        await console.execute(f"as {BOSS} /batchai cluster create -n big {A100} -t 4")
        await console.execute(f"as {ALICE} /batchai job create -n big1 -r big -c {config}")
        job = await bot.store.find_job("big1")
        assert job is not None and job.requester == ALICE
        (approval,) = await bot.store.list_approvals(job_id=job.id)
        await console.execute(f"as {ALICE} approvals approve --id {approval.id}")
        assert "you cannot approve your own request" in out.getvalue()
        await console.execute(f"as {ALICE} budget set --amount 99999")
        assert "only an admin may set a budget" in out.getvalue()
        await console.execute("as nobody approvals list")
        assert "`as` needs a Slack user ID" in out.getvalue()
        assert (await bot.store.find_job("big1")).state is JobState.PENDING_APPROVAL  # type: ignore[union-attr]
        await console.execute(f"as {BOSS} approvals approve --id {approval.id}")
        approved = await bot.store.find_job("big1")
        assert approved is not None and approved.state is JobState.QUEUED


# -- schedules, start-up, unguarded spend -----------------------------------------------------


async def test_a_scheduled_run_meets_the_allow_lists_and_policy_of_its_fire_time(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    async with started(tmp_path, clock, first=True) as rig:
        for name, at in (("first", "13:00"), ("second", "14:00")):
            text = f'job create -n {name} -r c1 -c {CONFIG} --at "2026-01-01 {at}"'
            assert not (await rig.say(text)).failed  # Alice, allowed then
    clock.advance(timedelta(hours=1))
    async with started(tmp_path, clock, allowed_users=ADMIN) as rig:  # Alice is taken off
        await rig.bot.schedules.run_due()
        assert await rig.bot.store.find_job("first") is None
        (first,) = [s for s in await rig.bot.store.list_schedules() if s.job.name == "first"]
        assert first.last_error is not None and "list of users" in first.last_error
    clock.advance(timedelta(hours=1))
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps({"default_limit_usd": 0.01, "approvers": [ADMIN]}))
    async with started(tmp_path, clock, approvals_file=policy) as rig:  # a policy arrives
        await rig.bot.schedules.run_due()  # (a start fires what is due, too)
        second = await rig.bot.store.find_job("second")
        assert second is not None and second.state is JobState.PENDING_APPROVAL


def test_a_policy_without_admins_refuses_to_start(tmp_path: Path) -> None:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps(POLICY))
    with pytest.raises(ValidationError, match="APPROVALS_FILE needs ADMIN_USERS"):
        Settings(_env_file=None, approvals_file=policy)  # type: ignore[call-arg]


async def test_unguarded_spend_is_said_out_loud(
    open_bot: SlackRig, guarded: SlackRig, caplog: pytest.LogCaptureFixture
) -> None:
    created = await open_bot.answer(f"cluster create -n big {A100} -t 4")
    assert "needed nobody's approval" in str(created["blocks"])
    submitted = await open_bot.answer(
        f"job create -n big1 -r big -c {job_json(1, nodes=4, hours=8)}"
    )
    assert "$117.54 needed nobody's approval" in str(submitted["blocks"])
    small = await open_bot.answer(f"job create -n small -r big -c {job_json(1, hours=1)}")
    assert "nobody's approval" not in str(small["blocks"])  # $3.67: not worth a word
    async with open_bot.http.get(f"{open_bot.bot.probe_url}/readyz") as response:
        assert "nothing needs approval" in (await response.json())["spend"]
    async with guarded.http.get(f"{guarded.bot.probe_url}/readyz") as response:
        assert "spend" not in await response.json()
    assert any(
        r.levelno == logging.WARNING and "GPU spend is unguarded" in r.getMessage()
        for r in caplog.get_records("setup")
    )
