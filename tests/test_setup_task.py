"""Cluster setup tasks on the local backend, through the whole bot (real Bolt app, fake Slack):
the task runs once per node slot before its health check, with its own variables and secrets
and nothing of the bot's environment; a task that fails leaves its node unusable with the exit
code and the log to read, and no job is placed there; `cluster file list` hands out its logs;
only an admin may give one, and its secrets are never shown, logged or stored in plain text."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.lifecycle import running
from services.backends.local.backend import LocalBackend
from services.models import ShareMount
from tests.contract import cluster
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import JOB_SCRIPT, USER, SlackRig, job_json, rig_settings
from tests.test_node_health import said

CPU = "Standard_DS3_v2"  # no GPU: the health check looks at the mounts only
OUT = "$AZ_BATCHAI_MOUNT_ROOT/afs/setup"
SECRET_VALUE = "s3cret-Value-0f-the-task"
LEAK = "bot-env-must-not-leak-9d1c"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as server:
        yield server


@pytest.fixture(autouse=True)
def bot_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCHAI_TEST_LEAK", LEAK)  # in the bot's environment, not the task's


@asynccontextmanager
async def bot(tmp_path: Path, fake: FakeSlack, **overrides: Any) -> AsyncIterator[SlackRig]:
    settings = rig_settings(tmp_path, fake, **overrides)
    async with running(settings, periodic=False) as b, aiohttp.ClientSession() as http:
        b.share.create_share("data")
        (b.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        yield SlackRig(fake, b, http, settings)


def cluster_file(command: str) -> str:
    return json.dumps(
        {
            "properties": {
                "vmSize": CPU,
                "scaleSettings": {"manual": {"targetNodeCount": 1}},
                "nodeSetup": {
                    "setupTask": {
                        "commandLine": command,
                        "stdOutErrPathPrefix": OUT,
                        "environmentVariables": [{"name": "GREETING", "value": "hello"}],
                        "secrets": [{"name": "TASK_TOKEN", "value": SECRET_VALUE}],
                    },
                    "mountVolumes": {
                        "azureFileShares": [
                            {
                                "azureFileUrl": "https://local.file.core.windows.net/data",
                                "relativeMountPath": "afs",
                            }
                        ]
                    },
                },
            }
        }
    )


def logs_dir(tmp_path: Path, doc: dict[str, Any]) -> Path:
    task = doc["nodeSetup"]["setupTask"]
    return tmp_path / "data" / "shares" / "data" / "setup" / task["stdOutErrPathSuffix"]


async def test_a_failing_setup_task_leaves_its_node_unusable_and_gets_no_job(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with bot(tmp_path, fake) as rig:
        made = await rig.answer(
            f"cluster create -n boot -s {CPU} -t 1 --afs-name data "
            f'--setup-task "echo preparing; echo oops >&2; exit 3" --setup-task-output {OUT}'
        )
        assert "boot" in made["text"], made["text"]
        reason = "setup task failed (exit 3), see stdout-boot-node-0.txt"
        shown = await rig.answer("cluster show -n boot")
        assert "0 idle" in said(shown) and "1 unusable" in said(shown)
        assert f"node boot-node-0 is unusable: {reason}" in said(shown)
        assert "setup task: `echo preparing; echo oops &gt;&amp;2; exit 3`" in said(shown)
        assert "cluster file list -c boot" in said(shown)
        listed = await rig.answer("cluster node list -n boot")
        assert "unusable" in said(listed) and reason in said(listed)

        answer = await rig.answer(f"job create -n train -r boot -c '{job_json(1)}'")
        assert "train" in answer["text"], answer["text"]
        for _ in range(3):
            await rig.bot.runner.tick()
        job = await rig.bot.store.find_job("train")
        assert job is not None and job.state.value == "queued" and job.nodes == ()

        files = await rig.answer("cluster file list -c boot -o json")
        entries = json.loads(files["text"].strip().strip("`"))
        by_name = {e["name"]: e for e in entries}
        assert set(by_name) == {"stdout-boot-node-0.txt", "stderr-boot-node-0.txt"}
        assert all(e["downloadUrl"] for e in entries)
        async with rig.http.get(by_name["stdout-boot-node-0.txt"]["downloadUrl"]) as got:
            assert got.status == 200 and (await got.text()) == "preparing\n"
        async with rig.http.get(by_name["stderr-boot-node-0.txt"]["downloadUrl"]) as got:
            assert (await got.text()) == "oops\n"


async def test_a_setup_task_gets_its_variables_and_secrets_and_nothing_of_the_bot(
    tmp_path: Path, fake: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with bot(tmp_path, fake) as rig:
        text = cluster_file('env | sort; test -w "$AZ_BATCHAI_STDOUTERR_DIR"')
        made = await rig.answer(f"cluster create -n env -f '{text}' -o json")
        doc = json.loads(made["text"].strip().strip("`"))
        task = doc["nodeSetup"]["setupTask"]
        assert task["commandLine"].startswith("env | sort")
        assert task["stdOutErrPathPrefix"] == OUT
        assert task["stdOutErrPathSuffix"].startswith("local/")
        assert "/workspaces/" in task["stdOutErrPathSuffix"]
        assert "/clusters/env/" in task["stdOutErrPathSuffix"]
        assert task["environmentVariables"] == [{"name": "GREETING", "value": "hello"}]
        assert task["secrets"] == [
            {"name": "TASK_TOKEN", "value": None, "valueSecretReference": None}
        ]
        shown = await rig.answer("cluster show -n env")
        assert "1 idle" in said(shown), said(shown)

        out = (logs_dir(tmp_path, doc) / "stdout-env-node-0.txt").read_text()
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert env["GREETING"] == "hello" and env["TASK_TOKEN"] == SECRET_VALUE
        assert env["AZ_BATCHAI_MOUNT_ROOT"].endswith("/clusters/env/mounts")
        suffix = task["stdOutErrPathSuffix"]
        assert (
            env["AZ_BATCHAI_STDOUTERR_DIR"] == f"{env['AZ_BATCHAI_MOUNT_ROOT']}/afs/setup/{suffix}"
        )
        assert LEAK not in out and "SLACK_BOT_TOKEN" not in out and "LINK_SECRET" not in out

        again = await rig.answer("cluster show -n env -o json")
        assert SECRET_VALUE not in again["text"]
    sent = [c.raw_body for c in fake.calls] + [r.raw_body for r in fake.responses] + fake.acks
    assert sent and not any(SECRET_VALUE.encode() in body for body in sent)
    assert SECRET_VALUE not in caplog.text
    database = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("*.db*"))
    assert database and SECRET_VALUE.encode() not in database  # sealed at rest


async def test_a_setup_task_from_a_non_admin_is_refused_in_one_line_and_makes_nothing(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with bot(tmp_path, fake, admin_users=frozenset({"U0LEAD"})) as rig:
        answer = await rig.answer(
            f"cluster create -n nope -s {CPU} -t 1 --afs-name data "
            f'--setup-task "touch /tmp/x" --setup-task-output {OUT}',
            user=USER,
        )
        text = answer["text"]
        assert "only an admin may give a cluster a setup task" in text
        assert "ADMIN_USERS" in text and "not supported" not in text
        assert "\n" not in text.strip()
        assert await rig.bot.store.list_clusters() == []
        assert not (tmp_path / "data" / "clusters" / "nope").exists()
        file_ = cluster_file("touch /tmp/x")
        answer = await rig.answer(f"cluster create -n nope -f '{file_}'", user=USER)
        assert "only an admin" in answer["text"]
        assert await rig.bot.store.list_clusters() == []
        made = await rig.answer(
            f"cluster create -n lead -s {CPU} -t 1 --afs-name data "
            f'--setup-task "true" --setup-task-output {OUT}',
            user="U0LEAD",
        )
        assert "lead" in made["text"] and "only an admin" not in made["text"]
        assert await rig.bot.store.get_cluster("lead") is not None


async def test_setup_task_output_must_be_on_an_azure_file_share_of_the_cluster(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with bot(tmp_path, fake) as rig:
        answer = await rig.answer(
            f"cluster create -n off -s {CPU} -t 1 --afs-name data "
            '--setup-task "true" --setup-task-output /var/log/mine'
        )
        assert "$AZ_BATCHAI_MOUNT_ROOT/afs" in answer["text"]
        assert "\n" not in answer["text"].strip()
        assert await rig.bot.store.list_clusters() == []
        nothing = await rig.answer("cluster file list -c off")
        assert "not found" in nothing["text"]


async def test_a_slot_is_preparing_while_its_task_runs_and_a_new_slot_runs_it_too(
    tmp_path: Path,
) -> None:
    backend = LocalBackend(tmp_path / "local", containers=False)
    gate = tmp_path / "local" / "shares" / "data" / "go"
    c = replace(
        cluster("grow", nodes=1, mounts=(ShareMount("data", "afs"),)),
        vm_size=CPU,
        setup_task='until [ -e "$AZ_BATCHAI_MOUNT_ROOT/afs/go" ]; do sleep 0.05; done; '
        'echo up; echo ran >> "$AZ_BATCHAI_MOUNT_ROOT/afs/runs"',
        setup_task_output="$AZ_BATCHAI_MOUNT_ROOT/afs/logs",
        setup_task_suffix="local/rg/workspaces/ws/clusters/grow/0a1b",
    )
    creating = asyncio.create_task(backend.create_cluster(c))
    mark = tmp_path / "local" / "clusters" / "grow" / "nodes" / "0" / "setup-running"
    while not (mark.exists() and mark.read_text() != str(os.getpid())):
        await asyncio.sleep(0.02)  # until the task's own process is named: it runs
    (node,) = await backend.list_nodes(c)
    assert (node.state, node.detail) == ("preparing", "its setup task is still running")
    assert 0 in await backend.unusable_nodes(c)  # the dispatcher places nothing there
    assert await backend.failed_nodes() == []  # preparing is not a failure
    gate.parent.mkdir(parents=True, exist_ok=True)
    gate.touch()
    await creating
    assert [n.state for n in await backend.list_nodes(c)] == ["idle"]
    assert not mark.exists()

    await backend.resize_cluster(c, 2)  # the new slot runs the task; the old one does not again
    logs = tmp_path / "local" / "shares" / "data" / "logs" / c.setup_task_suffix
    assert sorted(p.name for p in logs.iterdir()) == [
        "stderr-grow-node-0.txt",
        "stderr-grow-node-1.txt",
        "stdout-grow-node-0.txt",
        "stdout-grow-node-1.txt",
    ]
    assert (logs / "stdout-grow-node-1.txt").read_text() == "up\n"
    assert [n.state for n in await backend.list_nodes(c)] == ["idle", "idle"]
    assert (gate.parent / "runs").read_text() == "ran\nran\n"  # once per slot
