"""Workspaces and experiments (2018-05-01): stored, clusters and jobs belong to them, deletes that
would orphan something are refused and change nothing, and the 2017 commands live in an implicit
default. Through the real command handler (local backend, SQLite, fake clock); the repositories
also on PostgreSQL and the in-memory fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jmespath
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from services.core.clock import FakeClock
from services.core.ports import Store
from services.jobs.lifecycle import JobState
from services.models import Experiment, Workspace
from services.store import SqlStore
from services.workspaces.service import Homes, claim_workspace
from tests.conftest import NOW, make_cluster, make_job
from tests.test_rest import keys
from tests.test_schedules import ADMIN, ALICE, CONFIG, START, Rig, started
from tests.test_store_postgres import _alembic
from tests.test_unit_of_work import any_store

__all__ = ["any_store"]  # the fixture: SQLite, PostgreSQL and the in-memory fake

SIZE = "Standard_NC4as_T4_v3"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A bot that nothing has used yet: not even the implicit default workspace exists."""
    async with started(tmp_path, FakeClock(START)) as r:
        yield r


async def ok(rig: Rig, text: str, *, user: str = ADMIN) -> str:
    reply = await rig.say(text, user=user)
    assert not reply.failed, f"{text}: {reply.message.text}"
    return reply.message.text


async def refused(rig: Rig, text: str, *, user: str = ADMIN) -> str:
    reply = await rig.say(text, user=user)
    assert reply.failed, text
    line = reply.message.text.strip()
    assert "\n" not in line, line
    return line


async def doc(rig: Rig, text: str) -> Any:
    return json.loads(await ok(rig, text + " -o json"))


async def state(rig: Rig) -> dict[str, Any]:
    """Everything a refusal must leave as it was."""
    workspaces = await doc(rig, "workspace list")
    experiments = {w["name"]: await doc(rig, f"experiment list -w {w['name']}") for w in workspaces}
    return {
        "workspaces": workspaces,
        "experiments": experiments,
        "clusters": await doc(rig, "cluster list"),
        "jobs": [j["name"] for j in await doc(rig, "job list")],
    }


# -- the resources, shaped as the 2018-05-01 REST models ------------------------------------


async def test_create_list_show_answer_the_rest_models_of_the_spec(rig: Rig) -> None:
    made = await doc(rig, "workspace create -g myGroup -n ws -l westeurope")
    assert set(made) == keys("Workspace") | {"resourceGroup"}
    assert made["id"] == "/resourceGroups/myGroup/providers/Microsoft.BatchAI/workspaces/ws"
    assert (made["name"], made["type"]) == ("ws", "Microsoft.BatchAI/workspaces")
    assert (made["location"], made["tags"], made["provisioningState"]) == (
        "westeurope",
        None,
        "succeeded",
    )
    assert made["creationTime"] == made["provisioningStateTransitionTime"] == START.isoformat()
    exp = await doc(rig, "experiment create -g myGroup -w ws -n exp1")
    assert set(exp) == keys("Experiment") | {"resourceGroup"}
    assert exp["id"] == made["id"] + "/experiments/exp1"
    assert exp["type"] == "Microsoft.BatchAI/workspaces/experiments"
    assert await doc(rig, "workspace show -g myGroup -n ws") == made
    assert await doc(rig, "workspace show -g MYGROUP --workspace ws") == made  # as ARM: no case
    assert await doc(rig, "experiment show -g myGroup -w ws -n exp1") == exp
    assert await doc(rig, "workspace list -g myGroup") == [made]
    assert await doc(rig, "workspace list -g otherGroup") == []
    assert await doc(rig, "experiment list -g myGroup -w ws") == [exp]
    names = jmespath.search("[].name", await doc(rig, "workspace list"))
    assert names == ["ws"]


