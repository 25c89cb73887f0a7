"""The /batchai command handler: parse, call one service method, render. No business rules."""

from __future__ import annotations

import codecs
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar, cast

from handlers import grammar, sweepviews, views
from handlers.commandspec import (
    COMMANDS,
    ApprovalsApprove,
    ApprovalsDeny,
    ApprovalsList,
    Audit,
    BudgetSet,
    BudgetShow,
    ClusterAutoScale,
    ClusterCreate,
    ClusterDelete,
    ClusterFileList,
    ClusterList,
    ClusterNodeExec,
    ClusterNodeList,
    ClusterResize,
    ClusterShow,
    ClusterUpdate,
    ExperimentCreate,
    ExperimentDelete,
    ExperimentList,
    ExperimentShow,
    FileServerCreate,
    FileServerDelete,
    FileServerList,
    FileServerShow,
    Help,
    JobCreate,
    JobDelete,
    JobList,
    JobListFiles,
    JobNodeExec,
    JobNodeList,
    JobShow,
    JobStreamFile,
    JobTerminate,
    JobWait,
    ListUsages,
    ScheduleDelete,
    ScheduleList,
    ScheduleShow,
    Spend,
    WorkspaceCreate,
    WorkspaceDelete,
    WorkspaceList,
    WorkspaceShow,
)
from handlers.grammar import Command, ConfigRef, Source
from handlers.views import Message
from services.access import AccessGuard, AuditLog, Caller
from services.clusters.fileservers import FileServerRequest, FileServerService
from services.clusters.mounts import MountFlags, from_flags
from services.clusters.service import ClusterRequest, ClusterService
from services.core.errors import BatchAIError, Conflict, NotAllowed, NotFound, UserError
from services.jobs.service import JobRequest, JobService
from services.jobs.sweeps import SweepService
from services.models import Actor, ConfigSource, Job, SweepView
from services.schedules.service import ScheduleRequest, ScheduleService
from services.spend.approvals.service import ApprovalService
from services.spend.ledger import SpendService
from services.spend.pricing import format_usd
from services.workspaces.service import WorkspaceService

TAIL_BYTES = 16 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """What the user sees: `public` goes to the channel, otherwise only to the requester.

    `stream` (stream-file) yields text while the job runs; transports show it as it comes."""

    message: Message
    public: bool = False
    stream: AsyncIterator[str] | None = None
    failed: bool = False  # the request was refused or wrong; nothing changed


@dataclass(frozen=True)
class Admitted:
    """A command the guard let through, with the actor it runs as: `run` takes nothing else."""

    command: Command
    caller: Caller
    actor: Actor
    detail: str | None = None  # what the audit record shows of the request (the typed text)


@dataclass(frozen=True)
class Services:
    clusters: ClusterService
    jobs: JobService
    now: Callable[[], datetime]
    guard: AccessGuard
    approvals: ApprovalService | None = None
    spend: SpendService | None = None
    audit: AuditLog | None = None
    schedules: ScheduleService | None = None
    workspaces: WorkspaceService | None = None
    file_servers: FileServerService | None = None
    sweeps: SweepService | None = None


class CommandHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def handle(self, text: str, *, caller: Caller, source: Source) -> Reply:
        """Parse, admit and run. Never raises for a user's mistake: errors are one line plus
        usage; a refusal is one line (and an audit record)."""
        parsed = self.parse(text, source=source)
        if isinstance(parsed, Reply):
            return parsed
        admitted = await self.admit(parsed, caller=caller, detail=text)
        if isinstance(admitted, Reply):
            return admitted
        return await self.run(admitted, source=source)

    def parse(self, text: str, *, source: Source) -> Command | Reply:
        """The typed command, or the error reply (pure and fast: listeners ack after this)."""
        try:
            return grammar.parse(text, source=source)
        except UserError as err:
            return Reply(views.error(str(err), err.usage), failed=True)

    async def admit(
        self, command: Command, *, caller: Caller, detail: str | None = None
    ) -> Admitted | Reply:
        """Through the guard: the command to run, or the refusal (audited)."""
        guard = self._s.guard
        decision = await guard.admit(
            caller, action=type(command).__name__, destructive=command.destructive
        )
        if not decision.allowed:
            return Reply(views.error(decision.reason), failed=True)
        return Admitted(command, caller, guard.actor(caller), detail)

    async def run(self, admitted: Admitted, *, source: Source) -> Reply:
        """Run an admitted command; an audited one leaves its outcome in the audit log."""
        command = admitted.command
        reply = await self._answer(command, admitted.actor, source)
        if command.audited:
            await self._s.guard.record(
                admitted.caller,
                action=type(command).__name__,
                outcome="denied" if reply.failed else "allowed",
                detail=admitted.detail,
            )
        return reply

    async def _answer(self, command: Command, actor: Actor, source: Source) -> Reply:
        try:
            reply = await self._dispatch(command, actor, source)
        except UserError as err:
            return Reply(views.error(str(err), err.usage or _usage_of(command)), failed=True)
        except (NotFound, Conflict, NotAllowed) as err:  # a service's sentence: mentions kept
            return Reply(views.error(views.refusal(err)), failed=True)
        except BatchAIError as err:
            ref = uuid.uuid4().hex[:8]
            log.warning("command failed [%s]: %s", ref, err)
            return Reply(views.error(f"{err} (ref {ref})"), failed=True)
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("command crashed [%s]", ref)
            return Reply(views.error(f"something went wrong on our side (ref {ref})"), failed=True)
        if command.output == "none" and not reply.failed:  # it ran; its answer is not shown
            reply = Reply(views.no_output(console=source == "console"))
        if command.warnings:
            notes = [views.context(f":warning: {w}") for w in command.warnings]
            reply = Reply(
                Message(reply.message.text, notes + reply.message.blocks),
                reply.public,
                reply.stream,
            )
        return reply

    async def _dispatch(self, c: Command, actor: Actor, source: Source) -> Reply:
        handler = _HANDLERS.get(type(c))
        if handler is None:
            raise UserError(f"{type(c).__name__} is not available here")
        return await handler(self, c, actor, source)

    # -- help ---------------------------------------------------------------------------------

    async def _help(self, c: Help, actor: Actor, source: Source) -> Reply:
        return Reply(_help_message(c.topic))

    # -- clusters -----------------------------------------------------------------------------

    async def _cluster_create(self, c: ClusterCreate, actor: Actor, source: Source) -> Reply:
        request = cluster_request(c)
        cluster = await self._s.clusters.create_cluster(request, actor=actor)
        # A public reply shows the typed command to the channel: never when it held a secret
        # (a flag's, or one an inline cluster.json may hold: an account key, a password).
        secret_typed = c.password is not None or c.storage_account_key is not None
        secret_typed = secret_typed or _inline(c.config)
        if c.answer.structured:  # -o json: the created resource, as az printed it
            return Reply(await self._cluster_answer(cluster.name, c), public=not secret_typed)
        price = self._s.clusters.price_of(cluster)
        message = views.cluster_created(cluster, price)
        if standing := self._s.clusters.unguarded_standing(cluster):
            message = views.unguarded_spend(message, f"standing capacity {standing.formula()}")
        return Reply(message, public=not secret_typed)

    async def _cluster_answer(
        self, name: str, c: ClusterCreate | ClusterResize | ClusterAutoScale
    ) -> Message:
        view = await self._s.clusters.get_cluster(name, where=c.where)
        return views.cluster_detail(view, output=c.answer)

    async def _cluster_list(self, c: ClusterList, actor: Actor, source: Source) -> Reply:
        found = await self._s.clusters.list_clusters(
            resource_group=c.resource_group, workspace=c.workspace
        )
        return Reply(views.cluster_list(found, output=c.answer))

    async def _list_usages(self, c: ListUsages, actor: Actor, source: Source) -> Reply:
        return Reply(views.usage_list(await self._s.clusters.usages(c.location), output=c.answer))

    async def _cluster_show(self, c: ClusterShow, actor: Actor, source: Source) -> Reply:
        view = await self._s.clusters.get_cluster(c.name, where=c.where)
        return Reply(views.cluster_detail(view, output=c.answer))

    async def _cluster_resize(self, c: ClusterResize, actor: Actor, source: Source) -> Reply:
        cluster = await self._s.clusters.resize_cluster(
            c.name, target=c.target_nodes, actor=actor, where=c.where
        )
        if c.answer.structured:
            return Reply(await self._cluster_answer(cluster.name, c), public=True)
        return Reply(
            views.info(
                f"cluster *{cluster.name}* now has {cluster.target_nodes} "
                + ("node" if cluster.target_nodes == 1 else "nodes")
            ),
            public=True,
        )

    async def _cluster_auto_scale(self, c: ClusterAutoScale, actor: Actor, source: Source) -> Reply:
        cluster = await self._s.clusters.auto_scale_cluster(
            c.name,
            min_nodes=c.min_nodes,
            max_nodes=c.max_nodes,
            actor=actor,
            where=c.where,
            idle_timeout_minutes=c.idle_timeout_minutes,
        )
        if c.answer.structured:
            return Reply(await self._cluster_answer(cluster.name, c), public=True)
        text = (
            f"cluster *{cluster.name}* auto-scales between {cluster.min_nodes} and "
            f"{cluster.max_nodes} nodes (now {cluster.target_nodes})"
        )
        return Reply(views.info(text), public=True)

    async def _cluster_update(self, c: ClusterUpdate, actor: Actor, source: Source) -> Reply:
        cluster = await self._s.clusters.update_cluster(
            c.name,
            idle_timeout_minutes=c.idle_timeout_minutes,
            actor=actor,
            where=c.where,
        )
        return Reply(views.idle_setting(cluster, c.idle_timeout_minutes), public=True)

    async def _cluster_delete(self, c: ClusterDelete, actor: Actor, source: Source) -> Reply:
        if not await self._s.clusters.delete_cluster(c.name, where=c.where):
            return Reply(views.info(f"cluster *{c.name}* does not exist (nothing to do)"))
        return Reply(views.info(f"cluster *{c.name}* deleted"), public=True)

    async def _cluster_nodes(self, c: ClusterNodeList, actor: Actor, source: Source) -> Reply:
        nodes = await self._s.clusters.list_nodes(c.cluster, where=c.where)
        return Reply(views.node_table(nodes, output=c.answer))

    async def _cluster_files(self, c: ClusterFileList, actor: Actor, source: Source) -> Reply:
        listing = await self._s.clusters.list_setup_files(
            c.cluster,
            where=c.where,
            path=c.path,
            expiry_minutes=c.expiry_minutes,
        )
        return Reply(views.cluster_file_listing(listing, output=c.answer))

    async def _cluster_node_exec(self, c: ClusterNodeExec, actor: Actor, source: Source) -> Reply:
        out = await self._s.clusters.exec_on_node(
            c.cluster,
            node_id=c.node_id,
            command=c.command,
            actor=actor,
            where=c.where,
        )
        return Reply(views.node_output(out, c.command, output=c.answer))

    # -- jobs ---------------------------------------------------------------------------------

    async def _job_create(self, c: JobCreate, actor: Actor, source: Source) -> Reply:
        if c.name is None:  # the grammar asks for it outside Slack; in Slack the form does
            raise UserError("give the job a name with -n/--name")
        request = job_request(c)
        if c.at is not None or c.cron is not None:
            created = await self._schedules().create_schedule(
                ScheduleRequest(request, at=c.at, cron=c.cron, timezone=c.timezone), actor=actor
            )
            return Reply(
                views.schedule_created(created.schedule, created.upcoming, created.preview)
            )
        if self._s.sweeps is not None and c.at is None and c.cron is None:
            swept = await self._s.sweeps.create_sweep(
                request, actor=actor, flags=c.sweep, metric=c.sweep_metric
            )
            if swept is not None:
                if c.answer.structured:
                    jobs = list(swept.view.jobs)
                    return Reply(views.job_list(jobs, output=c.answer, now=self._s.now()))
                return Reply(sweepviews.sweep_submitted(swept))
        elif c.sweep:
            raise UserError("sweeps are not available here")
        job = await self._s.jobs.create_job(request, actor=actor)
        if c.answer.structured:  # -o json: the submitted job, as az printed it
            return Reply(views.job_detail(job, output=c.answer, now=self._s.now()))
        message = views.job_submitted(job)
        if (amount := self._s.jobs.unguarded_estimate(job)) is not None:
            message = views.unguarded_spend(message, format_usd(amount))
        return Reply(message)

    async def _job_list(self, c: JobList, actor: Actor, source: Source) -> Reply:
        if c.sweep is not None:
            view = await self._sweep(c.sweep, actor)
            if view is None:
                raise NotFound(f"sweep {c.sweep} not found")
            jobs = [j for j in view.jobs if c.cluster is None or j.cluster == c.cluster]
            return Reply(views.job_list(jobs, output=c.answer, now=self._s.now()))
        jobs = await self._s.jobs.list_jobs(
            actor=actor, cluster=c.cluster, workspace=c.workspace, experiment=c.experiment
        )
        return Reply(views.job_list(jobs, output=c.answer, now=self._s.now()))

    async def _job_show(self, c: JobShow, actor: Actor, source: Source) -> Reply:
        view = await self._sweep_unless_job(c.name, actor)
        if view is not None:
            return Reply(sweepviews.sweep_detail(view, output=c.answer, now=self._s.now()))
        job = await self._s.jobs.get_job(c.name, actor=actor, where=c.where)
        return Reply(views.job_detail(job, output=c.answer, now=self._s.now()))

    async def _job_terminate(self, c: JobTerminate, actor: Actor, source: Source) -> Reply:
        view = await self._sweep_unless_job(c.name, actor)
        if view is not None and self._s.sweeps is not None:
            stopped = await self._s.sweeps.stop_sweep(view, actor=actor)
            return Reply(sweepviews.sweep_stopped(stopped, by=actor.user), public=True)
        job, applied = await self._s.jobs.terminate_job(c.name, actor=actor, where=c.where)
        if not applied:
            return Reply(views.info(f"job *{job.name}* is already {job.state.value}"))
        return Reply(views.info(f"<@{actor.user}> is terminating *{job.name}*…"), public=True)

    async def _sweep(self, name: str, actor: Actor) -> SweepView | None:
        if self._s.sweeps is None:
            return None
        return await self._s.sweeps.find_sweep(name, actor=actor)

    async def _sweep_unless_job(self, name: str, actor: Actor) -> SweepView | None:
        """The sweep of that name, unless a job has the name (a job's name wins)."""
        try:
            await self._s.jobs.get_job(name, actor=actor)
        except NotFound:
            return await self._sweep(name, actor)
        return None

    async def _job_delete(self, c: JobDelete, actor: Actor, source: Source) -> Reply:
        job = await self._s.jobs.delete_job(c.name, actor=actor, where=c.where)
        text = (
            f"job *{c.name}* deleted" if job else f"job *{c.name}* does not exist (nothing to do)"
        )
        return Reply(views.info(text))

    async def _job_wait(self, c: JobWait, actor: Actor, source: Source) -> Reply:
        job = await self._s.jobs.get_job(c.name, actor=actor, where=c.where)
        if source == "slack" and not job.state.finished:
            note = views.md(
                "the receipt in the job's thread will mention {} when it ends",
                views.user(job.requester),
            )
            card = views.status_card(job, now=self._s.now())
            return Reply(Message(card.text, [*card.blocks, views.context(note)]))
        # The store is local and cheap to read: notice the end within a second, whatever --interval.
        job = await self._s.jobs.wait_job(
            c.name, actor=actor, poll=min(c.interval_seconds, 1), where=c.where
        )
        return Reply(views.job_detail(job, output=c.answer, now=self._s.now()))

    async def _job_stream(self, c: JobStreamFile, actor: Actor, source: Source) -> Reply:
        job = await self._s.jobs.get_job(c.job, actor=actor, where=c.where)
        if source == "slack":  # a slash command cannot hold a stream: show the tail
            return await self._tail_reply(job, c, actor)
        chunks = self._s.jobs.follow_file(
            c.job,
            actor=actor,
            directory_id=c.output_directory_id,
            file_name=c.file_name,
            path=c.path,
            where=c.where,
        )
        head = f"streaming `{c.file_name}` of *{job.name}* until it ends"
        return Reply(views.info(head), stream=_decode(chunks))

    async def _tail_reply(self, job: Job, c: JobStreamFile, actor: Actor) -> Reply:
        data, first_line = await self._s.jobs.tail_file(
            job,
            c.file_name,
            TAIL_BYTES,
            actor=actor,
            directory_id=c.output_directory_id,
            path=c.path,
        )
        lines = data.decode("utf-8", errors="replace").splitlines()
        message = views.log_snippet(c.file_name, first_line, lines)
        if not job.state.finished:
            note = "new lines appear in the job's thread as they are written"
            message = Message(message.text, [*message.blocks, views.context(note)])
        return Reply(message)

    async def _job_files(self, c: JobListFiles, actor: Actor, source: Source) -> Reply:
        listing = await self._s.jobs.list_files(
            c.job,
            actor=actor,
            directory_id=c.output_directory_id,
            path=c.path,
            expiry_minutes=c.expiry_minutes,
            where=c.where,
        )
        return Reply(views.file_listing(listing, output=c.answer))

    async def _job_nodes(self, c: JobNodeList, actor: Actor, source: Source) -> Reply:
        job = await self._s.jobs.get_job(c.job, actor=actor, where=c.where)
        nodes = await self._s.clusters.list_job_nodes(job)
        return Reply(views.node_table(nodes, output=c.answer))

    # -- workspaces and experiments -------------------------------------------------------------

    def _workspaces(self) -> WorkspaceService:
        if self._s.workspaces is None:
            raise UserError("workspaces are not set up in this bot")
        return self._s.workspaces

    async def _workspace_create(self, c: WorkspaceCreate, actor: Actor, source: Source) -> Reply:
        view, created = await self._workspaces().create_workspace(
            c.workspace, actor=actor, resource_group=c.resource_group, location=c.location
        )
        if c.answer.structured or c.output == "table":  # the resource, as az printed it
            return Reply(views.workspace_detail(view, output=c.answer), public=created)
        return Reply(views.workspace_created(view, created), public=created)

    async def _workspace_list(self, c: WorkspaceList, actor: Actor, source: Source) -> Reply:
        found = await self._workspaces().list_workspaces(resource_group=c.resource_group)
        return Reply(views.workspace_list(found, output=c.answer))

    async def _workspace_show(self, c: WorkspaceShow, actor: Actor, source: Source) -> Reply:
        view = await self._workspaces().get_workspace(c.workspace, resource_group=c.resource_group)
        return Reply(views.workspace_detail(view, output=c.answer))

    async def _workspace_delete(self, c: WorkspaceDelete, actor: Actor, source: Source) -> Reply:
        if not await self._workspaces().delete_workspace(
            c.workspace, resource_group=c.resource_group
        ):
            return Reply(views.info(f"workspace *{c.workspace}* does not exist (nothing to do)"))
        return Reply(views.info(f"workspace *{c.workspace}* deleted"), public=True)

    async def _experiment_create(self, c: ExperimentCreate, actor: Actor, source: Source) -> Reply:
        view, created = await self._workspaces().create_experiment(
            c.name, workspace=c.workspace, actor=actor, resource_group=c.resource_group
        )
        if c.answer.structured or c.output == "table":  # the resource, as az printed it
            return Reply(views.experiment_detail(view, output=c.answer), public=created)
        return Reply(views.experiment_created(view, created), public=created)

    async def _experiment_list(self, c: ExperimentList, actor: Actor, source: Source) -> Reply:
        found = await self._workspaces().list_experiments(
            workspace=c.workspace, resource_group=c.resource_group
        )
        return Reply(views.experiment_list(found, workspace=c.workspace, output=c.answer))

    async def _experiment_show(self, c: ExperimentShow, actor: Actor, source: Source) -> Reply:
        view = await self._workspaces().get_experiment(
            c.name, workspace=c.workspace, resource_group=c.resource_group
        )
        return Reply(views.experiment_detail(view, output=c.answer))

    async def _experiment_delete(self, c: ExperimentDelete, actor: Actor, source: Source) -> Reply:
        deleted = await self._workspaces().delete_experiment(
            c.name, workspace=c.workspace, resource_group=c.resource_group
        )
        if not deleted:
            return Reply(views.info(f"experiment *{c.name}* does not exist (nothing to do)"))
        return Reply(views.info(f"experiment *{c.name}* deleted"), public=True)

    async def _job_node_exec(self, c: JobNodeExec, actor: Actor, source: Source) -> Reply:
        job = await self._s.jobs.get_job(c.job, actor=actor, where=c.where)
        out = await self._s.clusters.exec_on_job_node(
            job, node_id=c.node_id, command=c.command, actor=actor
        )
        return Reply(views.node_output(out, c.command, output=c.answer))

    # -- file servers -------------------------------------------------------------------------

    def _file_servers(self) -> FileServerService:
        if self._s.file_servers is None:
            raise UserError("file servers are not set up in this bot")
        return self._s.file_servers

    async def _file_server_create(self, c: FileServerCreate, actor: Actor, source: Source) -> Reply:
        request = FileServerRequest(
            name=c.name,
            vm_size=c.vm_size,
            disk_count=c.disk_count,
            disk_size_gb=c.disk_size_gb,
            storage_sku=c.storage_sku,
            user_name=c.user_name,
            subnet=c.subnet,
            resource_group=c.resource_group,
            workspace=c.workspace,
            config=_config(c.config),
        )
        server = await self._file_servers().create_file_server(request, actor=actor)
        # Never show the channel a typed password (a flag's or an inline file's).
        public = c.password is None and not _inline(c.config)
        if c.answer.structured:
            return Reply(views.file_server_detail(server, output=c.answer), public=public)
        text = (
            f"file server *{server.name}* is ready: {server.disk_count} × "
            f"{server.disk_size_gb} GB disks; mount it with `--nfs {server.name}`"
        )
        return Reply(views.info(text), public=public)

    async def _file_server_list(self, c: FileServerList, actor: Actor, source: Source) -> Reply:
        servers = await self._file_servers().list_file_servers()
        return Reply(views.file_server_list(servers, output=c.answer))

    async def _file_server_show(self, c: FileServerShow, actor: Actor, source: Source) -> Reply:
        server = await self._file_servers().get_file_server(c.name, resource_group=c.resource_group)
        return Reply(views.file_server_detail(server, output=c.answer))

    async def _file_server_delete(self, c: FileServerDelete, actor: Actor, source: Source) -> Reply:
        gone = await self._file_servers().delete_file_server(
            c.name, resource_group=c.resource_group
        )
        if not gone:
            return Reply(views.info(f"file server *{c.name}* does not exist (nothing to do)"))
        return Reply(views.info(f"file server *{c.name}* deleted"), public=True)

    # -- schedules ------------------------------------------------------------------------------

    def _schedules(self) -> ScheduleService:
        if self._s.schedules is None:
            raise UserError("scheduled jobs are not set up in this bot")
        return self._s.schedules

    async def _schedule_list(self, c: ScheduleList, actor: Actor, source: Source) -> Reply:
        found = await self._schedules().list_schedules(actor=actor, everywhere=c.all)
        return Reply(views.schedule_list(found, output=c.answer))

    async def _schedule_show(self, c: ScheduleShow, actor: Actor, source: Source) -> Reply:
        schedule, upcoming = await self._schedules().get_schedule(c.id)
        return Reply(views.schedule_detail(schedule, upcoming, output=c.answer))

    async def _schedule_delete(self, c: ScheduleDelete, actor: Actor, source: Source) -> Reply:
        schedule = await self._schedules().delete_schedule(c.id, actor=actor)
        if schedule is None:
            return Reply(views.info(f"schedule `{c.id}` does not exist (nothing to do)"))
        text = f"<@{actor.user}> deleted schedule `{schedule.id}` (job *{schedule.job.name}*)"
        return Reply(views.info(text), public=True)

    # -- spend ----------------------------------------------------------------------------------

    def _money(self) -> tuple[ApprovalService, SpendService]:
        if self._s.approvals is None or self._s.spend is None:
            raise UserError("spend tracking is not set up in this bot")
        return self._s.approvals, self._s.spend

    async def _budget_show(self, c: BudgetShow, actor: Actor, source: Source) -> Reply:
        _, spend = self._money()
        channel = c.channel or _channel(actor)
        return Reply(
            views.budget_view(
                channel, await spend.budget(channel), await spend.month_spend(channel)
            )
        )

    async def _budget_set(self, c: BudgetSet, actor: Actor, source: Source) -> Reply:
        _, spend = self._money()
        channel = c.channel or _channel(actor)
        amount = await spend.set_budget(channel, c.amount, actor=actor)
        text = f"<@{actor.user}> set the monthly budget of <#{channel}> to {format_usd(amount)}"
        return Reply(views.info(text), public=True)

    async def _approvals_list(self, c: ApprovalsList, actor: Actor, source: Source) -> Reply:
        approvals, _ = self._money()
        found = await approvals.list_approvals(actor=actor, include_decided=c.all)
        return Reply(views.approvals_table(found, output=c.answer))

    async def _approvals_approve(self, c: ApprovalsApprove, actor: Actor, source: Source) -> Reply:
        approvals, _ = self._money()
        outcome = await approvals.approve(c.id, actor=actor)
        return Reply(views.approval_outcome(outcome), failed=not outcome.applied)

    async def _approvals_deny(self, c: ApprovalsDeny, actor: Actor, source: Source) -> Reply:
        approvals, _ = self._money()
        outcome = await approvals.deny(c.id, actor=actor, reason=c.reason)
        return Reply(views.approval_outcome(outcome), failed=not outcome.applied)

    async def _spend(self, c: Spend, actor: Actor, source: Source) -> Reply:
        _, spend = self._money()
        rows = await spend.report(by=c.by, month=c.month)
        month = c.month or f"{self._s.now():%Y-%m}"
        return Reply(views.spend_table(rows, by=c.by, month=month, output=c.answer))

    async def _audit(self, c: Audit, actor: Actor, source: Source) -> Reply:
        if self._s.audit is None:
            raise UserError("the audit log is not set up in this bot")
        job_id = (await self._s.jobs.get_job(c.job, actor=actor)).id if c.job else None
        entries = await self._s.audit.list_entries(actor=actor, job_id=job_id, limit=c.limit)
        return Reply(views.audit_table(entries, output=c.answer))


