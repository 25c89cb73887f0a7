"""`list-usages` on the azure backend: the compute usages API's regional and family rows, with
what the bot's scale sets use of them, read through the real SDK from the fake ARM."""

from __future__ import annotations

from dataclasses import replace

from services.backends.azure.backend import AzureBackend
from services.models import Usage
from tests.azure.rig import AzureRig
from tests.contract import cluster

A100 = "Standard_NC24ads_A100_v4"  # 24 vCPUs
A100_FAMILY = "standardNCADSA100v4Family"


def by_name(rows: list[Usage]) -> dict[str, Usage]:
    return {u.name: u for u in rows}


async def test_usages_are_the_regional_quotas_then_the_families_with_their_use(
    rig: AzureRig, backend: AzureBackend
) -> None:
    rig.arm.set_quota(A100_FAMILY, 48)
    rig.arm.set_quota("standardNDSFamily", 0)  # no quota and nothing running: not listed
    await backend.create_cluster(replace(cluster("gpu", nodes=2), vm_size=A100))

    rows = await backend.usages(None)
    names = [u.name for u in rows]
    assert names[:3] == ["cores", "lowPriorityCores", "virtualMachineScaleSets"]
    assert all(n.endswith("Family") for n in names[3:])
    assert names[3:] == sorted(names[3:], key=str.lower)
    assert "standardNDSFamily" not in names
    found = by_name(rows)
    assert found[A100_FAMILY] == Usage(A100_FAMILY, found[A100_FAMILY].localized_name, 48, 48)
    assert found["cores"].current == 48 and found["cores"].limit == 100
    assert found["virtualMachineScaleSets"].current == 1
    assert found["lowPriorityCores"].localized_name == "Total Regional Low-priority vCPUs"


async def test_another_region_is_asked_for_its_own_quotas(
    rig: AzureRig, backend: AzureBackend
) -> None:
    await backend.create_cluster(replace(cluster("gpu", nodes=1), vm_size=A100))
    elsewhere = by_name(await backend.usages("westeurope"))
    assert elsewhere["cores"].current == 0  # the bot's scale set is in the rig's region
    assert elsewhere["cores"].limit == 100
