"""GPU use through the whole bot (real Bolt app and outbox, fake Slack, local backend, a fake
nvidia-smi first on PATH, a fake clock): the runner's samples reach the status card and the
receipt; a job idling its GPUs for 15 minutes is warned once, with Keep / Stop that only its
requester or an admin may press, and a restart neither loses nor repeats the warning."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from bot.lifecycle import running
from handlers import views
from services.core.clock import FakeClock
from services.jobs.gpu_idle import STALE
from tests.fakes import gpu
from tests.fakes.slack import FakeSlack, Message
from tests.slack.conftest import CHANNEL, JOB_SCRIPT, SlackRig, job_json, rig_settings

START = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)
ALICE, BOSS, MALLORY = "U0ALICE", "U0BOSS", "U0MALLORY"
A100X4 = "Standard_NC96ads_A100_v4"  # 4 × A100 80 GB, $14.692/h


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as server:
        yield server


@pytest.fixture
def gpu_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    bin_dir = tmp_path / "gpu-bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@asynccontextmanager
async def bot(tmp_path: Path, fake: FakeSlack, clock: FakeClock) -> AsyncIterator[SlackRig]:
    settings = rig_settings(tmp_path, fake, gpu_sample_seconds=0.05, admin_users=frozenset({BOSS}))
    async with running(settings, periodic=False, clock=clock) as b, aiohttp.ClientSession() as h:
        b.share.create_share("data")
        (b.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        yield SlackRig(fake, b, h, settings)


async def running_job(rig: SlackRig, size: str = A100X4) -> None:
    made = await rig.answer(f"cluster create -n gpu -s {size} -t 1 --afs-name data", user=ALICE)
    assert "gpu" in made["text"], made
    answer = await rig.answer(
        f"job create -n train -r gpu -c '{job_json(1, gate='go')}'", user=ALICE
    )
    assert "train" in answer["text"], answer
    await rig.until(lambda: _gpu_seen(rig), "the job running with a GPU reading")


async def _gpu_seen(rig: SlackRig, util: float | None = None) -> bool:
    job = await rig.bot.store.find_job("train")
    if job is None or job.state.value != "running" or await rig.bot.store.pending_events(1):
        return False
    use = job.gpu.use if job.gpu else None
    return use is not None and (util is None or use.util_avg == util)


async def card_text(rig: SlackRig) -> str:
    job = await rig.bot.store.find_job("train")
    assert job is not None
    status, url = await rig.click(views.ACTION_REFRESH, job.id, user=ALICE)
    assert status == 200
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    post = rig.fake.responses_to(url)[-1]
    return Message(CHANNEL, "0", post.text or "", post.blocks).block_text()


def warnings(fake: FakeSlack) -> list[Message]:
    return [m for m in fake.messages_in(CHANNEL) if "idle for 15 min" in m.text]


async def press(rig: SlackRig, action_id: str, message: Message, user: str) -> str:
    first = message.versions[0]["blocks"] if message.versions else message.blocks
    elements = [e for b in first or [] if b["type"] == "actions" for e in b["elements"]]
    value = next(e["value"] for e in elements if e["action_id"] == action_id)
    status, url = await rig.click(action_id, value, user=user, message_ts=message.ts)
    assert status == 200
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    await rig.bot.relay.drain()
    return rig.fake.responses_to(url)[-1].text or ""


async def idle_for(rig: SlackRig, clock: FakeClock, minutes: float) -> None:
    clock.advance(timedelta(minutes=minutes))
    await rig.bot.runner.tick()
    await rig.bot.relay.drain()


async def test_the_sampled_series_reaches_the_card_and_the_receipt_its_average(
    tmp_path: Path, fake: FakeSlack, gpu_bin: Path, clock: FakeClock
) -> None:
    gpu.install(
        gpu_bin, count=4, name="NVIDIA A100 80GB PCIe", memory_mib=16384, series=[(10, 1024)]
    )
    async with bot(tmp_path, fake, clock) as rig:
        await running_job(rig)
        await rig.until(lambda: _gpu_seen(rig, 10.0), "the first samples")
        assert "GPU 10 % · 1/16 GiB" in await card_text(rig)
        gpu.set_state(gpu_bin, series=[[(87, 14540), (87, 14540), (87, 14540), (87, 14540)]])
        await rig.until(lambda: _gpu_seen(rig, 87.0), "the later samples")
        assert "GPU 87 % · 14.2/16 GiB" in await card_text(rig)
        assert gpu.queries(gpu_bin) >= 2
        rig.open_gate("go")
        await rig.until(lambda: _done(rig), "the receipt")
        (receipt,) = [m for m in fake.messages_in(CHANNEL) if "train succeeded" in m.text]
        job = await rig.bot.store.find_job("train")
        assert job is not None and job.gpu is not None and job.gpu.use is not None
        average = job.gpu.use.run_avg
        assert average is not None and 10 < average < 87
        assert f"GPU use avg {average:.0f} %" in receipt.block_text()
        assert warnings(fake) == []  # busy GPUs: no warning


async def _done(rig: SlackRig) -> bool:
    job = await rig.bot.store.find_job("train")
    return job is not None and job.state.finished and not await rig.bot.store.pending_events(1)


async def test_idle_gpus_warn_once_keep_obeys_only_the_owner_and_silences_it(
    tmp_path: Path, fake: FakeSlack, gpu_bin: Path, clock: FakeClock
) -> None:
    gpu.install(gpu_bin, count=4, memory_mib=81920, series=[(1, 500)])
    async with bot(tmp_path, fake, clock) as rig:
        await running_job(rig)
        await idle_for(rig, clock, 14)
        assert warnings(fake) == []
        await idle_for(rig, clock, 1)
        (warning,) = warnings(fake)
        assert warning.text.startswith(":zzz: 4 × A100 idle for 15 min, $14.69/h")
        job = await rig.bot.store.find_job("train")
        assert job is not None and job.conversation is not None
        assert warning.thread_ts == job.conversation.thread  # in the job's thread
        await idle_for(rig, clock, 20)
        assert len(warnings(fake)) == 1  # once

        refused = await press(rig, views.ACTION_GPU_KEEP, warning, MALLORY)
        assert refused == "only <@U0ALICE> or an admin may keep job train"
        assert warning.edits == 0
        kept = await press(rig, views.ACTION_GPU_KEEP, warning, ALICE)
        assert kept == "*train* keeps running; no more idle-GPU warnings for it"
        assert warning.text.startswith(":zzz: 4 × A100 idle for 15 min, $14.69/h")  # as it was
        assert "kept running by <@U0ALICE>" in warning.block_text()
        assert await press(rig, views.ACTION_GPU_STOP, warning, ALICE) == STALE
        await idle_for(rig, clock, 60)
        assert len(warnings(fake)) == 1
        job = await rig.bot.store.find_job("train")
        assert job is not None and job.state.value == "running"
        audit = [e for e in await rig.bot.store.list_audit(target="train") if "gpu" in e.action]
        assert {(e.actor, e.outcome) for e in audit} >= {(MALLORY, "denied"), (ALICE, "allowed")}
        rig.open_gate("go")
        await rig.until(lambda: _done(rig), "the end")


async def test_stop_terminates_and_a_restart_neither_loses_nor_repeats_the_warning(
    tmp_path: Path, fake: FakeSlack, gpu_bin: Path, clock: FakeClock
) -> None:
    gpu.install(gpu_bin, count=4, memory_mib=81920, series=[(0, 0)])
    async with bot(tmp_path, fake, clock) as rig:
        await running_job(rig)
        await idle_for(rig, clock, 1)
        clock.advance(timedelta(minutes=15))
        await rig.bot.runner.tick()  # stored, not yet told: the bot stops here
        assert warnings(fake) == []
    async with bot(tmp_path, fake, clock) as again:
        await again.bot.relay.drain()
        await idle_for(again, clock, 5)
        (warning,) = warnings(fake)
        await idle_for(again, clock, 5)
        assert len(warnings(fake)) == 1
        stopped = await press(again, views.ACTION_GPU_STOP, warning, BOSS)  # an admin may
        assert stopped == "*train* is being stopped"
        await again.until(lambda: _done(again), "the job terminated")
        job = await again.bot.store.find_job("train")
        assert job is not None and job.state.value == "terminated"
        assert "stopped by <@U0BOSS>" in warning.block_text()


async def test_a_warning_still_open_when_its_job_ends_loses_its_buttons(
    tmp_path: Path, fake: FakeSlack, gpu_bin: Path, clock: FakeClock
) -> None:
    gpu.install(gpu_bin, count=4, memory_mib=81920, series=[(0, 0)])
    async with bot(tmp_path, fake, clock) as rig:
        await running_job(rig)
        await idle_for(rig, clock, 16)
        (warning,) = warnings(fake)
        assert "Keep" in json.dumps(warning.blocks)
        rig.open_gate("go")
        await rig.until(lambda: _done(rig), "the end")
        assert warning.text.startswith(":zzz: 4 × A100 idle for 15 min")
        assert "the job ended with it open" in warning.block_text()
        assert "Keep" not in json.dumps(warning.blocks)
        assert await press(rig, views.ACTION_GPU_KEEP, warning, ALICE) == STALE
