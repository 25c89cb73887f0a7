"""Blob containers, auto-storage and NFS file servers through the real command path on the local
backend: flags and files, cluster and job level, and a job that writes into the mount sees it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jmespath
import pytest

from bot.bootstrap import Bot
from services.core.clock import FakeClock
from services.jobs.lifecycle import JobState
from tests.test_outputs import say
from tests.test_rest import keys
from tests.test_schedules import started

SIZE = "Standard_NC4as_T4_v3"
SECRET_KEY = "c2VjcmV0LWtleS1vZi1hbm90aGVyLWFjY291bnQ="


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[Bot]:
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    async with started(tmp_path, clock, first=True) as rig:
        yield rig.bot


async def ok(bot: Bot, text: str) -> str:
    reply = await say(bot, text, source="console")
    assert not reply.failed, reply.message.text
    return reply.message.text


async def as_json(bot: Bot, text: str) -> Any:
    return json.loads(await ok(bot, f"{text} -o json"))


def data(bot: Bot) -> Path:
    return bot.settings.batchai_data_dir.resolve()


def job_config(command: str) -> str:
    return json.dumps(
        {"properties": {"nodeCount": 1, "customToolkitSettings": {"commandLine": command}}},
        separators=(",", ":"),
    )


async def run_to_end(bot: Bot, name: str) -> None:
    """Drive the runner (no scheduler here) until the job's real subprocess has ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        await bot.runner.tick()
        job = await bot.store.find_job(name)
        assert job is not None
        if job.state.finished:
            assert job.state is JobState.SUCCEEDED, job.error
            return
        assert loop.time() < deadline, f"job {name} did not end: {job.state}"
        await asyncio.sleep(0.05)  # the job is a real process: give it the CPU


async def make_server(bot: Bot, name: str = "fs1") -> Any:
    return await as_json(
        bot,
        f"file-server create -n {name} -s Standard_D4s_v5 --disk-count 2 --disk-size 10 -u demo",
    )


async def test_cluster_flags_mount_container_file_server_and_auto_storage(bot: Bot) -> None:
    server = await make_server(bot)
    assert set(server) == keys("FileServer") | {"resourceGroup"}
    assert (server["dataDisks"]["diskCount"], server["provisioningState"]) == (2, "succeeded")
    doc = await as_json(
        bot,
        f"cluster create -n m1 -s {SIZE} -t 1 --bfs-name blobs --bfs-mount-path bfs "
        "--nfs fs1 --nfs-mount-path nfs --use-auto-storage",
    )
    volumes = doc["nodeSetup"]["mountVolumes"]
    assert jmespath.search(
        "azureBlobFileSystems[].[containerName, relativeMountPath]", volumes
    ) == [
        ["blobs", "bfs"],
        ["batchaicontainer", "autobfs"],
    ]
    assert jmespath.search("azureFileShares[].relativeMountPath", volumes) == ["autoafs"]
    assert volumes["fileServers"][0]["relativeMountPath"] == "nfs"
    assert volumes["fileServers"][0]["fileServer"]["id"].endswith("/fileServers/fs1")
    root = data(bot)
    assert (root / "shares" / "batchaishare").is_dir()  # auto-storage made what was missing
    assert (root / "shares" / "batchaicontainer").is_dir()

    await ok(
        bot,
        "job create -n w1 -r m1 -c "
        + job_config(
            "echo blob > $AZ_BATCHAI_MOUNT_ROOT/bfs/b.txt && "
            "echo nfs > $AZ_BATCHAI_MOUNT_ROOT/nfs/n.txt && "
            "echo auto > $AZ_BATCHAI_MOUNT_ROOT/autoafs/a.txt"
        ),
    )
    await run_to_end(bot, "w1")
    assert (root / "shares" / "blobs" / "b.txt").read_text() == "blob\n"
    assert (root / "file-servers" / "fs1" / "data" / "n.txt").read_text() == "nfs\n"
    assert (root / "shares" / "batchaishare" / "a.txt").read_text() == "auto\n"


