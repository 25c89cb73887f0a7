"""Start and stop the bot in order, as an async context manager; undo also a half-done start."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from prometheus_client import Gauge

from bot.bootstrap import Bot, build
from bot.config import Settings
from bot.leader import Leadership
from bot.outbox import SlackOutbox
from bot.web import CachedCheck, HealthCheck, create_probe_app, create_web_app
from handlers.presenter import Transport
from services.clusters.health import CHECK_SECONDS as HEALTH_CHECK_SECONDS
from services.clusters.idle import CHECK_SECONDS as IDLE_CHECK_SECONDS
from services.core.errors import BatchAIError
from services.core.ports import Clock
from services.schedules.service import SWEEP_SECONDS as SCHEDULE_SWEEP_SECONDS
from services.spend.price_refresh import RetailPrices, load_refreshed, refresh_prices
from services.store.lease import (
    AdvisoryLease,
    FileLease,
    Lease,
    SoleLease,
    is_postgres,
    sqlite_path,
)
from services.store.sealing import SecretsKeyError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

log = logging.getLogger(__name__)

SLACK_CHECK_TTL = 30.0  # seconds /readyz trusts the last auth.test
BACKEND_CHECK_TTL = 30.0  # seconds /readyz trusts the last backend ping (Azure: ARM + Files calls)
UNGUARDED = (
    "GPU spend is unguarded: no approval policy (APPROVALS_FILE with approvers), so nothing "
    "needs approval"
)


@asynccontextmanager
async def running(
    settings: Settings,
    *,
    transport: Transport | None = None,
    clock: Clock | None = None,
    periodic: bool = True,
    credential: AsyncTokenCredential | None = None,
) -> AsyncIterator[Bot]:
    """Migrate the store, finish half-done cluster changes, seed the quickstart share, serve the
    web app (and Slack's events in HTTP mode), connect Socket Mode, start the periodic work.

    Without a transport the bot talks to Slack. Unfinished jobs need no special re-arming: their
    state, log offsets and undelivered events are in the store, and the first tick picks them up."""
    async with AsyncExitStack() as stack:
        file_lease = await _one_process(settings.db_url)
        if file_lease is not None:
            stack.push_async_callback(file_lease.release)
        sock = stack.enter_context(_bind(settings.host, settings.port))
        port = sock.getsockname()[1]
        probe_sock = None
        if settings.probes_apart:
            assert settings.probe_port is not None
            probe_sock = stack.enter_context(_bind(settings.probe_host, settings.probe_port))
        # One HTTP session for the bot's life: Slack calls and response_url answers keep their
        # connections alive (a session per call costs a TCP connection each); closed last.
        http = await stack.enter_async_context(aiohttp.ClientSession())
        bot = build(
            settings,
            transport=transport,
            clock=clock,
            port=port,
            credential=credential,
            http=http,
        )
        stack.push_async_callback(bot.store.aclose)
        stack.push_async_callback(bot.aclose_clients)
        stack.push_async_callback(bot.relay.aclose)
        stack.push_async_callback(bot.runner.aclose)
        try:
            await bot.store.migrate()
        except SecretsKeyError as err:  # one line, never a traceback
            raise SystemExit(f"batchai-bot: {err}") from None
        leadership = _leadership(bot, settings, periodic, file_lease)
        await bot.seed_examples()
        # The backend's ping costs an ARM and a Files call on Azure: a probe every few seconds
        # must not become that (the Slack check below is cached for the same reason).
        checks: dict[str, HealthCheck] = {
            "database": bot.store.ping,
            "backend": CachedCheck(bot.backend.ping, BACKEND_CHECK_TTL),
        }
        web_app = create_web_app(signer=bot.signer, resolve=bot.resolve_file)
        unguarded = None if bot.approvals.gate.guarded else UNGUARDED
        if unguarded:
            log.warning("%s", unguarded)
        socket_mode = None
        if transport is None:
            from bot import slack  # the Slack SDK is loaded only for a Slack bot

            probe = slack.web_client(settings, for_listeners=False, session=http)

            async def slack_answers() -> None:
                await probe.auth_test()

            checks["slack"] = CachedCheck(slack_answers, SLACK_CHECK_TTL)
            home = await slack.home_workspace(probe)
            bot.guard.serve_teams(settings.allowed_teams or home.teams, orgs=home.orgs)
            log.info("serving Slack workspaces %s", ", ".join(sorted(bot.guard.policy.teams)))
            slack_app = slack.build_app(settings, bot.slack, session=http)
            if settings.public_url is None:
                log.warning(
                    "PUBLIC_URL is not set: download links point at %s, which only this machine "
                    "can open; set PUBLIC_URL to an address your team can reach",
                    bot.web_url,
                )
            if settings.slack_mode == "http":
                assert settings.slack_signing_secret is not None  # build_app made sure
                secret = settings.slack_signing_secret.get_secret_value()
                slack.add_events_route(web_app, slack_app, secret, session=http)
            else:
                socket_mode = slack.SocketMode(slack_app, settings)
        if probe_sock is None:
            create_probe_app(
                checks=checks,
                metrics=bot.metrics.render,
                app=web_app,
                spend_notice=unguarded,
                role=lambda: leadership.role,
            )
            bot.probe_url = bot.web_url
        else:
            probe_app = create_probe_app(
                checks=checks,
                metrics=bot.metrics.render,
                spend_notice=unguarded,
                role=lambda: leadership.role,
            )
            host, probe_port = probe_sock.getsockname()[:2]
            await _serve(stack, probe_app, probe_sock)
            bot.probe_url = f"http://{host}:{probe_port}"
            log.info("probes (/healthz, /readyz, /metrics) on %s", bot.probe_url)
        await _serve(stack, web_app, sock)
        log.info("web app on %s", settings.files_base_url(port).removesuffix("/files"))
        if socket_mode is not None:
            await socket_mode.start()
            stack.push_async_callback(socket_mode.close)
        bot.prices.table = await load_refreshed(bot.prices.table, bot.store)
        if periodic and settings.price_refresh_hours > 0:
            client = RetailPrices(http, base_url=settings.prices_api_url)
            refresher = PriceRefresher(bot, client, settings.price_region)
            bot.scheduler.every(
                "prices",
                settings.price_refresh_hours * 3600,
                leadership.fenced(refresher.run),
                now=True,
            )
        if periodic:
            fenced = leadership.fenced  # each round only after the lease was confirmed
            bot.scheduler.every("jobs", settings.poll_seconds, fenced(bot.runner.tick))
            bot.scheduler.every(
                "deliver", settings.poll_seconds / 2, fenced(bot.relay.start_delivery)
            )
            bot.scheduler.every("idle", IDLE_CHECK_SECONDS, fenced(bot.idle.check))
            bot.scheduler.every("health", HEALTH_CHECK_SECONDS, fenced(bot.node_health.check))
            bot.scheduler.every("schedules", SCHEDULE_SWEEP_SECONDS, fenced(bot.schedules.run_due))
            bot.scheduler.start(paused=True)  # the leader resumes it
            stack.push_async_callback(bot.scheduler.aclose)
        stack.push_async_callback(leadership.aclose)
        await leadership.step()  # the lease when free: the leader's recovery is done by now
        if periodic:
            leadership.start()
        log.info("role: %s", leadership.role)
        # What start-up built (modules, SDK clients, the grammar) lives as long as the bot: out
        # of the collector's sight, a full collection no longer walks it. Under a burst of
        # commands those walks were the event loop's longest stalls (0.5 s each, the acks'
        # p99); afterwards, objects of a stopped bot are collectable again.
        gc.freeze()
        stack.callback(gc.unfreeze)
        yield bot


async def _one_process(url: str) -> FileLease | None:
    """SQLite serves one bot process: a second one on the same file stops here, in one line."""
    path = sqlite_path(url)
    if path is None:
        return None
    lease = FileLease(path.with_name(path.name + ".lock"))
    if not await lease.acquire():
        raise SystemExit(
            f"batchai-bot: another bot process is using {path.name} (locked: {lease.path.name});"
            " SQLite serves one process, use PostgreSQL (DATABASE_URL) for two replicas"
        )
    return lease


def _leadership(
    bot: Bot, settings: Settings, periodic: bool, file_lease: FileLease | None
) -> Leadership:
    """PostgreSQL with periodic work: the advisory lease decides; otherwise this process is the
    only one on its database and leads from the start."""
    lease: Lease
    if periodic and is_postgres(settings.db_url):
        lease = AdvisoryLease(settings.db_url)
    else:
        lease = file_lease or SoleLease()
    gauge = Gauge(
        "batchai_leader",
        "1 when this replica leads (runs the periodic work), 0 on a standby",
        registry=bot.metrics.registry,
    )

    async def win() -> None:
        if touched := await bot.clusters.reconcile():
            log.info("finished interrupted cluster changes: %s", ", ".join(touched))
        if isinstance(bot.transport, SlackOutbox):
            await bot.transport.recover()  # messages a crash left unrecorded: sent or not?
        # Runs due while no leader ran fire now (within the grace) or are told as missed;
        # the rest are armed again (the store holds them, APScheduler only in memory).
        if fired := await bot.schedules.rearm():
            log.info("schedules: %d run(s) due while the bot was down submitted", fired)
        if periodic:
            bot.scheduler.resume()

    async def lose() -> None:
        await bot.scheduler.pause()
        await bot.relay.aclose()  # deliveries under way stop; what is left stays pending
        await bot.runner.aclose()

    leadership = Leadership(
        lease,
        retry=settings.leader_retry_seconds,
        on_win=win,
        on_lose=lose,
        on_change=lambda leader: gauge.set(1 if leader else 0),
    )
    if isinstance(lease, AdvisoryLease) and isinstance(bot.transport, SlackOutbox):
        bot.transport.fence = leadership.confirm  # every message, not only every round
    return leadership


class PriceRefresher:
    """Asks the Azure Retail Prices API for today's prices; the bundled table stays the floor."""

    def __init__(self, bot: Bot, client: RetailPrices, region: str) -> None:
        self._bot, self._client, self._region = bot, client, region
        self._bundled = bot.prices.table

    async def run(self) -> None:
        try:
            result = await refresh_prices(
                client=self._client,
                store=self._bot.store,
                table=self._bundled,
                region=self._region,
                now=self._bot.clock.now(),
            )
        except BatchAIError as err:  # offline, throttled: the prices we have stay in force
            log.warning("price refresh failed; keeping the current prices: %s", err)
            return
        self._bot.prices.table = await load_refreshed(self._bundled, self._bot.store)
        log.info("prices refreshed: %d rows in %d pages", result.rows, result.pages)


async def _serve(stack: AsyncExitStack, app: web.Application, sock: socket.socket) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()


def _bind(host: str, port: int) -> socket.socket:
    """Bind first (port 0 picks a free port) so download links can name the real port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock
