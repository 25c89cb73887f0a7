"""The ComputeBackend / FileShare contract, run against every backend: local and azure-on-fakes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.core.errors import NotFound
from services.models import FileLocation
from tests.contract import (
    JOB_SCRIPT,
    SCRIPT_PATH,
    BackendKit,
    azure_kit,
    cluster,
    job_spec,
    launch_request,
    local_kit,
    log_loc,
    read_text,
    wait_for,
    wait_for_text,
)


@pytest.fixture(params=["local", "azure"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BackendKit]:
    # azure: the real SDK clients against the fake ARM (TLS) and Files servers.
    async with AsyncExitStack() as stack:
        if request.param == "local":
            kit = local_kit(tmp_path)
        else:
            kit = await azure_kit(tmp_path, stack)
        await kit.put_file(SCRIPT_PATH, JOB_SCRIPT.encode())
        try:
            yield kit
        finally:
            await kit.cleanup()


# --------------------------------------------------------------------------- clusters


async def test_cluster_create_resize_delete_are_idempotent(backend: BackendKit) -> None:
    c = cluster("grow", nodes=2)
    await backend.compute.create_cluster(c)
    await backend.compute.create_cluster(c)
    nodes = await backend.compute.list_nodes(c)
    assert [n.index for n in nodes] == [0, 1]
    assert len({n.id for n in nodes}) == 2
    assert {n.state for n in nodes} == {"idle"}

    await backend.compute.resize_cluster(c, 3)
    await backend.compute.resize_cluster(c, 3)
    assert len(await backend.compute.list_nodes(c)) == 3
    await backend.compute.resize_cluster(c, 1)
    assert len(await backend.compute.list_nodes(c)) == 1

    await backend.compute.delete_cluster(c)
    await backend.compute.delete_cluster(c)
    with pytest.raises(NotFound):
        await backend.compute.list_nodes(c)


# --------------------------------------------------------------------------- node exec


async def test_run_on_node_answers_output_and_exit_code(backend: BackendKit) -> None:
    c = cluster(nodes=2)
    await backend.compute.create_cluster(c)
    second = (await backend.compute.list_nodes(c))[1].id
    out = await backend.compute.run_on_node(
        c,
        second,
        'echo "on $AZ_BATCHAI_MOUNT_ROOT"; echo oops >&2; exit 7',
        timeout=60,
        job_id=None,
    )
    assert (out.node_id, out.exit_code, out.timed_out, out.truncated) == (second, 7, False, False)
    lines = out.output.splitlines()
    assert lines[0].startswith("on /") and lines[0].rstrip("/").endswith("mounts")
    assert "oops" in lines
    # the command line reaches the node's bash as one argument, quotes and all
    quoted = await backend.compute.run_on_node(
        c, second, "printf '%s|' \"a b\" 'it''s' $((6*7))", timeout=60, job_id=None
    )
    assert quoted.output == "a b|its|42|"


async def test_run_on_node_keeps_the_end_of_long_output_and_says_why(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    node = (await backend.compute.list_nodes(c))[0].id
    out = await backend.compute.run_on_node(c, node, "seq 1 100000", timeout=60, job_id=None)
    assert out.exit_code == 0 and out.output.endswith("99999\n100000\n")
    assert out.truncated and out.limit  # the local backend keeps 64 KB, Azure 4 KB
    assert not out.output.startswith("1\n")


async def test_run_on_node_stops_a_command_at_its_time_limit(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    node = (await backend.compute.list_nodes(c))[0].id
    out = await backend.compute.run_on_node(
        c, node, "echo started; sleep 30; echo never", timeout=1, job_id=None
    )
    assert out.timed_out and out.exit_code is None
    assert "started" in out.output and "never" not in out.output


async def test_run_on_node_refuses_a_node_it_does_not_have(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    with pytest.raises(NotFound):
        await backend.compute.run_on_node(c, "no-such-node", "true", timeout=5, job_id=None)


# --------------------------------------------------------------------------- jobs


async def test_job_runs_to_exit_zero_in_the_batch_ai_layout(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("ok"), c)
    result = await backend.start(request)

    status = await wait_for(backend.compute, request.job_id)
    assert status.exit_code == 0
    assert status.started_at is not None and status.ended_at is not None
    assert status.ended_at >= status.started_at

    layout = result.layout
    assert layout.stdouterr is not None
    assert layout.stdouterr.path.endswith(
        f"workspaces/ws/experiments/exp/jobs/job1/{request.job_id}/stdouterr"
    )
    assert layout.log_files == ("stdout.txt", "stderr.txt")
    assert layout.primary_log == "stderr.txt"
    out = json.loads(await read_text(backend.share, log_loc(result, "stdout.txt")))
    assert out["task"] == "0"
    assert out["env"]["AZ_BATCHAI_STDOUTERR_DIR"].endswith("/stdouterr")
    assert "Epoch 1/1 - loss: 0.5" in await read_text(backend.share, log_loc(result, "stderr.txt"))

    model = layout.outputs["MODEL"]
    assert model.path.endswith(f"jobs/job1/{request.job_id}/outputs/model")
    entries = await backend.share.list_files(model)
    assert [(e.name, e.is_directory) for e in entries] == [("model.txt", False)]
    assert entries[0].size == len("weights of task 0\n")
    url = await backend.share.get_download_url(
        model.child("model.txt"), expires_at=datetime.now(UTC) + timedelta(minutes=5)
    )
    assert url.startswith("http")


async def test_each_node_writes_its_execution_log_beside_stdout(backend: BackendKit) -> None:
    c = cluster(nodes=2)
    await backend.compute.create_cluster(c)
    nodes = await backend.compute.list_nodes(c)
    request = launch_request(job_spec("ok", node_count=2, process_count=2), c, (0, 1))
    result = await backend.start(request)
    assert (await wait_for(backend.compute, request.job_id)).exit_code == 0
    assert result.layout.stdouterr is not None
    names = {e.name for e in await backend.share.list_files(result.layout.stdouterr)}
    for rank, n in enumerate(nodes):
        log = await read_text(backend.share, log_loc(result, f"execution-{n.id}.log"))
        assert f"execution-{n.id}.log" in names
        assert f"job job1 (id {request.job_id}) on cluster c1, node {n.id} ({rank + 1} of 2)" in log
        assert f"rank {rank} started, pid " in log and f"rank {rank} exited with code 0" in log
        assert f"the job's nodes: {nodes[0].id}, {nodes[1].id}" in log
        assert log.rstrip().endswith("job ended on this node: exit code 0")


async def test_non_zero_exit_is_reported(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("fail 3"), c)
    result = await backend.start(request)
    status = await wait_for(backend.compute, request.job_id)
    assert status.exit_code == 3
    assert "failing on purpose" in await read_text(backend.share, log_loc(result, "stderr.txt"))


async def test_terminate_ends_the_job_as_terminated_by_user(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("sleep"), c)
    result = await backend.start(request)
    await wait_for_text(backend.share, log_loc(result, "stdout.txt"), '"pgid"')
    assert (await backend.compute.get_job_status(request.job_id)).phase == "running"

    await backend.compute.terminate_job(request.job_id)
    await backend.compute.terminate_job(request.job_id)  # a second click is harmless
    status = await wait_for(backend.compute, request.job_id)
    assert (status.exit_code, status.detail) == (143, "terminated by user")
    await backend.compute.terminate_job(request.job_id)  # and so is one after the end


async def test_max_wall_clock_time_is_enforced(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("sleep", wall_clock="0:00:02"), c)
    await backend.start(request)
    status = await wait_for(backend.compute, request.job_id)
    assert status.exit_code == 124
    assert status.detail == "max wall clock time 0:00:02 exceeded"


async def test_failed_job_preparation_fails_the_job(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("ok", preparation="echo preparing; exit 4"), c)
    result = await backend.start(request)
    status = await wait_for(backend.compute, request.job_id)
    assert status.exit_code == 4
    assert status.detail == "job preparation failed on node 0 (exit 4)"
    prep_logs = [n for n in result.layout.log_files if "job_prep" in n]
    assert len(prep_logs) == 2 and result.layout.log_files[:2] == tuple(prep_logs)
    assert "preparing" in await read_text(backend.share, log_loc(result, prep_logs[0]))
    assert await read_text(backend.share, log_loc(result, "stdout.txt")) == ""  # never ran


async def test_multi_node_ranks_see_their_own_task_index(backend: BackendKit) -> None:
    c = cluster(nodes=2)
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("ok", node_count=2, process_count=2), c, (0, 1))
    result = await backend.start(request)
    status = await wait_for(backend.compute, request.job_id)
    assert status.exit_code == 0
    assert {"stdout-0.txt", "stdout-1.txt", "stderr-0.txt"} <= set(result.layout.log_files)
    assert result.layout.primary_log == "stderr-0.txt"
    for rank in (0, 1):
        out = json.loads(await read_text(backend.share, log_loc(result, f"stdout-{rank}.txt")))
        assert out["task"] == str(rank)
        assert out["env"]["RANK"] == str(rank)
        assert out["env"]["WORLD_SIZE"] == "2"


async def test_a_failing_rank_stops_the_others(backend: BackendKit) -> None:
    c = cluster(nodes=2)
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("rank-fail", node_count=2, process_count=2), c, (0, 1))
    await backend.start(request)
    status = await wait_for(backend.compute, request.job_id)
    assert status.exit_code == 5  # the failing rank's code, not the 143 of the rank we stopped
    assert status.detail is not None and "rank 1" in status.detail


async def test_hostile_arguments_reach_argv_literally(backend: BackendKit, tmp_path: Path) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    marker = tmp_path / "pwned"
    hostile = [
        "; rm -rf / #",
        f"$(touch {marker})",
        f"`touch {marker}`",
        "&&",
        "|",
        "a b",
        "it's",
        "*",
        "$NOT_A_DEFINED_VARIABLE",
        "\\n",
    ]
    args = "argv " + " ".join(_quote(a) for a in hostile)
    request = launch_request(job_spec(args), c)
    result = await backend.start(request)
    assert (await wait_for(backend.compute, request.job_id)).exit_code == 0
    argv = json.loads(await read_text(backend.share, log_loc(result, "stdout.txt")))
    assert argv == hostile
    assert not marker.exists()


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"


async def test_job_environment_does_not_inherit_the_bots_secrets(
    backend: BackendKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "storage-key-secret")
    c = cluster()
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("ok"), c)
    result = await backend.start(request)
    assert (await wait_for(backend.compute, request.job_id)).exit_code == 0
    text = await read_text(backend.share, log_loc(result, "stdout.txt"))
    env = json.loads(text)["env"]
    assert "AZ_BATCHAI_MOUNT_ROOT" in env  # the job's own environment is there
    assert "SLACK_BOT_TOKEN" not in env and "AZURE_STORAGE_KEY" not in env
    assert "xoxb-secret" not in text and "storage-key-secret" not in text


async def test_status_is_readable_by_a_restarted_backend(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("sleep"), c)
    result = await backend.start(request)
    await wait_for_text(backend.share, log_loc(result, "stdout.txt"), '"pgid"')

    restarted = backend.restart()  # no memory of the job: only what the backend persisted
    assert (await restarted.get_job_status(request.job_id)).phase == "running"
    await restarted.terminate_job(request.job_id)
    status = await wait_for(restarted, request.job_id)
    assert status.exit_code == 143
    assert await backend.compute.get_job_status(request.job_id) == status
    await restarted.aclose()


async def test_start_job_is_idempotent_by_job_id(backend: BackendKit) -> None:
    c = cluster()
    await backend.compute.create_cluster(c)
    request = launch_request(job_spec("ok"), c)
    first = await backend.start(request)
    await wait_for(backend.compute, request.job_id)
    second = await backend.compute.start_job(request)
    again = await backend.restart().start_job(request)
    assert first == second == again
    status = await wait_for(backend.compute, request.job_id)
    assert status.exit_code == 0
    stdout = await read_text(backend.share, log_loc(first, "stdout.txt"))
    assert len(stdout.splitlines()) == 1  # launched once


async def test_unknown_job_is_not_found_and_terminating_it_is_harmless(
    backend: BackendKit,
) -> None:
    with pytest.raises(NotFound):
        await backend.compute.get_job_status("0" * 32)
    await backend.compute.terminate_job("0" * 32)  # never started here: nothing to stop
    with pytest.raises(NotFound):
        await backend.compute.get_job_status("0" * 32)


async def test_share_reads_ranges_and_lists(backend: BackendKit) -> None:
    await backend.put_file("dir/a.txt", b"0123456789")
    await backend.put_file("dir/sub/b.txt", b"xyz")
    loc = FileLocation("data", "dir/a.txt")
    assert await backend.share.read_range(loc, 2, 3) == b"234"
    assert await backend.share.read_range(loc, 8, 100) == b"89"
    assert await backend.share.read_range(loc, 10, 5) == b""
    assert await backend.share.read_range(loc, 50, 5) == b""
    entry = await backend.share.stat(loc)
    assert entry is not None and entry.size == 10 and not entry.is_directory
    assert await backend.share.stat(FileLocation("data", "dir/missing.txt")) is None

    top = await backend.share.list_files(FileLocation("data", "dir"))
    assert [(e.name, e.is_directory) for e in top] == [("a.txt", False), ("sub", True)]
    deep = await backend.share.list_files(FileLocation("data", "dir"), recursive=True)
    assert [e.name for e in deep] == ["a.txt", "sub", "sub/b.txt"]
    with pytest.raises(NotFound):
        await backend.share.list_files(FileLocation("data", "nope"))
