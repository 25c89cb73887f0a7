"""Blob containers, file servers and auto-storage on the azure backend, with the real SDK clients
against the fake ARM (TLS) and Files/Blob servers: what the nodes run, what ARM is asked to make,
and that no key reaches a scale-set model, cloud-init or a command line."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.bootstrap import Bot
from bot.console import ConsoleTransport
from bot.lifecycle import running
from services.backends.azure.backend import AzureBackend
from services.core.clock import FakeClock
from services.core.errors import UserError
from services.jobspec import load_job_spec
from services.models import FileServer, ShareMount
from tests.azure.rig import AzureRig, bot_azure_settings
from tests.contract import SHARE, cluster, job_json, launch_request, wait_for
from tests.test_outputs import say
from tests.test_schedules import settings

OTHER_KEY = base64.b64encode(b"the other account's key, 64 bytes of it for the fake...").decode()


def custom_data(rig: AzureRig, name: str) -> str:
    profile = rig.arm.scale_sets[name].view()["properties"]["virtualMachineProfile"]
    return base64.b64decode(profile["osProfile"]["customData"]).decode()


async def test_a_container_is_mounted_by_blobfuse2_with_the_key_in_a_root_only_file(
    rig: AzureRig, backend: AzureBackend
) -> None:
    mounts = (
        ShareMount(SHARE, "afs"),
        ShareMount("blobs", "bfs", "bfs"),
        ShareMount("theirs", "other", "bfs", "otheracct", OTHER_KEY),
        ShareMount("fs1", "nfs", "nfs"),
    )
    await backend.create_cluster(cluster("mnt", nodes=1, mounts=mounts))
    custom = custom_data(rig, "mnt")
    root = rig.config.mount_root
    entries = json.loads(custom.split("\n", 1)[1])["mounts"]
    blob_entries = [e for e in entries if e[0] == "blobfuse2"]
    assert [e[1] for e in blob_entries] == [f"{root}/bfs", f"{root}/other"]
    assert all("--config-file=/etc/batchai/blobfuse2/" in e[3] for e in blob_entries)
    assert ["batchai-fs-fs1:/mnt/data", f"{root}/nfs", "nfs"] == next(
        e[:3] for e in entries if e[2] == "nfs"
    )
    view = json.dumps(rig.arm.scale_sets["mnt"].view())
    for secret in (rig.config.storage_key, OTHER_KEY):
        assert secret not in custom and secret not in view
    (inst,) = rig.arm.scale_sets["mnt"].instances.values()
    own = inst.dir / "etc" / "batchai" / "blobfuse2" / f"{rig.config.storage_account}-blobs.yaml"
    theirs = inst.dir / "etc" / "batchai" / "blobfuse2" / "otheracct-theirs.yaml"
    assert f'account-key: "{rig.config.storage_key}"' in own.read_text()
    assert f'account-key: "{OTHER_KEY}"' in theirs.read_text()
    assert own.stat().st_mode & 0o777 == 0o600 and theirs.stat().st_mode & 0o777 == 0o600
    log = (inst.dir / "run" / "fake-mounts.log").read_text()
    assert f"blobfuse2 mount {root}/bfs --config-file=" in log
    assert f"-t nfs batchai-fs-fs1:/mnt/data {root}/nfs" in log
    assert rig.config.storage_key not in log and OTHER_KEY not in log  # never in an argv


async def test_another_account_without_its_key_is_refused_before_anything_is_made(
    rig: AzureRig, backend: AzureBackend
) -> None:
    mounts = (ShareMount("theirs", "other", "bfs", "otheracct"),)
    with pytest.raises(UserError, match="needs its key"):
        await backend.create_cluster(cluster("nokey", nodes=1, mounts=mounts))
    assert "nokey" not in rig.arm.scale_sets


async def test_a_file_server_is_a_vm_with_raid0_data_disks_deleted_with_it(
    rig: AzureRig, backend: AzureBackend
) -> None:
    server = FileServer(
        name="fs1",
        resource_group="rg",
        workspace="ws",
        vm_size="Standard_D4s_v5",
        disk_count=3,
        disk_size_gb=128,
        storage_sku="Premium_LRS",
        admin_user="demo",
        state="creating",
    )
    address = await backend.create_file_server(server)
    vm = rig.arm.machines.vms["batchai-fs-fs1"]
    assert vm.state == "Succeeded" and address.startswith("10.0.")
    disks = [d for d in rig.arm.machines.disks.values() if d["lun"] is not None]
    assert sorted(d["lun"] for d in disks) == [0, 1, 2]
    assert {(d["diskSizeGB"], d["sku"]) for d in disks} == {(128, "Premium_LRS")}
    props = vm.model["properties"]
    nic = props["networkProfile"]["networkInterfaces"][0]["id"].rsplit("/", 1)[-1]
    subnet = rig.arm.machines.nics[nic]["properties"]["ipConfigurations"][0]["properties"]
    assert subnet["subnet"]["id"] == rig.config.subnet_id
    cloud = base64.b64decode(props["osProfile"]["customData"]).decode()
    assert "--level=0 --raid-devices=3" in cloud
    assert "/mnt/data 10.0.0.0/16(rw," in cloud and "*(rw" not in cloud  # the subnet only
    assert "nfs-kernel-server" in cloud

    await backend.delete_file_server(server)
    assert rig.arm.machines.vms == {} and rig.arm.machines.disks == {}
    assert rig.arm.machines.nics == {}
    await backend.delete_file_server(server)  # deleting what is gone succeeds


async def test_auto_storage_creates_the_share_and_container_when_missing(
    rig: AzureRig, backend: AzureBackend
) -> None:
    assert not rig.files.share_dir("batchaishare").exists()
    await backend.ensure_auto_storage("batchaishare", "batchaicontainer")
    assert rig.files.share_dir("batchaishare").is_dir()
    assert rig.files.containers == {"batchaicontainer"}
    await backend.ensure_auto_storage("batchaishare", "batchaicontainer")  # there: nothing to do
    assert rig.files.containers == {"batchaicontainer"}


async def test_a_job_s_container_and_file_server_are_mounted_on_its_node(
    rig: AzureRig, backend: AzureBackend
) -> None:
    c = cluster("jm", nodes=1)
    await backend.create_cluster(c)
    raw = job_json("ok", node_count=1)
    raw["properties"]["mountVolumes"] = {
        "azureBlobFileSystems": [
            {
                "accountName": rig.config.storage_account,
                "containerName": "jobblobs",
                "relativeMountPath": "jb",
            }
        ],
        "fileServers": [{"fileServer": {"id": "/x/fileServers/fs1"}, "relativeMountPath": "jn"}],
    }
    request = launch_request(load_job_spec(json.dumps(raw)), c)
    result = await backend.start_job(request)
    assert not any("jb" in note or "jn" in note for note in result.notes)
    await wait_for(backend, request.job_id)
    (inst,) = rig.arm.scale_sets["jm"].instances.values()
    log = (inst.dir / "run" / "fake-mounts.log").read_text()
    assert "blobfuse2 mount" in log and "batchai-fs-fs1:/mnt/data" in log
    assert rig.config.storage_key not in log
    config = (
        inst.dir / "etc" / "batchai" / "blobfuse2" / f"{rig.config.storage_account}-jobblobs.yaml"
    )
    assert f'account-key: "{rig.config.storage_key}"' in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600


async def test_file_server_commands_through_the_bot_on_azure(rig: AzureRig, tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    transport = ConsoleTransport(tmp_path / "files", out=io.StringIO())
    config = settings(tmp_path, **bot_azure_settings(rig))
    async with running(
        config, transport=transport, clock=clock, periodic=False, credential=rig.credential
    ) as bot:
        doc = json.loads(
            await ok(
                bot,
                "file-server create -n fs2 -s Standard_D4s_v5 --disk-count 2 --disk-size 10 "
                "-u demo -o json",
            )
        )
        assert doc["mountSettings"]["fileServerInternalIP"].startswith("10.0.")
        assert doc["mountSettings"]["mountPoint"] == "/mnt/data"
        assert "batchai-fs-fs2" in rig.arm.machines.vms
        await ok(bot, "cluster create -n withnfs -s Standard_NC4as_T4_v3 -t 1 --nfs fs2")
        refused = await say(bot, "file-server delete -n fs2 -y", source="console")
        assert refused.failed and "mounted by cluster withnfs" in refused.message.text
        await ok(bot, "cluster delete -n withnfs -y")
        await ok(bot, "file-server delete -n fs2 -y")
        assert rig.arm.machines.vms == {}
        await ok(bot, "cluster create -n auto -s Standard_NC4as_T4_v3 -t 1 --use-auto-storage")
        assert rig.files.share_dir("batchaishare").is_dir()
        assert rig.files.containers == {"batchaicontainer"}


async def ok(bot: Bot, text: str) -> str:
    reply = await say(bot, text, source="console")
    assert not reply.failed, reply.message.text
    return reply.message.text