async def test_text_and_table_answers_in_the_house_style(rig: Rig) -> None:
    await ok(rig, "workspace create -n ws")
    table = await ok(rig, "workspace list -o table")
    assert table.split("\n")[0].split() == [
        "Name",
        "Resource",
        "Group",
        "Location",
        "Clusters",
        "Experiments",
        "Created",
        "(UTC)",
    ]
    assert table.split("\n")[2].split()[:5] == ["ws", "batchai", "eastus", "0", "0"]
    await ok(rig, f"cluster create -n c1 -s {SIZE} -t 1 -w ws")
    await ok(rig, "experiment create -w ws -n e_1")
    shown = await rig.say("workspace show -n ws")
    body = shown.message.blocks[0]["text"]["text"]
    assert "clusters: c1" in body and "experiments: e_1" in body
    made = await ok(rig, "experiment create -w ws -n e_2 -o table")
    assert made.split("\n")[2].split()[:3] == ["e_2", "ws", "batchai"]
    listing = await ok(rig, "experiment list -w ws -o table")
    assert [row.split()[:5] for row in listing.split("\n")[2:]] == [
        ["e_1", "ws", "batchai", "0", "0"],
        ["e_2", "ws", "batchai", "0", "0"],
    ]
    empty = await rig.say("experiment list -w default")
    assert "No experiments in workspace default" in empty.message.blocks[0]["text"]["text"]


async def test_creating_what_exists_answers_with_it_and_changes_nothing(rig: Rig) -> None:
    first = await doc(rig, "workspace create -n ws -l eastus")
    rig.clock.advance(timedelta(hours=1))
    assert await doc(rig, "workspace create -n ws") == first
    assert "already exists" in await ok(rig, "workspace create -n ws -l EastUS")
    line = await refused(rig, "workspace create -n ws -l westus")
    assert "already exists in eastus" in line and "another region" in line
    exp = await doc(rig, "experiment create -w ws -n e1")
    assert await doc(rig, "experiment create -w ws -n e1") == exp
    assert [w["name"] for w in await doc(rig, "workspace list")] == ["ws"]


# -- clusters and jobs belong to them --------------------------------------------------------


async def test_clusters_and_jobs_record_and_filter_by_workspace_and_experiment(rig: Rig) -> None:
    await ok(rig, "workspace create -n ws")
    await ok(rig, "experiment create -w ws -n e1")
    await ok(rig, f"cluster create -n c1 -s {SIZE} -t 1 -w ws")
    await ok(rig, f"cluster create -n c2 -s {SIZE} -t 1")  # the 2017 way: the default
    await ok(rig, f"job create -n j1 -c c1 -f {CONFIG} -w ws -e e1")
    await ok(rig, f"job create -n j2 -r c1 -c {CONFIG}")  # no -e: ws's default experiment
    await ok(rig, f"job create -n j3 -r c2 -c {CONFIG}")
    assert jmespath.search("[].name", await doc(rig, "cluster list -w ws")) == ["c1"]
    assert jmespath.search("[].name", await doc(rig, "cluster list -w default")) == ["c2"]
    job = await doc(rig, "job show -n j1")
    assert job["id"].endswith("/workspaces/ws/experiments/e1/jobs/j1")
    assert jmespath.search("[].name", await doc(rig, "job list -w ws -e e1")) == ["j1"]
    assert jmespath.search("[].name", await doc(rig, "job list -w ws")) == ["j1", "j2"]
    assert jmespath.search("[].name", await doc(rig, "job list -e default")) == ["j2", "j3"]
    assert jmespath.search("[].name", await doc(rig, "experiment list -w ws")) == [
        "default",
        "e1",
    ]
    shown = await rig.say("experiment show -w ws -n e1")
    assert "jobs: 1 · not finished: j1" in shown.message.blocks[0]["text"]["text"]


