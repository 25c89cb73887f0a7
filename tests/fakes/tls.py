"""A loopback HTTPS server for the fakes: a fresh trustme CA, a certificate for `names`, and the
CA's PEM file for the clients under test (azure-core refuses bearer tokens over plain http)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import trustme
from aiohttp import web


async def serve_tls(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ca_dir: Path,
    *names: str,
    client_max_size: int = 1024**2,
) -> tuple[web.AppRunner, int, str]:
    """(runner, port, CA bundle path) of `handler` answering every path on 127.0.0.1."""
    ca = trustme.CA()
    cert = ca.issue_cert(*names)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = ca_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    app = web.Application(client_max_size=client_max_size)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    server = site._server
    assert server is not None
    port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    return runner, port, str(ca_file)
