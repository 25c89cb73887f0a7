"""Cluster setup tasks on Azure, against the fake ARM's nodes (which run the setup extension's
script as a subprocess) and the fake Files server: the task runs as root after the mounts, its
logs land on the share at `<prefix>/<sub>/<rg>/workspaces/<ws>/clusters/<name>/<uuid>/`, a
failure makes the node unusable with the reason (the cluster is still made) and no job starts
there; the task's secrets travel only in the extension's protected settings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.backends.azure.backend import AzureBackend
from services.backends.azure.files import AzureShare
from services.clusters.service import ClusterRequest, ClusterService
from services.core.errors import Conflict
from services.jobs.sources import ConfigLoader
from services.models import Actor, ConfigSource
from services.store import SqlStore
from tests.azure.rig import JOB_SHARE, AzureRig
from tests.contract import job_spec, launch_request

CPU = "Standard_DS3_v2"
OUT = "$AZ_BATCHAI_MOUNT_ROOT/afs/setup-logs"
SECRET_VALUE = "azure-task s3cret'41f $HOME `id`"  # quoting: taken as it is
ADMIN = Actor(user="U0LEAD", is_admin=True)


class _Clock:
    def now(self) -> datetime:
        return datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
async def service(
    rig: AzureRig, store: SqlStore, share: AzureShare, tmp_path: Path
) -> AsyncIterator[tuple[ClusterService, AzureBackend]]:
    backend = rig.backend(share)
    yield (
        ClusterService(
            store=store,
            backend=backend,
            clock=_Clock(),
            configs=ConfigLoader(tmp_path),
            resource_group="rg",
            workspace="ws",
            storage_account=rig.config.storage_account,
            subscription=rig.config.subscription_id,
            share=share,
        ),
        backend,
    )
    await backend.aclose()


def cluster_file(command: str) -> str:
    account = "https://devacct.file.core.windows.net"
    return json.dumps(
        {
            "properties": {
                "vmSize": CPU,
                "scaleSettings": {"manual": {"targetNodeCount": 1}},
                "nodeSetup": {
                    "setupTask": {
                        "commandLine": command,
                        "stdOutErrPathPrefix": OUT,
                        "environmentVariables": [{"name": "GREETING", "value": "hi there"}],
                        "secrets": [{"name": "TASK_TOKEN", "value": SECRET_VALUE}],
                    },
                    "mountVolumes": {
                        "azureFileShares": [
                            {"azureFileUrl": f"{account}/{JOB_SHARE}", "relativeMountPath": "afs"}
                        ]
                    },
                },
            }
        }
    )


async def test_a_setup_task_runs_after_the_mounts_with_its_logs_on_the_share(
    rig: AzureRig, service: tuple[ClusterService, AzureBackend]
) -> None:
    clusters, backend = service
    command = 'env | sort; ls "$AZ_BATCHAI_MOUNT_ROOT/afs" > /dev/null && echo mounted'
    request = ClusterRequest(name="env", config=ConfigSource("inline", cluster_file(command)))
    made = await clusters.create_cluster(request, actor=ADMIN)
    suffix = made.setup_task_suffix
    assert suffix is not None
    assert suffix.startswith(f"{rig.config.subscription_id}/rg/workspaces/ws/clusters/env/")
    (node,) = await backend.list_nodes(made)
    assert node.state == "idle", node.detail

    host = rig.arm.scale_sets["env"].instances["0"].computer_name
    listing = await clusters.list_setup_files("env")
    names = {e.name for e in listing.entries}
    assert names == {f"stdout-{host}.txt", f"stderr-{host}.txt"}
    assert all(listing.links[n].url.startswith(rig.config.storage_endpoint) for n in names)
    logs = rig.files.share_dir(JOB_SHARE) / "setup-logs" / suffix
    out = (logs / f"stdout-{host}.txt").read_text()
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["GREETING"] == "hi there" and env["TASK_TOKEN"] == SECRET_VALUE
    assert env["AZ_BATCHAI_MOUNT_ROOT"] == rig.config.mount_root
    assert env["AZ_BATCHAI_STDOUTERR_DIR"] == f"{rig.config.mount_root}/afs/setup-logs/{suffix}"
    assert "BATCHAI_NODE_ROOT" not in env and "FAKE_NODE_DIR" not in env  # a clean environment
    assert "mounted" in out.splitlines()
    assert rig.config.storage_key not in out

    inst = rig.arm.scale_sets["env"].instances["0"]
    env_file = inst.dir / "etc" / "batchai" / "setup-task.env"
    assert env_file.stat().st_mode & 0o077 == 0  # the secrets' file on the node: root only
    assert (inst.dir / "etc" / "batchai").stat().st_mode & 0o077 == 0

    # The secret is in the extension's protected settings only: not in what ARM shows.
    shown = json.dumps(rig.arm.scale_sets["env"].view())
    assert SECRET_VALUE not in shown and "TASK_TOKEN" not in shown


async def test_a_failing_setup_task_makes_the_node_unusable_and_no_job_starts(
    rig: AzureRig, service: tuple[ClusterService, AzureBackend]
) -> None:
    clusters, backend = service
    request = ClusterRequest(
        name="broken",
        vm_size=CPU,
        target_nodes=1,
        afs_name=JOB_SHARE,
        setup_task="echo trying; exit 3",
        setup_task_output=OUT,
    )
    made = await clusters.create_cluster(request, actor=ADMIN)  # made: its node is unusable
    host = rig.arm.scale_sets["broken"].instances["0"].computer_name
    reason = f"setup task failed (exit 3), see stdout-{host}.txt"
    (node,) = await backend.list_nodes(made)
    assert node.state == "unusable" and node.detail == reason
    (problem,) = await backend.failed_nodes()
    assert (problem.cluster, problem.reason) == ("broken", reason)
    view = await clusters.get_cluster("broken")
    assert [p.reason for p in view.cluster.unusable] == [reason]
    assert view.counts.unusable == 1 and view.counts.idle == 0
    assert (await backend.unusable_nodes(made))[0] == reason
    with pytest.raises(Conflict, match="cannot start on"):
        await backend.start_job(launch_request(job_spec("ok"), made))
    inst = rig.arm.scale_sets["broken"].instances["0"]
    assert inst.run_commands == {}  # nothing was sent to the node
    listing = await clusters.list_setup_files("broken")
    stdout = next(e for e in listing.entries if e.name == f"stdout-{host}.txt")
    assert stdout.size == len("trying\n")
