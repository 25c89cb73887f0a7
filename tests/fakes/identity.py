"""A fake managed-identity endpoint (App Service style) on 127.0.0.1.

A bot *process* finds its Azure credential the way it does in production: DefaultAzureCredential
sees `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` and asks this endpoint for a token
(`GET ?api-version=2019-08-01&resource=<scope>`, header `X-IDENTITY-HEADER`). It answers the fake
ARM server's bearer token; a request without the header's secret is refused, as App Service
refused it. Every request is counted in `calls`.
"""

from __future__ import annotations

import secrets
import time

from aiohttp import web

from tests.fakes.arm.resources import TOKEN


class FakeIdentity:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.header = secrets.token_hex(16)
        self.calls = 0
        self.refused = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to find this endpoint."""
        return {
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{self.port}/msi/token",
            "IDENTITY_HEADER": self.header,
        }

    async def _token(self, request: web.Request) -> web.Response:
        self.calls += 1
        resource = request.query.get("resource", "")
        if request.headers.get("X-IDENTITY-HEADER") != self.header or not resource:
            self.refused += 1
            return web.json_response({"error": "invalid_request"}, status=400)
        return web.json_response(
            {
                "access_token": self.token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": resource,
                "token_type": "Bearer",
            }
        )

    async def __aenter__(self) -> FakeIdentity:
        app = web.Application()
        app.router.add_get("/msi/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
