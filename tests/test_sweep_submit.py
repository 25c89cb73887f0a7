"""Sweeps through the real bot from the console (issue 15, item 1): `job create --sweep` and a
job.json's sweep section submit the grid as one sweep, under one approval; `job list/show/
terminate` take the sweep's name; a bad sweep is one line and the usage, and stores nothing."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.bootstrap import Bot
from bot.config import Settings
from bot.console import ConsoleTransport
from bot.lifecycle import running
from handlers.commands import Reply
from services.access import Caller
from services.core.clock import FakeClock
from services.jobs.lifecycle import JobState, advance, requeue
from services.jobspec.load import load_job_spec
from services.models import Attempt

ALICE, BOB, ADMIN = "U0ALICE", "U0BOB", "U0ADMIN"
CHANNEL = "C0JOBS"
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
JOB = {
    "properties": {
        "nodeCount": 1,
        "customToolkitSettings": {"commandLine": "python train.py --lr $lr --batch ${batch}"},
    }
}
CONFIG = json.dumps(JOB, separators=(",", ":"))
CLUSTER = "cluster create -n gpu -s Standard_NC4as_T4_v3 -t 1 --afs-name data --afs-mount-path afs"
SWEEP = f'job create -n lr -r gpu -c {CONFIG} --sweep "lr=0.1,0.03,0.01" --sweep "batch=32,64"'


@dataclass
class Rig:
    bot: Bot
    clock: FakeClock
    out: io.StringIO

    async def say(self, text: str, *, user: str = ALICE) -> Reply:
        caller = Caller(user, CHANNEL)
        return await self.bot.commands.handle(text, caller=caller, source="console")

    async def nothing_stored(self) -> bool:
        return not await self.bot.store.list_jobs() and await self.bot.store.find_job("lr") is None


@asynccontextmanager
async def started(tmp_path: Path, **extra: Any) -> AsyncIterator[Rig]:
    out = io.StringIO()
    settings = Settings(
        _env_file=None,
        batchai_data_dir=tmp_path / "data",
        port=0,
        link_secret="link-secret-for-tests",
        price_refresh_hours=0,
        admin_users=ADMIN,
        **extra,
    )
    transport = ConsoleTransport(tmp_path / "files", out=out)
    async with running(
        settings, transport=transport, clock=FakeClock(START), periodic=False
    ) as bot:
        rig = Rig(bot, FakeClock(START), out)
        bot.share.create_share("data")
        assert not (await rig.say(CLUSTER, user=ADMIN)).failed
        yield rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with started(tmp_path) as r:
        yield r


def _env(spec_json: str) -> dict[str, str]:
    spec = load_job_spec(spec_json)
    return {v.name: v.value for v in spec.properties.environment_variables}


def _command(spec_json: str) -> str:
    settings = load_job_spec(spec_json).properties.custom_toolkit_settings
    assert settings is not None and settings.command_line is not None
    return settings.command_line


async def test_the_flags_submit_the_cartesian_product_as_one_sweep(rig: Rig) -> None:
    reply = await rig.say(SWEEP)
    assert not reply.failed, reply.message.text
    assert "sweep *lr* submitted to `gpu`: 6 jobs, lr-1 … lr-6" in reply.message.text
    jobs = await rig.bot.store.list_jobs()
    assert [j.name for j in jobs] == [f"lr-{i}" for i in range(1, 7)]
    assert len({j.sweep_id for j in jobs}) == 1 and jobs[0].sweep_id is not None
    sweep = await rig.bot.store.get_sweep(jobs[0].sweep_id)
    assert sweep is not None and sweep.name == "lr" and sweep.cluster == "gpu"
    assert _env(jobs[0].spec_json) == {"lr": "0.1", "batch": "32"}
    assert _env(jobs[5].spec_json) == {"lr": "0.01", "batch": "64"}
    assert _command(jobs[3].spec_json) == "python train.py --lr 0.03 --batch 64"
    assert all(j.state is JobState.QUEUED for j in jobs)  # no policy: nothing waits
    assert await rig.bot.store.count_events(kind="job_submitted") == 6


async def test_a_job_json_sweep_section_is_a_sweep_too(rig: Rig) -> None:
    data = {
        **JOB,
        "sweep": {
            "parameters": {"lr": {"values": [0.1, 0.001]}, "batch": [16]},
            "metric": {"name": "val_loss", "goal": "minimize"},
        },
    }
    reply = await rig.say(f"job create -n s -r gpu -c {json.dumps(data, separators=(',', ':'))}")
    assert not reply.failed, reply.message.text
    jobs = await rig.bot.store.list_jobs()
    assert [(j.name, _command(j.spec_json)) for j in jobs] == [
        ("s-1", "python train.py --lr 0.1 --batch 16"),
        ("s-2", "python train.py --lr 0.001 --batch 16"),
    ]
    assert "sweep" not in json.loads(jobs[0].spec_json)  # each job's own file is a plain job
    sweep = await rig.bot.store.get_sweep(jobs[0].sweep_id or "")
    assert sweep is not None and sweep.metric == "val_loss:min"


async def test_one_approval_covers_the_sweep_s_total(tmp_path: Path) -> None:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps({"default_limit_usd": 1, "approvers": [BOB]}))
    async with started(tmp_path, approvals_file=policy) as rig:
        reply = await rig.say(SWEEP)
        assert "waits for one approval for all of them" in reply.message.text
        jobs = await rig.bot.store.list_jobs()
        assert {j.state for j in jobs} == {JobState.PENDING_APPROVAL}
        (approval,) = await rig.bot.store.list_approvals()
        each = jobs[0].estimate
        assert each is not None and approval.estimate == each * 6 and approval.kind == "sweep"
        assert approval.formula.startswith("sweep lr: 6 jobs × (1 × ")
        assert approval.formula.endswith(f"= ${approval.estimate:,.2f}")
        await rig.bot.relay.drain()
        assert rig.out.getvalue().count("asks for") == 1  # one request in the channel
        assert not (await rig.say(f"approvals approve --id {approval.id}", user=BOB)).failed
        jobs = await rig.bot.store.list_jobs()
        assert {j.state for j in jobs} == {JobState.QUEUED}
        assert await rig.bot.store.list_approvals(state="pending") == []


async def test_stop_all_ends_a_job_that_waits_for_its_retry_approval(tmp_path: Path) -> None:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps({"default_limit_usd": 1, "approvers": [BOB]}))
    async with started(tmp_path, approvals_file=policy) as rig:
        assert not (await rig.say(f"{SWEEP} --max-retries 1")).failed
        (sweep_ask,) = await rig.bot.store.list_approvals()
        assert not (await rig.say(f"approvals approve --id {sweep_ask.id}", user=BOB)).failed
        store = rig.bot.store
        lost = next(j for j in await store.list_jobs() if j.name == "lr-3")
        # lr-3 ran, lost its node, and its retry waits for an approval of its own (what the
        # runner does on a retry past the approved amount).
        step = advance(lost, JobState.PREPARING, nodes=(0,))
        assert step is not None and await store.update_job(step.job, transition=step.transition)
        now = rig.clock.now()
        attempt = Attempt(number=1, started_at=now, ended_at=now, nodes=(0,), reason="evicted")
        back = requeue(step.job, attempt, now=now, spent=Decimal(2), approval=True)
        retry = replace(
            sweep_ask, id="retry-lr-3", job_id=lost.id, kind="retry", state="pending", votes=()
        )
        async with store.unit() as uow:
            assert await uow.jobs.move(back.job, back.transition)
            await uow.approvals.add(retry)
            await uow.commit()

        stopped = await rig.say("job terminate -n lr")
        assert not stopped.failed and "is stopping 6 of sweep *lr*" in stopped.message.text
        ended = await store.get_job(lost.id)
        assert ended is not None and ended.state.finished
        (withdrawn,) = [a for a in await store.list_approvals() if a.id == "retry-lr-3"]
        assert withdrawn.state == "denied"
        assert await store.list_approvals(state="pending") == []


async def test_list_show_and_terminate_take_the_sweep_s_name(rig: Rig) -> None:
    assert not (await rig.say(SWEEP)).failed
    assert not (await rig.say(f"job create -n other -r gpu -c {CONFIG}")).failed
    listed = (await rig.say("job list --sweep lr -o table")).message.text
    assert all(f"lr-{i}" in listed for i in range(1, 7)) and "other" not in listed
    shown = await rig.say("job show -n lr")
    assert "sweep *lr* on `gpu` — 6 jobs: 6 queued" in str(shown.message.blocks)
    assert "lr=0.03 batch=64" in str(shown.message.blocks)
    table = (await rig.say("job show -n lr -o table")).message.text
    assert "lr-4" in table and "lr=0.03 batch=64" in table
    assert (await rig.say("job terminate -n lr", user=BOB)).failed  # not Bob's sweep
    assert {j.state for j in await rig.bot.store.list_jobs()} == {JobState.QUEUED}
    stopped = await rig.say("job terminate -n lr")
    assert not stopped.failed and "is stopping 6 of sweep *lr*" in stopped.message.text
    states = {j.name: j.state for j in await rig.bot.store.list_jobs()}
    assert states.pop("other") is JobState.QUEUED
    assert set(states.values()) <= {JobState.TERMINATING, JobState.TERMINATED}
    again = await rig.say("job terminate -n lr")
    assert "no job of sweep *lr* was left to stop" in again.message.text


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("--sweep lr", "--sweep: write NAME=V1,V2"),
        ("--sweep lr=0.1 --sweep lr=0.2", "each sweep parameter is named once"),
        ("--sweep lr=1,1", "lists a value twice"),
        ('--sweep "lr=$(reboot)"', "values are 1-64 letters"),
        ("--sweep PATH=1,2", "PATH is set by the node"),
        ("--sweep AZ_BATCHAI_X=1", "is set by the node"),
        (
            "--sweep a=" + ",".join(map(str, range(11))) + " --sweep b=" + ",".join("0123456789"),
            "would submit 110 jobs, at most 100",
        ),
        ("--sweep lr=1,2 --sweep-metric foo", "say whether foo should go up or down"),
        ("--sweep lr=1,2 --sweep-metric loss:up", "the goal after : is max or min"),
        ('--sweep lr=1,2 --at "2026-06-01 02:00"', "a sweep is submitted now"),
        ("--sweep-metric loss", "--sweep-metric ranks a sweep"),
    ],
)
async def test_bad_sweeps_are_one_line_and_the_usage_and_change_nothing(
    rig: Rig, flags: str, expected: str
) -> None:
    reply = await rig.say(f"job create -n lr -r gpu -c {CONFIG} {flags}")
    assert reply.failed
    assert expected in reply.message.text, reply.message.text
    assert "\n" not in reply.message.text
    if "ranks a sweep" not in expected:  # the service's refusal has no usage to add
        assert any("job create" in b["text"]["text"] for b in reply.message.blocks[1:])
    assert await rig.nothing_stored()
    async with rig.bot.store.unit() as uow:
        assert await uow.sweeps.find("lr") is None


async def test_a_sweep_whose_name_or_job_names_are_taken_is_refused_whole(rig: Rig) -> None:
    assert not (await rig.say(f"job create -n lr-4 -r gpu -c {CONFIG}")).failed
    reply = await rig.say(SWEEP)
    assert reply.failed and "job lr-4 already exists" in reply.message.text
    assert [j.name for j in await rig.bot.store.list_jobs()] == ["lr-4"]
    assert not (await rig.say(SWEEP.replace("-n lr ", "-n lr2 "))).failed
    again = await rig.say(SWEEP.replace("-n lr ", "-n lr2 "))
    assert again.failed and "sweep lr2 exists already" in again.message.text


async def test_the_estimate_of_a_sweep_is_n_times_one_job(rig: Rig) -> None:
    assert not (await rig.say(SWEEP)).failed
    jobs = await rig.bot.store.list_jobs()
    async with rig.bot.store.unit() as uow:
        ledger = await uow.ledger.list(kind="estimate")
    assert len(ledger) == 6 and sum((e.usd for e in ledger), Decimal(0)) == 6 * (
        jobs[0].estimate or 0
    )
