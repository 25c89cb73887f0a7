"""`batchai-bot validate` on cluster.json and file-server JSON, as a real process: the old CLI's
files and full 2017/2018 shapes pass, and each crafted problem is one FAIL line with its JSON path,
the same line `cluster create` / `file-server create` would answer (the same checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_corpus import CORPUS

ROOT = Path(__file__).resolve().parents[1]
CLI_FILES = CORPUS / "azure-cli-tests"
SCHEMAS = "https://raw.githubusercontent.com/Azure/BatchAI/master/schemas"
FS_ID = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/ws/fileServers/nfs"
)


def validate(*paths: Path) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BATCHAI_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "validate", *map(str, paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not done.stderr, done.stderr
    return done.returncode, done.stdout.splitlines()


def write(tmp_path: Path, name: str, body: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return path


def cluster_2018() -> dict[str, Any]:
    """Every part of a 2018-05-01 cluster.json the bot honours."""
    return {
        "$schema": f"{SCHEMAS}/2018-05-01/cluster.json",
        "properties": {
            "vmSize": "STANDARD_NC6",
            "vmPriority": "lowpriority",
            "scaleSettings": {
                "autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 4, "initialNodeCount": 1}
            },
            "virtualMachineConfiguration": {
                "imageReference": {
                    "publisher": "microsoft-dsvm",
                    "offer": "linux-data-science-vm-ubuntu",
                    "sku": "linuxdsvmubuntu",
                    "version": "latest",
                }
            },
            "userAccountSettings": {
                "adminUserName": "alex",
                "adminUserSshPublicKey": "ssh-ed25519 AAAA alex@host",
            },
            "nodeSetup": {
                "setupTask": {
                    "commandLine": "apt-get install -y jq",
                    "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
                    "environmentVariables": [{"name": "STAGE", "value": "1"}],
                    "secrets": [{"name": "TOKEN", "value": "s3cr3t"}],
                },
                "mountVolumes": {
                    "azureFileShares": [
                        {
                            "accountName": "<AZURE_BATCHAI_STORAGE_ACCOUNT>",
                            "azureFileUrl": "https://<AZURE_BATCHAI_STORAGE_ACCOUNT>.file.core.windows.net/data",
                            "credentials": {"accountKey": "<AZURE_BATCHAI_STORAGE_KEY>"},
                            "relativeMountPath": "afs",
                            "fileMode": "0777",
                            "directoryMode": "0777",
                        }
                    ],
                    "azureBlobFileSystems": [
                        {
                            "accountName": "otheraccount",
                            "containerName": "models",
                            "credentials": {"accountKey": "a2V5"},
                            "relativeMountPath": "bfs",
                            "mountOptions": "-o allow_other",
                        }
                    ],
                    "fileServers": [
                        {
                            "fileServer": {"id": FS_ID},
                            "sourceDirectory": "/mnt/data",
                            "relativeMountPath": "nfs",
                            "mountOptions": "rw",
                        }
                    ],
                },
            },
        },
    }


def cluster_2017() -> dict[str, Any]:
    """The 2017-09-01-preview shape: a top-level location, `credentialsInfo`, manual scale."""
    return {
        "location": "eastus",
        "properties": {
            "vmSize": "STANDARD_D1",
            "scaleSettings": {
                "manual": {"targetNodeCount": 2, "nodeDeallocationOption": "waitforjobcompletion"}
            },
            "userAccountSettings": {"adminUserName": "DemoUser", "adminUserPassword": "Pa$$w0rd"},
            "nodeSetup": {
                # the 2017 examples' setup task: runElevated true is what every one does now
                "setupTask": {
                    "commandLine": "echo ready",
                    "runElevated": True,
                    "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/azfiles",
                },
                "mountVolumes": {
                    "azureFileShares": [
                        {
                            "azureFileUrl": "https://baistorage1.file.core.windows.net/share",
                            "credentialsInfo": {"accountKey": "a2V5"},
                            "relativeMountPath": "azfiles",
                        }
                    ]
                },
            },
        },
    }


def file_server() -> dict[str, Any]:
    return {
        "$schema": f"{SCHEMAS}/2018-05-01/nfs.json",
        "location": "eastus",
        "properties": {
            "vmSize": "Standard_D2s_v3",
            "sshConfiguration": {
                "publicIPsToAllow": ["10.0.0.0/24"],
                "userAccountSettings": {"adminUserName": "alex", "adminUserPassword": "x"},
            },
            "dataDisks": {
                "diskSizeInGB": 128,
                "diskCount": 4,
                "storageAccountType": "Premium_LRS",
                "cachingType": "readonly",
            },
        },
    }


def test_the_old_clis_cluster_and_file_server_files_pass() -> None:
    if not CLI_FILES.is_dir():
        pytest.skip("../shared corpus not present")
    names = (
        "cluster_with_azure_files.json",
        "auto_scale_cluster_with_azure_files.json",
        "simple_cluster.json",
        "file_server.json",
    )
    code, lines = validate(*(CLI_FILES / n for n in names))
    assert code == 0, lines
    assert [line.rsplit(": ", 1)[1] for line in lines] == [
        "ClusterSpec",
        "ClusterSpec",
        "ClusterSpec",
        "FileServerSpec",
    ]


def test_the_full_shapes_of_both_eras_pass(tmp_path: Path) -> None:
    code, lines = validate(
        write(tmp_path, "c2018.json", cluster_2018()),
        write(tmp_path, "c2017.json", cluster_2017()),
        write(tmp_path, "fs.json", file_server()),
        ROOT / "manifests" / "clusters" / "t4-autoscale.json",
    )
    assert code == 0, lines
    assert all(line.startswith("OK   ") for line in lines), lines


def _edit(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`body` with the value at a dotted path (`a.b[0].c`) set; None deletes the key."""
    node: Any = body
    parts = path.replace("]", "").replace("[", ".").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return body


