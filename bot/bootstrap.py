"""The one composition root: picks and builds every concrete part of the bot."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.console import ConsoleMembers
from bot.keys import link_secret, private_dir, secret_box
from bot.members import SlackChannelMembers
from bot.metrics import BotMetrics, StateCollector, measured
from bot.outbox import SlackOutbox
from bot.slack import UserGroups, web_client
from handlers.actions import ActionHandler
from handlers.commands import CommandHandler, Services
from handlers.dashboard import Dashboard
from handlers.presenter import Presenter, Transport
from handlers.slack import SlackHandlers
from handlers.views import approvers, fmt_span
from services.access import AccessGuard, AccessPolicy, AuditLog, JobReaders
from services.access.vaults import VaultPolicy, parse_vaults
from services.backends.azure.config import AzureConfig
from services.backends.links import LinkSigner
from services.backends.local import LocalBackend, LocalShare
from services.clusters.fileservers import FileServerService
from services.clusters.health import NodeHealthService
from services.clusters.idle import IdleService
from services.clusters.service import ClusterService
from services.core.clock import SystemClock
from services.core.errors import NotFound
from services.core.ports import Clock
from services.jobs.gpu_idle import GpuIdleService
from services.jobs.runner import JobRunner
from services.jobs.service import JobService
from services.jobs.sources import ConfigLoader
from services.jobs.sweeps import SweepService
from services.models import FileLocation
from services.notify.relay import EventRelay
from services.schedules.service import ScheduleService
from services.schedules.timer import Scheduler
from services.spend.approvals.service import ApprovalService
from services.spend.gate import ApprovalPolicy, SpendGate
from services.spend.ledger import PriceBook, SpendService
from services.spend.pricing import PriceTable, load_price_table
from services.store import SqlStore
from services.workspaces.service import Homes, WorkspaceService

if TYPE_CHECKING:  # the Azure SDKs load only when BATCHAI_BACKEND=azure
    import aiohttp
    from azure.core.credentials_async import AsyncTokenCredential

    from services.backends.azure.backend import AzureBackend
    from services.backends.azure.files import AzureShare


@dataclass
class Bot:
    """Everything the lifecycle starts and stops, built but not yet started."""

    settings: Settings
    clock: Clock
    store: SqlStore
    backend: LocalBackend | AzureBackend
    share: LocalShare | AzureShare
    signer: LinkSigner
    transport: Transport
    prices: PriceBook
    spend: SpendService
    approvals: ApprovalService
    clusters: ClusterService
    jobs: JobService
    runner: JobRunner
    relay: EventRelay
    commands: CommandHandler
    actions: ActionHandler
    slack: SlackHandlers
    scheduler: Scheduler
    idle: IdleService
    metrics: BotMetrics
    schedules: ScheduleService
    guard: AccessGuard
    node_health: NodeHealthService
    gpu_idle: GpuIdleService
    credential: AsyncTokenCredential | None = None  # azure: one for every client, closed last
    http: aiohttp.ClientSession | None = None  # Slack's Web API and response_url answers
    probe_url: str | None = None  # where /readyz and /metrics answer, once serving

    def resolve_file(self, loc: FileLocation) -> Path:
        """The file a /files link names; Azure links are SAS links to the share, never ours."""
        if not isinstance(self.share, LocalShare):
            raise NotFound("download links of the azure backend point at Azure Files")
        return self.share.local_path(loc)

    async def seed_examples(self) -> int:
        """Copy each example folder onto the bot's share as `examples/<folder>` (skipping
        unchanged files); files beside the folders (the package's `__init__.py`) stay here."""
        settings, copied = self.settings, 0
        for folder in example_folders(settings.examples_dir):
            dest = f"examples/{folder.name}"
            if isinstance(self.share, LocalShare):
                copied += self.share.seed_share(settings.share_name, folder, dest)
            else:
                copied += await seed_azure_share(self.share, settings.share_name, folder, dest)
        return copied

    async def aclose_clients(self) -> None:
        """Close the backend's and the share's clients, then the credential they share."""
        try:
            await self.backend.aclose()
            await self.share.aclose()
        finally:
            if self.credential is not None:
                await self.credential.close()

    @property
    def web_url(self) -> str:
        """Where the bot's own web app answers (links, /healthz, /slack/events)."""
        return self.signer.base_url.removesuffix("/files")


def example_folders(examples_dir: Path) -> list[Path]:
    """The example folders under `examples_dir` (none when it is missing), by name."""
    if not examples_dir.is_dir():
        return []
    return sorted(p for p in examples_dir.iterdir() if p.is_dir() and p.name != "__pycache__")


async def seed_azure_share(share: AzureShare, name: str, src: Path, dest: str) -> int:
    """Upload the files under `src` to `dest` on the share unless one of that size is there."""
    await share.ensure_share(name)
    copied = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        loc = FileLocation(name, "/".join((dest, *path.relative_to(src).parts)))
        data = path.read_bytes()
        entry = await share.stat(loc)
        if entry is None or entry.size != len(data):
            await share.write_file(loc, data)
            copied += 1
    return copied


def azure_config(settings: Settings) -> AzureConfig:
    """The azure backend's settings; Settings has already checked that the required ones are set."""
    key = settings.azure_storage_key
    password = settings.azure_admin_password
    ssh_key = settings.azure_ssh_public_key
    return AzureConfig(
        subscription_id=settings.azure_subscription_id or "",
        resource_group=settings.azure_resource_group or "",
        location=settings.azure_location or "",
        subnet_id=settings.azure_subnet_id or "",
        storage_account=settings.azure_storage_account or "",
        share=settings.azure_share,
        storage_key=key.get_secret_value() if key else "",
        cloud=settings.azure_cloud,
        arm_endpoint=settings.azure_arm_endpoint,
        storage_endpoint_suffix=settings.azure_storage_endpoint_suffix,
        storage_endpoint=settings.azure_storage_endpoint,
        mount_root=settings.azure_mount_root,
        control_mount=settings.azure_control_mount,
        job_temp_root=settings.azure_job_temp_root,
        share_mount_root=settings.azure_share_mount_root,
        node_python=settings.azure_node_python,
        node_path=settings.azure_node_path,
        connection_verify=settings.azure_ca_bundle or True,
        polling_interval=settings.azure_polling_interval,
        ssh_public_key=ssh_key.get_secret_value() if ssh_key else None,
        admin_user=settings.azure_admin_user,
        admin_password=password.get_secret_value() if password else None,
        gpu_sample_seconds=settings.gpu_sample_seconds,
    )


def azure_credential(settings: Settings) -> AsyncTokenCredential:
    """One DefaultAzureCredential (managed identity, CLI login, env service principal …) for the
    cloud's authority; every Azure client of the bot shares it."""
    from azure.identity import AzureAuthorityHosts
    from azure.identity.aio import DefaultAzureCredential

    authority = {
        "public": AzureAuthorityHosts.AZURE_PUBLIC_CLOUD,
        "china": AzureAuthorityHosts.AZURE_CHINA,
        "usgov": AzureAuthorityHosts.AZURE_GOVERNMENT,
    }[settings.azure_cloud]
    return DefaultAzureCredential(authority=authority)


def azure_parts(
    settings: Settings, credential: AsyncTokenCredential | None = None
) -> tuple[AzureBackend, AzureShare, AsyncTokenCredential]:
    """The azure backend, its share and the credential they use (made here unless given)."""
    from services.backends.azure.backend import AzureBackend
    from services.backends.azure.files import AzureShare

    config = azure_config(settings)
    credential = credential or azure_credential(settings)
    share = AzureShare(config)
    return AzureBackend(config, credential=credential, share=share), share, credential


def price_table(settings: Settings) -> PriceTable:
    return load_price_table(settings.manifest_dir / "prices.json")


def approval_policy(settings: Settings) -> ApprovalPolicy:
    """From APPROVALS_FILE; without one the team runs open (nothing needs approval)."""
    if settings.approvals_file is None:
        return ApprovalPolicy()
    path = settings.approvals_file
    try:
        policy = ApprovalPolicy.from_json(path.read_text(), source=str(path))
    except OSError as err:
        raise SystemExit(f"APPROVALS_FILE {path}: {err.strerror}") from None
    if settings.approvals_channel:
        policy = replace(policy, approvals_channel=settings.approvals_channel)
    return policy


def build(
    settings: Settings,
    *,
    transport: Transport | None = None,
    clock: Clock | None = None,
    port: int | None = None,
    credential: AsyncTokenCredential | None = None,
    http: aiohttp.ClientSession | None = None,
) -> Bot:
    """Without a transport, Slack is used (its tokens must be set); the console passes its own.
    The azure backend uses `credential`, or else a DefaultAzureCredential made here. Every
    Slack client shares `http` (the caller owns and closes it), so calls reuse connections."""
    clock = clock or SystemClock()
    data = settings.batchai_data_dir
    private_dir(data)
    store = SqlStore(settings.db_url, secrets=secret_box(settings))
    metrics = BotMetrics()
    if transport is None:
        transport = SlackOutbox(
            web_client(settings, for_listeners=False, session=http),
            store,
            now=clock.now,
            post_interval=settings.slack_post_interval,
            updates_per_minute=settings.slack_updates_per_minute,
            metrics=metrics,
        )
    signer = LinkSigner(link_secret(settings), settings.files_base_url(port))
    share: LocalShare | AzureShare
    backend: LocalBackend | AzureBackend
    prices = PriceBook(price_table(settings))
    if settings.batchai_backend == "azure":
        backend, share, credential = azure_parts(settings, credential)
    else:
        credential = None
        share = LocalShare(data, signer)
        backend = LocalBackend(
            data,
            python=settings.job_interpreter,
            gpus_of=prices.gpus_of,
            gpu_check=settings.local_gpu_check,
            gpu_sample_seconds=settings.gpu_sample_seconds,
        )
    # the services get the measured ones: every call timed, every failure counted
    compute = measured(backend, "compute", metrics)
    files = measured(share, "share", metrics)
    configs = ConfigLoader(settings.manifest_dir)
    policy = approval_policy(settings)
    spend = SpendService(
        store=store, prices=prices, clock=clock, default_budgets=dict(policy.budgets)
    )
    members_of = None
    channel_members: SlackChannelMembers | ConsoleMembers = ConsoleMembers(settings.console_channel)
    if isinstance(transport, SlackOutbox):
        members_of = UserGroups(web_client(settings, for_listeners=True, session=http)).members
        channel_members = SlackChannelMembers(
            web_client(settings, for_listeners=True, session=http)
        )
    gate = SpendGate(policy=policy, spend=spend)  # the one place money is decided
    readers = JobReaders(channel_members)  # who may read a job: one rule for jobs and approvals
    approvals = ApprovalService(
        store=store, gate=gate, clock=clock, members_of=members_of, readers=readers
    )
    access = AccessPolicy(
        channels=settings.allowed_channels,
        users=settings.allowed_users,
        admins=settings.admin_users,
        teams=settings.allowed_teams,
    )
    # Where -w/-e-less commands put things, and the region a new workspace gets.
    homes = Homes(
        resource_group=settings.resource_group,
        workspace=settings.workspace,
        experiment=settings.experiment,
        location=settings.azure_location or settings.price_region,
    )
    clusters = ClusterService(
        homes=homes,
        store=store,
        backend=compute,
        clock=clock,
        configs=configs,
        resource_group=settings.resource_group,
        workspace=settings.workspace,
        prices=prices,
        idle_timeout=timedelta(minutes=settings.idle_timeout_minutes),
        gate=gate,
        storage=backend,
        storage_account=settings.storage_account,
        share=files,
        subscription=(
            settings.azure_subscription_id or "local"
            if settings.batchai_backend == "azure"
            else "local"
        ),
    )
    file_servers = FileServerService(
        store=store,
        backend=backend,
        clock=clock,
        configs=configs,
        resource_group=settings.resource_group,
        workspace=settings.workspace,
        gate=gate,
    )
    idle = IdleService(
        store=store,
        clusters=clusters,
        clock=clock,
        prices=prices,
        warn_before=timedelta(minutes=settings.idle_warning_minutes),
        gate=gate,
    )
    ttl = timedelta(minutes=settings.link_ttl_minutes)
    jobs = JobService(
        homes=homes,
        store=store,
        share=files,
        clock=clock,
        configs=configs,
        resource_group=settings.resource_group,
        workspace=settings.workspace,
        experiment=settings.experiment,
        placeholder_values={"<AZURE_BATCHAI_STORAGE_ACCOUNT>": settings.storage_account},
        spend=spend,
        approvals=approvals,
        readers=readers,
        reserved_shares=compute.reserved_shares,
        storage=backend,
        file_servers=store,
        vaults=VaultPolicy(parse_vaults(settings.key_vaults)),
    )
    gpu_idle = GpuIdleService(store=store, jobs=jobs, clock=clock, prices=prices)
    sweeps = SweepService(
        store=store, jobs=jobs, clock=clock, spend=spend, approvals=approvals, readers=readers
    )
    runner = JobRunner(
        store=store,
        backend=compute,
        share=files,
        clusters=clusters,
        clock=clock,
        spend=spend,
        approvals=approvals,
        gpu_idle=gpu_idle,
        concurrency=settings.poll_concurrency,
    )
    presenter = Presenter(
        transport,
        default_channel=settings.console_channel,
        clock=clock.now,
        approvals_channel=policy.approvals_channel,
        approvers=approvers(approvals.approvers),
        extend_hours=fmt_span(policy.extend_by),
    )
    relay = EventRelay(store=store, share=files, notifier=presenter, clock=clock, link_ttl=ttl)
    guard = AccessGuard(
        policy=access,
        audit=AuditLog(store),
        now=clock.now,
    )
    scheduler = Scheduler()
    schedules = ScheduleService(store=store, jobs=jobs, clock=clock, timer=scheduler, access=access)
    commands = CommandHandler(
        Services(
            clusters=clusters,
            jobs=jobs,
            now=clock.now,
            guard=guard,
            approvals=approvals,
            spend=spend,
            audit=AuditLog(store),
            schedules=schedules,
            workspaces=WorkspaceService(store=store, clock=clock, homes=homes),
            file_servers=file_servers,
            sweeps=sweeps,
        )
    )
    actions = ActionHandler(
        jobs, clock.now, guard, approvals, idle, gpu_idle=gpu_idle, sweeps=sweeps
    )
    dashboard = Dashboard(
        clusters=clusters,
        jobs=jobs,
        configs=configs,
        prices=prices,
        now=clock.now,
        approvals=approvals,
        spend=spend,
    )
    slack = SlackHandlers(
        commands=commands,
        actions=actions,
        jobs=jobs,
        dashboard=dashboard.home,
        submit_form=dashboard.submit_form,
        mount_paths=dashboard.mount_paths,
        guard=guard,
        sweeps=sweeps,
    )
    metrics.watch(
        StateCollector(
            store=store,
            spend=spend,
            clock=clock,
            failures=lambda: {
                **{f"jobs.{step}": n for step, n in runner.step_failures.items()},
                **scheduler.failures,
            },
        )
    )
    return Bot(
        settings=settings,
        clock=clock,
        store=store,
        backend=backend,
        share=share,
        signer=signer,
        transport=transport,
        prices=prices,
        spend=spend,
        approvals=approvals,
        clusters=clusters,
        jobs=jobs,
        runner=runner,
        relay=relay,
        commands=commands,
        actions=actions,
        slack=slack,
        scheduler=scheduler,
        idle=idle,
        metrics=metrics,
        schedules=schedules,
        guard=guard,
        node_health=NodeHealthService(store=store, backend=compute),
        gpu_idle=gpu_idle,
        credential=credential,
        http=http,
    )
