"""A fake Azure Key Vault (secrets data plane, 7.x) over TLS on 127.0.0.1, for the real
azure-keyvault-secrets client.

It answers like a vault: a request without a bearer token gets 401 with the challenge
`WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
resource="https://vault.azure.net"` (the client then asks its credential for a token of that
scope), `GET /secrets/<name>[/<version>]` gives `{"value", "id", "attributes"}` or 404
`SecretNotFound`, a token other than the fake credential's gets 403 `Forbidden`.

Vaults are named `<vault>.vault.azure.net` as on Azure: `transport()` gives an azure-core
transport whose DNS sends every `*.vault.azure.net` name to this server (its certificate is for
`*.vault.azure.net`), so job files carry real-looking secret URLs.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from azure.core.pipeline.transport import AioHttpTransport

from tests.fakes.arm.server import TOKEN
from tests.fakes.tls import serve_tls

ZONE = "vault.azure.net"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@dataclass
class Call:
    method: str
    host: str
    path: str
    authorized: bool
    status: int


class _VaultDns(AbstractResolver):
    """Resolves `*.vault.azure.net` to the fake's socket; nothing else resolves."""

    def __init__(self, port: int) -> None:
        self._port = port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not host.lower().endswith("." + ZONE):
            raise OSError(f"fake DNS: {host} does not resolve here")
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": self._port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


class FakeKeyVault:
    """Vaults of secrets: `put(vault, name, value)`; every request is recorded in `calls`."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}  # (vault, name) -> version: value
        self.calls: list[Call] = []
        self.ca_path = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._tmp: Path | None = None
        self._sessions: list[aiohttp.ClientSession] = []

    def put(self, vault: str, name: str, value: str) -> str:
        """Store a new version of a secret; its secret URL (with the version)."""
        version = uuid.uuid4().hex
        self.secrets.setdefault((vault.lower(), name.lower()), {})[version] = value
        return f"https://{vault}.{ZONE}/secrets/{name}/{version}"

    @staticmethod
    def vault_id(vault: str) -> str:
        return (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
            f"Microsoft.KeyVault/vaults/{vault}"
        )

    async def start(self) -> FakeKeyVault:
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-kv-"))
        served = await serve_tls(self._handle, self._tmp, f"*.{ZONE}")
        self._runner, self.port, self.ca_path = served
        return self

    def transport(self) -> AioHttpTransport:
        """An azure-core transport that reaches this fake for every vault name."""
        connector = aiohttp.TCPConnector(resolver=_VaultDns(self.port))
        session = aiohttp.ClientSession(connector=connector)
        self._sessions.append(session)
        return AioHttpTransport(
            session=session, session_owner=False, connection_verify=self.ca_path
        )

    async def stop(self) -> None:
        for session in self._sessions:
            await session.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    async def __aenter__(self) -> FakeKeyVault:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").split(":")[0].lower()
        auth = request.headers.get("Authorization")
        response = self._answer(request, host, auth)
        self.calls.append(
            Call(request.method, host, request.path, auth is not None, response.status)
        )
        return response

    def _answer(self, request: web.Request, host: str, auth: str | None) -> web.Response:
        if "api-version" not in request.query:
            return _error(400, "BadParameter", "api-version is required")
        if auth is None:
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                f'resource="https://{ZONE}"'
            )
            return _error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP "
                          "token.", {"WWW-Authenticate": challenge})  # fmt: skip
        if auth != f"Bearer {TOKEN}":
            return _error(403, "Forbidden", "The user, group or application does not have "
                          "secrets get permission on key vault.")  # fmt: skip
        parts = [p for p in request.path.split("/") if p]
        if request.method != "GET" or len(parts) not in (2, 3) or parts[0] != "secrets":
            what = f"unsupported request {request.method} {request.path}"
            return _error(400, "BadParameter", what)
        vault = host.removesuffix("." + ZONE)
        versions = self.secrets.get((vault, parts[1].lower()), {})
        version = parts[2] if len(parts) == 3 else next(reversed(versions), None)
        if version is None or version not in versions:
            return _error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {'/'.join(parts[1:])} was not found in this key vault. "
                "If you recently deleted this secret you may be able to recover it using the "
                "correct recovery command. For help resolving this issue, please see "
                "https://go.microsoft.com/fwlink/?linkid=2125182",
            )
        body: dict[str, Any] = {
            "value": versions[version],
            "id": f"https://{host}/secrets/{parts[1]}/{version}",
            "attributes": {"enabled": True, "created": 1700000000, "updated": 1700000000,
                           "recoveryLevel": "Recoverable+Purgeable"},
        }  # fmt: skip
        return web.json_response(body)


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )
