"""`-o json` answers carry the 2018-05-01 Batch AI REST model, flattened as the SDK printed it:
keys checked against the swagger itself, secrets null, absent values null."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import jmespath
import pytest

from bot.bootstrap import Bot
from handlers import rest
from services.jobs.lifecycle import JobState
from services.models import ClusterView, NodeCounts, ShareMount
from tests.conftest import NOW, make_cluster, make_job
from tests.test_outputs import answer, bot, say

__all__ = ["bot"]  # the fixture, shared with test_outputs

DEFS: dict[str, Any] = {}


def defs() -> dict[str, Any]:
    if not DEFS:
        path = Path(__file__).resolve().parent / "fixtures" / "batchai" / "batchai-2018-05-01.json"
        DEFS.update(json.loads(path.read_text())["definitions"])
    return DEFS


def keys(name: str) -> set[str]:
    """The keys of a definition as the SDK printed it: x-ms-client-flatten ones inlined."""
    d = defs()[name]
    out: set[str] = set()
    for parent in d.get("allOf", []):
        out |= keys(parent["$ref"].rsplit("/", 1)[-1])
    for key, prop in d.get("properties", {}).items():
        if prop.get("x-ms-client-flatten"):
            out |= keys(prop["$ref"].rsplit("/", 1)[-1])
        else:
            out.add(key)
    return out


def inline(name: str, prop: str) -> set[str]:
    return set(defs()[name]["properties"][prop]["properties"])


def test_a_cluster_has_exactly_the_keys_of_the_spec() -> None:
    cluster = make_cluster(
        mounts=(ShareMount("data", "afs"),), setup_task="echo hi", admin_user="demo"
    )
    doc = rest.cluster_resource(ClusterView(cluster, NodeCounts(idle=1, running=1), 0))
    assert set(doc) == keys("Cluster") | {"resourceGroup"}
    assert set(doc["scaleSettings"]) == keys("ScaleSettings")
    assert set(doc["scaleSettings"]["manual"]) == keys("ManualScaleSettings")
    assert set(doc["nodeStateCounts"]) == keys("NodeStateCounts")
    assert set(doc["userAccountSettings"]) == keys("UserAccountSettings")
    assert set(doc["nodeSetup"]) == keys("NodeSetup")
    assert set(doc["nodeSetup"]["setupTask"]) == keys("SetupTask")
    assert set(doc["nodeSetup"]["mountVolumes"]) == keys("MountVolumes")
    share = doc["nodeSetup"]["mountVolumes"]["azureFileShares"][0]
    assert set(share) == keys("AzureFileShareReference")
    assert set(share["credentials"]) == keys("AzureStorageCredentialsInfo")
    assert share["credentials"]["accountKey"] is None
    assert doc["userAccountSettings"]["adminUserPassword"] is None
    assert (doc["currentNodeCount"], doc["nodeStateCounts"]["runningNodeCount"]) == (2, 1)
    auto = make_cluster(autoscale=True, min_nodes=0, max_nodes=3, target_nodes=1)
    scale = rest.cluster_resource(ClusterView(auto, NodeCounts(), 0))["scaleSettings"]
    assert scale["manual"] is None and set(scale["autoScale"]) == keys("AutoScaleSettings")
    assert rest.cluster_resource(ClusterView(make_cluster(), NodeCounts(), 0))["nodeSetup"] is None


def test_a_setup_task_shows_its_prefix_suffix_and_variables_and_never_a_secret_value() -> None:
    cluster = make_cluster(
        mounts=(ShareMount("data", "afs"),),
        setup_task="apt-get install -y jq",
        setup_task_output="$AZ_BATCHAI_MOUNT_ROOT/afs",
        setup_task_suffix="sub/rg/workspaces/ws/clusters/c1/0f1e",
        setup_task_env=(("GREETING", "hi"),),
        setup_task_secrets=(("TOKEN", "never-shown-7a"),),
    )
    doc = rest.cluster_resource(ClusterView(cluster, NodeCounts(idle=1), 0))
    task = doc["nodeSetup"]["setupTask"]
    assert task["commandLine"] == "apt-get install -y jq"
    assert task["stdOutErrPathPrefix"] == "$AZ_BATCHAI_MOUNT_ROOT/afs"
    assert task["stdOutErrPathSuffix"] == "sub/rg/workspaces/ws/clusters/c1/0f1e"
    assert task["environmentVariables"] == [{"name": "GREETING", "value": "hi"}]
    assert task["secrets"] == [{"name": "TOKEN", "value": None, "valueSecretReference": None}]
    assert set(task["secrets"][0]) == keys("EnvironmentVariableWithSecretValue")
    assert "never-shown-7a" not in repr(doc)


def test_a_job_echoes_its_properties_with_secrets_null() -> None:
    spec = {
        "properties": {
            "nodeCount": 1,
            "customToolkitSettings": {"commandLine": "python train.py"},
            "containerSettings": {
                "imageSourceRegistry": {
                    "image": "myreg.azurecr.io/train:1",
                    "serverUrl": "myreg.azurecr.io",
                    "credentials": {"username": "puller", "password": "Reg-pw-1"},
                }
            },
            "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}],
            "secrets": [{"name": "TOKEN", "value": "s3cret"}],
            "mountVolumes": {
                "azureFileShares": [
                    {
                        "accountName": "acct",
                        "azureFileUrl": "https://acct.file.core.windows.net/data",
                        "credentials": {"accountKey": "a2V5"},
                        "relativeMountPath": "afs",
                    }
                ]
            },
        }
    }
    job = make_job(
        spec_json=json.dumps(spec),
        state=JobState.SUCCEEDED,
        started_at=NOW,
        ended_at=NOW + timedelta(minutes=3),
        exit_code=0,
        max_wall_clock=timedelta(days=7),
    )
    doc = rest.job_resource(job)
    assert set(doc) == keys("Job") | {"resourceGroup"}
    assert set(doc["executionInfo"]) == inline("JobProperties", "executionInfo")
    assert set(doc["constraints"]) == inline("JobProperties", "constraints")
    assert "s3cret" not in json.dumps(doc) and "a2V5" not in json.dumps(doc)
    assert "Reg-pw-1" not in json.dumps(doc)
    registry = doc["containerSettings"]["imageSourceRegistry"]
    assert registry["credentials"] == {"username": "puller", "password": None}
    assert jmespath.search("secrets[0].value", doc) is None
    assert jmespath.search("mountVolumes.azureFileShares[0].credentials.accountKey", doc) is None
    assert doc["customToolkitSettings"] == {"commandLine": "python train.py"}
    assert doc["outputDirectories"][0]["id"] == "MODEL"
    assert (doc["executionState"], doc["executionInfo"]["exitCode"]) == ("succeeded", 0)
    assert doc["executionInfo"]["errors"] is None  # null, not [], when there were none
    assert doc["constraints"]["maxWallClockTime"] == "7.00:00:00"
    assert doc["cluster"]["id"].endswith("/workspaces/ws/clusters/c1")
    failed = rest.job_resource(make_job(state=JobState.TERMINATED, error="stopped"))
    assert failed["executionState"] == "failed"
    assert failed["executionInfo"]["errors"][0]["message"] == "stopped"
    assert failed["tensorFlowSettings"] is None


def test_a_file_has_the_keys_of_the_spec() -> None:
    doc = rest.file_resource("a.txt", directory=False, size=3, url=None, modified=NOW)
    assert set(doc) == keys("File")
    assert doc["fileType"] in defs()["File"]["properties"]["fileType"]["enum"]


async def test_cluster_show_json_through_the_bot_is_the_rest_model(bot: Bot) -> None:
    doc = json.loads(await answer(bot, "cluster show -n c2 -o json"))
    assert set(doc) == keys("Cluster") | {"resourceGroup"}
    assert jmespath.search("scaleSettings.manual.targetNodeCount", doc) == 1
    share = jmespath.search("nodeSetup.mountVolumes.azureFileShares[0].relativeMountPath", doc)
    assert share == "afs"
    size = await answer(bot, "cluster show -n c2 --query vmSize -o tsv")
    assert size == doc["vmSize"]
    assert not (await say(bot, "job list -o json")).failed


async def test_create_resize_and_auto_scale_answer_with_the_resource(bot: Bot) -> None:
    made = json.loads(await answer(bot, "cluster create -n c3 -s Standard_NC6 -t 1 -o json"))
    assert (made["name"], jmespath.search("scaleSettings.manual.targetNodeCount", made)) == (
        "c3",
        1,
    )
    resized = json.loads(await answer(bot, "cluster resize -n c3 -t 0 -o json"))
    assert jmespath.search("scaleSettings.manual.targetNodeCount", resized) == 0
    scaled = json.loads(await answer(bot, "cluster auto-scale -n c3 --min 0 --max 2 -o json"))
    assert jmespath.search("scaleSettings.autoScale.maximumNodeCount", scaled) == 2
    assert scaled["scaleSettings"]["manual"] is None


async def test_job_create_answers_with_the_job_it_submitted(bot: Bot) -> None:
    config = json.dumps(
        {"properties": {"nodeCount": 1, "customToolkitSettings": {"commandLine": "echo hi"}}},
        separators=(",", ":"),
    )
    job = json.loads(await answer(bot, f"job create -n jj -r c2 -c {config} -o json"))
    assert set(job) == keys("Job") | {"resourceGroup"}
    assert jmespath.search("customToolkitSettings.commandLine", job) == "echo hi"
    assert (job["name"], job["nodeCount"], job["executionState"]) == ("jj", 1, "queued")


CLI_TESTS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "corpus"
    / "batchai-recipes"
    / "azure-cli-tests"
)


def _within(small: Any, big: Any) -> bool:
    """Everything `small` says, `big` says too (objects may hold more keys)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(_within(v, big.get(k)) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(_within, small, big))
    return bool(small == big)


async def test_the_cli_s_own_job_files_are_echoed_back(bot: Bot) -> None:
    if not CLI_TESTS.is_dir():
        pytest.skip("../shared corpus not present")
    for i, name in enumerate(("custom_toolkit_job.json", "nop_job.json")):
        props = json.loads((CLI_TESTS / name).read_text())
        text = json.dumps(props, separators=(",", ":"))
        doc = json.loads(await answer(bot, f"job create -n cli{i} -r c2 -c {text} -o json"))
        assert _within(props["properties"], doc), (name, doc)
        for absent in ("inputDirectories", "environmentVariables", "secrets", "jobPreparation"):
            assert doc[absent] is None, (name, absent)
        shown = json.loads(await answer(bot, f"job show -n cli{i} -o json"))
        moving = ("executionState", "executionInfo")  # the job may have started meanwhile
        assert {k: v for k, v in shown.items() if k not in moving} == {
            k: v for k, v in doc.items() if k not in moving
        }
