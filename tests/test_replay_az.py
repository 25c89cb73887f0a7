"""The old CLI's own end-to-end scenarios, replayed through `batchai-bot console` as a real process.

azure-cli's batchai module tested itself with these flows (`test_batchai_manual_scale_scenario`,
`…_auto_scale_…`, `…_cluster_with_file_systems`, `…_with_auto_storage`, `…_with_setup_command`,
`…_job_level_mounting_…`, `…_usages`, and the 2017 module's file-server flows), each command with
`-o json` and the JMESPath checks those tests made. The job and cluster files are the CLI's own
(`corpus/batchai-recipes/azure-cli-tests/`). Where the old tests slept ten minutes for Azure, the
bot's `job wait` waits; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from itertools import count
from pathlib import Path
from typing import Any

import jmespath
import pytest

from tests.test_e2e_console import ROOT, Console

CLI_FILES = ROOT.parent / "shared" / "corpus" / "batchai-recipes" / "azure-cli-tests"
ACCOUNT = "baistorage1"  # what AZURE_BATCHAI_STORAGE_ACCOUNT said in the CLI's tests
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBatchAIReplayKeyForTestsOnly0000000000000 demo@replay"

pytestmark = pytest.mark.skipif(not CLI_FILES.is_dir(), reason="../shared/corpus is not here")


class Replay:
    """One console process; `az(line)` sends a command and returns its `-o json` answer."""

    def __init__(self, console: Console, files: Path, account: str = ACCOUNT) -> None:
        self.console = console
        self.files = files
        self.account = account  # the bot's storage account, which the files' placeholders name
        self._marks = count(1)

    async def az(self, line: str) -> Any:
        """The command's JSON answer (it must not have failed)."""
        body = await self.run(line)
        for block in _blocks(body):
            if (answer := _json_tail(block)) is not _NONE:
                return answer
        raise AssertionError(f"no JSON answer to {line!r}:\n{body}")

    async def run(self, line: str) -> str:
        """What the console printed for `line`, up to a marker command sent after it."""
        mark = f"mark{next(self._marks)}"
        start = len(self.console.out)
        await self.console.send(line)
        await self.console.send(f"cluster list -o tsv --query \"'{mark}'\"")
        done = await self.console.expect(rf"\n    {mark}\n", timeout=180)
        printed = self.console.out[start : done.start()]
        echo = printed.find("$ ")
        assert echo >= 0, printed
        return printed[echo:]

    async def check(self, line: str, **expected: Any) -> Any:
        """`checks=[JMESPathCheck(query, value), …]` of the old tests: key = query."""
        answer = await self.az(line)
        for query, value in expected.items():
            got = jmespath.search(query, answer)
            assert got == value, f"{line}: {query} is {got!r}, not {value!r}\n{answer}"
        return answer

    def file(self, name: str) -> str:
        return str(self.files / name)


def _blocks(printed: str) -> list[str]:
    """Runs of lines indented by four spaces (the console's reply), dedented."""
    blocks: list[str] = []
    run: list[str] = []
    for line in printed.splitlines()[1:]:
        if line.startswith("    ") or (run and not line.strip()):
            run.append(line)
        elif run:
            blocks.append(textwrap.dedent("\n".join(run)))
            run = []
    if run:
        blocks.append(textwrap.dedent("\n".join(run)))
    return blocks


_NONE = object()


def _json_tail(block: str) -> Any:
    """The JSON document a block ends with (a thread's detail line may sit just above it)."""
    lines = block.split("\n")
    for i, line in enumerate(lines):
        if line[:1] in '{["-0123456789' or line in ("null", "true", "false"):
            try:
                return json.loads("\n".join(lines[i:]))
            except ValueError:
                continue
    return _NONE


