"""SqlStore on real SQLite: migrations, FIFO order, optimistic updates, the event outbox."""

import pytest

from services.core.errors import Conflict
from services.core.events import JobFinished, JobStateChanged, LogSnippet, OutputFile
from services.jobs.lifecycle import JobState, advance
from services.models import (
    Conversation,
    FileLocation,
    JobLayout,
    JobSweep,
    MetricPoint,
    Progress,
)
from services.store import SqlStore
from tests.conftest import NOW, make_cluster, make_job


async def test_migrate_is_idempotent(store: SqlStore) -> None:
    await store.migrate()
    assert await store.list_clusters() == []


async def test_cluster_round_trip_and_duplicate(store: SqlStore) -> None:
    cluster = make_cluster(conversation=Conversation("C1", "1.2", "U1"))
    await store.insert_cluster(cluster)
    assert await store.get_cluster("c1") == cluster
    with pytest.raises(Conflict):
        await store.insert_cluster(cluster)


async def test_job_round_trip_keeps_every_field(store: SqlStore) -> None:
    layout = JobLayout(
        FileLocation("s", "a/stdouterr"),
        {"MODEL": FileLocation("s", "a/outputs/model")},
        ("stdout.txt", "stderr.txt"),
        "stderr.txt",
    )
    job = make_job(
        layout=layout,
        nodes=(0, 1),
        progress=Progress(3, 10),
        last_metrics={"loss": 0.5},
        conversation=Conversation("C1", "1.2", "U1"),
        started_at=NOW,
    )
    await store.insert_job(job)
    assert await store.get_job(job.id) == job
    assert await store.find_job("j1") == job


async def test_live_job_names_are_unique_until_deleted(store: SqlStore) -> None:
    await store.insert_job(make_job())
    with pytest.raises(Conflict):
        await store.insert_job(make_job(id="other"))
    async with store.unit() as uow:
        await uow.jobs.delete("id-j1")
        await uow.commit()
    assert await store.find_job("j1") is None
    await store.insert_job(make_job(id="other"))
    assert (await store.find_job("j1")).id == "other"  # type: ignore[union-attr]


async def test_jobs_list_in_submission_order(store: SqlStore) -> None:
    for name in ("b", "a", "c"):
        await store.insert_job(make_job(name))
    assert [j.name for j in await store.list_jobs()] == ["b", "a", "c"]
    preparing = advance(make_job("a"), JobState.PREPARING, nodes=(0,))
    assert preparing is not None
    await store.update_job(preparing.job, transition=preparing.transition)
    running = advance(preparing.job, JobState.RUNNING)
    assert running is not None
    await store.update_job(running.job, transition=running.transition)
    queued = await store.list_jobs(states=[JobState.QUEUED])
    assert [j.name for j in queued] == ["b", "c"]


async def test_update_with_expect_refuses_a_moved_job(store: SqlStore) -> None:
    job = await store.insert_job(make_job())
    event = JobStateChanged(job_id=job.id, old="queued", new="preparing")
    preparing = advance(job, JobState.PREPARING)
    assert preparing is not None
    assert await store.update_job(preparing.job, [event], transition=preparing.transition)
    # A second writer that still believes the job is queued changes nothing, not even events.
    terminating = advance(job, JobState.TERMINATING)
    assert terminating is not None
    assert not await store.update_job(terminating.job, [event], transition=terminating.transition)
    assert (await store.get_job(job.id)).state is JobState.PREPARING  # type: ignore[union-attr]
    assert await store.count_events(kind="job_state_changed") == 1


async def test_events_are_delivered_in_order_once(store: SqlStore) -> None:
    job = await store.insert_job(make_job())
    outputs = (OutputFile("MODEL", "model.npz", "s", "p/model.npz", 10),)
    await store.add_events(
        [
            LogSnippet(job_id=job.id, file="stderr.txt", first_line=1, lines=("a", "b")),
            JobFinished(job_id=job.id, state="succeeded", exit_code=0, outputs=outputs),
        ]
    )
    pending = await store.pending_events()
    assert [type(e).__name__ for _, e in pending] == ["LogSnippet", "JobFinished"]
    assert pending[0][1].lines == ("a", "b")  # type: ignore[attr-defined]
    assert pending[1][1].outputs == outputs  # type: ignore[attr-defined]
    await store.mark_all_delivered([pending[0][0]], NOW)
    assert [i for i, _ in await store.pending_events()] == [pending[1][0]]


async def test_commit_log_is_all_or_nothing_and_upserts(store: SqlStore) -> None:
    job = await store.insert_job(make_job())
    snippet = LogSnippet(job_id=job.id, file="stderr.txt", first_line=1, lines=("x",))
    points = [MetricPoint(1, "loss", 0.9)]
    await store.commit_log(job.id, {"stderr.txt": (2, 1)}, [snippet], points, Progress(1, 3), None)
    await store.commit_log(
        job.id,
        {"stderr.txt": (4, 2)},
        [],
        [MetricPoint(1, "loss", 0.8)],
        Progress(2, 3),
        {"loss": 0.8},
    )
    assert await store.get_log_offsets(job.id) == {"stderr.txt": (4, 2)}
    assert await store.list_metrics(job.id) == [MetricPoint(1, "loss", 0.8)]
    stored = await store.get_job(job.id)
    assert stored is not None and stored.progress == Progress(2, 3)
    assert stored.last_metrics == {"loss": 0.8}


async def test_a_sweep_round_trips_its_name_is_never_reused_and_names_its_jobs(
    store: SqlStore,
) -> None:
    sweep = JobSweep(
        id="s1",
        name="lr",
        requester="U1",
        created_at=NOW,
        parameters=(("lr", ("0.1", "0.01")), ("batch", ("32", "64"))),
        metric="val_acc:max",
        channel="C1",
        cluster="c1",
    )
    async with store.unit() as uow:
        await uow.sweeps.add(sweep)
        for i in (1, 2):
            await uow.jobs.add(make_job(f"lr-{i}", sweep_id="s1"))
        await uow.jobs.add(make_job("alone"))
        await uow.commit()
    assert await store.get_sweep("s1") == sweep
    assert [j.name for j in await store.list_jobs(sweep_id="s1")] == ["lr-1", "lr-2"]
    assert (await store.find_job("alone")) is not None and (
        await store.find_job("alone")
    ).sweep_id is None  # type: ignore[union-attr]
    assert sweep.label("lr-3") == "lr=0.01 batch=32"
    with pytest.raises(Conflict):
        async with store.unit() as uow:
            await uow.sweeps.add(sweep)
            await uow.commit()