async def test_a_cluster_or_job_named_elsewhere_than_it_lives_is_not_found(rig: Rig) -> None:
    await ok(rig, "workspace create -n ws")
    await ok(rig, "workspace create -n other")
    await ok(rig, "experiment create -w ws -n e1")
    await ok(rig, f"cluster create -n c1 -s {SIZE} -t 1 -w ws")
    await ok(rig, f"job create -n j1 -c c1 -f {CONFIG} -w ws -e e1")
    before = await state(rig)
    for text, where in [
        ("cluster show -w other -n c1", "in workspace other"),
        ("cluster show -g elsewhere -n c1", "in resource group elsewhere"),
        ("cluster resize -w other -n c1 -t 0", "in workspace other"),
        ("cluster delete -w other -n c1", "in workspace other"),
        ("job show -w other -e e1 -n j1", "in workspace other"),
        ("job show -w ws -e default -n j1", "in experiment default of workspace ws"),
        ("job terminate -w ws -e default -n j1", "in experiment default of workspace ws"),
        ("job file list -w ws -e default -j j1", "in experiment default of workspace ws"),
    ]:
        line = await refused(rig, text)
        assert where in line, (text, line)
    deleted = await ok(rig, "job delete -w other -e e1 -n j1")
    assert "does not exist" in deleted
    assert await state(rig) == before
    assert (await doc(rig, "cluster show -w ws -n c1"))["name"] == "c1"
    assert (await doc(rig, "job show -w ws -e e1 -n j1"))["name"] == "j1"


async def test_a_missing_workspace_or_experiment_is_refused_and_nothing_is_made(rig: Rig) -> None:
    await ok(rig, f"cluster create -n c1 -s {SIZE} -t 1")
    before = await state(rig)
    line = await refused(rig, f"cluster create -n c2 -s {SIZE} -t 1 -w nowhere")
    assert "workspace nowhere not found in resource group batchai" in line
    assert "workspace create -n nowhere" in line
    line = await refused(rig, f"job create -n j1 -r c1 -c {CONFIG} -e nothing")
    assert "experiment nothing not found in workspace default" in line
    line = await refused(rig, f"job create -n j1 -r c1 -c {CONFIG} -w nowhere")
    assert "workspace nowhere not found" in line
    assert "workspace nowhere not found" in await refused(rig, "experiment create -w nowhere -n e")
    assert "workspace nowhere not found" in await refused(rig, "experiment list -w nowhere")
    assert "not found" in await refused(rig, "workspace show -n nowhere")
    assert "not found" in await refused(rig, "experiment show -w default -n nothing")
    assert await state(rig) == before
    assert await rig.bot.store.get_cluster("c2") is None


async def test_a_typo_in_a_workspace_name_is_answered_with_the_closest(rig: Rig) -> None:
    await ok(rig, "workspace create -n research")
    assert 'did you mean "research"' in await refused(rig, "workspace show -n reserch")


# -- deletes ---------------------------------------------------------------------------------


async def test_deleting_a_workspace_with_clusters_is_refused_with_their_names(rig: Rig) -> None:
    await ok(rig, "workspace create -n ws")
    await ok(rig, "experiment create -w ws -n e1")
    await ok(rig, f"cluster create -n c1 -s {SIZE} -t 1 -w ws")
    await ok(rig, f"cluster create -n c2 -s {SIZE} -t 1 -w ws")
    before = await state(rig)
    line = await refused(rig, "workspace delete -n ws -y")
    assert line == "workspace ws still has clusters (c1, c2); delete them first"
    assert await state(rig) == before
    await ok(rig, "cluster delete -n c1 -y")
    await ok(rig, "cluster delete -n c2 -y")
    assert await ok(rig, "workspace delete -n ws -y") == "workspace *ws* deleted"
    assert await doc(rig, "workspace list") == []
    assert "does not exist (nothing to do)" in await ok(rig, "workspace delete -n ws")
    # its experiments went with it: a new workspace of that name starts empty
    await ok(rig, "workspace create -n ws")
    assert await doc(rig, "experiment list -w ws") == []


async def test_deleting_an_experiment_with_unfinished_jobs_is_refused(rig: Rig) -> None:
    await ok(rig, "workspace create -n ws")
    await ok(rig, "experiment create -w ws -n e1")
    await ok(rig, f"cluster create -n c1 -s {SIZE} -t 1 -w ws")
    await ok(rig, f"job create -n j1 -r c1 -c {CONFIG} -e e1")
    before = await state(rig)
    line = await refused(rig, "experiment delete -w ws -n e1 -y")
    assert line == "experiment e1 still has jobs that have not finished (j1); terminate them first"
    assert await state(rig) == before
    await ok(rig, "job terminate -n j1 -y")
    assert "j1" in await refused(rig, "experiment delete -w ws -n e1 -y")  # still terminating
    await rig.bot.runner.tick()
    job = await rig.bot.store.find_job("j1")
    assert job is not None and job.state is JobState.TERMINATED
    assert await ok(rig, "experiment delete -w ws -n e1 -y") == "experiment *e1* deleted"
    assert await doc(rig, "experiment list -w ws") == []
    assert await rig.bot.store.find_job("j1") is not None  # a finished job keeps its record
    assert "does not exist (nothing to do)" in await ok(rig, "experiment delete -w ws -n e1")


