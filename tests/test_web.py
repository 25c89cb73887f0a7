"""The web apps over real HTTP: health and probes apart from the public app, and download links
that work, expire, resist tampering."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.config import Settings
from bot.web import create_probe_app, create_web_app
from services.backends.links import LinkSigner
from services.backends.local import LocalShare
from services.models import FileLocation

SECRET = b"w" * 32


class Site:
    def __init__(self, server: TestServer, share: LocalShare, signer: LinkSigner) -> None:
        self.server, self.share, self.signer = server, share, signer
        self.ready_ok: dict[str, bool] = {}
        self.probes: TestServer | None = None

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def link(self, loc: FileLocation, expires_at: datetime) -> str:
        return self.url(self.signer.sign(loc, expires_at).removeprefix("http://x/"))


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    signer = LinkSigner(SECRET, "http://x/files")
    share = LocalShare(tmp_path, signer)
    share.create_share("data")
    (share.share_dir("data") / "out").mkdir()
    (share.share_dir("data") / "out" / "model.npz").write_bytes(b"PK weights")
    (tmp_path / "secret.txt").write_text("not for download")
    ready_ok = {"value": True}

    async def ready() -> None:
        if not ready_ok["value"]:
            raise ConnectionError("database down")

    app = create_web_app(signer=signer, resolve=share.local_path)
    server = TestServer(app, host="127.0.0.1")
    probes = TestServer(create_probe_app(checks={"database": ready}), host="127.0.0.1")
    await server.start_server()
    await probes.start_server()
    result = Site(server, share, signer)
    result.probes = probes
    result.ready_ok = ready_ok
    yield result
    await server.close()
    await probes.close()


async def get(url: str) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.read(), dict(response.headers)


async def test_health_endpoints(site: Site) -> None:
    assert site.probes is not None
    probe = str(site.probes.make_url("/readyz"))
    assert (await get(site.url("/healthz")))[0] == 200
    assert (await get(str(site.probes.make_url("/healthz"))))[0] == 200
    assert (await get(probe))[0] == 200
    site.ready_ok["value"] = False
    status, body, _ = await get(probe)
    assert status == 503 and b"ConnectionError" in body and b"database down" not in body


async def test_the_public_app_answers_no_probe(site: Site) -> None:
    for path in ("/readyz", "/metrics"):
        assert (await get(site.url(path)))[0] == 404, path


def test_probes_listen_apart_on_loopback_by_default() -> None:
    default = Settings(_env_file=None, host="0.0.0.0", port=8080)  # type: ignore[call-arg]
    assert (default.probe_host, default.probe_port, default.probes_apart) == (
        "127.0.0.1",
        9090,
        True,
    )
    same = Settings(_env_file=None, probe_host="127.0.0.1", probe_port=8080)  # type: ignore[call-arg]
    assert not same.probes_apart  # asked for on the public port: served there


async def test_link_downloads_the_file(site: Site) -> None:
    url = site.link(FileLocation("data", "out/model.npz"), datetime.now(UTC) + timedelta(hours=1))
    status, body, headers = await get(url)
    assert status == 200 and body == b"PK weights"
    assert headers["Content-Disposition"].startswith('attachment; filename="model.npz";')


async def test_expired_link_is_forbidden(site: Site) -> None:
    url = site.link(FileLocation("data", "out/model.npz"), datetime.now(UTC) - timedelta(seconds=1))
    status, body, _ = await get(url)
    assert status == 403 and b"expired" in body


async def test_tampered_link_is_forbidden(site: Site) -> None:
    url = site.link(FileLocation("data", "out/model.npz"), datetime.now(UTC) + timedelta(hours=1))
    token = url.split("/files/")[1].split("/")[0]
    body, mac = token.split(".")
    forged_body = body[:-1] + ("A" if body[-1] != "A" else "B")
    status, _, _ = await get(url.replace(token, f"{forged_body}.{mac}"))
    assert status == 403


async def test_a_signed_link_cannot_leave_the_share(site: Site) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    for path in ("../../secret.txt", "/etc/passwd", "out/../../secret.txt"):
        status, body, _ = await get(site.link(FileLocation("data", path), future))
        assert status in (403, 404), path
        assert b"not for download" not in body


async def test_missing_file_is_not_found(site: Site) -> None:
    url = site.link(FileLocation("data", "out/none.bin"), datetime.now(UTC) + timedelta(hours=1))
    assert (await get(url))[0] == 404