C = TypeVar("C", bound=Command)
Handler = Callable[[CommandHandler, C, Actor, Source], Awaitable[Reply]]


class _Handlers:
    """The handler of each command type: `add` checks that a handler takes its command's type,
    so `get` hands back one that fits the command it is looked up by."""

    def __init__(self) -> None:
        self._by_type: dict[type[Command], object] = {}

    def add(self, cls: type[C], handler: Handler[C]) -> None:
        self._by_type[cls] = handler

    def get(self, cls: type[C]) -> Handler[C] | None:
        handler = self._by_type.get(cls)
        return cast("Handler[C] | None", handler)  # added for exactly this type, see add()

    def types(self) -> frozenset[type[Command]]:
        return frozenset(self._by_type)


def job_request(c: JobCreate) -> JobRequest:
    """The service request a parsed `job create` makes, for the slash command and the job form
    alike (the service reads its config)."""
    return JobRequest(
        name=c.name or "",
        cluster=c.cluster,
        config=_config(c.config),
        resource_group=c.resource_group,
        workspace=c.workspace,
        experiment=c.experiment,
        max_retries=c.max_retries,
        mounts=tuple(from_flags(_mount_flags(c))),
    )


def _mount_flags(c: JobCreate | ClusterCreate) -> MountFlags:
    key = c.storage_account_key
    return MountFlags(
        afs_name=c.afs_name,
        afs_mount_path=c.afs_mount_path,
        bfs_name=c.bfs_name,
        bfs_mount_path=c.bfs_mount_path,
        nfs=c.nfs,
        nfs_mount_path=c.nfs_mount_path,
        use_auto_storage=c.use_auto_storage,
        storage_account_name=c.storage_account_name,
        storage_account_key=None if key is None else key.get_secret_value(),
    )