V = "properties.nodeSetup.mountVolumes"
BAD_CLUSTERS = [
    (
        "scaleSettings.manual",
        {"targetNodeCount": 1},
        "properties.scaleSettings: give exactly one of manual or autoScale",
    ),
    (
        "scaleSettings.autoScale.minimumNodeCount",
        9,
        "properties.scaleSettings.autoScale: minimumNodeCount must not exceed maximumNodeCount",
    ),
    (
        "scaleSettings.autoScale.maximumNodeCount",
        "4",
        "properties.scaleSettings.autoScale.maximumNodeCount: Input should be a valid integer",
    ),
    ("vmPriority", "spot", "properties.vmPriority: Input should be 'dedicated' or 'lowpriority'"),
    ("vmSize", "NC 6", "properties.vmSize: 'NC 6' is not a VM size (e.g. Standard_NC6)"),
    (
        "virtualMachineConfiguration.imageReference.sku",
        None,
        "properties.virtualMachineConfiguration.imageReference.sku: Field required",
    ),
    (
        "userAccountSettings.adminUserName",
        "root",
        "properties.userAccountSettings.adminUserName: admin user name 'root' is one Azure "
        "disallows",
    ),
    (
        "userAccountSettings.adminUsername",
        "x",
        "properties.userAccountSettings.adminUsername: unknown key (did you mean 'adminUserName'?)",
    ),
    (
        "nodeSetup.mountVolumes.azureFileShares[0].azureFileUrl",
        "https://acct.file.core.windows.net/Bad_Share",
        f"{V}.azureFileShares[0]: 'Bad_Share' is not an Azure File share name",
    ),
    (
        "nodeSetup.mountVolumes.azureFileShares[0].relativeMountPath",
        "../up",
        f"{V}.azureFileShares[0].relativeMountPath: must not contain '..'",
    ),
    (
        "nodeSetup.mountVolumes.azureBlobFileSystems[0].accountName",
        "Not-An-Account",
        f"{V}.azureBlobFileSystems[0]: 'Not-An-Account' is not a storage account name",
    ),
    (
        "nodeSetup.mountVolumes.azureBlobFileSystems[0].relativeMountPath",
        "afs",
        f"{V}: two volumes are mounted at 'afs'",
    ),
    (
        "nodeSetup.mountVolumes.fileServers[0].fileServer.id",
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/fileServers/a b",
        f"{V}.fileServers[0]: fileServer.id '/subscriptions/s/resourceGroups/rg/providers/"
        "Microsoft.BatchAI/fileServers/a b' does not name a file server",
    ),
    (
        "nodeSetup.mountVolumes.unmanagedFileSystems",
        [{"mountCommand": "mount -t nfs x:/y", "relativeMountPath": "u"}],
        f"{V}.unmanagedFileSystems: mount commands from a file would run as root",
    ),
    (
        "nodeSetup.performanceCountersSettings",
        {"appInsightsReference": {"component": {"id": "/x"}, "instrumentationKey": "k"}},
        "properties.nodeSetup.performanceCountersSettings: App Insights counters are not collected",
    ),
    (
        "nodeSetup.setupTask.stdOutErrPathPrefix",
        None,
        "properties.nodeSetup.setupTask.stdOutErrPathPrefix: Field required",
    ),
    (
        "nodeSetup.setupTask.environmentVariables",
        [{"name": "AZ_BATCHAI_MOUNT_ROOT", "value": "/x"}],
        "properties.nodeSetup.setupTask.environmentVariables[0].name: names starting with "
        "AZ_BATCHAI_ are set by the service",
    ),
    (
        "nodeSetup.setupTask.secrets",
        [{"name": "K", "valueSecretReference": {"sourceVault": {"id": "/v"}, "secretUrl": "u"}}],
        "properties.nodeSetup.setupTask.secrets[0] (K): a Key Vault reference is not resolved",
    ),
    (
        "nodeSetup.setupTask.runElevated",
        False,
        "properties.nodeSetup.setupTask.runElevated: false is not supported: a setup task runs"
        " as root (Batch AI 2018-03-01 and later); drop the key, or run the user's part with"
        " sudo -u <user>",
    ),
    (
        "subnet",
        {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/vnet/subnets/a"},
        "properties.subnet: the bot places every node itself",
    ),
]


@pytest.mark.parametrize(("where", "value", "line"), BAD_CLUSTERS, ids=[b[0] for b in BAD_CLUSTERS])
def test_a_bad_cluster_file_fails_with_the_line_naming_its_path(
    tmp_path: Path, where: str, value: Any, line: str
) -> None:
    body = cluster_2018()
    if where == "userAccountSettings.adminUsername":
        body["properties"]["userAccountSettings"]["adminUsername"] = value
    else:
        _edit(body["properties"], where, value)
    code, lines = validate(write(tmp_path, "cluster.json", body))
    assert code == 1, lines
    expected = f"FAIL {tmp_path / 'cluster.json'}: {line}"
    assert any(got.startswith(expected) for got in lines), lines
    assert all(got.startswith(f"FAIL {tmp_path / 'cluster.json'}: properties.") for got in lines)


BAD_FILE_SERVERS = [
    (
        "dataDisks.diskSizeInGb",
        10,
        "properties.dataDisks.diskSizeInGb: unknown key (did you mean 'diskSizeInGB'?)",
    ),
    ("dataDisks.diskCount", 64, "properties.dataDisks.diskCount: must be from 1 to 63, not 64"),
    (
        "dataDisks.diskSizeInGB",
        40000,
        "properties.dataDisks.diskSizeInGB: must be from 1 to 32767 GB, not 40000",
    ),
    (
        "dataDisks.storageAccountType",
        "Ultra_LRS",
        "properties.dataDisks.storageAccountType: Input should be 'Standard_LRS' or 'Premium_LRS'",
    ),
    (
        "sshConfiguration.userAccountSettings.adminUserName",
        "admin",
        "properties.sshConfiguration.userAccountSettings.adminUserName: admin user name 'admin'",
    ),
    ("sshConfiguration", None, "properties.sshConfiguration: Field required"),
    ("vmSize", "D2 v3", "properties.vmSize: 'D2 v3' is not a VM size"),
    ("subnet", {"id": "/x/subnets/a"}, "properties.subnet: the bot places every node itself"),
]


@pytest.mark.parametrize(
    ("where", "value", "line"), BAD_FILE_SERVERS, ids=[b[0] for b in BAD_FILE_SERVERS]
)
def test_a_bad_file_server_file_fails_with_the_line_naming_its_path(
    tmp_path: Path, where: str, value: Any, line: str
) -> None:
    body = file_server()
    _edit(body["properties"], where, value)
    code, lines = validate(write(tmp_path, "nfs.json", body))
    assert code == 1, lines
    expected = f"FAIL {tmp_path / 'nfs.json'}: {line}"
    assert any(got.startswith(expected) for got in lines), lines


def test_every_problem_is_its_own_line_and_a_good_file_beside_it_still_passes(
    tmp_path: Path,
) -> None:
    body = cluster_2017()
    props = body["properties"]
    props["vmPriority"] = "cheap"
    props["userAccountSettings"] = {"adminUserName": "root"}
    props["nodeSetup"]["mountVolumes"]["azureFileShares"][0]["relativeMountPath"] = "../x"
    bad = write(tmp_path, "bad.json", body)
    good = write(tmp_path, "good.json", cluster_2017())
    code, lines = validate(bad, good)
    assert code == 1
    fails = [line for line in lines if line.startswith(f"FAIL {bad}: ")]
    # the shape's two problems, each on its own line (the admin name is checked once it loads)
    assert len(fails) == 2, lines
    assert any("properties.vmPriority:" in f for f in fails)
    assert any(".azureFileShares[0].relativeMountPath:" in f for f in fails)
    assert lines[-1] == f"OK   {good}: ClusterSpec"
