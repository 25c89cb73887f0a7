"""The bot's aiohttp web apps: the public one (/healthz, the signed, expiring /files download
links, and Slack's /slack/events in HTTP mode) and the probe one (/healthz, /readyz, /metrics),
which listens apart, on loopback unless configured otherwise."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from services.backends.links import LinkSigner
from services.core.errors import NotAllowed, NotFound
from services.models import FileLocation

log = logging.getLogger(__name__)

ResolveFile = Callable[[FileLocation], Path]
HealthCheck = Callable[[], Awaitable[None]]
RenderMetrics = Callable[[], Awaitable[bytes]]
CHECK_TIMEOUT = 2.0  # seconds one readiness check may take before it counts as failed
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class CachedCheck:
    """Runs a check at most once per `ttl` seconds and answers with its last outcome in
    between (a probe every few seconds must not become an API call every few seconds)."""

    def __init__(
        self,
        check: HealthCheck,
        ttl: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check, self._ttl, self._monotonic = check, ttl, monotonic
        self._at: float | None = None
        self._error: Exception | None = None

    async def __call__(self) -> None:
        now = self._monotonic()
        if self._at is None or now - self._at >= self._ttl:
            try:
                await asyncio.wait_for(self._check(), CHECK_TIMEOUT)
            except Exception as err:
                self._error = err
            else:
                self._error = None
            self._at = now
        if self._error is not None:
            raise self._error.with_traceback(None)  # raised again and again: keep it short


async def run_checks(checks: Mapping[str, HealthCheck]) -> tuple[bool, dict[str, str]]:
    """Every check at once, each within CHECK_TIMEOUT; "ok" or the error's type name (never
    its message, which could carry a host name or worse)."""

    async def one(check: HealthCheck) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT)
        except TimeoutError:
            return "failed: no answer within 2 s"
        except Exception as err:  # any failing dependency makes us unready
            return f"failed: {type(err).__name__}"
        return "ok"

    names = list(checks)
    outcomes = await asyncio.gather(*(one(checks[n]) for n in names))
    results = dict(zip(names, outcomes, strict=True))
    return all(r == "ok" for r in outcomes), results


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_web_app(*, signer: LinkSigner, resolve: ResolveFile) -> web.Application:
    """The public app: what Slack and the team's browsers reach. Nothing here says how the bot
    is doing (that is the probe app's), and nothing here calls Azure unasked."""
    app = web.Application()

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
    app.router.add_get("/files/{token}/{name}", files)
    return app


def create_probe_app(
    *,
    checks: Mapping[str, HealthCheck],
    metrics: RenderMetrics | None = None,
    app: web.Application | None = None,
    spend_notice: str | None = None,
    role: Callable[[], str] | None = None,
) -> web.Application:
    """/healthz, /readyz (`checks`: database, slack, backend; each should be a CachedCheck when
    it costs an API call) and /metrics; added to `app` when given (probes on the public port,
    when PROBE_HOST:PROBE_PORT is HOST:PORT). `spend_notice`, when set, is said in every /readyz
    body (e.g. that spend is unguarded); `role`, when given, says whether this replica leads
    ("leader") or waits ("standby", still ready: it answers Slack)."""
    app = app if app is not None else web.Application()
    last: dict[str, str] = {}

    async def readyz(_request: web.Request) -> web.Response:
        ready, results = await run_checks(checks)
        for name, result in results.items():  # told when it changes, not at every probe
            if result != last.get(name, "ok"):
                log.log(logging.INFO if result == "ok" else logging.WARNING, "%s: %s", name, result)
            last[name] = result
        body: dict[str, object] = {"status": "ready" if ready else "unready", "checks": results}
        if spend_notice:
            body["spend"] = spend_notice
        if role is not None:
            body["role"] = role()
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_page(_request: web.Request) -> web.Response:
        assert metrics is not None
        body = await metrics()
        return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

    if not any(r.resource and r.resource.canonical == "/healthz" for r in app.router.routes()):
        app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics is not None:
        app.router.add_get("/metrics", metrics_page)
    return app


def _attachment(name: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name; no quote or newline gets through."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