async def test_a_cluster_json_mounts_blob_containers_and_file_servers(bot: Bot) -> None:
    await make_server(bot, "shared")
    cluster = {
        "properties": {
            "vmSize": SIZE,
            "scaleSettings": {"manual": {"targetNodeCount": 1}},
            "nodeSetup": {
                "mountVolumes": {
                    "azureBlobFileSystems": [
                        {
                            "accountName": "<AZURE_BATCHAI_STORAGE_ACCOUNT>",
                            "containerName": "filecontainer",
                            "relativeMountPath": "bfs",
                            "credentials": {"accountKey": "<AZURE_BATCHAI_STORAGE_KEY>"},
                        }
                    ],
                    "fileServers": [
                        {
                            "fileServer": {
                                "id": "/subscriptions/x/resourceGroups/rg/providers/"
                                "Microsoft.BatchAI/workspaces/ws/fileServers/shared"
                            },
                            "relativeMountPath": "nfs",
                        }
                    ],
                }
            },
        }
    }
    doc = await as_json(bot, f"cluster create -n m2 -c {json.dumps(cluster)}")
    volumes = doc["nodeSetup"]["mountVolumes"]
    assert set(volumes["azureBlobFileSystems"][0]) == keys("AzureBlobFileSystemReference")
    assert volumes["azureBlobFileSystems"][0]["containerName"] == "filecontainer"
    assert set(volumes["fileServers"][0]) == keys("FileServerReference")
    mounts = data(bot) / "clusters" / "m2" / "mounts"
    assert (mounts / "bfs").resolve() == data(bot) / "shares" / "filecontainer"
    assert (mounts / "nfs").resolve() == data(bot) / "file-servers" / "shared" / "data"


async def test_job_level_flags_are_written_into_mount_volumes_and_mounted(bot: Bot) -> None:
    await make_server(bot)
    command = (
        "echo j > $AZ_BATCHAI_JOB_MOUNT_ROOT/jb/j.txt && "
        "echo s > $AZ_BATCHAI_JOB_MOUNT_ROOT/js/s.txt && "
        "echo n > $AZ_BATCHAI_JOB_MOUNT_ROOT/jn/n.txt && "
        "echo a > $AZ_BATCHAI_JOB_MOUNT_ROOT/autobfs/a.txt"
    )
    job = await as_json(
        bot,
        f"job create -n j1 -r c1 -c {job_config(command)} --bfs-name jobblobs --bfs-mount-path jb "
        "--afs-name jobshare --afs-mount-path js --nfs fs1 --nfs-mount-path jn --use-auto-storage",
    )
    volumes = job["mountVolumes"]
    assert jmespath.search("azureBlobFileSystems[].containerName", volumes) == [
        "jobblobs",
        "batchaicontainer",
    ]
    assert jmespath.search("azureFileShares[].relativeMountPath", volumes) == ["js", "autoafs"]
    assert jmespath.search("fileServers[].relativeMountPath", volumes) == ["jn"]
    await run_to_end(bot, "j1")
    root = data(bot)
    assert (root / "shares" / "jobblobs" / "j.txt").read_text() == "j\n"
    assert (root / "shares" / "jobshare" / "s.txt").read_text() == "s\n"
    assert (root / "file-servers" / "fs1" / "data" / "n.txt").read_text() == "n\n"
    assert (root / "shares" / "batchaicontainer" / "a.txt").read_text() == "a\n"


async def test_a_job_json_blob_container_is_mounted_at_the_job_mount_root(bot: Bot) -> None:
    spec = {
        "properties": {
            "nodeCount": 1,
            "mountVolumes": {
                "azureBlobFileSystems": [
                    {
                        "accountName": "<AZURE_BATCHAI_STORAGE_ACCOUNT>",
                        "containerName": "fromfile",
                        "relativeMountPath": "blobs",
                    }
                ]
            },
            "customToolkitSettings": {
                "commandLine": "echo f > $AZ_BATCHAI_JOB_MOUNT_ROOT/blobs/f.txt"
            },
        }
    }
    await ok(bot, f"job create -n j2 -r c1 -c {json.dumps(spec, separators=(',', ':'))}")
    await run_to_end(bot, "j2")
    assert (data(bot) / "shares" / "fromfile" / "f.txt").read_text() == "f\n"


async def test_another_account_s_key_is_sealed_never_echoed_and_shown_null(bot: Bot) -> None:
    reply = await say(
        bot,
        f"cluster create -n m3 -s {SIZE} -t 1 --bfs-name theirs --storage-account-name other "
        f"--storage-account-key {SECRET_KEY}",
    )
    assert not reply.failed, reply.message.text
    assert not reply.public  # the typed command held a key: the channel does not see it
    assert SECRET_KEY not in json.dumps(reply.message.blocks)
    doc = await as_json(bot, "cluster show -n m3")
    blob = doc["nodeSetup"]["mountVolumes"]["azureBlobFileSystems"][0]
    assert (blob["accountName"], blob["credentials"]["accountKey"]) == ("other", None)
    cluster = await bot.store.get_cluster("m3")
    assert cluster is not None and cluster.mounts[0].account_key == SECRET_KEY  # opened on read
    for db in data(bot).glob("*.db*"):
        assert SECRET_KEY.encode() not in db.read_bytes()


