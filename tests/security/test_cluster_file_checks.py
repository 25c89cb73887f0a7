"""A cluster.json gets the checks its flags get (one validation for both): share names, mount
paths, the bot's control share and setup tasks. Real ClusterService and store, the azure backend
against the fake ARM and Files servers; a refusal leaves no row and no scale set."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.backends.azure.backend import AzureBackend
from services.clusters.service import ClusterRequest, ClusterService
from services.core.errors import NotAllowed, UserError
from services.jobs.sources import ConfigLoader
from services.models import Actor, ConfigSource
from services.store import SqlStore
from tests.azure.rig import BOT_SHARE, AzureRig, azure_rig

ACCOUNT_URL = "https://devacct.file.core.windows.net"  # the rig's account: the bot's own


class _Clock:
    def now(self) -> datetime:
        return datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[AzureRig]:
    async with azure_rig(tmp_path) as r:
        yield r


@pytest.fixture
async def service(
    rig: AzureRig, store: SqlStore, tmp_path: Path
) -> AsyncIterator[tuple[ClusterService, AzureBackend]]:
    files = rig.share()
    backend = rig.backend(files)
    yield (
        ClusterService(
            store=store,
            backend=backend,
            clock=_Clock(),
            configs=ConfigLoader(tmp_path),
            resource_group="rg",
            workspace="ws",
            storage_account=rig.config.storage_account,
        ),
        backend,
    )
    await backend.aclose()
    await files.aclose()


def cluster_file(*, share: str = "data", path: str = "afs", setup: str | None = None) -> str:
    node_setup: dict[str, Any] = {
        "mountVolumes": {
            "azureFileShares": [
                {"azureFileUrl": f"{ACCOUNT_URL}/{share}", "relativeMountPath": path}
            ]
        }
    }
    if setup is not None:
        node_setup["setupTask"] = {
            "commandLine": setup,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        }
    return json.dumps(
        {
            "properties": {
                "vmSize": "Standard_NC4as_T4_v3",
                "scaleSettings": {"manual": {"targetNodeCount": 1}},
                "nodeSetup": node_setup,
            }
        }
    )


async def refused(
    service: tuple[ClusterService, AzureBackend], rig: AzureRig, request: ClusterRequest
) -> str:
    clusters, _ = service
    with pytest.raises((UserError, NotAllowed)) as err:
        await clusters.create_cluster(request, actor=Actor(user="U1"))
    assert "\n" not in str(err.value)
    assert await clusters.list_clusters() == []
    assert request.name not in rig.arm.scale_sets
    return str(err.value)


def from_file(text: str) -> ClusterRequest:
    return ClusterRequest(name="c1", config=ConfigSource("inline", text))


@pytest.mark.parametrize(
    "path",
    [
        "afs\n//evil.file.core.windows.net/x /etc cifs rw 0 0",  # a second fstab line
        "afs /etc",
        "..",
        "a/../../etc",
        "a/b",
    ],
)
async def test_a_bad_mount_path_in_a_cluster_file_is_refused_like_the_flag(
    service: tuple[ClusterService, AzureBackend], rig: AzureRig, path: str
) -> None:
    flag = ClusterRequest(
        name="c1",
        vm_size="Standard_NC4as_T4_v3",
        target_nodes=1,
        afs_name="data",
        afs_mount_path=path,
    )
    from_flag = await refused(service, rig, flag)
    try:
        from_json = await refused(service, rig, from_file(cluster_file(path=path)))
    except UserError as err:  # the file's own schema refused it first
        from_json = str(err)
    assert "mount path" in from_flag
    assert "mount path" in from_json or "relativeMountPath" in from_json


async def test_the_control_share_is_refused_from_the_flag_and_from_the_file(
    service: tuple[ClusterService, AzureBackend], rig: AzureRig
) -> None:
    flag = ClusterRequest(
        name="c1", vm_size="Standard_NC4as_T4_v3", target_nodes=1, afs_name=BOT_SHARE
    )
    assert "control share" in await refused(service, rig, flag)
    assert "control share" in await refused(service, rig, from_file(cluster_file(share=BOT_SHARE)))


async def test_a_bad_share_name_in_a_cluster_file_is_refused_like_the_flag(
    service: tuple[ClusterService, AzureBackend], rig: AzureRig
) -> None:
    message = await refused(service, rig, from_file(cluster_file(share="Not_A_Share")))
    assert "share" in message


async def test_a_setup_task_from_a_non_admin_is_refused_from_the_file_like_the_flag(
    service: tuple[ClusterService, AzureBackend], rig: AzureRig
) -> None:
    text = cluster_file(setup="cat /etc/smbcredentials/* > $AZ_BATCHAI_MOUNT_ROOT/afs/key")
    from_json = await refused(service, rig, from_file(text))
    flag = ClusterRequest(
        name="c1",
        vm_size="Standard_NC4as_T4_v3",
        target_nodes=1,
        afs_name="data",
        setup_task="true",
        setup_task_output="$AZ_BATCHAI_MOUNT_ROOT/afs",
    )
    from_flag = await refused(service, rig, flag)
    assert from_json == from_flag
    assert "only an admin" in from_flag and "ADMIN_USERS" in from_flag
    assert "not supported" not in from_flag


async def test_a_good_cluster_file_still_creates_its_mount(
    service: tuple[ClusterService, AzureBackend], rig: AzureRig
) -> None:
    clusters, _ = service
    made = await clusters.create_cluster(from_file(cluster_file()), actor=Actor(user="U1"))
    assert [(m.share, m.mount_path) for m in made.mounts] == [("data", "afs")]
    assert "c1" in rig.arm.scale_sets