@asynccontextmanager
async def replaying(
    tmp_path: Path, env: Mapping[str, str] | None = None, *, account: str = ACCOUNT
) -> AsyncIterator[Replay]:
    """A `batchai-bot console` process over a copy of the CLI's files; `env` adds to (or
    replaces) its environment, e.g. the azure backend's settings."""
    files = tmp_path / "files"
    shutil.copytree(CLI_FILES, files)
    (files / "key.txt").write_text(KEY + "\n")
    own = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "BATCHAI_", "DATABASE", "AZURE_", "IDENTITY_"))
    }
    own.update(
        BATCHAI_DATA_DIR=str(tmp_path / "data"),
        PORT="0",
        POLL_SECONDS="0.2",
        LOG_LEVEL="WARNING",
        PRICE_REFRESH_HOURS="0",
        AZURE_BATCHAI_STORAGE_ACCOUNT=account,
        **(env or {}),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        "--wait-timeout",
        "60",
        cwd=ROOT,
        env=own,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield Replay(Console(proc), files, account)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def az(tmp_path: Path) -> AsyncIterator[Replay]:
    async with replaying(tmp_path) as replay:
        yield replay


COMMAND_LINE = "echo hi | tee $AZ_BATCHAI_OUTPUT_OUTPUT/result.txt"
AFS = "nodeSetup.mountVolumes.azureFileShares[0]"
BFS = "nodeSetup.mountVolumes.azureBlobFileSystems[0]"


def _share_checks(az: Replay, relative: str | None = None) -> dict[str, Any]:
    checks = {
        f"{AFS}.accountName": az.account,
        f"{AFS}.azureFileUrl": f"https://{az.account}.file.core.windows.net/share",
        f"{AFS}.credentialsInfo.accountKey": None,
        f"{AFS}.credentials.accountKey": None,
    }
    if relative is not None:
        checks[f"{AFS}.relativeMountPath"] = relative
    return checks


async def _job_ran(az: Replay, where: str, job: str, *, era: str) -> None:
    """wait, show, stdouterr and the OUTPUT directory, as the old tests checked them."""
    await az.run(f"batchai job wait {where} -n {job}")
    await az.check(
        f"batchai job show {where} -n {job} -o json",
        name=job,
        **{
            "customToolkitSettings.commandLine": COMMAND_LINE,
            "executionState": "succeeded",
            "executionInfo.exitCode": 0,
            "executionInfo.errors": None,
        },
    )
    listing = "file list" if era == "2018" else "list-files"
    flag = "-j" if era == "2018" else "-n"
    files = await az.az(f"batchai job {listing} {where} {flag} {job} -d stdouterr -o json")
    names = jmespath.search("[].name | sort(@)", files)
    if era == "2018":
        assert names == ["execution.log", "stderr.txt", "stdout.txt"], files
    else:
        assert names == ["stderr.txt", "stdout.txt"], files
    assert jmespath.search("[?name == 'stdout.txt'].contentLength", files) == [3]
    assert jmespath.search("[?name == 'stderr.txt'].contentLength", files) == [0]
    assert all(f["downloadUrl"] for f in files)
    outputs = await az.az(f"batchai job {listing} {where} {flag} {job} -d OUTPUT -o json")
    assert jmespath.search("[].name", outputs) == ["result.txt"]
    assert jmespath.search("[0].contentLength", outputs) == 3
    assert jmespath.search("[0].downloadUrl", outputs)


# --------------------------------------------------------------------------- 2017-09-01-preview


async def test_2017_manual_scale_scenario(az: Replay) -> None:
    await az.check(
        f"batchai cluster create -n cluster -g rg -c {az.file('cluster_with_azure_files.json')} "
        "-o json",
        name="cluster",
        **{
            "scaleSettings.manual.targetNodeCount": 1,
            "vmSize": "STANDARD_D1",
            "userAccountSettings.adminUserName": "DemoUser",
            "userAccountSettings.adminUserPassword": None,
            **_share_checks(az),
        },
    )
    await az.check(
        f"batchai job create -n job --cluster-name cluster -g rg "
        f"-c {az.file('custom_toolkit_job.json')} -o json",
        name="job",
        **{"customToolkitSettings.commandLine": COMMAND_LINE, "executionState": "queued"},
    )
    await _job_ran(az, "-g rg", "job", era="2017")
    await az.az("batchai cluster resize -n cluster -g rg --target 0 -o json")
    await az.check(
        "batchai cluster show -n cluster -g rg -o json",
        name="cluster",
        currentNodeCount=0,
        **{"scaleSettings.manual.targetNodeCount": 0},
    )
    await az.az("batchai cluster resize -n cluster -g rg --target 1 -o json")
    await az.az(
        f"batchai job create -n job2 --cluster-name cluster -g rg "
        f"-c {az.file('custom_toolkit_job.json')} -o json"
    )
    await _job_ran(az, "-g rg", "job2", era="2017")
    await az.run("batchai cluster delete -n cluster -g rg -y")
    await az.check("batchai cluster list -g rg -o json", **{"length(@)": 0})
    await az.run("batchai job delete -n job -g rg -y")
    await az.run("batchai job delete -n job2 -g rg -y")
    await az.check("batchai job list -g rg -o json", **{"length(@)": 0})


async def test_2017_auto_scale_scenario(az: Replay) -> None:
    await az.check(
        f"batchai cluster create -n cluster -g rg "
        f"-c {az.file('auto_scale_cluster_with_azure_files.json')} -o json",
        name="cluster",
        allocationState="steady",
        vmSize="STANDARD_D1",
        **{
            "scaleSettings.autoScale.minimumNodeCount": 0,
            "scaleSettings.autoScale.maximumNodeCount": 1,
            **_share_checks(az),
        },
    )
    await az.check(
        f"batchai job create -n job --cluster-name cluster -g rg "
        f"-c {az.file('custom_toolkit_job.json')} -o json",
        executionState="queued",
    )
    await _job_ran(az, "-g rg", "job", era="2017")


async def _eventually(az: Replay, line: str, **expected: Any) -> Any:
    """The old tests slept CLUSTER_RESIZE_TIME; this asks again until the answer holds."""
    for _ in range(100):
        answer = await az.az(line)
        if all(jmespath.search(k, answer) == v for k, v in expected.items()):
            return answer
        await az.run("batchai job list -o none")  # one round trip of the console
    raise AssertionError(f"{line}: never {expected}; last {answer}")


async def test_2017_file_server_and_share_from_files(az: Replay) -> None:
    await az.check(
        f"batchai file-server create -n nfs -g rg -c {az.file('file_server.json')} -o json",
        name="nfs",
        **{
            "mountSettings.mountPoint": "/mnt/data",
            "dataDisks.diskCount": 2,
            "dataDisks.diskSizeInGB": 10,  # the swagger's spelling (the CLI test wrote Gb)
        },
    )
    await az.check(
        f"batchai cluster create -n cluster -g rg -c {az.file('simple_cluster.json')} "
        f"--nfs nfs --afs-name share -u alex -k {az.file('key.txt')} -o json",
        **{
            "userAccountSettings.adminUserName": "alex",
            "userAccountSettings.adminUserPassword": None,
            "nodeSetup.mountVolumes.fileServers[0].relativeMountPath": "nfs",
            **_share_checks(az, "afs"),
        },
    )
    await _eventually(
        az, "batchai cluster show -n cluster -g rg -o json", **{"nodeStateCounts.idleNodeCount": 1}
    )
    server = await az.az("batchai file-server show -n nfs -g rg -o json")
    # The swagger's keys; the local backend's server is a directory of this machine: no address.
    assert jmespath.search("mountSettings.mountPoint", server) == "/mnt/data"
    assert {"fileServerPublicIP", "fileServerInternalIP"} <= set(server["mountSettings"])


async def test_2017_configless_cluster_and_file_server(az: Replay) -> None:
    await az.az(
        "batchai file-server create -n nfs -g rg -l eastus --vm-size STANDARD_D1 "
        "--storage-sku Standard_LRS --disk-count 2 --disk-size 10 -u alex -p Password_123 -o json"
    )
    await az.check(
        "batchai cluster create -n cluster -g rg -l eastus --afs-name share --nfs nfs "
        "-i UbuntuLTS --vm-size STANDARD_D1 --min 1 --max 1 -u alex -p Password_123 -o json",
        **{
            "userAccountSettings.adminUserName": "alex",
            "userAccountSettings.adminUserPassword": None,
            "nodeSetup.mountVolumes.fileServers[0].relativeMountPath": "nfs",
            **_share_checks(az, "afs"),
        },
    )
    assert "Password_123" not in az.console.out  # the console echoes the command masked
    await _eventually(
        az, "batchai cluster show -n cluster -g rg -o json", **{"nodeStateCounts.idleNodeCount": 1}
    )


# --------------------------------------------------------------------------- 2018-03-01 / 05-01

WS = "-g rg -w workspace"
EXP = "-g rg -w workspace -e experiment"


async def test_2018_manual_scale_scenario(az: Replay) -> None:
    await az.check("batchai workspace create -g rg -n workspace -o json", name="workspace")
    await az.check("batchai workspace list -g rg -o json", **{"length(@)": 1})
    await az.check(
        f"batchai cluster create {WS} -n cluster -f {az.file('cluster_with_azure_files.json')} "
        "-o json",
        name="cluster",
        vmSize="STANDARD_D1",
        **{
            "scaleSettings.manual.targetNodeCount": 1,
            "userAccountSettings.adminUserName": "DemoUser",
            "userAccountSettings.adminUserPassword": None,
            **_share_checks(az),
        },
    )
    await az.check(f"batchai experiment create {WS} -n experiment -o json", name="experiment")
    await az.check(f"batchai experiment list {WS} -o json", **{"length(@)": 1})
    await az.check(
        f"batchai job create -c cluster {EXP} -n job -f {az.file('custom_toolkit_job.json')} "
        "-o json",
        name="job",
        **{"customToolkitSettings.commandLine": COMMAND_LINE, "executionState": "queued"},
    )
    await _job_ran(az, EXP, "job", era="2018")
    await az.az(f"batchai cluster resize {WS} -n cluster -t 0 -o json")
    await az.check(
        f"batchai cluster show {WS} -n cluster -o json",
        currentNodeCount=0,
        **{"scaleSettings.manual.targetNodeCount": 0},
    )
    await az.az(f"batchai cluster resize {WS} -n cluster -t 1 -o json")
    await az.az(
        f"batchai job create -c cluster {EXP} -n job2 -f {az.file('custom_toolkit_job.json')} "
        "-o json"
    )
    await _job_ran(az, EXP, "job2", era="2018")
    # a workspace with a cluster is not deleted
    refused = await az.run("batchai workspace delete -g rg -n workspace -y")
    assert "cluster" in refused
    await az.run(f"batchai cluster delete {WS} -n cluster -y")
    await az.check(f"batchai cluster list {WS} -o json", **{"length(@)": 0})
    await az.run(f"batchai job delete {EXP} -n job -y")
    await az.run(f"batchai job delete {EXP} -n job2 -y")
    await az.check(f"batchai job list {EXP} -o json", **{"length(@)": 0})
    await az.run(f"batchai experiment delete {WS} -n experiment -y")
    await az.run("batchai workspace delete -g rg -n workspace -y")
    await az.check("batchai workspace list -g rg -o json", **{"length(@)": 0})


async def test_2018_auto_scale_scenario(az: Replay) -> None:
    await az.az("batchai workspace create -g rg -n workspace -o json")
    await az.check(
        f"batchai cluster create {WS} -n cluster "
        f"-f {az.file('auto_scale_cluster_with_azure_files.json')} -o json",
        **{
            "scaleSettings.autoScale.minimumNodeCount": 0,
            "scaleSettings.autoScale.maximumNodeCount": 1,
            **_share_checks(az),
        },
    )
    await az.az(f"batchai experiment create {WS} -n experiment -o json")
    await az.check(
        f"batchai job create -c cluster {EXP} -n job -f {az.file('custom_toolkit_job.json')} "
        "-o json",
        executionState="queued",
    )
    await _job_ran(az, EXP, "job", era="2018")


def _fs_checks(
    az: Replay, afs: str, bfs: str, container: str, share: str = "share"
) -> dict[str, Any]:
    return {
        f"{AFS}.accountName": az.account,
        f"{AFS}.azureFileUrl": f"https://{az.account}.file.core.windows.net/{share}",
        f"{AFS}.relativeMountPath": afs,
        f"{AFS}.credentialsInfo.accountKey": None,
        f"{BFS}.accountName": az.account,
        f"{BFS}.containerName": container,
        f"{BFS}.relativeMountPath": bfs,
        f"{BFS}.credentialsInfo.accountKey": None,
    }


async def test_2018_cluster_with_file_systems_from_a_file_and_flags(az: Replay) -> None:
    await az.az("batchai workspace create -g rg -n workspace -o json")
    await az.check(
        f"batchai cluster create {WS} -n cluster -f {az.file('simple_cluster.json')} "
        f"--afs-name share --bfs-name container -u DemoUser -k {az.file('key.txt')} -o json",
        **{
            "userAccountSettings.adminUserName": "DemoUser",
            "userAccountSettings.adminUserPassword": None,
            **_fs_checks(az, "afs", "bfs", "container"),
        },
    )
    await _eventually(
        az, f"batchai cluster show {WS} -n cluster -o json", **{"nodeStateCounts.idleNodeCount": 1}
    )


async def test_2018_config_less_cluster_with_file_systems(az: Replay) -> None:
    await az.az("batchai workspace create -g rg -n workspace -o json")
    await az.check(
        f"batchai cluster create {WS} -n cluster -i UbuntuLTS --vm-size STANDARD_D1 --min 1 "
        f"--max 1 -u DemoUser -k {az.file('key.txt')} --afs-name share --bfs-name container "
        "-o json",
        **_fs_checks(az, "afs", "bfs", "container"),
    )
    await _eventually(
        az, f"batchai cluster show {WS} -n cluster -o json", **{"nodeStateCounts.idleNodeCount": 1}
    )


async def test_2018_cluster_with_auto_storage_and_a_setup_task(az: Replay) -> None:
    await az.az("batchai workspace create -g rg -n workspace -o json")
    await az.check(
        f"batchai cluster create {WS} -n cluster -i UbuntuLTS --vm-size STANDARD_D1 -t 0 "
        f"-u DemoUser -k {az.file('key.txt')} --use-auto-storage -o json",
        **_fs_checks(az, "autoafs", "autobfs", "batchaicontainer", share="batchaishare"),
    )
    await az.check(
        f"batchai cluster create -n cluster2 {WS} -s STANDARD_D1 -t 1 -u DemoUser "
        f'-k {az.file("key.txt")} --use-auto-storage --setup-task "echo hi" '
        '--setup-task-output "$AZ_BATCHAI_MOUNT_ROOT/autoafs" -o json',
        **{
            "nodeSetup.setupTask.commandLine": "echo hi",
            "nodeSetup.setupTask.stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/autoafs",
            **_fs_checks(az, "autoafs", "autobfs", "batchaicontainer", share="batchaishare"),
        },
    )
    await _eventually(
        az, f"batchai cluster show {WS} -n cluster2 -o json", **{"nodeStateCounts.idleNodeCount": 1}
    )


async def test_2018_job_level_mounting_scenario(az: Replay) -> None:
    await az.az("batchai workspace create -g rg -n workspace -o json")
    await az.az(
        f"batchai cluster create {WS} -n cluster -f {az.file('simple_cluster.json')} "
        f"-u DemoUser -k {az.file('key.txt')} -o json"
    )
    await az.az(f"batchai experiment create {WS} -n experiment -o json")
    await az.az(
        f"batchai job create -c cluster {EXP} -n job -f {az.file('job_with_file_systems.json')} "
        "-o json"
    )
    await _job_ran(az, EXP, "job", era="2018")
    await az.az(
        f"batchai job create -c cluster {EXP} -n job2 "
        f"-f {az.file('job_referencing_file_systems.json')} --afs-name share --bfs-name container "
        "-o json"
    )
    await _job_ran(az, EXP, "job2", era="2018")


async def test_usages(az: Replay) -> None:
    assert "Cluster" in await az.run("batchai list-usages -l eastus")
    assert "Cluster" in await az.run("batchai list-usages -l eastus -o table")
    usages = await az.az("batchai list-usages -l eastus -o json")
    assert any("Cluster" in u["name"]["localizedValue"] for u in usages), usages


def test_the_blocks_of_a_reply_are_found_between_other_output() -> None:
    printed = '$ cmd\n── #console\n  [queued] x\n    estimate: `1`\n    {\n      "a": 1\n    }\n'
    assert [_json_tail(b) for b in _blocks(printed)] == [{"a": 1}]
    assert _json_tail("estimate: `1`") is _NONE
