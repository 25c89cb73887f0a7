"""`batchai-bot check` looks at every size in use: a vm size and a quota row per size, and the
GPU family whose quota is gone fails by name while the others pass."""

from __future__ import annotations

from bot.check import check_azure, format_results
from bot.config import Settings
from tests.azure.rig import AzureRig

A100_FAMILY = "standardNCADSA100v4Family"


async def test_check_reports_the_quota_of_each_gpu_family_in_use(rig: AzureRig) -> None:
    cfg = rig.config
    rig.arm.set_quota(A100_FAMILY, 0)
    rig.files.create_share(cfg.share)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        batchai_backend="azure",
        azure_subscription_id=cfg.subscription_id,
        azure_resource_group=cfg.resource_group,
        azure_location=cfg.location,
        azure_subnet_id=cfg.subnet_id,
        azure_storage_account=cfg.storage_account,
        azure_storage_key=cfg.storage_key,
        azure_share=cfg.share,
        azure_arm_endpoint=cfg.arm_endpoint,
        azure_storage_endpoint=cfg.storage_endpoint,
        azure_ca_bundle=cfg.connection_verify,
        azure_check_vm_size="Standard_NC4as_T4_v3, Standard_NC24ads_A100_v4",
    )
    results = await check_azure(settings, credential=rig.credential)
    names = [r.name for r in results]
    assert names[4:] == [
        "azure vm size Standard_NC4as_T4_v3",
        "azure quota Standard_NC4as_T4_v3",
        "azure vm size Standard_NC24ads_A100_v4",
        "azure quota Standard_NC24ads_A100_v4",
    ]
    failed = [r for r in results if not r.ok]
    assert [r.name for r in failed] == ["azure quota Standard_NC24ads_A100_v4"]
    assert A100_FAMILY in failed[0].detail
    assert "FAIL azure quota Standard_NC24ads_A100_v4" in format_results(results)