async def test_a_workspace_whose_experiments_hold_unfinished_jobs_is_kept(rig: Rig) -> None:
    """Its cluster is elsewhere: the jobs still belong to the workspace's experiment."""
    await ok(rig, "workspace create -n ws")
    await ok(rig, f"cluster create -n c1 -s {SIZE} -t 1")
    await ok(rig, f"job create -n j1 -r c1 -c {CONFIG} -w ws")
    line = await refused(rig, "workspace delete -n ws -y")
    assert line == "workspace ws still has jobs that have not finished (j1); terminate them first"
    assert [w["name"] for w in await doc(rig, "workspace list")] == ["default", "ws"]


async def test_only_an_admin_deletes_and_every_create_and_delete_is_audited(rig: Rig) -> None:
    await ok(rig, "workspace create -n ws", user=ALICE)  # creating is anyone's
    await ok(rig, "experiment create -w ws -n e1", user=ALICE)
    assert await refused(rig, "experiment delete -w ws -n e1 -y", user=ALICE) == (
        "only an admin may do this"
    )
    assert await refused(rig, "workspace delete -n ws -y", user=ALICE) == (
        "only an admin may do this"
    )
    assert [w["name"] for w in await doc(rig, "workspace list")] == ["ws"]
    await ok(rig, "experiment delete -w ws -n e1 -y")
    await ok(rig, "workspace delete -n ws -y")
    entries = [(e.actor, e.action, e.outcome) for e in await rig.bot.store.list_audit()]
    assert entries == [
        (ADMIN, "WorkspaceDelete", "allowed"),
        (ADMIN, "ExperimentDelete", "allowed"),
        (ALICE, "WorkspaceDelete", "denied"),
        (ALICE, "ExperimentDelete", "denied"),
        (ALICE, "ExperimentCreate", "allowed"),
        (ALICE, "WorkspaceCreate", "allowed"),
    ]


# -- the implicit default --------------------------------------------------------------------


async def test_the_implicit_default_is_listed_once_a_2017_command_uses_it(rig: Rig) -> None:
    assert await doc(rig, "workspace list") == []
    assert await doc(rig, "experiment list -w default") == []
    await ok(rig, f"cluster create -n c1 -s {SIZE} -t 1")
    (default,) = await doc(rig, "workspace list")
    assert (default["name"], default["resourceGroup"]) == ("default", "batchai")
    assert await doc(rig, "experiment list -w default") == []
    await ok(rig, f"job create -n j1 -r c1 -c {CONFIG}")
    assert jmespath.search("[].name", await doc(rig, "experiment list -w default")) == ["default"]
    job = await doc(rig, "job show -n j1")
    assert job["id"].endswith("/workspaces/default/experiments/default/jobs/j1")
    await ok(rig, f"job create -n j2 -r c1 -c {CONFIG}")  # used again: still one of each
    assert len(await doc(rig, "workspace list")) == 1
    assert len(await doc(rig, "experiment list -w default")) == 1


async def test_a_refused_submission_does_not_bring_the_default_into_being(rig: Rig) -> None:
    await refused(rig, "cluster create -n c1 -s Standard_NOPE -t 1")
    await refused(rig, "cluster create -n c1 -s Standard_NC4as_T4_v3 --min 3 --max 1")
    assert await doc(rig, "workspace list") == []


# -- the repositories, on every store --------------------------------------------------------