def cluster_request(c: ClusterCreate) -> ClusterRequest:
    """The service request a parsed `cluster create` makes (the service reads its file)."""
    return ClusterRequest(
        name=c.name,
        vm_size=c.vm_size,
        image=c.image,
        min_nodes=c.min_nodes,
        max_nodes=c.max_nodes,
        target_nodes=c.target_nodes,
        vm_priority=c.vm_priority,
        afs_name=c.afs_name,
        afs_mount_path=c.afs_mount_path,
        bfs_name=c.bfs_name,
        bfs_mount_path=c.bfs_mount_path,
        nfs=c.nfs,
        nfs_mount_path=c.nfs_mount_path,
        use_auto_storage=c.use_auto_storage,
        storage_account_name=c.storage_account_name,
        storage_account_key=(
            None if c.storage_account_key is None else c.storage_account_key.get_secret_value()
        ),
        subnet=c.subnet,
        user_name=c.user_name,
        setup_task=c.setup_task,
        setup_task_output=c.setup_task_output,
        resource_group=c.resource_group,
        workspace=c.workspace,
        config=_config(c.config),
        idle_timeout_minutes=c.idle_timeout_minutes,
    )


_HANDLERS = _Handlers()
_HANDLERS.add(BudgetShow, CommandHandler._budget_show)
_HANDLERS.add(BudgetSet, CommandHandler._budget_set)
_HANDLERS.add(ApprovalsList, CommandHandler._approvals_list)
_HANDLERS.add(ApprovalsApprove, CommandHandler._approvals_approve)
_HANDLERS.add(ApprovalsDeny, CommandHandler._approvals_deny)
_HANDLERS.add(Spend, CommandHandler._spend)
_HANDLERS.add(Audit, CommandHandler._audit)
_HANDLERS.add(Help, CommandHandler._help)
_HANDLERS.add(ScheduleList, CommandHandler._schedule_list)
_HANDLERS.add(ScheduleShow, CommandHandler._schedule_show)
_HANDLERS.add(ScheduleDelete, CommandHandler._schedule_delete)
_HANDLERS.add(ClusterCreate, CommandHandler._cluster_create)
_HANDLERS.add(ClusterList, CommandHandler._cluster_list)
_HANDLERS.add(ClusterShow, CommandHandler._cluster_show)
_HANDLERS.add(ListUsages, CommandHandler._list_usages)
_HANDLERS.add(ClusterResize, CommandHandler._cluster_resize)
_HANDLERS.add(ClusterAutoScale, CommandHandler._cluster_auto_scale)
_HANDLERS.add(ClusterUpdate, CommandHandler._cluster_update)
_HANDLERS.add(ClusterDelete, CommandHandler._cluster_delete)
_HANDLERS.add(ClusterNodeList, CommandHandler._cluster_nodes)
_HANDLERS.add(ClusterFileList, CommandHandler._cluster_files)
_HANDLERS.add(WorkspaceCreate, CommandHandler._workspace_create)
_HANDLERS.add(WorkspaceList, CommandHandler._workspace_list)
_HANDLERS.add(WorkspaceShow, CommandHandler._workspace_show)
_HANDLERS.add(WorkspaceDelete, CommandHandler._workspace_delete)
_HANDLERS.add(ExperimentCreate, CommandHandler._experiment_create)
_HANDLERS.add(ExperimentList, CommandHandler._experiment_list)
_HANDLERS.add(ExperimentShow, CommandHandler._experiment_show)
_HANDLERS.add(ExperimentDelete, CommandHandler._experiment_delete)
_HANDLERS.add(ClusterNodeExec, CommandHandler._cluster_node_exec)
_HANDLERS.add(JobCreate, CommandHandler._job_create)
_HANDLERS.add(JobList, CommandHandler._job_list)
_HANDLERS.add(JobShow, CommandHandler._job_show)
_HANDLERS.add(JobTerminate, CommandHandler._job_terminate)
_HANDLERS.add(JobDelete, CommandHandler._job_delete)
_HANDLERS.add(JobWait, CommandHandler._job_wait)
_HANDLERS.add(JobStreamFile, CommandHandler._job_stream)
_HANDLERS.add(JobListFiles, CommandHandler._job_files)
_HANDLERS.add(JobNodeList, CommandHandler._job_nodes)
_HANDLERS.add(JobNodeExec, CommandHandler._job_node_exec)
_HANDLERS.add(FileServerCreate, CommandHandler._file_server_create)
_HANDLERS.add(FileServerList, CommandHandler._file_server_list)
_HANDLERS.add(FileServerShow, CommandHandler._file_server_show)
_HANDLERS.add(FileServerDelete, CommandHandler._file_server_delete)


@functools.lru_cache(maxsize=256)
def _help_message(topic: tuple[str, ...]) -> Message:
    """Help is the same until the bot is upgraded: laid out into blocks once per topic (the
    layout cost more CPU than the rest of the command). Messages are never changed once made."""
    return views.monospace(grammar.help_text(*topic))


def _channel(actor: Actor) -> str:
    if actor.conversation is None:
        raise UserError("name the channel with --channel")
    return actor.conversation.channel


def _inline(config: ConfigRef | None) -> bool:
    """Whether the command holds its JSON file typed inline (which may hold a secret)."""
    return config is not None and config.kind == "inline"


def _config(ref: ConfigRef | None) -> ConfigSource | None:
    return None if ref is None else ConfigSource(ref.kind, ref.value)


def _usage_of(command: Command | None) -> str | None:
    """The usage of the command a service refused, so every error shows how to call it."""
    if command is None:
        return None
    for spec in COMMANDS:
        if spec.cls is type(command) and spec.legacy_of is None:
            return grammar.usage(*spec.path)
    return None


async def _decode(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async for chunk in chunks:
        if text := decoder.decode(chunk):
            yield text
    if tail := decoder.decode(b"", final=True):
        yield tail
