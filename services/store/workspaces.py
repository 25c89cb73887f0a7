"""The workspaces and experiments repositories: names unique within their parent, resource
groups compared without case (as ARM does)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from services.models import Experiment, Workspace
from services.store.schema import experiments, workspaces


def _in_group(column: Any, resource_group: str) -> ColumnElement[bool]:
    return func.lower(column) == resource_group.lower()


async def _insert_new(conn: AsyncConnection, table: Table, row: dict[str, Any]) -> bool:
    """Insert unless the key is taken (False). Two first uses of the implicit default may race:
    the loser skips the row instead of failing, so its unit's transaction stays usable."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(row).on_conflict_do_nothing()
    return bool((await conn.execute(stmt)).rowcount)


class SqlWorkspaceRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, workspace: Workspace) -> bool:
        """False when the resource group already has a workspace of that name."""
        if await self.get(workspace.resource_group, workspace.name) is not None:
            return False
        row = {
            "resource_group": workspace.resource_group,
            "name": workspace.name,
            "location": workspace.location,
            "created_by": workspace.created_by,
            "created_at": workspace.created_at,
        }
        return await _insert_new(self._conn, workspaces, row)

    def _where(self, resource_group: str, name: str) -> ColumnElement[bool]:
        return _in_group(workspaces.c.resource_group, resource_group) & (workspaces.c.name == name)

    async def get(self, resource_group: str, name: str) -> Workspace | None:
        stmt = select(workspaces).where(self._where(resource_group, name))
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else _workspace_from(row._mapping)

    async def list(self, resource_group: str | None = None) -> list[Workspace]:
        stmt = select(workspaces).order_by(workspaces.c.resource_group, workspaces.c.name)
        if resource_group is not None:
            stmt = stmt.where(_in_group(workspaces.c.resource_group, resource_group))
        return [_workspace_from(r._mapping) for r in await self._conn.execute(stmt)]

    async def delete(self, resource_group: str, name: str) -> None:
        """The workspace and its experiments (their jobs' records stay, as receipts)."""
        await self._conn.execute(
            delete(experiments).where(
                _in_group(experiments.c.resource_group, resource_group)
                & (experiments.c.workspace == name)
            )
        )
        await self._conn.execute(delete(workspaces).where(self._where(resource_group, name)))


class SqlExperimentRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, experiment: Experiment) -> bool:
        """False when the workspace already has an experiment of that name."""
        e = experiment
        if await self.get(e.resource_group, e.workspace, e.name) is not None:
            return False
        row = {
            "resource_group": e.resource_group,
            "workspace": e.workspace,
            "name": e.name,
            "created_by": e.created_by,
            "created_at": e.created_at,
        }
        return await _insert_new(self._conn, experiments, row)

    def _in(self, resource_group: str, workspace: str) -> ColumnElement[bool]:
        return _in_group(experiments.c.resource_group, resource_group) & (
            experiments.c.workspace == workspace
        )

    async def get(self, resource_group: str, workspace: str, name: str) -> Experiment | None:
        stmt = select(experiments).where(
            self._in(resource_group, workspace) & (experiments.c.name == name)
        )
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else _experiment_from(row._mapping)

    async def list(self, resource_group: str, workspace: str) -> list[Experiment]:
        stmt = (
            select(experiments)
            .where(self._in(resource_group, workspace))
            .order_by(experiments.c.name)
        )
        return [_experiment_from(r._mapping) for r in await self._conn.execute(stmt)]

    async def delete(self, resource_group: str, workspace: str, name: str) -> None:
        await self._conn.execute(
            delete(experiments).where(
                self._in(resource_group, workspace) & (experiments.c.name == name)
            )
        )


def _workspace_from(r: Any) -> Workspace:
    return Workspace(
        name=r["name"],
        resource_group=r["resource_group"],
        location=r["location"],
        created_at=r["created_at"],
        created_by=r["created_by"],
    )


def _experiment_from(r: Any) -> Experiment:
    return Experiment(
        name=r["name"],
        workspace=r["workspace"],
        resource_group=r["resource_group"],
        created_at=r["created_at"],
        created_by=r["created_by"],
    )
