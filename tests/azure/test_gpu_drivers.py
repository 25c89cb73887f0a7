"""Drivers on GPU sizes: the driverless UbuntuLTS becomes the Ubuntu-HPC image (NVIDIA driver,
CUDA, InfiniBand) exactly on GPU and InfiniBand sizes; CPU sizes keep plain Ubuntu; AMD sizes
are refused in one line; the fake ARM checks `plan` for images sold with one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.backends.azure.backend import AzureBackend
from services.core.errors import BatchAIError, UserError
from tests.azure.rig import AzureRig
from tests.azure.test_compute import gpu_cluster


def image_of(rig: AzureRig, name: str) -> dict[str, str]:
    profile = rig.arm.scale_sets[name].model["properties"]["virtualMachineProfile"]
    return dict(profile["storageProfile"]["imageReference"])


@pytest.mark.parametrize(
    ("size", "offer"),
    [
        ("Standard_NC4as_T4_v3", "ubuntu-hpc"),  # GPU
        ("Standard_ND96isr_H100_v5", "ubuntu-hpc"),  # GPU and InfiniBand
        ("Standard_D2s_v5", "0001-com-ubuntu-server-jammy"),  # CPU: plain Ubuntu
        ("Standard_D1_v2", "0001-com-ubuntu-server-jammy"),
    ],
)
async def test_the_driver_image_is_chosen_exactly_for_gpu_and_infiniband_sizes(
    rig: AzureRig, backend: AzureBackend, size: str, offer: str
) -> None:
    c = gpu_cluster("c", size, 1)
    assert c.image == "UbuntuLTS"
    await backend.create_cluster(c)
    assert image_of(rig, "c")["offer"] == offer
    assert "plan" not in rig.arm.scale_sets["c"].model  # first-party images: no plan block
    assert [n.state for n in await backend.list_nodes(c)] == ["idle"]


async def test_an_explicit_image_urn_is_kept_on_a_gpu_size(
    rig: AzureRig, backend: AzureBackend
) -> None:
    urn = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
    await backend.create_cluster(replace(gpu_cluster("own", "Standard_NC4as_T4_v3", 1), image=urn))
    assert image_of(rig, "own")["offer"] == "0001-com-ubuntu-server-jammy"


async def test_amd_gpu_sizes_are_refused_with_the_named_images(
    rig: AzureRig, backend: AzureBackend
) -> None:
    mark = rig.arm.mark()
    for image in ("UbuntuLTS", "UbuntuHPC"):
        c = replace(gpu_cluster("mi", "Standard_ND96isr_MI300X_v5", 1), image=image)
        with pytest.raises(UserError, match="AMD GPUs.*ROCm") as err:
            await backend.create_cluster(c)
        assert "\n" not in str(err.value)
    assert rig.arm.count(mark, method="PUT") == 0


async def test_the_fake_arm_refuses_a_plan_image_without_its_plan(
    rig: AzureRig, backend: AzureBackend
) -> None:
    urn = "nvidia:ngc_azure_17_11:ngc-base-version-24_03_4_gen2:latest"
    c = replace(gpu_cluster("ngc", "Standard_NC4as_T4_v3", 1), image=urn)
    with pytest.raises(BatchAIError, match="requires Plan information"):
        await backend.create_cluster(c)
    assert "ngc" not in rig.arm.scale_sets