async def test_an_inline_cluster_or_file_server_file_is_never_echoed_to_the_channel(
    bot: Bot,
) -> None:
    blob = {
        "accountName": "other",
        "containerName": "theirs",
        "relativeMountPath": "bfs",
        "credentials": {"accountKey": SECRET_KEY},
    }
    cluster = {
        "properties": {
            "vmSize": SIZE,
            "scaleSettings": {"manual": {"targetNodeCount": 1}},
            "nodeSetup": {"mountVolumes": {"azureBlobFileSystems": [blob]}},
        }
    }
    for output in ("", " -o json"):
        name = f"m6{len(output)}"
        reply = await say(bot, f"cluster create -n {name} -c '{json.dumps(cluster)}'{output}")
        assert not reply.failed, reply.message.text
        assert not reply.public  # the typed file held a key: the channel does not see it
    server = {
        "properties": {
            "vmSize": "Standard_D4s_v5",
            "dataDisks": {"diskSizeInGB": 10, "diskCount": 2, "storageAccountType": "Premium_LRS"},
            "sshConfiguration": {
                "userAccountSettings": {"adminUserName": "demo", "adminUserPassword": "Secr3t-Pa55"}
            },
        }
    }
    reply = await say(bot, f"file-server create -n fs6 -c '{json.dumps(server)}'")
    assert not reply.failed, reply.message.text
    assert not reply.public
    made = await say(bot, f"cluster create -n m7 -s {SIZE} -t 1")
    assert made.public  # nothing typed that is secret: the channel sees it


async def test_deleting_a_file_server_a_cluster_mounts_is_refused_with_the_reason(
    bot: Bot,
) -> None:
    await make_server(bot)
    await ok(bot, f"cluster create -n m4 -s {SIZE} -t 1 --nfs fs1")
    refused = await say(bot, "file-server delete -n fs1 -y", source="console")
    assert refused.failed and "mounted by cluster m4" in refused.message.text
    assert [s["name"] for s in await as_json(bot, "file-server list")] == ["fs1"]
    await ok(bot, "cluster delete -n m4 -y")
    await ok(bot, "file-server delete -n fs1 -y")
    assert await as_json(bot, "file-server list") == []
    assert not (data(bot) / "file-servers" / "fs1").exists()
    assert "does not exist" in await ok(bot, "file-server delete -n fs1 -y")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (f"cluster create -n m5 -s {SIZE} -t 1 --nfs nosuch", "file server nosuch not found"),
        (
            f"cluster create -n m5 -s {SIZE} -t 1 --subnet /subscriptions/s/x",
            "--subnet: the local backend runs every node on this machine",
        ),
        (
            f"cluster create -n m5 -s {SIZE} -t 1 --bfs-name b --storage-account-key k",
            "--storage-account-key needs --storage-account-name",
        ),
        (
            f"cluster create -n m5 -s {SIZE} -t 1 --bfs-name data --afs-name other "
            "--afs-mount-path bfs",
            "two file systems are mounted at 'bfs'",
        ),
        ("file-server create -n f2 -s Standard_D4s_v5 --disk-count 2", "--disk-size"),
    ],
)
async def test_what_cannot_be_mounted_is_one_line_and_nothing_is_made(
    bot: Bot, line: str, reason: str
) -> None:
    reply = await say(bot, line, source="console")
    assert reply.failed and reason in reply.message.text, reply.message.text
    assert "not supported by this bot yet" not in reply.message.text
    assert await bot.store.get_cluster("m5") is None


@pytest.mark.parametrize(
    ("server_id", "reason"),
    [
        ("x.evil.example", "does not name a file server"),
        ("/subscriptions/s/resourceGroups/rg/fileServers/a;b", "does not name a file server"),
        ("/subscriptions/s/resourceGroups/rg/fileServers/nope", "file server nope not found"),
    ],
)
async def test_a_job_json_mounts_only_a_ready_file_server_of_the_bots(
    bot: Bot, server_id: str, reason: str
) -> None:
    await ok(bot, f"cluster create -n j5 -s {SIZE} -t 1")
    spec = {
        "properties": {
            "nodeCount": 1,
            "customToolkitSettings": {"commandLine": "true"},
            "mountVolumes": {
                "fileServers": [{"fileServer": {"id": server_id}, "relativeMountPath": "d"}]
            },
        }
    }
    reply = await say(bot, f"job create -n j5job -r j5 -c '{json.dumps(spec)}'", source="console")
    assert reply.failed and reason in reply.message.text, reply.message.text
    assert await bot.store.find_job("j5job") is None
