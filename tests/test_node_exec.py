"""`cluster node exec` / `job node exec --exec CMD` through the real bot (console transport, fake
clock) and the local backend: real subprocesses on the node, the permission of terminating the
job, the audit log, escaped output, and refusals that change nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from handlers.commands import Reply
from tests.fakes import gpu
from tests.test_schedules import ADMIN, ALICE, BOB, Rig
from tests.test_stdouterr import rig

__all__ = ["rig"]  # the fixture, shared with test_stdouterr

TIMEOUT = 60.0
GATE = "go"
# Runs until the gate file appears on the share: a job that holds its node while we look.
HOLD = json.dumps(
    {
        "properties": {
            "nodeCount": 1,
            "customToolkitSettings": {
                "commandLine": f"while [ ! -e $AZ_BATCHAI_MOUNT_ROOT/afs/{GATE} ]; do sleep 0.1; "
                "done"
            },
            "secrets": [{"name": "JOB_TOKEN", "value": "job-secret-5678"}],
        }
    },
    separators=(",", ":"),
)


async def until_running(rig: Rig, name: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        await rig.bot.runner.tick()
        job = await rig.bot.store.find_job(name)
        assert job is not None
        if job.state.value == "running":
            return
        assert not job.state.finished and time.monotonic() < deadline, job.state
        await asyncio.sleep(0.05)  # the node runner is a real process


async def release(rig: Rig, name: str) -> None:
    (rig.bot.share.share_dir("data") / GATE).write_text("go")
    deadline = time.monotonic() + TIMEOUT
    while not (job := await rig.bot.store.find_job(name)) or not job.state.finished:
        assert time.monotonic() < deadline
        await rig.bot.runner.tick()
        await asyncio.sleep(0.05)


@pytest.fixture
async def held(rig: Rig) -> AsyncIterator[Rig]:
    """ALICE's job `hold` runs on c1's only node until the test ends."""
    reply = await rig.say(f"job create -n hold -r c1 -c {HOLD}", user=ALICE)
    assert not reply.failed, reply.message.text
    await until_running(rig, "hold")
    yield rig
    await release(rig, "hold")


def shown(reply: Reply) -> str:
    return json.dumps(reply.message.blocks)


async def audit(rig: Rig) -> str:
    reply = await rig.say("audit -o json", user=ADMIN)
    assert not reply.failed, reply.message.text
    return reply.message.text


async def test_an_admin_runs_a_command_on_a_node_and_sees_its_output_and_exit_code(
    rig: Rig,
) -> None:
    reply = await rig.say(
        'cluster node exec -c c1 -n c1-node-0 --exec "echo out; echo err >&2; pwd; exit 4"',
        user=ADMIN,
    )
    assert not reply.failed, reply.message.text
    blocks = shown(reply)
    assert "exited with code 4" in blocks and "c1-node-0" in blocks
    assert "out\\nerr\\n" in blocks
    assert "/clusters/c1/mounts" in blocks  # runs in the node's $AZ_BATCHAI_MOUNT_ROOT
    assert "ClusterNodeExec" in await audit(rig)


async def test_nvidia_smi_is_what_the_node_has(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = gpu.install(tmp_path / "gpu-bin", count=2)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    reply = await rig.say('cluster node exec -c c1 --exec "nvidia-smi -L" -o json', user=ADMIN)
    assert not reply.failed, reply.message.text
    answer = json.loads(reply.message.text)
    assert answer["nodeId"] == "c1-node-0" and answer["exitCode"] == 0
    assert answer["output"].count("Tesla V100") == 2
    assert (answer["timedOut"], answer["truncated"]) == (False, False)


async def test_the_command_sees_none_of_the_bots_secrets(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-bot-secret-1234")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "azure-secret-1234")
    reply = await rig.say('cluster node exec -c c1 --exec "env" -o json', user=ADMIN)
    env = json.loads(reply.message.text)["output"]
    assert "PATH=" in env and "AZ_BATCHAI_MOUNT_ROOT=" in env
    for secret in ("xoxb-bot-secret-1234", "azure-secret-1234", "link-secret-for-tests"):
        assert secret not in env


async def test_output_is_escaped_and_its_end_kept_when_long(rig: Rig) -> None:
    hostile = await rig.say(
        "cluster node exec -c c1 --exec \"printf '<!channel> <https://evil|click> ``` *x*'\"",
        user=ADMIN,
    )
    blocks = shown(hostile)
    assert "<!channel>" not in blocks and "&lt;!channel&gt;" in blocks
    assert "<https://evil" not in blocks
    long = await rig.say('cluster node exec -c c1 --exec "seq 1 100000"', user=ADMIN)
    text = shown(long)
    assert "100000" in text and "\\n1\\n" not in text
    assert "showing the last" in text and "output truncated" in text  # 64 KB kept of 589 KB


async def test_the_jobs_owner_may_exec_on_its_node_as_on_terminate(held: Rig) -> None:
    rig = held
    reply = await rig.say(
        'job node exec -j hold --exec "echo $AZ_BATCHAI_CLUSTER_NAME"', user=ALICE
    )
    assert not reply.failed, reply.message.text
    assert "c1" in shown(reply) and "exited with code 0" in shown(reply)
    # cluster node exec on a node her job holds: hers too
    mine = await rig.say('cluster node exec -c c1 --exec "true"', user=ALICE)
    assert not mine.failed, mine.message.text
    # the job's secret is the job's, not the command's
    env = await rig.say('job node exec -j hold --exec "env" -o json', user=ALICE)
    assert "job-secret-5678" not in json.loads(env.message.text)["output"]


async def test_refusals_run_nothing_and_are_one_line(held: Rig, tmp_path: Path) -> None:
    rig = held
    marker = tmp_path / "ran"
    touch = f'--exec "touch {marker}"'
    refusals = {
        f"job node exec -j hold {touch}": (BOB, "only <@U0ALICE> or an admin may"),
        f"cluster node exec -c c1 {touch}": (BOB, "only <@U0ALICE> or an admin may"),
        f"job node exec -j hold -n c1-node-9 {touch}": (ALICE, "has no node c1-node-9"),
        f"cluster node exec -c c1 -n nope {touch}": (ADMIN, "has no node nope"),
        f"cluster node exec -c nosuch {touch}": (ADMIN, "cluster nosuch not found"),
        'cluster node exec -c c1 --exec ""': (ADMIN, "--exec needs a value"),
        'cluster node exec -c c1 --exec "   "': (ADMIN, "--exec needs some text"),
        "cluster node exec -c c1": (ADMIN, "missing required flag --exec"),
        f"cluster node exec -c c1 -L 8080:localhost:80 {touch}": (ADMIN, "-L/--address"),
    }
    for text, (user, why) in refusals.items():
        reply = await rig.say(text, user=user)
        assert reply.failed, text
        assert why in reply.message.text, (text, reply.message.text)
        assert "\n" not in reply.message.text
    assert not marker.exists()
    log = await audit(rig)
    assert log.count('"denied"') >= 2  # BOB's two attempts are on record


async def test_an_idle_node_is_for_admins(rig: Rig) -> None:
    refused = await rig.say('cluster node exec -c c1 --exec "true"', user=ALICE)
    assert refused.failed and "only an admin may run a command on c1-node-0" in refused.message.text
    ended = await rig.say('job node exec -j nosuch --exec "true"', user=ALICE)
    assert ended.failed and "nosuch" in ended.message.text
