"""Node health before jobs on the local backend, through the whole bot (real Bolt app, fake Slack):
a slot of a GPU size is checked against the `nvidia-smi` on PATH (a fake one here); a slot that
fails is unusable with the reason in `cluster show` and `cluster node list`, is told once in the
cluster's channel (not again after a restart) and never gets a job."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.lifecycle import running
from services.backends.noderun import health
from tests.fakes import gpu
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import CHANNEL, JOB_SCRIPT, SlackRig, job_json, rig_settings

T4 = "Standard_NC4as_T4_v3"  # 1 GPU
CREATE = f"cluster create -n gpu -s {T4} -t 1 --afs-name data --afs-mount-path afs"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as server:
        yield server


@pytest.fixture
def gpu_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory first on the bot's PATH (so on its nodes'): a test installs its driver."""
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    bin_dir = tmp_path / "gpu-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


@asynccontextmanager
async def bot(tmp_path: Path, fake: FakeSlack, **overrides: Any) -> AsyncIterator[SlackRig]:
    settings = rig_settings(tmp_path, fake, **overrides)
    async with running(settings, periodic=False) as b, aiohttp.ClientSession() as http:
        b.share.create_share("data")
        (b.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        rig = SlackRig(fake, b, http, settings)
        try:
            yield rig
        finally:
            for job in await b.store.list_jobs(include_deleted=True):
                if not job.state.finished and job.layout is not None:
                    await b.backend.terminate_job(job.id)


def said(answer: dict[str, Any]) -> str:
    """Every text of an answer's blocks."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("text"), str):
                found.append(value["text"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(answer["blocks"])
    return "\n".join([answer["text"], *found])


def told(fake: FakeSlack) -> list[str]:
    return [m.text for m in fake.messages_in(CHANNEL) if "is unusable" in m.text]


async def submit_and_tick(rig: SlackRig, name: str = "train") -> str:
    answer = await rig.answer(f"job create -n {name} -r gpu -c '{job_json(1)}'")
    assert name in answer["text"], answer["text"]
    for _ in range(3):
        await rig.bot.runner.tick()
    job = await rig.bot.store.find_job(name)
    assert job is not None
    return job.state.value


async def test_a_healthy_gpu_node_is_idle_and_runs_the_job(
    tmp_path: Path, fake: FakeSlack, gpu_bin: Path
) -> None:
    gpu.install(gpu_bin, count=1, name="Tesla T4", memory_mib=15360)
    async with bot(tmp_path, fake) as rig:
        await rig.answer(CREATE)
        nodes = await rig.answer("cluster node list -n gpu")
        assert "idle" in said(nodes) and "unusable" not in said(nodes)
        assert await submit_and_tick(rig) != "queued"  # placed on the healthy node
        await rig.until(lambda: _finished(rig, "train"), "the job")
        job = await rig.bot.store.find_job("train")
        assert job is not None and job.state.value == "succeeded"
        await rig.bot.node_health.check()
        await rig.bot.relay.drain()
        assert told(fake) == []
    slot = tmp_path / "data" / "clusters" / "gpu" / "nodes" / "0"
    result = health.parse((slot / health.HEALTH_FILE).read_text())
    assert result == health.Health(True, "", 1)


async def _finished(rig: SlackRig, name: str) -> bool:
    job = await rig.bot.store.find_job(name)
    return job is not None and job.state.finished


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (
            {"mode": "failed"},
            "the NVIDIA driver does not answer: NVIDIA-SMI has failed because it couldn't "
            "communicate with the NVIDIA driver.",
        ),
        ({"count": 2}, "nvidia-smi lists 2 GPU(s); the size has 1"),
    ],
    ids=["driver-does-not-answer", "wrong-gpu-count"],
)
async def test_a_node_that_fails_is_unusable_told_once_and_never_gets_a_job(
    tmp_path: Path, fake: FakeSlack, gpu_bin: Path, state: dict[str, Any], reason: str
) -> None:
    gpu.install(gpu_bin, count=state.get("count", 1), mode=state.get("mode", "healthy"))
    async with bot(tmp_path, fake) as rig:
        await rig.answer(CREATE)
        shown = await rig.answer("cluster show -n gpu")
        assert "0 idle" in said(shown) and "1 unusable" in said(shown)
        assert f"node gpu-node-0 is unusable: {reason}" in said(shown)
        listed = await rig.answer("cluster node list -n gpu")
        assert "unusable" in said(listed) and reason in said(listed)

        assert await submit_and_tick(rig) == "queued"  # no node may take it
        job = await rig.bot.store.find_job("train")
        assert job is not None and job.nodes == () and job.layout is None
        assert not (tmp_path / "data" / "jobs" / job.id).exists()  # nothing was started

        await rig.bot.node_health.check()
        await rig.bot.relay.drain()
        await rig.bot.node_health.check()
        await rig.bot.relay.drain()
        (notice,) = told(fake)
        assert f"node gpu-node-0 of cluster *gpu* ({T4}) is unusable: {reason}" in notice
    async with bot(tmp_path, fake) as again:  # a restart: known, so not told again
        await again.bot.node_health.check()
        await again.bot.relay.drain()
        assert len(told(fake)) == 1
        assert await submit_and_tick(again, "second") == "queued"


async def test_no_nvidia_smi_fails_a_gpu_size_when_required_and_a_cpu_size_never(
    tmp_path: Path, fake: FakeSlack, gpu_bin: Path
) -> None:
    gpu.install(gpu_bin, mode="missing")
    async with bot(tmp_path, fake, local_gpu_check="require") as rig:
        await rig.answer(CREATE)
        await rig.answer("cluster create -n cpu -s Standard_DS3_v2 -t 1 --afs-name data")
        shown = await rig.answer("cluster show -n gpu")
        assert "no NVIDIA driver: nvidia-smi is not installed" in said(shown)
        cpu = await rig.answer("cluster show -n cpu")
        assert "1 idle" in said(cpu) and "is unusable" not in said(cpu)
    async with bot(tmp_path / "auto", fake) as rig:  # auto: no driver here, GPU sizes on CPU
        await rig.answer(CREATE)
        shown = await rig.answer("cluster show -n gpu")
        assert "1 idle" in said(shown), said(shown)


async def test_cluster_show_names_its_own_failed_nodes_only(
    tmp_path: Path, fake: FakeSlack, gpu_bin: Path
) -> None:
    gpu.install(gpu_bin, count=1, mode="failed")
    async with bot(tmp_path, fake) as rig:
        await rig.answer(CREATE)
        await rig.answer(CREATE.replace("-n gpu", "-n other"))
        everywhere = await rig.bot.backend.failed_nodes()
        assert sorted(p.node for p in everywhere) == ["gpu-node-0", "other-node-0"]
        (own,) = await rig.bot.backend.failed_nodes(cluster="other")
        assert (own.cluster, own.node) == ("other", "other-node-0")
        shown = said(await rig.answer("cluster show -n gpu"))
        assert "node gpu-node-0 is unusable" in shown and "other-node" not in shown
