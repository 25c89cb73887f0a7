"""What only the local backend promises: processes, files on disk, links, mounts, containers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.backends.links import LinkSigner
from services.backends.local import LocalBackend, LocalShare
from services.backends.noderun.launch import docker_argv, share_from_url
from services.core.errors import NotAllowed, NotFound, UserError
from services.jobspec import load_job_spec
from services.models import FileLocation
from tests.contract import (
    JOB_SCRIPT,
    SCRIPT_PATH,
    SHARE,
    BackendKit,
    cluster,
    job_json,
    job_spec,
    launch_request,
    local_kit,
    log_loc,
    read_text,
    wait_for,
    wait_for_text,
)


@pytest.fixture
async def kit(tmp_path: Path) -> AsyncIterator[BackendKit]:
    k = local_kit(tmp_path)
    await k.put_file(SCRIPT_PATH, JOB_SCRIPT.encode())
    try:
        yield k
    finally:
        await k.cleanup()


@pytest.fixture
def share(tmp_path: Path) -> LocalShare:
    s = LocalShare(tmp_path, LinkSigner(b"secret", "http://127.0.0.1:8080/files"))
    root = s.create_share(SHARE)
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "a.txt").write_bytes(b"0123456789")
    (root / "dir" / "sub" / "b.txt").write_bytes(b"xyz")
    return s


def _backend(kit: BackendKit) -> LocalBackend:
    assert isinstance(kit.compute, LocalBackend)
    return kit.compute


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def _wait_gone(pgid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.05)
    return True


# --------------------------------------------------------------------------- processes


async def test_terminate_kills_the_whole_process_group(kit: BackendKit) -> None:
    c = cluster()
    await kit.compute.create_cluster(c)
    request = launch_request(job_spec("sleep"), c)
    result = await kit.start(request)
    text = await wait_for_text(kit.share, log_loc(result, "stdout.txt"), '"pgid"')
    pids = json.loads(text)
    assert pids["pgid"] == pids["pid"]  # the job leads its own group
    assert _group_alive(pids["pgid"])

    await kit.compute.terminate_job(request.job_id)
    status = await wait_for(kit.compute, request.job_id)
    assert (status.exit_code, status.detail) == (143, "terminated by user")
    # exit_code is written only after the group and its orphans were killed and reaped.
    assert not _group_alive(pids["pgid"])
    with pytest.raises(ProcessLookupError):
        os.kill(pids["child"], 0)


async def test_wall_clock_kill_takes_the_group_down_too(kit: BackendKit) -> None:
    c = cluster()
    await kit.compute.create_cluster(c)
    request = launch_request(job_spec("sleep", wall_clock="0:00:02"), c)
    result = await kit.start(request)
    pids = json.loads(await wait_for_text(kit.share, log_loc(result, "stdout.txt"), '"pgid"'))
    status = await wait_for(kit.compute, request.job_id)
    assert status.exit_code == 124
    assert not _group_alive(pids["pgid"])


async def test_a_vanished_runner_makes_the_job_lost(kit: BackendKit, tmp_path: Path) -> None:
    c = cluster()
    await kit.compute.create_cluster(c)
    request = launch_request(job_spec("sleep"), c)
    result = await kit.start(request)
    pids = json.loads(await wait_for_text(kit.share, log_loc(result, "stdout.txt"), '"pgid"'))
    runner_pid = int((tmp_path / "jobs" / request.job_id / "run" / "node-0" / "pid").read_text())
    os.kill(runner_pid, signal.SIGKILL)
    try:
        status = await wait_for(kit.compute, request.job_id, ("lost",), timeout=10)
        assert status.detail == "node runner disappeared"
    finally:
        os.killpg(pids["pgid"], signal.SIGKILL)  # the orphaned job is ours to clean up
        await _wait_gone(pids["pgid"])


async def test_runners_carry_no_bot_secrets_and_specs_are_private(
    kit: BackendKit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    c = cluster()
    await kit.compute.create_cluster(c)
    request = launch_request(job_spec("sleep"), c)
    result = await kit.start(request)
    await wait_for_text(kit.share, log_loc(result, "stdout.txt"), '"pgid"')
    run = tmp_path / "jobs" / request.job_id / "run"
    runner_pid = int((run / "node-0" / "pid").read_text())
    environ = Path(f"/proc/{runner_pid}/environ")
    if environ.exists():
        assert b"xoxb-secret" not in environ.read_bytes()
    assert (run / "node-0.json").stat().st_mode & 0o077 == 0


async def test_list_nodes_shows_the_busy_slot(kit: BackendKit) -> None:
    c = cluster(nodes=3)
    await kit.compute.create_cluster(c)
    request = launch_request(job_spec("sleep"), c, (1,))
    result = await kit.start(request)
    await wait_for_text(kit.share, log_loc(result, "stdout.txt"), '"pgid"')
    nodes = await kit.compute.list_nodes(c)
    assert [(n.id, n.state, n.port) for n in nodes] == [
        ("c1-node-0", "idle", 50000),
        ("c1-node-1", "running", 50001),
        ("c1-node-2", "idle", 50002),
    ]
    await kit.compute.terminate_job(request.job_id)
    await wait_for(kit.compute, request.job_id)
    assert {n.state for n in await kit.compute.list_nodes(c)} == {"idle"}


async def test_launch_error_gives_127_and_a_one_line_stderr(kit: BackendKit) -> None:
    c = cluster()
    await kit.compute.create_cluster(c)
    request = launch_request(job_spec("ok", interpreter="/nonexistent/python3"), c)
    result = await kit.start(request)
    status = await wait_for(kit.compute, request.job_id)
    assert status.exit_code == 127
    stderr = await read_text(kit.share, log_loc(result, "stderr.txt"))
    assert stderr.count("\n") == 1 and "/nonexistent/python3" in stderr


async def test_preparing_then_running_phases(kit: BackendKit) -> None:
    c = cluster()
    await kit.compute.create_cluster(c)
    assert isinstance(kit.share, LocalShare)
    gate = kit.share.create_share(SHARE) / "gate"
    prep = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    request = launch_request(job_spec("sleep", preparation=prep), c)
    result = await kit.start(request)
    assert (await kit.compute.get_job_status(request.job_id)).phase == "preparing"
    gate.touch()
    await wait_for(kit.compute, request.job_id, ("running",))
    await wait_for_text(kit.share, log_loc(result, "stdout.txt"), '"pgid"')


async def test_bad_job_id_is_refused(kit: BackendKit) -> None:
    with pytest.raises(UserError):
        await kit.compute.get_job_status("../../etc")


# --------------------------------------------------------------------------- layout and mounts


async def test_cluster_mount_is_a_link_to_the_share_and_delete_keeps_data(
    kit: BackendKit, tmp_path: Path
) -> None:
    c = cluster()
    await kit.compute.create_cluster(c)
    link = tmp_path / "clusters" / "c1" / "mounts" / "afs"
    assert link.is_symlink() and link.resolve() == (tmp_path / "shares" / SHARE).resolve()
    request = launch_request(job_spec("ok"), c)
    result = await kit.start(request)
    await wait_for(kit.compute, request.job_id)
    assert result.layout.stdouterr is not None
    on_disk = tmp_path / "shares" / SHARE / result.layout.stdouterr.path / "stdout.txt"
    assert on_disk.is_file() and not on_disk.is_symlink()

    await kit.compute.delete_cluster(c)
    assert not (tmp_path / "clusters" / "c1").exists()
    assert on_disk.is_file()  # deleting a cluster never touches its shares


async def test_job_level_mount_volumes_link_shares_by_url_and_container(
    kit: BackendKit, tmp_path: Path
) -> None:
    c = cluster(mounts=())
    await kit.compute.create_cluster(c)
    await kit.put_file("scripts/job.py", JOB_SCRIPT.encode())
    raw = job_json("ok")
    props = raw["properties"]
    props["mountVolumes"] = {
        "azureFileShares": [
            {
                "azureFileUrl": f"https://acct.file.core.windows.net/{SHARE}",
                "relativeMountPath": "afs",
            }
        ],
        "azureBlobFileSystems": [
            {"accountName": "acct", "containerName": "blobs", "relativeMountPath": "bfs"}
        ],
    }
    props["pyTorchSettings"]["pythonScriptFilePath"] = (
        "$AZ_BATCHAI_JOB_MOUNT_ROOT/afs/scripts/job.py"
    )
    props["stdOutErrPathPrefix"] = "$AZ_BATCHAI_JOB_MOUNT_ROOT/afs"
    props["outputDirectories"][0]["pathPrefix"] = "$AZ_BATCHAI_JOB_MOUNT_ROOT/bfs"
    request = launch_request(load_job_spec(json.dumps(raw)), c)
    result = await kit.start(request)
    assert (await wait_for(kit.compute, request.job_id)).exit_code == 0
    assert result.layout.stdouterr is not None and result.layout.stdouterr.share == SHARE
    model = result.layout.outputs["MODEL"]
    assert model.share == "blobs"
    assert (tmp_path / "shares" / "blobs" / model.path / "model.txt").is_file()


async def test_logs_off_a_share_are_reported_as_not_streamable(kit: BackendKit) -> None:
    c = cluster()
    await kit.compute.create_cluster(c)
    spec = job_spec("ok", extra={"stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_TEMP_DIR"})
    request = launch_request(spec, c)
    result = await kit.start(request)
    assert result.layout.stdouterr is None
    assert any("not on a file share" in n for n in result.notes)
    assert (await wait_for(kit.compute, request.job_id)).exit_code == 0


async def test_download_link_verifies_and_serves_the_file(kit: BackendKit) -> None:
    c = cluster()
    await kit.compute.create_cluster(c)
    request = launch_request(job_spec("ok"), c)
    result = await kit.start(request)
    await wait_for(kit.compute, request.job_id)
    loc = result.layout.outputs["MODEL"].child("model.txt")
    url = await kit.share.get_download_url(loc, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    token = url.split("/files/", 1)[1].split("/", 1)[0]
    signer = LinkSigner(b"contract-secret", "http://127.0.0.1:8080/files")
    granted = signer.verify(token)
    assert granted == loc
    assert isinstance(kit.share, LocalShare)
    assert kit.share.local_path(granted).read_text() == "weights of task 0\n"
    with pytest.raises(NotFound):
        await kit.share.get_download_url(
            loc.child("nope"), expires_at=datetime.now(UTC) + timedelta(minutes=5)
        )


# --------------------------------------------------------------------------- containers


def test_docker_argv_is_a_list_with_names_not_values() -> None:
    argv = docker_argv(
        docker="/usr/bin/docker",
        name="job-abc-master-0",
        image="pytorch/pytorch:1.0",
        argv=("python", "train.py", "; rm -rf /"),
        env_names=["SECRET", "AZ_BATCHAI_TASK_INDEX"],
        volumes=["/data/shares", "/data/jobs/abc"],
        workdir="/data/jobs/abc/wd",
        shm_size="16gb",
    )
    assert argv == (
        "/usr/bin/docker", "run", "--rm", "--name", "job-abc-master-0", "--network", "host",
        "--init", "-v", "/data/shares:/data/shares", "-v", "/data/jobs/abc:/data/jobs/abc",
        "-w", "/data/jobs/abc/wd", "--shm-size", "16gb", "-e", "AZ_BATCHAI_TASK_INDEX",
        "-e", "SECRET", "pytorch/pytorch:1.0", "python", "train.py", "; rm -rf /",
    )  # fmt: skip


async def test_container_job_without_an_engine_runs_on_the_host(tmp_path: Path) -> None:
    kit = local_kit(tmp_path)
    kit.compute = LocalBackend(tmp_path, grace_seconds=0.5, containers=False)
    await kit.put_file(SCRIPT_PATH, JOB_SCRIPT.encode())
    try:
        c = cluster()
        await kit.compute.create_cluster(c)
        container = {"imageSourceRegistry": {"image": "pytorch/pytorch:1.0"}}
        request = launch_request(job_spec("ok", extra={"containerSettings": container}), c)
        result = await kit.start(request)
        assert (
            "container image pytorch/pytorch:1.0 requested; no container engine on this "
            "machine, so the job runs on the host"
        ) in result.notes
        status = await wait_for(kit.compute, request.job_id)
        assert status.exit_code == 0
        out = json.loads(await read_text(kit.share, log_loc(result, "stdout.txt")))
        assert out["env"]["AZ_BATCHAI_TASK_INDEX"] == "0"
    finally:
        await kit.cleanup()


# --------------------------------------------------------------------------- the share


@pytest.mark.parametrize(
    "path", ["../other/x", "dir/../../x", "/etc/passwd", "dir/\x00", "dir\\a.txt"]
)
async def test_share_refuses_paths_that_leave_it(share: LocalShare, path: str) -> None:
    with pytest.raises(NotAllowed):
        await share.read_range(FileLocation(SHARE, path), 0, 10)


async def test_share_refuses_symlinks_that_escape(share: LocalShare, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("bot token")
    root = share.share_dir(SHARE)
    (root / "dir" / "escape").symlink_to(secret)
    (root / "dir" / "inside").symlink_to(root / "dir" / "a.txt")
    with pytest.raises(NotAllowed):
        await share.read_range(FileLocation(SHARE, "dir/escape"), 0, 10)
    with pytest.raises(NotAllowed):
        share.local_path(FileLocation(SHARE, "dir/escape"))
    assert await share.read_range(FileLocation(SHARE, "dir/inside"), 0, 3) == b"012"
    names = [e.name for e in await share.list_files(FileLocation(SHARE, "dir"), recursive=True)]
    assert names == ["a.txt", "inside", "sub", "sub/b.txt"]


async def test_share_names_and_missing_shares(share: LocalShare) -> None:
    with pytest.raises(NotFound):
        await share.read_range(FileLocation("missing", "a"), 0, 1)
    with pytest.raises(NotFound):
        await share.read_range(FileLocation("Bad_Name", "a"), 0, 1)
    assert await share.stat(FileLocation("missing", "a")) is None
    with pytest.raises(UserError):
        share.create_share("-bad")
    with pytest.raises(NotFound):
        await share.read_range(FileLocation(SHARE, "dir"), 0, 1)  # a directory
    with pytest.raises(NotFound):
        await share.list_files(FileLocation(SHARE, "dir/a.txt"))  # a file
    with pytest.raises(NotFound):
        share.local_path(FileLocation(SHARE, "dir"))


async def test_share_reads_large_ranges_exactly(share: LocalShare) -> None:
    blob = os.urandom(3 << 20)
    (share.share_dir(SHARE) / "big.bin").write_bytes(blob)
    loc = FileLocation(SHARE, "big.bin")
    assert await share.read_range(loc, 1000, 2 << 20) == blob[1000 : 1000 + (2 << 20)]
    assert await share.read_range(loc, len(blob) - 5, 1 << 20) == blob[-5:]


def test_seed_share_copies_once_and_again_when_changed(share: LocalShare, tmp_path: Path) -> None:
    src = tmp_path / "examples"
    (src / "mnist" / "__pycache__").mkdir(parents=True)
    (src / "mnist" / "train.py").write_text("print('hi')\n")
    (src / "mnist" / "README.md").write_text("# mnist\n")
    (src / "mnist" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert share.seed_share(SHARE, src, "examples") == 2
    assert share.seed_share(SHARE, src, "examples") == 0
    dest = share.share_dir(SHARE) / "examples" / "mnist"
    assert (dest / "train.py").read_text() == "print('hi')\n"
    assert not (dest / "__pycache__").exists()
    (src / "mnist" / "train.py").write_text("print('changed')\n")
    os.utime(src / "mnist" / "train.py", (time.time() + 5, time.time() + 5))
    assert share.seed_share(SHARE, src, "examples") == 1
    assert (dest / "train.py").read_text() == "print('changed')\n"


def test_share_from_url() -> None:
    assert share_from_url("https://acct.file.core.windows.net/batchaiquickstart") == (
        "batchaiquickstart"
    )
    assert share_from_url("https://acct.file.core.windows.net/logs/") == "logs"
    with pytest.raises(UserError):
        share_from_url("https://acct.file.core.windows.net/")


async def test_a_launch_cut_short_is_completed_not_repeated(
    kit: BackendKit, tmp_path: Path
) -> None:
    backend = _backend(kit)
    c = cluster()
    await backend.create_cluster(c)
    request = launch_request(job_spec("ok"), c)
    kit.started.append(request.job_id)
    # The bot died after recording the launch and before starting any runner.
    await backend._prepare(request)
    assert (await backend.get_job_status(request.job_id)).phase == "preparing"
    launch = tmp_path / "jobs" / request.job_id / "run" / "launch.json"
    old = time.time() - 3600
    os.utime(launch, (old, old))
    lost = await backend.get_job_status(request.job_id)
    assert (lost.phase, lost.detail) == ("lost", "node runner disappeared")

    result = await kit.restart().start_job(request)  # the retry completes the launch
    assert (await wait_for(backend, request.job_id)).exit_code == 0
    assert len((await read_text(kit.share, log_loc(result, "stdout.txt"))).splitlines()) == 1


async def test_terminating_a_launch_cut_short_starts_nothing(kit: BackendKit) -> None:
    backend = _backend(kit)
    c = cluster()
    await backend.create_cluster(c)
    request = launch_request(job_spec("ok"), c)
    kit.started.append(request.job_id)
    await backend._prepare(request)  # recorded, no runner started yet
    await backend.terminate_job(request.job_id)
    status = await backend.get_job_status(request.job_id)
    assert (status.phase, status.exit_code, status.detail) == ("exited", 143, "terminated by user")
    result = await backend.start_job(request)  # a late retry must not run it after all
    assert await read_text(kit.share, log_loc(result, "stdout.txt")) == ""
    assert (await backend.get_job_status(request.job_id)).exit_code == 143
