"""The node runner's log journal on the azure backend: the real runner on the fake nodes copies
every byte of every log into one journal per node, and the bot's tail round reads that journal
(one ranged GET per node) instead of each log, reading a log itself only to fill a gap."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from services.backends.azure.backend import AzureBackend
from services.backends.azure.files import AzureShare
from services.backends.noderun.runner import journal_data
from services.clusters.service import ClusterService
from services.core.clock import FakeClock
from services.jobs.lifecycle import JobState
from services.jobs.runner import JobRunner
from services.jobs.service import JobRequest, JobService
from services.jobs.sources import ConfigLoader
from services.jobs.tailer import split_records
from services.models import Actor, ConfigSource, Conversation, FileLocation, Job
from services.store import SqlStore
from tests.azure.rig import JOB_SHARE, AzureRig
from tests.contract import cluster, job_json, job_spec, launch_request, read_text, wait_for

GUARD = 60.0


async def read_bytes(share: AzureShare, loc: FileLocation) -> bytes:
    return (await read_text(share, loc)).encode()


async def test_each_nodes_journal_holds_every_byte_of_its_logs(
    rig: AzureRig, backend: AzureBackend, share: AzureShare
) -> None:
    c = cluster("duo", nodes=2)
    await backend.create_cluster(c)
    request = launch_request(job_spec("ok", node_count=2, process_count=2), c, (0, 1))
    result = await backend.start_job(request)
    assert (await wait_for(backend, request.job_id)).exit_code == 0
    layout = result.layout
    assert layout.stdouterr is not None and len(layout.journals) == 2
    copied: dict[str, bytes] = defaultdict(bytes)
    beats = 0
    for journal in layout.journals:
        records, used = split_records(await read_bytes(share, journal))
        assert used == len(await read_bytes(share, journal))  # nothing half-written is left
        for r in records:
            if r.name is None:
                beats += 1
                continue
            assert r.offset == len(copied[r.name])  # contiguous: no byte skipped or repeated
            copied[r.name] += r.data
    assert beats >= 2  # each runner says it is there before anything is written
    logs = {name: await read_bytes(share, layout.stdouterr.child(name)) for name in copied}
    assert set(copied) >= {"stdout-0.txt", "stdout-1.txt", "stderr-0.txt", "stderr-1.txt"}
    assert copied == logs
    assert all(logs[f"stdout-{rank}.txt"] for rank in (0, 1))


async def streaming_job(
    rig: AzureRig,
    backend: AzureBackend,
    share: AzureShare,
    store: SqlStore,
    tmp_path: Path,
    clock: FakeClock,
) -> tuple[JobRunner, Job, Path]:
    actor = Actor("U1", Conversation("C1"))
    c = cluster("c1", nodes=1)
    await backend.create_cluster(c)
    await store.insert_cluster(c)
    clusters = ClusterService(
        store=store,
        backend=backend,
        clock=clock,
        configs=ConfigLoader(tmp_path),
        resource_group="rg",
        workspace="ws",
    )
    jobs = JobService(
        store=store,
        share=share,
        clock=clock,
        configs=ConfigLoader(tmp_path),
        resource_group="rg",
        workspace="ws",
    )
    gate = rig.files.share_dir(JOB_SHARE) / "go"
    config = ConfigSource("inline", json.dumps(job_json(f"stream 3 {gate}")))
    job = await jobs.create_job(JobRequest("streamer", "c1", config), actor=actor)
    runner = JobRunner(store=store, backend=backend, share=share, clusters=clusters, clock=clock)
    for _ in range(400):
        await asyncio.wait_for(runner.tick(), GUARD)
        clock.advance(timedelta(seconds=30))
        fresh = await store.get_job(job.id)
        offsets = await store.get_log_offsets(job.id)
        if fresh and fresh.state is JobState.RUNNING and offsets.get("stdout.txt", (0, 0))[1] == 3:
            return runner, fresh, gate
        await asyncio.sleep(0.05)
    raise AssertionError(f"the job did not stream: {await store.get_log_offsets(job.id)}")


async def test_a_round_reads_one_journal_per_job_and_no_log(
    rig: AzureRig, backend: AzureBackend, share: AzureShare, store: SqlStore, tmp_path: Path
) -> None:
    clock = FakeClock()
    runner, job, gate = await streaming_job(rig, backend, share, store, tmp_path, clock)
    assert job.layout is not None and job.layout.stdouterr is not None
    journal = job.layout.journals[0]
    logs = {job.layout.stdouterr.child(n).path for n in job.layout.log_files}
    assert logs  # stdout.txt and stderr.txt
    # The journal grows (the test appends as the runner would; it also beats every 0.5 s).
    log = rig.files.share_dir(JOB_SHARE) / job.layout.stdouterr.child("stdout.txt").path
    control = rig.files.share_dir(journal.share) / journal.path
    for extra in (4, 5):
        data = f"line {extra}\n".encode()
        with log.open("ab") as f:
            f.write(data)
            size = f.tell()
        with control.open("ab") as f:
            f.write(journal_data("stdout.txt", size - len(data), data, size))
        rig.files.reset_counters()
        runner._clock.advance(timedelta(seconds=30))  # type: ignore[attr-defined]
        await runner.tail_logs()
        reads = [r for r in rig.files.requests if r.op == "GetFile"]
        assert [r.path for r in reads] == [journal.path]  # one request for the job, no log
        assert (await store.get_log_offsets(job.id))["stdout.txt"][1] == extra
    gate.write_text("go")
    await wait_for(backend, job.id)


async def test_a_gap_in_the_journal_is_read_from_the_log_itself(
    rig: AzureRig, backend: AzureBackend, share: AzureShare, store: SqlStore, tmp_path: Path
) -> None:
    clock = FakeClock()
    runner, job, gate = await streaming_job(rig, backend, share, store, tmp_path, clock)
    assert job.layout is not None and job.layout.stdouterr is not None
    journal = job.layout.journals[0]
    log = rig.files.share_dir(JOB_SHARE) / job.layout.stdouterr.child("stdout.txt").path
    control = rig.files.share_dir(journal.share) / journal.path
    with log.open("ab") as f:  # two lines the journal never carries (it skipped ahead)
        f.write(b"line 4\nline 5\n")
        f.write(b"line 6\n")
        size = f.tell()
    with control.open("ab") as f:
        f.write(journal_data("stdout.txt", size - 7, b"line 6\n", size))
    rig.files.reset_counters()
    runner._clock.advance(timedelta(seconds=30))  # type: ignore[attr-defined]
    await runner.tail_logs()
    read = [r.path for r in rig.files.requests if r.op == "GetFile"]
    assert read == [journal.path, job.layout.stdouterr.child("stdout.txt").path]
    offsets = await store.get_log_offsets(job.id)
    assert offsets["stdout.txt"] == (size, 6)
    snippets = [
        e for _, e in await store.pending_events(1000, job_id=job.id) if e.kind == "log_snippet"
    ]
    lines = [line for s in snippets for line in s.lines]  # type: ignore[attr-defined]
    assert lines == [f"line {i}" for i in range(1, 7)]  # every line once, in order
    gate.write_text("go")
    await wait_for(backend, job.id)
