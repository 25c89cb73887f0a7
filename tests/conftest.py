"""Shared fixtures: a migrated SQLite store in a temp dir and builders for domain values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.models import Cluster, Job
from services.states import ClusterState, JobState
from services.store import SqlStore

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    s = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    await s.migrate()
    yield s
    await s.aclose()


def make_cluster(name: str = "c1", **changes: object) -> Cluster:
    values: dict[str, object] = dict(
        name=name,
        resource_group="rg",
        workspace="ws",
        vm_size="STANDARD_NC6",
        image="UbuntuLTS",
        vm_priority="dedicated",
        min_nodes=1,
        max_nodes=1,
        target_nodes=1,
        autoscale=False,
        state=ClusterState.STEADY,
        created_at=NOW,
    )
    values.update(changes)
    return Cluster(**values)  # type: ignore[arg-type]


def make_job(name: str = "j1", **changes: object) -> Job:
    values: dict[str, object] = dict(
        id=f"id-{name}",
        name=name,
        cluster="c1",
        resource_group="rg",
        workspace="ws",
        experiment="exp",
        state=JobState.QUEUED,
        spec_json="{}",
        node_count=1,
        toolkit="custom",
        max_wall_clock=timedelta(hours=1),
        requester="U1",
        created_at=NOW,
    )
    values.update(changes)
    return Job(**values)  # type: ignore[arg-type]
