"""WorkspaceService: create, list, show and delete workspaces and experiments; and `claim`, the
one rule for where a new cluster or job belongs (the implicit default is made on first use)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.core.errors import Conflict, NotFound, UserError
from services.core.ports import Clock, Store, UnitOfWork
from services.core.suggest import did_you_mean
from services.models import (
    NAME_RE,
    Actor,
    Experiment,
    ExperimentView,
    Job,
    Workspace,
    WorkspaceView,
)

_SHOWN = 5  # names listed in a refusal before "and N more"


@dataclass(frozen=True)
class Homes:
    """Where a cluster or job goes when no -w/-e names a place: the 2017 commands knew no
    workspaces, so theirs live in an implicit default that exists once something uses it.
    `location` is the region a workspace gets when -l is not given."""

    resource_group: str
    workspace: str = "default"
    experiment: str = "default"
    location: str | None = None


async def claim_workspace(
    uow: UnitOfWork, homes: Homes, *, resource_group: str, name: str, by: str, at: datetime
) -> Workspace:
    """The workspace a new cluster or job goes into, in the caller's unit of work: the
    implicit default is created now if need be; any other must have been created."""
    found = await uow.workspaces.get(resource_group, name)
    if found is not None:
        return found
    if name != homes.workspace:
        known = [w.name for w in await uow.workspaces.list(resource_group)]
        raise NotFound(
            f"workspace {name} not found in resource group {resource_group}"
            f"{did_you_mean(name, known)}; create it with workspace create -n {name}"
        )
    made = Workspace(name, resource_group, homes.location, at, by)
    if not await uow.workspaces.add(made):  # a concurrent first use made it: theirs stands
        return await uow.workspaces.get(resource_group, name) or made
    return made


async def claim_experiment(
    uow: UnitOfWork,
    homes: Homes,
    *,
    resource_group: str,
    workspace: str,
    name: str,
    by: str,
    at: datetime,
) -> Experiment:
    """The experiment a new job goes into (its workspace claimed first): the implicit default
    experiment is created in any workspace on first use; any other must have been created."""
    await claim_workspace(uow, homes, resource_group=resource_group, name=workspace, by=by, at=at)
    found = await uow.experiments.get(resource_group, workspace, name)
    if found is not None:
        return found
    if name != homes.experiment:
        known = [e.name for e in await uow.experiments.list(resource_group, workspace)]
        raise NotFound(
            f"experiment {name} not found in workspace {workspace}{did_you_mean(name, known)}; "
            f"create it with experiment create -w {workspace} -n {name}"
        )
    made = Experiment(name, workspace, resource_group, at, by)
    if not await uow.experiments.add(made):  # a concurrent first use made it: theirs stands
        return await uow.experiments.get(resource_group, workspace, name) or made
    return made


def _names(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _check_name(kind: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise UserError(f"{kind} name {name!r} must be 1-64 letters, digits, - or _")


class WorkspaceService:
    def __init__(self, *, store: Store, clock: Clock, homes: Homes) -> None:
        self._store = store
        self._clock = clock
        self._homes = homes

    def _group(self, resource_group: str | None) -> str:
        return resource_group or self._homes.resource_group

    # -- workspaces -------------------------------------------------------------------------

    async def create_workspace(
        self,
        name: str,
        *,
        actor: Actor,
        resource_group: str | None = None,
        location: str | None = None,
    ) -> tuple[WorkspaceView, bool]:
        """Like ARM's PUT: creating what exists answers with it (False), unless it would move
        it to another region."""
        _check_name("workspace", name)
        group = self._group(resource_group)
        async with self._store.unit() as uow:
            found = await uow.workspaces.get(group, name)
            if found is None:
                made = Workspace(
                    name, group, location or self._homes.location, self._clock.now(), actor.user
                )
                if await uow.workspaces.add(made):
                    await uow.commit()
                    return WorkspaceView(made), True
                found = await self._workspace(uow, group=group, name=name)  # made meanwhile
            view = await self._workspace_view(uow, found)
        if location and found.location and location.lower() != found.location.lower():
            raise Conflict(
                f"workspace {name} already exists in {found.location}; "
                "a workspace cannot move to another region"
            )
        return view, False

    async def list_workspaces(self, *, resource_group: str | None = None) -> list[WorkspaceView]:
        """Those that exist: every resource group's, or one group's."""
        async with self._store.unit() as uow:
            found = await uow.workspaces.list(resource_group)
            return [await self._workspace_view(uow, w) for w in found]

    async def get_workspace(self, name: str, *, resource_group: str | None = None) -> WorkspaceView:
        async with self._store.unit() as uow:
            return await self._workspace_view(
                uow, await self._workspace(uow, group=self._group(resource_group), name=name)
            )

    async def delete_workspace(self, name: str, *, resource_group: str | None = None) -> bool:
        """Deleting what is gone succeeds (False); one that still holds clusters, or jobs that
        have not finished, is refused with their names. Its experiments go with it."""
        group = self._group(resource_group)
        async with self._store.unit() as uow:
            found = await uow.workspaces.get(group, name)
            if found is None:
                return False
            view = await self._workspace_view(uow, found)
            if view.clusters:
                raise Conflict(
                    f"workspace {name} still has clusters ({_names(list(view.clusters))}); "
                    "delete them first"
                )
            live = [j.name for j in await self._jobs_of(uow, group, name) if not j.state.finished]
            if live:
                raise Conflict(
                    f"workspace {name} still has jobs that have not finished ({_names(live)}); "
                    "terminate them first"
                )
            await uow.workspaces.delete(group, name)
            await uow.commit()
        return True

    # -- experiments ------------------------------------------------------------------------

    async def create_experiment(
        self, name: str, *, workspace: str, actor: Actor, resource_group: str | None = None
    ) -> tuple[ExperimentView, bool]:
        """In an existing workspace (or the implicit default); creating what exists answers
        with it (False)."""
        _check_name("experiment", name)
        group = self._group(resource_group)
        async with self._store.unit() as uow:
            found = await uow.experiments.get(group, workspace, name)
            if found is not None:
                return await self._experiment_view(uow, found), False
            await claim_workspace(
                uow,
                self._homes,
                resource_group=group,
                name=workspace,
                by=actor.user,
                at=self._clock.now(),
            )
            made = Experiment(name, workspace, group, self._clock.now(), actor.user)
            if not await uow.experiments.add(made):  # made meanwhile: answer with theirs
                found = await self._experiment(uow, group=group, workspace=workspace, name=name)
                return await self._experiment_view(uow, found), False
            await uow.commit()
        return ExperimentView(made), True

    async def list_experiments(
        self, *, workspace: str, resource_group: str | None = None
    ) -> list[ExperimentView]:
        group = self._group(resource_group)
        async with self._store.unit() as uow:
            if workspace != self._homes.workspace:  # the default exists before its first use
                await self._workspace(uow, group=group, name=workspace)
            found = await uow.experiments.list(group, workspace)
            return [await self._experiment_view(uow, e) for e in found]

    async def get_experiment(
        self, name: str, *, workspace: str, resource_group: str | None = None
    ) -> ExperimentView:
        group = self._group(resource_group)
        async with self._store.unit() as uow:
            found = await self._experiment(uow, group=group, workspace=workspace, name=name)
            return await self._experiment_view(uow, found)

    async def delete_experiment(
        self, name: str, *, workspace: str, resource_group: str | None = None
    ) -> bool:
        """Deleting what is gone succeeds (False); one with jobs that have not finished is
        refused with their names. Finished jobs keep their records (receipts, spend)."""
        group = self._group(resource_group)
        async with self._store.unit() as uow:
            found = await uow.experiments.get(group, workspace, name)
            if found is None:
                return False
            view = await self._experiment_view(uow, found)
            if view.live_jobs:
                raise Conflict(
                    f"experiment {name} still has jobs that have not finished "
                    f"({_names(list(view.live_jobs))}); terminate them first"
                )
            await uow.experiments.delete(group, workspace, name)
            await uow.commit()
        return True

    # -- helpers ----------------------------------------------------------------------------

    async def _workspace(self, uow: UnitOfWork, *, group: str, name: str) -> Workspace:
        found = await uow.workspaces.get(group, name)
        if found is None:
            known = [w.name for w in await uow.workspaces.list(group)]
            raise NotFound(
                f"workspace {name} not found in resource group {group}{did_you_mean(name, known)}"
            )
        return found

    async def _experiment(
        self, uow: UnitOfWork, *, group: str, workspace: str, name: str
    ) -> Experiment:
        found = await uow.experiments.get(group, workspace, name)
        if found is None:
            known = [e.name for e in await uow.experiments.list(group, workspace)]
            raise NotFound(
                f"experiment {name} not found in workspace {workspace}{did_you_mean(name, known)}"
            )
        return found

    @staticmethod
    async def _jobs_of(
        uow: UnitOfWork, group: str, workspace: str, experiment: str | None = None
    ) -> list[Job]:
        return [
            j
            for j in await uow.jobs.list()
            if j.resource_group.lower() == group.lower()
            and j.workspace == workspace
            and (experiment is None or j.experiment == experiment)
        ]

    async def _workspace_view(self, uow: UnitOfWork, w: Workspace) -> WorkspaceView:
        group = w.resource_group.lower()
        clusters = tuple(
            c.name
            for c in await uow.clusters.list()
            if c.resource_group.lower() == group and c.workspace == w.name
        )
        experiments = tuple(e.name for e in await uow.experiments.list(w.resource_group, w.name))
        return WorkspaceView(w, clusters, experiments)

    async def _experiment_view(self, uow: UnitOfWork, e: Experiment) -> ExperimentView:
        jobs = await self._jobs_of(uow, e.resource_group, e.workspace, e.name)
        live = tuple(j.name for j in jobs if not j.state.finished)
        return ExperimentView(e, len(jobs), live)
