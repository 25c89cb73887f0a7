"""/readyz with the azure backend: probed every few seconds, it must not call Azure each time."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bot.config import Settings
from bot.console import ConsoleTransport
from bot.lifecycle import running
from tests.azure.rig import AzureRig, bot_azure_settings


async def test_readyz_asks_azure_once_per_ttl(tmp_path: Path, rig: AzureRig) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        batchai_data_dir=tmp_path / "data",
        port=0,
        price_refresh_hours=0,
        **bot_azure_settings(rig),
    )
    transport = ConsoleTransport(tmp_path / "files")
    async with (
        running(settings, transport=transport, periodic=False, credential=rig.credential) as bot,
        aiohttp.ClientSession() as http,
    ):
        mark = rig.arm.mark()
        for _ in range(5):
            async with http.get(f"{bot.probe_url}/readyz") as response:
                assert response.status == 200, await response.text()
        assert rig.arm.count(mark, match="virtualMachineScaleSets") == 1
