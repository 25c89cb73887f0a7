"""/readyz with the azure backend: probed every few seconds, it must not call Azure each time."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bot.config import Settings
from bot.console import ConsoleTransport
from bot.lifecycle import running
from tests.azure.rig import BOT_SHARE, AzureRig


async def test_readyz_asks_azure_once_per_ttl(tmp_path: Path, rig: AzureRig) -> None:
    cfg = rig.config
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        batchai_data_dir=tmp_path / "data",
        port=0,
        price_refresh_hours=0,
        batchai_backend="azure",
        azure_subscription_id=cfg.subscription_id,
        azure_resource_group=cfg.resource_group,
        azure_location=cfg.location,
        azure_subnet_id=cfg.subnet_id,
        azure_storage_account=cfg.storage_account,
        azure_storage_key=cfg.storage_key,
        azure_share=BOT_SHARE,
        azure_arm_endpoint=cfg.arm_endpoint,
        azure_storage_endpoint=cfg.storage_endpoint,
        azure_ca_bundle=cfg.connection_verify,
        azure_polling_interval=0,
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
