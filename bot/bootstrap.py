"""The one composition root: picks and builds every concrete part of the bot."""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bot.config import Settings
from handlers.commands import CommandHandler, Services
from handlers.presenter import Presenter, Transport
from services.backends.local import LocalBackend, LocalShare
from services.clock import SystemClock
from services.clusters import ClusterService
from services.configs import ConfigLoader
from services.jobs import JobService
from services.links import LinkSigner
from services.models import FileLocation
from services.ports import Clock
from services.relay import EventRelay
from services.runner import JobRunner
from services.scheduling import Scheduler
from services.store import SqlStore


@dataclass
class Bot:
    """Everything the lifecycle starts and stops, built but not yet started."""

    settings: Settings
    clock: Clock
    store: SqlStore
    backend: LocalBackend
    share: LocalShare
    signer: LinkSigner
    clusters: ClusterService
    jobs: JobService
    runner: JobRunner
    relay: EventRelay
    commands: CommandHandler
    scheduler: Scheduler

    def resolve_file(self, loc: FileLocation) -> Path:
        return self.share.local_path(loc)


def link_secret(settings: Settings) -> bytes:
    """The configured key, or one made once and kept in the data dir (links survive restarts)."""
    if settings.link_secret is not None:
        return settings.link_secret.get_secret_value().encode()
    path = settings.batchai_data_dir / "link-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def build(
    settings: Settings, transport: Transport, *, clock: Clock | None = None, port: int | None = None
) -> Bot:
    clock = clock or SystemClock()
    data = settings.batchai_data_dir
    data.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.db_url)
    signer = LinkSigner(link_secret(settings), settings.files_base_url(port))
    share = LocalShare(data, signer)
    backend = LocalBackend(data, python=sys.executable)
    configs = ConfigLoader(settings.manifest_dir)
    clusters = ClusterService(
        store=store,
        backend=backend,
        clock=clock,
        config_text=configs,
        resource_group=settings.resource_group,
        workspace=settings.workspace,
    )
    ttl = timedelta(minutes=settings.link_ttl_minutes)
    jobs = JobService(
        store=store,
        share=share,
        clock=clock,
        configs=configs,
        resource_group=settings.resource_group,
        workspace=settings.workspace,
        experiment=settings.experiment,
        placeholder_values={"<AZURE_BATCHAI_STORAGE_ACCOUNT>": settings.storage_account},
        link_ttl=ttl,
    )
    runner = JobRunner(store=store, backend=backend, share=share, clusters=clusters, clock=clock)
    presenter = Presenter(transport, default_channel=settings.console_channel, clock=clock.now)
    relay = EventRelay(store=store, share=share, notifier=presenter, clock=clock, link_ttl=ttl)
    commands = CommandHandler(Services(clusters=clusters, jobs=jobs, now=clock.now))
    return Bot(
        settings=settings,
        clock=clock,
        store=store,
        backend=backend,
        share=share,
        signer=signer,
        clusters=clusters,
        jobs=jobs,
        runner=runner,
        relay=relay,
        commands=commands,
        scheduler=Scheduler(),
    )
