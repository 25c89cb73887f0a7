"""Shared fixtures: a migrated store (SQLite, or PostgreSQL where asked) and domain builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.clusters.lifecycle import ClusterState
from services.jobs.lifecycle import JobState
from services.models import Cluster, Job
from services.store import SqlStore
from tests import pg
from tests.pg import PostgresServer

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


# Test modules that exercise SqlStore directly: their `store` tests run on SQLite and PostgreSQL.
BOTH_DATABASES = frozenset(
    {
        "test_store",
        "test_store_postgres",
        "test_workspaces",
        "test_lifecycle_guard",
        "test_outbox",
        "test_price_refresh",
        "test_runner",
        "test_idle",
        "test_metrics",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "store" in metafunc.fixturenames and module in BOTH_DATABASES:
        metafunc.parametrize("store", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session; skipped where no binaries exist."""
    reason = pg.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    if getattr(request, "param", "sqlite") == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        s = SqlStore(await server.create_database())
    else:
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
