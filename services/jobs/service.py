"""JobService: submit, show, terminate, delete jobs and read their files (Batch AI semantics)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.access.owners import check_job_owner, check_owner
from services.access.reads import JobReaders
from services.access.vaults import VaultPolicy
from services.clusters.fileservers import FileServerLookup, check_ready
from services.clusters.mounts import ACCOUNT_PLACEHOLDER, check_mounts, job_volumes
from services.core.downloads import download_links
from services.core.errors import Conflict, NotAllowed, NotFound, SpecError, UserError
from services.core.events import ApprovalRequested, Event, JobSubmitted, ScheduleFired
from services.core.ports import Clock, FileShare, StorageBackend, Store, UnitOfWork
from services.core.suggest import did_you_mean
from services.jobs.lifecycle import JobState, advance, held_for_approval
from services.jobs.sources import ConfigLoader
from services.jobspec import (
    MAX_RETRIES,
    JobSpec,
    LaunchContext,
    NodeInfo,
    key_vault_refs,
    load_job_spec,
    placeholders,
    plan_launch,
    substitute,
)
from services.jobspec.sweep import split_sweep
from services.models import (
    ANYWHERE,
    AUTO_CONTAINER,
    AUTO_SHARE,
    NAME_RE,
    STDOUTERR,
    Actor,
    Approval,
    Cluster,
    ConfigSource,
    FileListing,
    FileLocation,
    Job,
    ScheduleRun,
    ShareMount,
    Where,
    is_log_name,
)
from services.spend.gate import NeedsApproval, Refused
from services.workspaces.service import Homes, claim_experiment

if TYPE_CHECKING:
    from services.spend.approvals.service import ApprovalService
    from services.spend.ledger import SpendService
    from services.spend.pricing import Estimate

MIN_LINK_MINUTES, MAX_LINK_MINUTES = 5, 600  # Batch AI's linkexpiryinminutes range
SPOT_RETRIES = 3  # lost-node retries of a job on a Spot (lowpriority) cluster unless it says


@dataclass(frozen=True)
class JobRequest:
    name: str
    cluster: str | None
    config: ConfigSource | None
    resource_group: str | None = None
    workspace: str | None = None
    experiment: str | None = None
    max_retries: int | None = None  # lost-node retries; None: the job.json's, else the cluster's
    # Job-level mounts of `job create --afs-name/--bfs-name/--nfs/--use-auto-storage`: written
    # into the job.json's mountVolumes, as az did.
    mounts: tuple[ShareMount, ...] = ()


class JobService:
    def __init__(
        self,
        *,
        store: Store,
        share: FileShare,
        clock: Clock,
        configs: ConfigLoader,
        resource_group: str,
        workspace: str,
        experiment: str = "default",
        placeholder_values: Mapping[str, str] | None = None,
        spend: SpendService | None = None,
        approvals: ApprovalService | None = None,
        readers: JobReaders | None = None,
        reserved_shares: frozenset[str] = frozenset(),
        homes: Homes | None = None,
        storage: StorageBackend | None = None,
        file_servers: FileServerLookup | None = None,
        vaults: VaultPolicy | None = None,
    ) -> None:
        self._file_servers = file_servers
        self._vaults = vaults or VaultPolicy()
        self._homes = homes or Homes(resource_group, workspace, experiment)
        self._storage = storage
        self._store = store
        self._reserved_shares = reserved_shares  # the backend's own: no job may mount them
        self._readers = readers or JobReaders()
        self._share = share
        self._clock = clock
        self._configs = configs
        self._rg = resource_group
        self._ws = workspace
        self._experiment = experiment
        self._placeholders = dict(placeholder_values or {})
        self._spend = spend
        self._approvals = approvals

    async def create_job(
        self, request: JobRequest, *, actor: Actor, run: ScheduleRun | None = None
    ) -> Job:
        """Validate, price and store a job (waiting for approval above the requester's limit).

        With `run` (a schedule firing) the job is stored only if that run is still unclaimed,
        in the same transaction, and the channel hears which schedule submitted it."""
        job, cluster, warnings = await self._prepare(request, actor)
        first: list[Event] = []
        if run is not None:
            first.append(
                ScheduleFired(job_id=job.id, schedule_id=run.schedule_id, job_name=job.name)
            )
        if self._spend is None:  # no price book: nothing to estimate or approve
            event = JobSubmitted(job_id=job.id, cluster=cluster.name, warnings=tuple(warnings))
            async with self._store.unit() as uow:
                await self._claim_home(uow, job)
                await add_submission(uow, job, run)
                uow.emit(*first, event, at=job.created_at)
                await uow.commit()
            return job
        job, approval, estimate = await self._price(job, cluster, self._spend, actor)
        events: list[Event] = [
            *first,
            JobSubmitted(
                job_id=job.id,
                cluster=cluster.name,
                warnings=tuple(warnings),
                estimate=estimate.formula(),
            ),
        ]
        if approval is not None:
            events.append(ApprovalRequested(job_id=job.id, approval_id=approval.id))
        async with self._store.unit() as uow:
            await self._claim_home(uow, job)
            await add_submission(uow, job, run)
            if approval is not None:
                await uow.approvals.add(approval)
            await uow.ledger.add(self._spend.estimate_entry(job, cluster, estimate))
            uow.emit(*events, at=job.created_at)
            await uow.commit()
        return job

    async def check_job(self, request: JobRequest, *, actor: Actor) -> Job:
        """Everything a submit checks and prices, storing nothing: the job as it would be
        stored now (pending_approval when it would wait for approval, with its estimate)."""
        job, cluster, _ = await self._prepare(request, actor)
        if self._spend is not None:
            job, _, _ = await self._price(job, cluster, self._spend, actor)
        return job

    async def _prepare(
        self, request: JobRequest, actor: Actor
    ) -> tuple[Job, Cluster, Sequence[str]]:
        spec, label = await self.load_spec(request, actor=actor)
        return await self.build_job(request, spec, label, actor=actor)

    async def load_spec(self, request: JobRequest, *, actor: Actor) -> tuple[JobSpec, str]:
        """The request's job.json, checked and with its placeholders filled, and its label."""
        spec, label, _ = await self.load_spec_and_sweep(request, actor=actor, sweep_allowed=False)
        return spec, label

    async def load_spec_and_sweep(
        self, request: JobRequest, *, actor: Actor, sweep_allowed: bool = True
    ) -> tuple[JobSpec, str, Any]:
        """The job.json and its `sweep` section (None without one; a sweep section in a plain
        submit makes it a sweep, so the caller decides)."""
        self._check_name(request.name)
        if request.config is None:
            raise UserError(
                "--config is required: a manifest name, inline JSON or (console) a job.json path;"
                " in Slack, leave it out to fill in a form"
            )
        text, label = self._configs.load(request.config, may_read_paths=actor.may_read_paths)
        text, section = split_sweep(text, label)
        if section is not None and not sweep_allowed:
            raise UserError(f"{label}: a sweep section makes a sweep (submit it with job create)")
        spec = self._fill_placeholders(load_job_spec(text, source=label), label)
        if request.workspace is not None or request.experiment is not None:
            spec = spec.in_workspace()  # `-w/-e`: the 2018-05-01 way, and its layout
        if request.mounts:
            spec = await self._with_mounts(spec, request, label)
        self._refuse_reserved_shares(spec)
        channel = actor.conversation.channel if actor.conversation else None
        self._vaults.check(key_vault_refs(spec), channel=channel, is_admin=actor.is_admin)
        volumes = spec.properties.mount_volumes
        if volumes is not None and self._file_servers is not None:  # only ready ones of ours
            await check_ready(self._file_servers, [f.server_name for f in volumes.file_servers])
        return spec, label, section

    def _check_name(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise UserError(f"job name {name!r} must be 1-64 letters, digits, - or _")

    async def build_job(
        self,
        request: JobRequest,
        spec: JobSpec,
        label: str,
        *,
        actor: Actor,
        sweep_id: str | None = None,
    ) -> tuple[Job, Cluster, Sequence[str]]:
        """The job `request` would store (not stored): its cluster checked, its launch planned."""
        self._check_name(request.name)
        async with self._store.unit() as uow:
            taken = await uow.jobs.find(request.name) is not None
        if taken:
            raise Conflict(f"job {request.name} already exists; delete it or choose another name")
        cluster_name = request.cluster or _cluster_from_spec(spec)
        if cluster_name is None:
            raise UserError(
                "name the cluster with --cluster-name (or cluster.id in the job.json)",
                field="cluster",
            )
        async with self._store.unit() as uow:
            cluster = await uow.clusters.get(cluster_name)
            known = [c.name for c in await uow.clusters.list()] if cluster is None else []
        if cluster is None:
            raise NotFound(f"cluster {cluster_name} not found{did_you_mean(cluster_name, known)}")
        nodes = spec.properties.node_count
        if nodes > cluster.max_nodes:
            raise UserError(
                f"the job needs {nodes} nodes; cluster {cluster.name} has at most "
                f"{cluster.max_nodes}",
                field="node_count",
            )
        job_id = uuid.uuid4().hex
        experiment = request.experiment or self._experiment
        plan = _check_plan(spec, cluster_name, request.name, job_id, experiment, label)
        now = self._clock.now()
        job = Job(
            id=job_id,
            name=request.name,
            cluster=cluster.name,
            resource_group=request.resource_group or cluster.resource_group,
            workspace=request.workspace or cluster.workspace,
            experiment=experiment,
            state=JobState.QUEUED,
            spec_json=spec.model_dump_json(by_alias=True, exclude_none=True),
            node_count=nodes,
            toolkit=plan.toolkit,
            max_wall_clock=plan.max_wall_clock,
            requester=actor.user,
            created_at=now,
            queued_at=now,
            conversation=actor.conversation,
            container_image=plan.container_image,
            max_retries=_max_retries(request.max_retries, spec, cluster),
            sweep_id=sweep_id,
        )
        async with self._store.unit() as uow:  # refused now if missing; claimed at commit
            await self._claim_home(uow, job)
        return job, cluster, plan.warnings

    async def _claim_home(self, uow: UnitOfWork, job: Job) -> None:
        """The job's workspace and experiment: the implicit defaults are made on first use,
        any other must exist (`experiment create`)."""
        await claim_experiment(
            uow,
            self._homes,
            resource_group=job.resource_group,
            workspace=job.workspace,
            name=job.experiment,
            by=job.requester,
            at=job.created_at,
        )

    async def _with_mounts(self, spec: JobSpec, request: JobRequest, label: str) -> JobSpec:
        """The job.json with the mount flags' volumes added (a flag's path replaces the file's)."""
        check_mounts(request.mounts, self._reserved_shares)
        own = self._placeholders.get(ACCOUNT_PLACEHOLDER, "")
        rg, ws = request.resource_group or self._rg, request.workspace or self._ws

        def server_id(name: str) -> str:
            workspace = f"/resourceGroups/{rg}/providers/Microsoft.BatchAI/workspaces/{ws}"
            return f"{workspace}/fileServers/{name}"

        added = job_volumes(request.mounts, own_account=own, file_server_id=server_id)
        data = json.loads(spec.model_dump_json(by_alias=True, exclude_none=True))
        props = data.setdefault("properties", {})
        volumes = props.setdefault("mountVolumes", {})
        paths = {m.mount_path for m in request.mounts}
        for key in list(volumes):
            volumes[key] = [v for v in volumes[key] if v.get("relativeMountPath") not in paths]
        for key, entries in added.items():
            volumes[key] = [*volumes.get(key, []), *entries]
        names = {(m.kind, m.share) for m in request.mounts if m.account is None}
        if self._storage is not None and {("afs", AUTO_SHARE), ("bfs", AUTO_CONTAINER)} & names:
            await self._storage.ensure_auto_storage(AUTO_SHARE, AUTO_CONTAINER)
        return load_job_spec(json.dumps(data), source=label)

    def _refuse_reserved_shares(self, spec: JobSpec) -> None:
        """A job.json never mounts the bot's control share: refused at submit, in one line
        (the backend refuses it again at launch, for jobs stored before this check)."""
        volumes = spec.properties.mount_volumes
        for volume in volumes.azure_file_shares if volumes is not None else ():
            share = volume.azure_file_url.rstrip("/").rsplit("/", 1)[-1]
            if share in self._reserved_shares:
                raise UserError(
                    f"mountVolumes.azureFileShares: share {share} is the bot's control share "
                    "(AZURE_SHARE), which holds every job's launch records; mount another share"
                )

    async def _price(
        self, job: Job, cluster: Cluster, spend: SpendService, actor: Actor
    ) -> tuple[Job, Approval | None, Estimate]:
        """Price the job and ask the gate; above the requester's limit (or the budget) it waits
        for approval."""
        if self._approvals is None:
            estimate = spend.estimate(cluster, nodes=job.node_count, hours=job.max_wall_clock)
            return (
                replace(job, node_rate=estimate.usd_per_hour, estimate=estimate.total),
                None,
                estimate,
            )
        commitment = self._approvals.gate.job(job, cluster)
        estimate = commitment.estimate
        job = replace(job, node_rate=estimate.usd_per_hour, estimate=estimate.total)
        verdict = await self._approvals.gate.assess(commitment, actor=actor)
        if isinstance(verdict, Refused):
            raise NotAllowed(verdict.reason)
        approval = None
        if isinstance(verdict, NeedsApproval):
            job = held_for_approval(job)
            approval = self._approvals.new_approval(
                job=job,
                kind="job",
                estimate=estimate.total,
                formula=estimate.formula(),
                assessment=verdict.assessment,
                month_spend=verdict.month_spend,
                budget=verdict.budget,
            )
        return job, approval, estimate

    def unguarded_estimate(self, job: Job) -> Decimal | None:
        """The job's estimate when no approval policy guarded it and it is worth saying so."""
        if self._approvals is None or not self._approvals.gate.unguarded(job.estimate):
            return None
        return job.estimate

    async def list_jobs(
        self,
        *,
        actor: Actor,
        cluster: str | None = None,
        workspace: str | None = None,
        experiment: str | None = None,
    ) -> list[Job]:
        """The jobs `actor` may read (see JobReaders), of one cluster, workspace or
        experiment when those are given (`job list -c`, `-w`, `-e`)."""
        async with self._store.unit() as uow:
            jobs = await uow.jobs.list(cluster=cluster)
        jobs = [
            j
            for j in jobs
            if (workspace is None or j.workspace == workspace)
            and (experiment is None or j.experiment == experiment)
        ]
        return await self._readers.visible(jobs, actor)

    async def get_job(self, name: str, *, actor: Actor, where: Where = ANYWHERE) -> Job:
        job = await self._find(name, where)
        await self._readers.check(job, actor)
        return job

    async def may_read(self, job: Job, *, actor: Actor) -> bool:
        return await self._readers.may_read(job, actor)

    async def wait_job(
        self, name: str, *, actor: Actor, poll: float, where: Where = ANYWHERE
    ) -> Job:
        """The job once it has finished (`az batchai job wait`)."""
        job = await self.get_job(name, actor=actor, where=where)
        while not job.state.finished:
            await asyncio.sleep(poll)
            job = await self._reload(job)
        return job

    async def get_job_by_id(self, job_id: str, *, actor: Actor) -> Job:
        """Buttons name jobs by id: a re-created job of the same name is another job."""
        job = await self._find_by_id(job_id)
        await self._readers.check(job, actor)
        return job

    async def _find(self, name: str, where: Where = ANYWHERE) -> Job:
        async with self._store.unit() as uow:
            job = await uow.jobs.find(name)
        if job is None:
            raise NotFound(f"job {name} not found")
        if (miss := where.misses(job.resource_group, job.workspace, job.experiment)) is not None:
            raise NotFound(f"job {name} not found{miss}")
        return job

    async def _find_by_id(self, job_id: str) -> Job:
        async with self._store.unit() as uow:
            job = await uow.jobs.get(job_id)
        if job is None:
            raise NotFound("that job no longer exists")
        return job

    async def terminate_job(
        self,
        name: str | None = None,
        *,
        actor: Actor,
        job_id: str | None = None,
        where: Where = ANYWHERE,
    ) -> tuple[Job, bool]:
        """Ask the job to stop. Idempotent: returns the job and whether this call stopped it
        (False when it had already ended or was already terminating)."""
        job = await (self._find_by_id(job_id) if job_id else self._find(name or "", where))
        check_job_owner(job, actor, "stop")
        if job.state.finished or job.state is JobState.TERMINATING:
            return job, False
        if job.state is JobState.PENDING_APPROVAL and self._approvals is not None:
            return await self._approvals.withdraw(job, actor=actor), True
        step = advance(job, JobState.TERMINATING, detail=f"terminate requested by {actor.user}")
        assert step is not None
        moved = step.job
        async with self._store.unit() as uow:
            if await uow.jobs.move(moved, step.transition):
                uow.emit(*step.events)
                await uow.commit()
                return moved, True
        return await self.terminate_job(actor=actor, job_id=job.id)  # it moved: decide again

    async def delete_job(self, name: str, *, actor: Actor, where: Where = ANYWHERE) -> Job | None:
        """Like az: a live job is terminated first. Deleting what is gone (or is elsewhere
        than `where` says) succeeds, changing nothing.

        The name is free at once; the runner still sees the job through to its end."""
        async with self._store.unit() as uow:
            job = await uow.jobs.find(name)
        if job is None or where.misses(job.resource_group, job.workspace, job.experiment):
            return None
        check_job_owner(job, actor, "delete")
        if not job.state.finished:
            job, _ = await self.terminate_job(name, actor=actor)
        async with self._store.unit() as uow:
            await uow.jobs.delete(job.id)
            await uow.commit()
        return job

    async def list_files(
        self,
        name: str,
        *,
        actor: Actor,
        directory_id: str = STDOUTERR,
        path: str = ".",
        expiry_minutes: int = 60,
        where: Where = ANYWHERE,
    ) -> FileListing:
        if not MIN_LINK_MINUTES <= expiry_minutes <= MAX_LINK_MINUTES:
            raise UserError(f"--expiry must be {MIN_LINK_MINUTES}-{MAX_LINK_MINUTES} minutes")
        job = await self.get_job(name, actor=actor, where=where)
        directory = self._located(job, directory_id, path)
        entries = await self._share.list_files(directory, recursive=False)
        if directory_id.lower() == STDOUTERR:
            # Batch AI's stdouterr holds the job's logs only; with the 2017 layout (logs in the
            # job directory) or one mount for logs and outputs, outputs/ sits beside them.
            entries = [e for e in entries if not e.is_directory and is_log_name(e.name)]
        expires = self._clock.now() + timedelta(minutes=expiry_minutes)
        links = await download_links(self._share, directory, entries, expires_at=expires)
        return FileListing(job, directory_id, path, tuple(entries), links)

    async def follow_file(
        self,
        name: str,
        *,
        actor: Actor,
        directory_id: str,
        file_name: str,
        path: str = ".",
        poll: float = 0.5,
        where: Where = ANYWHERE,
    ) -> AsyncIterator[bytes]:
        """`tail -f` like `az batchai job stream-file`: waits for the job to start and the file
        to appear, then yields new bytes as they are written, until the job has ended."""
        job = await self.get_job(name, actor=actor, where=where)
        while job.layout is None and not job.state.finished:
            await asyncio.sleep(poll)
            job = await self._reload(job)
        loc = self._located(job, directory_id, path, file_name)
        offset = 0
        while True:
            finished = job.state.finished
            while chunk := await self._share.read_range(loc, offset, 1 << 20):
                offset += len(chunk)
                yield chunk
            if finished:
                if offset == 0 and await self._share.stat(loc) is None:
                    raise NotFound(f"job {job.name} ended without writing {file_name}")
                return
            await asyncio.sleep(poll)
            job = await self._reload(job)

    async def _reload(self, job: Job) -> Job:
        async with self._store.unit() as uow:
            return await uow.jobs.get(job.id) or job

    async def tail_file(
        self,
        job: Job,
        name: str,
        max_bytes: int,
        *,
        actor: Actor,
        directory_id: str = STDOUTERR,
        path: str = ".",
    ) -> tuple[bytes, int]:
        """The last `max_bytes` of one of the job's files, starting at a line, and that line's
        number (0 when unknown because the start was cut)."""
        await self._readers.check(job, actor)
        loc = self._located(job, directory_id, path, name)
        entry = await self._share.stat(loc)
        if entry is None:
            return b"", 1
        start = max(0, entry.size - max_bytes)
        data = await self._share.read_range(loc, start, entry.size - start)
        if start > 0 and b"\n" in data:
            data = data[data.index(b"\n") + 1 :]
            return data, 0
        return data, 1

    def _located(
        self, job: Job, directory_id: str, path: str, name: str | None = None
    ) -> FileLocation:
        """A folder (or a file in it) of one of the job's directories; stdouterr has no folders,
        so nothing of a neighbouring outputs/ is reached through it."""
        if directory_id.lower() == STDOUTERR and (
            path.strip() not in ("", ".") or (name is not None and "/" in name.strip("/"))
        ):
            raise UserError(
                "stdouterr holds the job's logs only and has no folders: give a file name from "
                "job file list -d stdouterr, and -d <output id> for the job's outputs"
            )
        directory = _subdir(self._directory(job, directory_id), path)
        return directory if name is None else directory.child(_safe(name))

    def _directory(self, job: Job, directory_id: str) -> FileLocation:
        layout = job.layout
        if layout is None:
            raise Conflict(f"job {job.name} has not started yet; its files appear when it runs")
        if directory_id.lower() == STDOUTERR:
            if layout.stdouterr is None:
                raise NotFound(f"job {job.name} writes stdout/stderr off the share")
            return layout.stdouterr
        for key, loc in layout.outputs.items():
            if key.lower() == directory_id.lower():
                return loc
        known = ", ".join([STDOUTERR, *layout.outputs]) or STDOUTERR
        if directory_id.lower() in _declared_outputs(job):
            raise NotFound(
                f"job {job.name}'s output directory {directory_id} is not on storage the bot "
                "can list (on Azure: a share or blob container of the bot's storage account, "
                f"not a file server or another account's) (has: {known})"
            )
        raise NotFound(f"job {job.name} has no output directory {directory_id!r} (has: {known})")

    def _fill_placeholders(self, spec: JobSpec, label: str) -> JobSpec:
        found = placeholders(spec)
        if not found:
            return spec
        missing = sorted(p for p in found if p not in self._placeholders)
        if missing:
            raise SpecError(f"{label}: no value configured for {', '.join(missing)}")
        return substitute(spec, self._placeholders)


def _declared_outputs(job: Job) -> set[str]:
    """The (lower-cased) ids of the job.json's outputDirectories."""
    try:
        props = json.loads(job.spec_json).get("properties", {})
        return {str(o.get("id", "")).lower() for o in props.get("outputDirectories", ())}
    except (ValueError, AttributeError, TypeError):
        return set()


def _max_retries(asked: int | None, spec: JobSpec, cluster: Cluster) -> int:
    """--max-retries, else the job.json's `constraints.maxTaskRetryCount` (Batch AI 2017), else
    the cluster's: Spot nodes may be evicted any time, dedicated ones are not."""
    constraints = spec.properties.constraints
    from_spec = constraints.max_task_retry_count if constraints is not None else None
    chosen = asked if asked is not None else from_spec
    if chosen is None:
        return SPOT_RETRIES if cluster.vm_priority == "lowpriority" else 0
    if not 0 <= chosen <= MAX_RETRIES:
        raise UserError(f"--max-retries must be a whole number from 0 to {MAX_RETRIES}")
    return chosen


def _check_owner(job: Job, actor: Actor, verb: str) -> None:
    check_owner(job, actor, verb)  # one rule, in services/access


def _cluster_from_spec(spec: JobSpec) -> str | None:
    ref = spec.properties.cluster
    if ref is None or not ref.id:
        return None
    return ref.id.rstrip("/").rsplit("/", 1)[-1]


def _check_plan(
    spec: JobSpec, cluster: str, name: str, job_id: str, experiment: str, label: str
) -> Any:
    """Plan the launch on placeholder nodes now, so a bad spec fails at submit, not at start."""
    ctx = LaunchContext(
        subscription="validate",
        resource_group="validate",
        workspace="validate",
        experiment=experiment,
        cluster_name=cluster,
        job_name=name,
        job_uuid=job_id,
        mount_root="/mnt/batch/tasks/shared/LS_root/mounts",
        job_mount_root=f"/mnt/batch/tasks/shared/LS_root/jobs/{name}/mounts",
        job_temp_root="/mnt/batch/tasks/shared/LS_root/jobs",
        nodes=tuple(NodeInfo(i, f"10.0.0.{i + 4}") for i in range(spec.properties.node_count)),
        submitting=True,
    )
    try:
        return plan_launch(spec, ctx)
    except SpecError:
        raise
    except (ValueError, KeyError) as err:
        raise SpecError(f"{label}: {err}") from err


def _safe(part: str) -> str:
    if not part or part.startswith("/") or ".." in part.split("/"):
        raise UserError(f"{part!r} is not a file name inside the directory")
    return part


def _subdir(loc: FileLocation, path: str) -> FileLocation:
    path = path.strip()
    if path in ("", "."):
        return loc
    return loc.child(_safe(path.strip("/")))


async def add_submission(uow: UnitOfWork, job: Job, run: ScheduleRun | None) -> None:
    """Store a new job; a schedule's run first claims that run, so of two firings of one run
    only one submits (Conflict for the other, and its unit stores nothing)."""
    if run is not None:
        claimed = await uow.schedules.claim(run, job_id=job.id, job_name=job.name)
        if not claimed:
            raise Conflict(f"schedule {run.schedule_id} has run already")
    await uow.jobs.add(job)
