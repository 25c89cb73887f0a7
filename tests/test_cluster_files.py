"""A cluster.json alone creates the cluster (item 1 of issue 13): every corpus cluster file,
through the real grammar and cluster service on the local backend, flags overriding the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bot.bootstrap import Bot
from handlers.commands import cluster_request
from handlers.commandspec import ClusterCreate, ConfigRef, JobCreate
from handlers.grammar import parse
from services.backends.local import LocalBackend
from services.clusters.service import ClusterService
from services.core.clock import FakeClock
from services.core.errors import UserError
from services.jobs.sources import ConfigLoader
from services.models import Actor, Cluster
from services.store import SqlStore
from tests.test_outputs import bot, say

__all__ = ["bot"]  # the fixture, shared with test_outputs

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "batchai-recipes"
SPOT_SIZE = "Standard_NC24ads_A100_v4"  # one with a spot price in manifests/prices.json
ACTOR = Actor(user="U1", may_read_paths=True)


def _corpus_clusters() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    files = sorted(CORPUS.rglob("*.json"))
    return [p for p in files if '"vmSize"' in p.read_text() and "dataDisks" not in p.read_text()]


@pytest.fixture
def clusters(store: SqlStore, tmp_path: Path) -> ClusterService:
    return ClusterService(
        store=store,
        backend=LocalBackend(tmp_path, python=sys.executable),
        clock=FakeClock(),
        configs=ConfigLoader(tmp_path),
        resource_group="rg",
        workspace="ws",
    )


async def _create(clusters: ClusterService, line: str) -> Cluster:
    """What `cluster create` does with the parsed command."""
    c = parse(line, source="console")
    assert isinstance(c, ClusterCreate)
    assert c.config is not None
    return await clusters.create_cluster(cluster_request(c), actor=ACTOR)


async def test_the_bot_takes_the_file_s_values(bot: Bot) -> None:
    """Through the real command handler: what the file says, the cluster is."""
    text = json.dumps(
        {
            "properties": {
                "vmSize": SPOT_SIZE,
                "vmPriority": "lowpriority",
                "scaleSettings": {"autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 2}},
                "userAccountSettings": {"adminUserName": "demo"},
            }
        },
        separators=(",", ":"),
    )
    made = await say(bot, f"cluster create -n low -c {text} -o json")
    assert not made.failed, made.message.text
    doc = json.loads(made.message.text)
    assert (doc["vmSize"], doc["vmPriority"]) == (SPOT_SIZE, "lowpriority")
    assert doc["scaleSettings"]["autoScale"]["maximumNodeCount"] == 2
    assert doc["userAccountSettings"]["adminUserName"] == "demo"


def test_a_cluster_file_stands_in_for_the_vm_size_flag_in_both_eras() -> None:
    assert parse("cluster create -n c -g rg -c cluster.json", source="console") == ClusterCreate(
        name="c", resource_group="rg", config=ConfigRef("path", "cluster.json")
    )
    assert parse(
        "cluster create -n c -g rg -w ws -f cluster.json", source="console"
    ) == ClusterCreate(
        name="c", resource_group="rg", workspace="ws", config=ConfigRef("path", "cluster.json")
    )
    with pytest.raises(UserError, match="missing required flag -s/--vm-size"):
        parse("cluster create -n c -g rg", source="console")


def test_a_job_file_is_taken_from_f_c_and_config_in_every_era() -> None:
    path = ConfigRef("path", "job.json")
    for line in (
        "job create -n j -r c -c job.json",
        "job create -n j -c c -f job.json",
        "job create -n j -r c --config job.json",
        "job create -n j -c c --config-file job.json",
    ):
        assert parse(line, source="console") == JobCreate(name="j", cluster="c", config=path)


@pytest.mark.parametrize("path", _corpus_clusters(), ids=lambda p: p.name)
async def test_every_corpus_cluster_file_creates_the_cluster_it_describes(
    clusters: ClusterService, path: Path
) -> None:
    props = json.loads(path.read_text())["properties"]
    made = await _create(clusters, f"cluster create -n c -g rg -c {path}")
    assert made.vm_size == props["vmSize"]
    scale = props["scaleSettings"]
    if "manual" in scale:
        n = scale["manual"]["targetNodeCount"]
        assert (made.min_nodes, made.max_nodes, made.target_nodes) == (n, n, n)
        assert not made.autoscale
    else:
        auto = scale["autoScale"]
        assert (made.min_nodes, made.max_nodes) == (
            auto["minimumNodeCount"],
            auto["maximumNodeCount"],
        )
        assert made.autoscale
    users = props.get("userAccountSettings")
    assert made.admin_user == (users["adminUserName"] if users else ACTOR.user)
    shares = props.get("nodeSetup", {}).get("mountVolumes", {}).get("azureFileShares", [])
    assert [(m.share, m.mount_path) for m in made.mounts] == [
        (s["azureFileUrl"].rsplit("/", 1)[-1], s["relativeMountPath"]) for s in shares
    ]


def test_the_corpus_holds_its_three_cluster_files() -> None:
    if not CORPUS.is_dir():
        pytest.skip("../shared corpus not present")
    assert [p.name for p in _corpus_clusters()] == [
        "auto_scale_cluster_with_azure_files.json",
        "cluster_with_azure_files.json",
        "simple_cluster.json",
    ]


def _write(tmp_path: Path, props: dict[str, object]) -> Path:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"properties": props}))
    return path


async def test_flags_override_the_file(clusters: ClusterService, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "vmSize": "STANDARD_D1",
            "vmPriority": "lowpriority",
            "scaleSettings": {"manual": {"targetNodeCount": 1}},
            "virtualMachineConfiguration": {
                "imageReference": {
                    "publisher": "Canonical",
                    "offer": "UbuntuServer",
                    "sku": "16.04-LTS",
                }
            },
            "userAccountSettings": {"adminUserName": "fileuser"},
        },
    )
    from_file = await _create(clusters, f"cluster create -n a -c {path}")
    assert (from_file.vm_size, from_file.vm_priority, from_file.target_nodes) == (
        "STANDARD_D1",
        "lowpriority",
        1,
    )
    assert from_file.image == "Canonical:UbuntuServer:16.04-LTS"
    assert from_file.admin_user == "fileuser"
    flags = await _create(
        clusters,
        f"cluster create -n b -c {path} -s Standard_NC6 --vm-priority dedicated -t 3 "
        "-u flaguser -i UbuntuDSVM",
    )
    assert (flags.vm_size, flags.vm_priority, flags.target_nodes) == (
        "Standard_NC6",
        "dedicated",
        3,
    )
    assert (flags.image, flags.admin_user) == ("UbuntuDSVM", "flaguser")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            {"subnet": {"id": "/subscriptions/s/x"}},
            "properties.subnet: the local backend runs every node on this machine",
        ),
        (
            {
                "nodeSetup": {
                    "mountVolumes": {
                        "unmanagedFileSystems": [
                            {"mountCommand": "mount x", "relativeMountPath": "u"}
                        ]
                    }
                }
            },
            "unmanagedFileSystems: mount commands from a file would run as root",
        ),
    ],
)
async def test_a_part_no_backend_builds_is_refused_in_one_line_and_nothing_is_made(
    clusters: ClusterService, store: SqlStore, tmp_path: Path, extra: dict[str, object], reason: str
) -> None:
    path = _write(tmp_path, {"vmSize": "STANDARD_D1", **extra})
    with pytest.raises(UserError, match=reason) as err:
        await _create(clusters, f"cluster create -n c -c {path}")
    assert "\n" not in str(err.value)
    assert await store.get_cluster("c") is None
