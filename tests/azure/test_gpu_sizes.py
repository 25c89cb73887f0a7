"""Sizes and names Azure accepts: the OS disk type and image generation come from the size's
resource SKU, and what real ARM would refuse is refused in one line before any ARM call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute.models import VirtualMachineScaleSet

from bot.lifecycle import running
from services.backends.azure.backend import AzureBackend
from services.backends.azure.scaleset_model import scale_set_model
from services.clusters.names import check_admin_name, check_cluster_name
from services.core.errors import UserError
from tests.azure.rig import AzureRig, bot_azure_settings
from tests.azure.test_compute import gpu_cluster
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import SlackRig, rig_settings

T4 = "Standard_NC4as_T4_v3"


def os_disk(rig: AzureRig, name: str) -> str:
    profile = rig.arm.scale_sets[name].model["properties"]["virtualMachineProfile"]
    return str(profile["storageProfile"]["osDisk"]["managedDisk"]["storageAccountType"])


def image_sku(rig: AzureRig, name: str) -> str:
    profile = rig.arm.scale_sets[name].model["properties"]["virtualMachineProfile"]
    return str(profile["storageProfile"]["imageReference"]["sku"])


async def test_disk_type_and_image_generation_follow_the_sku(
    rig: AzureRig, backend: AzureBackend
) -> None:
    await backend.create_cluster(gpu_cluster("d2", "Standard_D2s_v5", 1))
    assert (os_disk(rig, "d2"), image_sku(rig, "d2")) == ("Premium_LRS", "22_04-lts-gen2")
    await backend.create_cluster(gpu_cluster("t4", T4, 1))  # a GPU size: the HPC image (Gen2)
    assert (os_disk(rig, "t4"), image_sku(rig, "t4")) == ("Premium_LRS", "2204")
    # The Batch AI recipes' STANDARD_D1 and D1_v2: no PremiumIO, HyperVGenerations V1 only.
    for name, size in (("d1", "Standard_D1"), ("d1v2", "Standard_D1_v2"), ("a1", "Standard_A1")):
        await backend.create_cluster(gpu_cluster(name, size, 1))
        assert (os_disk(rig, name), image_sku(rig, name)) == ("StandardSSD_LRS", "22_04-lts")
        assert [n.state for n in await backend.list_nodes(gpu_cluster(name, size, 1))] == ["idle"]


async def test_a_gen2_only_image_on_a_gen1_size_is_refused_before_any_arm_write(
    rig: AzureRig, backend: AzureBackend
) -> None:
    mark = rig.arm.mark()
    for image in ("UbuntuHPC", "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"):
        c = replace(gpu_cluster("hpc", "Standard_D1_v2", 1), image=image)
        with pytest.raises(UserError, match="Generation 1") as err:
            await backend.create_cluster(c)
        assert "\n" not in str(err.value)
    assert rig.arm.count(mark, method="PUT") == 0 and "hpc" not in rig.arm.scale_sets


async def test_the_fake_arm_refuses_premium_and_gen2_where_real_arm_does(
    rig: AzureRig, backend: AzureBackend
) -> None:
    """The model the bot used to send (Premium_LRS, Gen2 image whatever the size) is refused."""
    for size, code, text in (
        ("Standard_D1_v2", "InvalidParameter", "storage account type 'Premium_LRS'"),
        ("Standard_A1", "InvalidParameter", "storage account type 'Premium_LRS'"),
    ):
        old = scale_set_model(rig.config, gpu_cluster("old", size, 1))  # no SKU: Premium, Gen2
        with pytest.raises(HttpResponseError) as err:
            poller = await backend._compute.virtual_machine_scale_sets.begin_create_or_update(
                rig.config.resource_group, "old", VirtualMachineScaleSet(old)
            )
            await poller.result()
        assert err.value.error is not None and err.value.error.code == code
        assert text in str(err.value.message)
    old = scale_set_model(rig.config, gpu_cluster("old", "Standard_D1", 1))
    disk = old["properties"]["virtualMachineProfile"]["storageProfile"]["osDisk"]
    disk["managedDisk"]["storageAccountType"] = "StandardSSD_LRS"  # only the image is wrong now
    with pytest.raises(HttpResponseError) as err:
        poller = await backend._compute.virtual_machine_scale_sets.begin_create_or_update(
            rig.config.resource_group, "old", VirtualMachineScaleSet(old)
        )
        await poller.result()
    assert "cannot boot Hypervisor Generation '2'" in str(err.value.message)
    assert "old" not in rig.arm.scale_sets


def test_names_azure_refuses() -> None:
    for bad in ("_lead", "trail-", "-lead"):
        with pytest.raises(UserError, match="Azure's scale-set naming rule"):
            check_cluster_name(bad)
    for good in ("a", "nc6_", "train-1"):
        check_cluster_name(good)
    for bad in ("john", "Owner", "backup", "sql", "user1", "admin", "administrator", "root"):
        with pytest.raises(UserError, match="Azure disallows"):
            check_admin_name(bad)
    check_admin_name("DemoUser")


@pytest.fixture
async def slack(tmp_path: Path, rig: AzureRig) -> AsyncIterator[SlackRig]:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as fake:
        settings = rig_settings(tmp_path, fake, **bot_azure_settings(rig))
        async with (
            running(settings, periodic=False, credential=rig.credential) as bot,
            aiohttp.ClientSession() as http,
        ):
            yield SlackRig(fake, bot, http, settings)


async def test_cluster_create_refuses_bad_names_before_any_arm_call(
    slack: SlackRig, rig: AzureRig
) -> None:
    mark = rig.arm.mark()
    for args, text in (
        ("-n _c -s Standard_NC4as_T4_v3", "must begin with a letter or digit"),
        ("-n c- -s Standard_NC4as_T4_v3", "must begin with a letter or digit"),
        ("-n c1 -s Standard_NC4as_T4_v3 -u john", "Azure disallows"),
        ("-n c1 -s Standard_NC4as_T4_v3 -u sql", "Azure disallows"),
    ):
        answer = await slack.answer(f"cluster create {args} -t 1 --afs-name data")
        assert text in answer["text"], answer["text"]
    assert rig.arm.count(mark) == 0 and not rig.arm.scale_sets
    assert await slack.bot.store.list_clusters() == []  # type: ignore[attr-defined]
