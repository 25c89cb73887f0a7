"""`batchai-bot check` looks at every size in use (the clusters' and AZURE_CHECK_VM_SIZE's): a
vm size line per size, a quota line per VM family (the GPU family whose quota is gone fails by
name, with the fix), and an image line per image the sizes boot: its driver route, the image in
the region (the fake ARM's image endpoints) and its marketplace terms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.check import CheckResult, check_azure, format_results, sizes_in_use
from bot.config import Settings
from services.store.sql import SqlStore
from tests.azure.rig import AzureRig
from tests.conftest import make_cluster

A100_FAMILY = "standardNCADSA100v4Family"
T4_FAMILY = "standardNCASv3_T4Family"
T4 = "Standard_NC4as_T4_v3"
A100 = "Standard_NC24ads_A100_v4"
NGC = "nvidia:ngc_azure_17_11:ngc-base-version-24_03_4_gen2:latest"


def settings(rig: AzureRig, **extra: Any) -> Settings:
    cfg = rig.config
    rig.files.create_share(cfg.share)
    return Settings(  # type: ignore[call-arg]
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
        **extra,
    )


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


async def test_check_reports_the_quota_of_each_gpu_family_in_use(rig: AzureRig) -> None:
    rig.arm.set_quota(A100_FAMILY, 0)
    uses = [(T4, "UbuntuLTS"), ("Standard_NC8as_T4_v3", "UbuntuLTS"), (A100, "UbuntuLTS")]
    results = await check_azure(settings(rig), credential=rig.credential, uses=uses)
    names = [r.name for r in results]
    assert names[4:9] == [
        f"azure vm size {T4}",
        "azure vm size Standard_NC8as_T4_v3",
        f"azure vm size {A100}",
        f"azure quota {T4_FAMILY}",  # one line for both T4 sizes
        f"azure quota {A100_FAMILY}",
    ]
    rows = by_name(results)
    t4 = rows[f"azure quota {T4_FAMILY}"]
    assert t4.ok and f"room for 25 × {T4}, 12 × Standard_NC8as_T4_v3" in t4.detail
    failed = [r for r in results if not r.ok]
    assert [r.name for r in failed] == [f"azure quota {A100_FAMILY}"]
    assert A100_FAMILY in failed[0].detail and "Quotas → Compute" in failed[0].detail
    assert f"FAIL azure quota {A100_FAMILY}" in format_results(results)


async def test_gpu_sizes_on_ubuntults_take_the_hpc_image_route_and_cpu_sizes_none(
    rig: AzureRig,
) -> None:
    uses = [(T4, "UbuntuLTS"), ("Standard_D4s_v5", "UbuntuLTS")]
    rows = by_name(await check_azure(settings(rig), credential=rig.credential, uses=uses))
    hpc = rows["azure image UbuntuHPC"]
    assert hpc.ok, hpc.detail
    assert hpc.detail.startswith(f"{T4}: NVIDIA driver, CUDA and the InfiniBand (OFED) driver")
    assert "microsoft-dsvm:ubuntu-hpc:2204 22.04.2025110401 offered in eastus" in hpc.detail
    assert "no purchase plan, no terms" in hpc.detail
    lts = rows["azure image UbuntuLTS"]
    assert lts.ok and "Standard_D4s_v5: no GPU, no InfiniBand: no driver needed" in lts.detail


async def test_an_image_the_region_does_not_offer_fails_with_the_command_to_find_one(
    rig: AzureRig,
) -> None:
    del rig.arm.images.images[("microsoft-dsvm", "ubuntu-hpc", "2204")]
    rows = by_name(
        await check_azure(settings(rig), credential=rig.credential, uses=[(T4, "UbuntuLTS")])
    )
    hpc = rows["azure image UbuntuHPC"]
    assert not hpc.ok
    assert "microsoft-dsvm:ubuntu-hpc:2204:latest is not offered in eastus" in hpc.detail
    assert "az vm image list --location eastus --publisher microsoft-dsvm" in hpc.detail


async def test_an_image_sold_with_a_plan_needs_its_terms_accepted(rig: AzureRig) -> None:
    uses = [(T4, NGC)]
    rows = by_name(await check_azure(settings(rig), credential=rig.credential, uses=uses))
    ngc = rows[f"azure image {NGC}"]
    assert not ngc.ok
    assert "custom image: it must bring its own GPU/InfiniBand driver" in ngc.detail
    assert "terms are not accepted for this subscription — az vm image terms accept --urn" in (
        ngc.detail
    )
    rig.arm.images.accepted.add(("nvidia", "ngc_azure_17_11", "ngc-base-version-24_03_4_gen2"))
    rows = by_name(await check_azure(settings(rig), credential=rig.credential, uses=uses))
    assert rows[f"azure image {NGC}"].ok and "terms accepted" in rows[f"azure image {NGC}"].detail


async def test_an_image_a_size_cannot_boot_fails_on_its_line(rig: AzureRig) -> None:
    uses = [("Standard_ND96isr_MI300X_v5", "UbuntuLTS")]
    rows = by_name(await check_azure(settings(rig), credential=rig.credential, uses=uses))
    amd = rows["azure image UbuntuLTS on Standard_ND96isr_MI300X_v5"]
    assert not amd.ok and "AMD GPUs" in amd.detail


async def test_the_sizes_in_use_are_the_clusters_and_the_configured_ones(
    rig: AzureRig, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    store = SqlStore(url)
    await store.migrate()
    await store.insert_cluster(make_cluster("big", vm_size=A100, image="UbuntuHPC"))
    await store.aclose()
    s = settings(rig, database_url=url, azure_check_vm_size=f"{T4}, {A100}")
    assert await sizes_in_use(s) == [(A100, "UbuntuHPC"), (T4, "UbuntuLTS"), (A100, "UbuntuLTS")]
    empty = settings(rig, database_url=f"sqlite+aiosqlite:///{tmp_path / 'none' / 'x.db'}")
    assert await sizes_in_use(empty) == [(T4, "UbuntuLTS")]
