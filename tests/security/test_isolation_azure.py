"""The attacker's view of the azure backend: a job that reaches for the bot's control share, the
storage key or another job's spec, and a node runner replaced on the share. Real AzureBackend,
fake ARM and fake Files servers; the jobs really run on the fake nodes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.backends.azure import node as node_scripts
from services.backends.azure.backend import AzureBackend
from services.backends.azure.files import AzureShare
from services.backends.noderun import runner as noderunner
from services.core.errors import UserError
from services.jobspec import JobSpec, load_job_spec
from services.models import Cluster, FileLocation, ShareMount
from tests.azure.rig import BOT_SHARE, JOB_SHARE, AzureRig, azure_rig
from tests.contract import (
    JOB_SCRIPT,
    SCRIPT_PATH,
    cluster,
    job_json,
    job_spec,
    launch_request,
    log_loc,
    read_text,
    wait_for,
)
from tests.contract import wait_for_text as wait_text

JOB_GID = 7000  # the production default; each job has a uid of its own
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="dropping to another uid needs root (the nodes' runner is root)"
)


@pytest.fixture
async def rig() -> AsyncIterator[AzureRig]:
    # Not below pytest's temp root: it is 0700, and every pytest session that starts on the
    # machine makes it so again. A real node's /mnt is open to every user.
    base = Path(tempfile.mkdtemp(prefix="batchai-isolation-"))
    base.chmod(0o711)
    try:
        async with azure_rig(base) as r:
            script = r.files.create_share(JOB_SHARE) / SCRIPT_PATH
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(JOB_SCRIPT)
            yield r
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def share(rig: AzureRig) -> AsyncIterator[AzureShare]:
    s = rig.share()
    yield s
    await s.aclose()


@pytest.fixture
async def backend(rig: AzureRig, share: AzureShare) -> AsyncIterator[AzureBackend]:
    b = rig.backend(share, job_gid=JOB_GID, launch_check_seconds=0.0)
    yield b
    await b.aclose()


def bash_job(command: str, **extra: Any) -> JobSpec:
    """A job whose program is a bash command line (nothing else for a user of another uid)."""
    raw = job_json()
    del raw["properties"]["pyTorchSettings"]
    raw["properties"].update({"customToolkitSettings": {"commandLine": command}, **extra})
    return load_job_spec(json.dumps(raw))


def bot_share_url(rig: AzureRig, share: str = BOT_SHARE) -> str:
    return f"https://{rig.config.storage_account}.file.core.windows.net/{share}"


async def test_a_job_json_mounting_the_control_share_is_refused_before_anything_runs(
    rig: AzureRig, backend: AzureBackend
) -> None:
    c = cluster("c1", nodes=1)
    await backend.create_cluster(c)
    volumes = {
        "mountVolumes": {
            "azureFileShares": [{"azureFileUrl": bot_share_url(rig), "relativeMountPath": "loot"}]
        },
        "outputDirectories": [
            {"id": "LOOT", "pathPrefix": "$AZ_BATCHAI_JOB_MOUNT_ROOT/loot", "createNew": False}
        ],
    }
    mark = rig.arm.mark()
    request = launch_request(job_spec("ok", extra=volumes), c)
    with pytest.raises(UserError, match="control share") as err:
        await backend.start_job(request)
    assert "\n" not in str(err.value)
    assert rig.arm.count(mark, method="PUT", match="/runCommands/") == 0


async def test_a_cluster_mounting_the_control_share_is_refused_by_the_backend(
    rig: AzureRig, backend: AzureBackend
) -> None:
    bad = replace(cluster("c2", nodes=1), mounts=(ShareMount(BOT_SHARE, "afs"),))
    with pytest.raises(UserError, match="control share"):
        await backend.create_cluster(bad)
    assert "c2" not in rig.arm.scale_sets


@as_root
async def test_a_job_runs_unprivileged_and_cannot_read_the_key_the_control_share_or_specs(
    rig: AzureRig, backend: AzureBackend, share: AzureShare
) -> None:
    c = cluster("c1", nodes=1)
    await backend.create_cluster(c)
    node = rig.arm.node_dir("c1", "0")
    victim = launch_request(
        bash_job(
            "echo token=$TEAM_TOKEN; sleep 600",
            secrets=[{"name": "TEAM_TOKEN", "value": "s3cret-of-team-a"}],
        ),
        c,
        name="victim",
    )
    victim_result = await backend.start_job(victim)
    victim_log = log_loc(victim_result, "stdout.txt")
    assert "token=s3cret-of-team-a" in await wait_text(share, victim_log, "token=")
    control = Path(rig.config.control_mount)
    cred = node / "etc" / "smbcredentials" / f"{rig.config.storage_account}.cred"
    launches = node / "var" / "lib" / "batchai" / "launch"
    probes = " ; ".join(
        [
            "id -u",
            f"cat {cred}",
            f"ls {control}/.batchai/jobs",
            f"cat {control}/.batchai/jobs/{victim.job_id}/launch.json",
            f"echo evil >> {control}/.batchai/noderunner.py",
            f"ls {launches}",
            f"grep -rl s3cret-of-team-a {node} {rig.config.job_temp_root}",
            f"ls {rig.config.job_temp_root}/victim-{victim.job_id}",
            "cat /proc/[0-9]*/environ | tr '\\0' '\\n' | grep TEAM_TOKEN",
            "echo probes-done",
        ]
    )
    attacker = launch_request(bash_job(probes), c, name="attacker")
    # The bot never starts a job on a VM another live job holds; a second backend, which has
    # not seen the victim's launch, does here: isolation on the node must hold by itself.
    blind = rig.backend(share, job_gid=JOB_GID, launch_check_seconds=0.0)
    try:
        result = await blind.start_job(attacker)
        status = await wait_for(blind, attacker.job_id)
    finally:
        await blind.aclose()
    out = await read_text(share, log_loc(result, "stdout.txt"))
    err = await read_text(share, log_loc(result, "stderr.txt"))
    await backend.terminate_job(victim.job_id)
    await wait_for(backend, victim.job_id)
    assert status.phase == "exited", status
    assert out.splitlines()[0] == str(node_scripts.job_uid(attacker.job_id))  # not root
    assert node_scripts.job_uid(attacker.job_id) != node_scripts.job_uid(victim.job_id)
    assert out.splitlines()[-1] == "probes-done"
    assert "password=" not in out and rig.config.storage_key not in out + err
    assert "s3cret-of-team-a" not in out + err
    denied = [line for line in err.splitlines() if line.endswith("Permission denied")]
    for target in (
        str(cred),
        f"{control}/.batchai/jobs",
        f"{control}/.batchai/noderunner.py",
        str(launches),
        f"victim-{victim.job_id}",
    ):
        assert any(target in line for line in denied), (target, err)
    runner = (rig.files.share_dir(BOT_SHARE) / ".batchai" / "noderunner.py").read_bytes()
    assert runner == Path(noderunner.__file__).read_bytes()
    # No spec of any job is left on the control share; the node-local copies are deleted once read.
    names = [e.name for e in await share.list_files(FileLocation(BOT_SHARE, ".batchai/jobs"))]
    for job_id in names:
        listing = await share.list_files(FileLocation(BOT_SHARE, f".batchai/jobs/{job_id}"))
        assert not [e.name for e in listing if e.name.endswith(".json") and "node" in e.name]
    assert not list(launches.glob("*/spec.json"))
    # The victim's own log lines reach the bot through its node's log journal, which lives under
    # `.batchai/jobs` (denied to jobs above); no other file on the control share holds the secret.
    journals = rig.files.share_dir(BOT_SHARE) / ".batchai" / "jobs" / victim.job_id
    for f in rig.files.share_dir(BOT_SHARE).rglob("*"):
        if f.is_dir() or (f.name == "logs.journal" and f.is_relative_to(journals)):
            continue
        assert b"s3cret-of-team-a" not in f.read_bytes(), f


async def test_a_runner_replaced_on_the_share_is_refused_on_the_node_not_run(
    rig: AzureRig, share: AzureShare
) -> None:
    backend = rig.backend(share, launch_check_seconds=0.0)
    c = cluster("c1", nodes=1)
    await backend.create_cluster(c)
    node = rig.arm.node_dir("c1", "0")
    marker = node / "evil-ran"
    evil = f"open({str(marker)!r}, 'w').write('pwned')\n".encode()
    # Whoever can write the share swaps the runner right after the bot wrote it.
    (rig.files.share_dir(BOT_SHARE) / ".batchai").mkdir(parents=True, exist_ok=True)
    rig.files.replace_after_write(BOT_SHARE, ".batchai/noderunner.py", evil)
    request = launch_request(job_spec("ok"), c)
    await backend.start_job(request)
    status = await wait_for(backend, request.job_id)
    assert status.exit_code == noderunner.EXIT_LAUNCH_ERROR
    assert "sha256 mismatch" in (status.detail or "")
    assert not marker.exists()
    # The next launch checks the runner again and puts the bot's own back.
    again = launch_request(job_spec("ok"), c, name="job2")
    await backend.start_job(again)
    assert (await wait_for(backend, again.job_id)).exit_code == 0
    on_share = (rig.files.share_dir(BOT_SHARE) / ".batchai" / "noderunner.py").read_bytes()
    assert (
        hashlib.sha256(on_share).digest()
        == hashlib.sha256(Path(noderunner.__file__).read_bytes()).digest()
    )
    assert not marker.exists()


async def test_an_altered_launch_record_is_refused_not_pasted_into_a_script(
    rig: AzureRig, share: AzureShare
) -> None:
    first = rig.backend(share)
    c = cluster("c1", nodes=1)
    await first.create_cluster(c)
    request = launch_request(job_spec("ok"), c)
    await first.start_job(request)
    await wait_for(first, request.job_id)
    await first.aclose()
    record = rig.files.share_dir(BOT_SHARE) / ".batchai" / "jobs" / request.job_id / "launch.json"
    sealed = json.loads(record.read_text())
    inner = json.loads(sealed["record"])
    inner["hosts"] = [["node", "10.0.0.4'; touch /pwned; '"]]
    record.write_text(json.dumps({**sealed, "record": json.dumps(inner, sort_keys=True)}))
    restarted = rig.backend(share)  # a restarted bot knows the job from the share only
    try:
        mark = rig.arm.mark()
        with pytest.raises(Exception, match="was altered"):
            await restarted.start_job(request)
        with pytest.raises(Exception, match="was altered"):
            await restarted.get_job_status(request.job_id)
        assert rig.arm.count(mark, method="PUT", match="/runCommands/") == 0
    finally:
        await restarted.aclose()


def _cluster_with(share_name: str) -> Cluster:
    return replace(cluster("c3", nodes=1), mounts=(ShareMount(share_name, "afs"),))


async def test_the_control_share_is_mounted_root_only_and_job_shares_for_the_job_user(
    rig: AzureRig, backend: AzureBackend
) -> None:
    await backend.create_cluster(_cluster_with(JOB_SHARE))
    model = json.dumps(rig.arm.scale_sets["c3"].model)
    log = (rig.arm.node_dir("c3", "0") / "run" / "fake-mounts.log").read_text()
    control = next(line for line in log.splitlines() if rig.config.control_mount in line)
    assert "uid=0,gid=0,dir_mode=0700,file_mode=0600" in control
    data = next(line for line in log.splitlines() if f"/{JOB_SHARE} " in line)
    assert f"uid=0,gid={JOB_GID},dir_mode=0770,file_mode=0660" in data
    assert "0777" not in log and "0777" not in model
    assert (rig.files.share_dir(BOT_SHARE).stat().st_mode & 0o777) == 0o700
