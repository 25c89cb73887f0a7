"""The repositories refuse a state change not built by a lifecycle table, and nothing in
services/ outside the lifecycle modules assigns a state."""

from __future__ import annotations

import ast
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.clusters.lifecycle import ClusterState, ClusterTransition, move
from services.core.errors import Conflict
from services.core.outcome import seal
from services.jobs.lifecycle import JobState, JobTransition, advance
from services.models import Approval
from services.spend.approvals.lifecycle import ApprovalState, ApprovalTransition, decide
from services.store import SqlStore
from tests.conftest import NOW, make_cluster, make_job

SERVICES = Path(__file__).resolve().parents[1] / "services"


def _approval() -> Approval:
    return Approval(
        id="a1",
        job_id="id-j1",
        kind="job",
        requester="U1",
        channel=None,
        estimate=Decimal("1"),
        formula="1 x $1/h x 1 h max = $1",
        reasons=("over limit",),
        required=1,
        state=ApprovalState.PENDING,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        (JobTransition, (JobState.QUEUED, JobState.SUCCEEDED)),
        (ClusterTransition, (ClusterState.DELETED, ClusterState.STEADY)),
        (ApprovalTransition, (ApprovalState.DENIED, ApprovalState.APPROVED)),
    ],
)
def test_a_transition_cannot_be_forged(kind: Any, args: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError):
        kind(*args)
    with pytest.raises(TypeError):
        kind(*args, object())
    with pytest.raises(TypeError):  # its token was handed out once, to its lifecycle module
        seal(kind)


def test_the_tables_refuse_what_they_do_not_allow() -> None:
    with pytest.raises(Conflict):
        advance(make_job(), JobState.SUCCEEDED)
    with pytest.raises(Conflict):
        move(make_cluster(state=ClusterState.DELETED), ClusterState.STEADY)
    with pytest.raises(Conflict):
        decide(replace(_approval(), state=ApprovalState.DENIED), ApprovalState.APPROVED)


async def test_jobs_take_only_a_table_transition(store: SqlStore) -> None:
    job = await store.insert_job(make_job())
    preparing = advance(job, JobState.PREPARING)
    assert preparing is not None
    forged: Any = type("T", (), {"old": JobState.QUEUED, "new": JobState.SUCCEEDED})()
    with pytest.raises(TypeError):
        await store.update_job(replace(job, state=JobState.SUCCEEDED), transition=forged)
    with pytest.raises(Conflict):  # the row written is not the one the transition made
        await store.update_job(
            replace(job, state=JobState.SUCCEEDED), transition=preparing.transition
        )
    assert await store.update_job(preparing.job, transition=preparing.transition)
    # stale: a second writer still believing the job is queued changes nothing
    assert not await store.update_job(preparing.job, transition=preparing.transition)
    stored = await store.get_job(job.id)
    assert stored is not None and stored.state is JobState.PREPARING


async def test_clusters_take_only_a_table_transition(store: SqlStore) -> None:
    cluster = make_cluster()
    await store.insert_cluster(cluster)
    forged: Any = type("T", (), {"old": ClusterState.STEADY, "new": ClusterState.DELETED})()
    with pytest.raises(TypeError):
        await store.update_cluster(replace(cluster, state=ClusterState.DELETED), transition=forged)
    # without a transition the state column is never written
    await store.update_cluster(replace(cluster, state=ClusterState.DELETED, target_nodes=3))
    stored = await store.get_cluster(cluster.name)
    assert stored is not None and stored.state is ClusterState.STEADY
    assert stored.target_nodes == 3
    resizing, to_resizing = move(cluster, ClusterState.RESIZING)
    await store.update_cluster(resizing, transition=to_resizing)
    with pytest.raises(Conflict):  # stale: the row is resizing now, no longer steady
        await store.update_cluster(resizing, transition=to_resizing)
    stored = await store.get_cluster(cluster.name)
    assert stored is not None and stored.state is ClusterState.RESIZING


async def test_approvals_take_only_a_table_transition(store: SqlStore) -> None:
    approval = _approval()
    async with store.unit() as uow:
        await uow.jobs.add(make_job(state=JobState.PENDING_APPROVAL))
        await uow.approvals.add(approval)
        await uow.commit()
    forged: Any = type("T", (), {"old": ApprovalState.PENDING, "new": ApprovalState.APPROVED})()
    async with store.unit() as uow:
        with pytest.raises(TypeError):
            await uow.approvals.decide(approval.id, forged, NOW)
    decision = decide(approval, ApprovalState.DENIED)
    async with store.unit() as uow:
        assert await uow.approvals.decide(approval.id, decision, NOW)
        await uow.commit()
    # stale: it is no longer pending, so a second decision changes nothing
    async with store.unit() as uow:
        assert not await uow.approvals.decide(approval.id, decision, NOW)
    stored = await store.get_approval(approval.id)
    assert stored is not None and stored.state is ApprovalState.DENIED


def _state_writes(tree: ast.AST) -> list[int]:
    """Lines that assign a state: `x.state = …` or `replace(…, state=…)`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "state":
                    lines.append(node.lineno)
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name == "replace" and any(k.arg == "state" for k in node.keywords):
                lines.append(node.lineno)
    return lines


def test_nothing_outside_a_lifecycle_module_assigns_a_state() -> None:
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        if path.name == "lifecycle.py":
            continue
        for line in _state_writes(ast.parse(path.read_text(), str(path))):
            found.append(f"{path.relative_to(SERVICES.parent)}:{line}")
    assert found == []


def test_the_state_write_finder_finds_them() -> None:
    tree = ast.parse("job.state = 1\nreplace(job, state=JobState.QUEUED)\nreplace(job, x=1)\n")
    assert _state_writes(tree) == [1, 2]
