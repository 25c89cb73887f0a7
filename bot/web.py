"""The bot's aiohttp web app: /healthz and the signed, expiring /files download links."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from services.errors import NotAllowed, NotFound
from services.links import LinkSigner
from services.models import FileLocation

log = logging.getLogger(__name__)

ResolveFile = Callable[[FileLocation], Path]
HealthCheck = Callable[[], Awaitable[None]]


def create_web_app(
    *, signer: LinkSigner, resolve: ResolveFile, ready: HealthCheck
) -> web.Application:
    app = web.Application()

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        try:
            await ready()
        except Exception as err:  # any failing dependency makes us unready
            return web.json_response({"status": "unready", "error": type(err).__name__}, status=503)
        return web.json_response({"status": "ready"})

    async def files(request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        try:
            loc = signer.verify(token)
            path = resolve(loc)
        except NotAllowed as err:
            log.info("refused download link: %s", err)
            raise web.HTTPForbidden(text=f"{err}\n") from None
        except NotFound:
            raise web.HTTPNotFound(text="file not found\n") from None
        if not path.is_file():
            raise web.HTTPNotFound(text="file not found\n")
        return web.FileResponse(
            path,
            headers={
                "Content-Disposition": _attachment(loc.path.rsplit("/", 1)[-1]),
                "Cache-Control": "private, no-store",
            },
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/files/{token}/{name}", files)
    return app


def _attachment(name: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name; no quote or newline gets through."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