async def test_repositories_key_names_by_parent_and_groups_without_case(
    any_store: Store,
) -> None:
    async with any_store.unit() as uow:
        await uow.workspaces.add(Workspace("ws", "RG", "eastus", NOW, "U1"))
        await uow.workspaces.add(Workspace("ws", "other", None, NOW))
        await uow.experiments.add(Experiment("e1", "ws", "RG", NOW, "U1"))
        await uow.experiments.add(Experiment("e1", "ws", "other", NOW))
        await uow.commit()
    async with any_store.unit() as uow:  # taken, whatever the case of the group
        assert not await uow.workspaces.add(Workspace("ws", "rg", None, NOW))
        assert not await uow.experiments.add(Experiment("e1", "ws", "rg", NOW))
        assert await uow.workspaces.add(Workspace("ws2", "rg", None, NOW))
        await uow.commit()
    async with any_store.unit() as uow:
        assert await uow.workspaces.get("rg", "ws") == Workspace("ws", "RG", "eastus", NOW, "U1")
        assert sorted((w.resource_group.lower(), w.name) for w in await uow.workspaces.list()) == [
            ("other", "ws"),
            ("rg", "ws"),
            ("rg", "ws2"),
        ]
        assert [w.location for w in await uow.workspaces.list("Other")] == [None]
        assert [e.name for e in await uow.experiments.list("rg", "ws")] == ["e1"]
        await uow.workspaces.delete("rg", "ws")  # its experiments go with it
        await uow.commit()
    async with any_store.unit() as uow:
        assert await uow.workspaces.get("RG", "ws") is None
        assert await uow.experiments.get("RG", "ws", "e1") is None
        assert await uow.experiments.get("other", "ws", "e1") is not None
        await uow.experiments.delete("other", "ws", "e1")
        await uow.experiments.delete("other", "ws", "e1")  # what is gone: nothing to do
        await uow.commit()
    async with any_store.unit() as uow:
        assert await uow.experiments.list("other", "ws") == []


async def test_two_first_uses_at_once_make_one_default_and_both_succeed(store: SqlStore) -> None:
    """The second looks before the first commits, then inserts too: its insert skips the row."""
    loop = asyncio.get_running_loop()
    first_added, second_looked = asyncio.Event(), asyncio.Event()

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # After the first unit has added its row, the next read of workspaces is the second's.
        read = statement.lstrip().upper().startswith("SELECT") and "workspaces" in statement
        if first_added.is_set() and read:
            loop.call_soon_threadsafe(second_looked.set)

    engine = store._engine.sync_engine
    event.listen(engine, "after_cursor_execute", seen)
    homes = Homes("rg")

    async def first() -> None:
        async with store.unit() as uow:
            await claim_workspace(uow, homes, resource_group="rg", name="default", by="U1", at=NOW)
            first_added.set()
            await second_looked.wait()
            await uow.commit()

    async def second() -> None:
        await first_added.wait()
        async with store.unit() as uow:
            await claim_workspace(uow, homes, resource_group="rg", name="default", by="U2", at=NOW)
            await uow.commit()

    try:
        await asyncio.gather(first(), second())
    finally:
        event.remove(engine, "after_cursor_execute", seen)
    async with store.unit() as uow:
        assert [w.created_by for w in await uow.workspaces.list()] == ["U1"]


async def test_a_workspace_left_without_commit_is_not_stored(any_store: Store) -> None:
    async with any_store.unit() as uow:
        await uow.workspaces.add(Workspace("ws", "rg", None, NOW))
    async with any_store.unit() as uow:
        assert await uow.workspaces.list() == []


async def test_the_migration_records_the_workspaces_and_experiments_in_use(
    store: SqlStore,
) -> None:
    """A database of an older version: its clusters' and jobs' workspaces are listed after."""
    await store.insert_cluster(make_cluster("c1", workspace="ws1", created_at=None))
    await store.insert_job(make_job("j1", workspace="ws2", experiment="e2"))
    engine = create_async_engine(store.url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "downgrade", "0006_encrypt_secrets")
            await conn.run_sync(_alembic, "upgrade", "head")
    finally:
        await engine.dispose()
    async with store.unit() as uow:
        found = {w.name: w for w in await uow.workspaces.list()}
        assert set(found) == {"ws1", "ws2"}
        assert found["ws2"].created_at == NOW and found["ws1"].created_at.tzinfo is not None
        assert [e.name for e in await uow.experiments.list("rg", "ws2")] == ["e2"]
