"""Start and stop the bot in order, as an async context manager; undo also a half-done start."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from aiohttp import web

from bot.bootstrap import Bot, build
from bot.config import Settings
from bot.web import create_web_app
from handlers.presenter import Transport
from services.ports import Clock

log = logging.getLogger(__name__)


@asynccontextmanager
async def running(
    settings: Settings,
    transport: Transport,
    *,
    clock: Clock | None = None,
    periodic: bool = True,
) -> AsyncIterator[Bot]:
    """Migrate the store, seed the quickstart share, serve the web app, start the periodic work.

    Unfinished jobs need no special re-arming: their state, log offsets and undelivered events
    are in the store, and the first tick picks them all up."""
    async with AsyncExitStack() as stack:
        sock = stack.enter_context(_bind(settings))
        port = sock.getsockname()[1]
        bot = build(settings, transport, clock=clock, port=port)
        stack.push_async_callback(bot.store.aclose)
        stack.push_async_callback(bot.backend.aclose)
        await bot.store.migrate()
        if settings.examples_dir.is_dir():
            bot.share.seed_share(settings.share_name, settings.examples_dir, "examples")
        runner = web.AppRunner(
            create_web_app(signer=bot.signer, resolve=bot.resolve_file, ready=bot.store.ping),
            access_log=None,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.SockSite(runner, sock).start()
        log.info("web app on %s", settings.files_base_url(port).removesuffix("/files"))
        if periodic:
            bot.scheduler.every("jobs", settings.poll_seconds, bot.runner.tick)
            bot.scheduler.every("deliver", settings.poll_seconds / 2, bot.relay.drain)
            bot.scheduler.start()
            stack.callback(bot.scheduler.shutdown)
        yield bot


def _bind(settings: Settings) -> socket.socket:
    """Bind first (PORT=0 picks a free port) so download links can name the real port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as err:
        sock.close()
        raise SystemExit(
            f"cannot listen on {settings.host}:{settings.port}: {err.strerror}"
        ) from None
    return sock
