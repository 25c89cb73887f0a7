"""The fake ARM server, driven by the real azure-mgmt-compute / azure-mgmt-network aio clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import os
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceResponseError,
)
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import (
    RunCommandInput,
    VirtualMachineRunCommand,
    VirtualMachineScaleSet,
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetVMInstanceRequiredIDs,
)
from azure.mgmt.network.aio import NetworkManagementClient

from tests.fakes.arm import MAX_RUN_COMMANDS, SHIM_DIR, FakeArm, FakeCredential

RG = "batchai-rg"
T4 = "Standard_NC4as_T4_v3"


class Env:
    """A started fake with compute and network clients on it."""

    def __init__(self, arm: FakeArm, compute: ComputeManagementClient, network: Any) -> None:
        self.arm = arm
        self.compute = compute
        self.network = network

    async def create(self, name: str = "c1", **kw: Any) -> Any:
        poller = await self.compute.virtual_machine_scale_sets.begin_create_or_update(
            RG, name, VirtualMachineScaleSet(model(self.arm, **kw))
        )
        return await poller.result()

    async def run(self, vmss: str, instance: str, name: str, script: str, **props: Any) -> Any:
        body = {"location": "eastus", "properties": {"source": {"script": script}, **props}}
        poller = (
            await self.compute.virtual_machine_scale_set_vm_run_commands.begin_create_or_update(
                RG, vmss, instance, name, VirtualMachineRunCommand(body)
            )
        )
        return await poller.result()

    async def view(self, vmss: str, instance: str, name: str) -> Any:
        rc = await self.compute.virtual_machine_scale_set_vm_run_commands.get(
            RG, vmss, instance, name, expand="instanceView"
        )
        return rc.instance_view

    async def wait_state(self, vmss: str, instance: str, name: str, *states: str) -> Any:
        for _ in range(500):
            view = await self.view(vmss, instance, name)
            if view.execution_state in states:
                return view
            await asyncio.sleep(0.01)
        raise AssertionError(f"run command {name} never reached {states}")


def model(
    arm: FakeArm,
    *,
    size: str = T4,
    capacity: int = 2,
    spot: bool = False,
    setup: str | None = "echo setup-done",
    prefix: str = "c1",
) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "osProfile": {
            "computerNamePrefix": prefix,
            "adminUsername": "batchai",
            "adminPassword": "Adm1nPassw0rd!",
            "customData": base64.b64encode(b"#cloud-config\n{}\n").decode(),
        },
        "storageProfile": {
            "imageReference": {
                "publisher": "Canonical",
                "offer": "0001-com-ubuntu-server-jammy",
                "sku": "22_04-lts-gen2",
                "version": "latest",
            }
        },
        "networkProfile": {
            "networkInterfaceConfigurations": [
                {
                    "name": "nic",
                    "properties": {
                        "primary": True,
                        "ipConfigurations": [
                            {"name": "ipconfig", "properties": {"subnet": {"id": arm.subnet_id}}}
                        ],
                    },
                }
            ]
        },
    }
    if setup is not None:
        profile["extensionProfile"] = {
            "extensions": [
                {
                    "name": "setup",
                    "properties": {
                        "publisher": "Microsoft.Azure.Extensions",
                        "type": "CustomScript",
                        "typeHandlerVersion": "2.1",
                        "settings": {},
                        "protectedSettings": {"commandToExecute": setup},
                    },
                }
            ]
        }
    if spot:
        profile.update({"priority": "Spot", "evictionPolicy": "Delete"})
    return {
        "location": "eastus",
        "sku": {"name": size, "tier": "Standard", "capacity": capacity},
        "properties": {
            "orchestrationMode": "Uniform",
            "overprovision": False,
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": profile,
        },
    }


def clients(arm: FakeArm, cred: Any, **kw: Any) -> tuple[ComputeManagementClient, Any]:
    opts: dict[str, Any] = {
        "base_url": arm.base_url,
        "connection_verify": arm.ca_path,
        "polling_interval": 0,
        **kw,
    }
    return (
        ComputeManagementClient(cred, arm.subscription, **opts),
        NetworkManagementClient(cred, arm.subscription, **opts),
    )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with FakeArm(tmp_path / "nodes", lro_polls=2) as arm, FakeCredential() as cred:
        compute, network = clients(arm, cred)
        async with compute, network:
            yield Env(arm, compute, network)


def alive(pgid: int) -> bool:
    try:
        with open(f"/proc/{pgid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def dead(pgid: int) -> bool:
    """True once the process is gone (SIGKILL takes effect asynchronously)."""
    for _ in range(500):
        if not alive(pgid):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_create_scale_delete_round_trip_through_the_lro_pollers(env: Env) -> None:
    created = await env.create(capacity=2)
    assert created.provisioning_state == "Succeeded"
    assert created.sku.capacity == 2

    vms = [vm async for vm in env.compute.virtual_machine_scale_set_vms.list(RG, "c1")]
    assert [vm.instance_id for vm in vms] == ["0", "1"]
    assert [vm.os_profile.computer_name for vm in vms] == ["c1000000", "c1000001"]

    poller = await env.compute.virtual_machine_scale_sets.begin_update(
        RG, "c1", VirtualMachineScaleSetUpdate({"sku": {"capacity": 3}})
    )
    assert (await poller.result()).sku.capacity == 3
    poller = await env.compute.virtual_machine_scale_sets.begin_delete_instances(
        RG, "c1", VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["1"])
    )
    await poller.result()
    poller = await env.compute.virtual_machine_scale_sets.begin_update(
        RG, "c1", VirtualMachineScaleSetUpdate({"sku": {"capacity": 3}})
    )
    await poller.result()
    ids = [vm.instance_id async for vm in env.compute.virtual_machine_scale_set_vms.list(RG, "c1")]
    assert ids == ["0", "2", "3"]  # instance ids are never reused

    nics = [
        nic
        async for nic in env.network.network_interfaces.list_virtual_machine_scale_set_network_interfaces(  # noqa: E501
            RG, "c1"
        )
    ]
    by_vm = {nic.virtual_machine.id.rsplit("/", 1)[1]: nic for nic in nics}
    assert sorted(by_vm) == ["0", "2", "3"]
    assert by_vm["0"].ip_configurations[0].private_ip_address == "10.0.0.4"
    assert len({n.ip_configurations[0].private_ip_address for n in nics}) == 3

    poller = await env.compute.virtual_machine_scale_sets.begin_delete(RG, "c1")
    await poller.result()
    with pytest.raises(ResourceNotFoundError):
        await env.compute.virtual_machine_scale_sets.get(RG, "c1")
    methods = [(r.method, r.status) for r in env.arm.requests]
    assert ("PUT", 201) in methods and ("DELETE", 202) in methods


async def test_lro_polls_the_async_operation_until_it_succeeds(env: Env) -> None:
    env.arm.lro_polls = 3
    mark = env.arm.mark()
    await env.create(capacity=1, setup=None)
    ops = [r for r in env.arm.since(mark) if "/operations/" in r.path]
    assert len(ops) == 3


async def test_quota_exceeded_is_a_409_operation_not_allowed_with_the_real_message(
    env: Env,
) -> None:
    env.arm.set_quota("standardNCASv3_T4Family", 8)
    await env.create(capacity=1)  # 4 of 8 vCPUs
    with pytest.raises(HttpResponseError) as info:
        await env.create("c2", capacity=2, prefix="c2")
    err = info.value
    assert err.status_code == 409
    assert err.error is not None and err.error.code == "OperationNotAllowed"
    assert (
        "exceeding approved standardNCASv3_T4Family Cores quota. Additional details - "
        "Deployment Model: Resource Manager, Location: eastus, Current Limit: 8, "
        "Current Usage: 4, Additional Required: 8, (Minimum) New Limit Required: 12."
    ) in str(err.message)
    assert "c2" not in env.arm.scale_sets

    with pytest.raises(HttpResponseError) as info:
        await env.compute.virtual_machine_scale_sets.begin_update(
            RG, "c1", VirtualMachineScaleSetUpdate({"sku": {"capacity": 3}})
        )
    assert "Additional Required: 8" in str(info.value.message)

    usages = {u.name.value: u async for u in env.compute.usage.list("eastus")}
    assert usages["standardNCASv3_T4Family"].current_value == 4
    assert usages["standardNCASv3_T4Family"].limit == 8
    assert usages["cores"].current_value == 4


async def test_spot_draws_only_on_low_priority_cores(env: Env) -> None:
    env.arm.set_quota("standardNCASv3_T4Family", 0)
    env.arm.set_quota("lowPriorityCores", 8)
    await env.create(capacity=2, spot=True)
    usages = {u.name.value: u.current_value async for u in env.compute.usage.list("eastus")}
    assert usages["lowPriorityCores"] == 8
    assert usages["cores"] == 0 and usages["standardNCASv3_T4Family"] == 0
    with pytest.raises(HttpResponseError) as info:
        await env.create("c2", capacity=1, spot=True, prefix="c2")
    assert "Low Priority Cores quota" in str(info.value.message)


async def test_restricted_or_unknown_sku_is_sku_not_available(env: Env) -> None:
    env.arm.restrict_sku("Standard_NC24ads_A100_v4")
    skus = {s.name: s async for s in env.compute.resource_skus.list(filter="location eq 'eastus'")}
    a100 = skus["Standard_NC24ads_A100_v4"]
    assert a100.restrictions[0].reason_code == "NotAvailableForSubscription"
    assert a100.restrictions[0].values_property == ["eastus"]
    t4 = skus[T4]
    assert t4.family == "standardNCASv3_T4Family" and not t4.restrictions
    assert {c.name: c.value for c in t4.capabilities}["GPUs"] == "1"
    assert "Standard_NC6" not in skus  # retired

    for size in ("Standard_NC24ads_A100_v4", "Standard_NC6"):
        with pytest.raises(HttpResponseError) as info:
            await env.create(size=size)
        assert info.value.error is not None and info.value.error.code == "SkuNotAvailable"
        assert f"Capacity Restrictions: {size}" in str(info.value.message)


async def test_secrets_are_stored_but_never_returned(env: Env) -> None:
    await env.create(setup="echo STORAGE-KEY-123 > /dev/null")
    vmss = await env.compute.virtual_machine_scale_sets.get(RG, "c1")
    text = json.dumps(vmss.as_dict())
    assert "Adm1nPassw0rd!" not in text and "STORAGE-KEY-123" not in text
    assert "Adm1nPassw0rd!" not in json.dumps(env.arm.scale_sets["c1"].view())
    assert (
        vmss.virtual_machine_profile.os_profile.custom_data
        == base64.b64encode(b"#cloud-config\n{}\n").decode()
    )
    ext = vmss.virtual_machine_profile.extension_profile.extensions[0]
    assert ext.protected_settings is None
    # ARM keeps them (the model a test may inspect), the answer does not.
    assert "STORAGE-KEY-123" in json.dumps(env.arm.scale_sets["c1"].model)


async def test_setup_extension_runs_on_each_new_node_and_a_failure_fails_the_create(
    env: Env,
) -> None:
    await env.create(capacity=2, setup="echo ran > setup.txt; echo out; echo err >&2")
    for iid in ("0", "1"):
        assert (env.arm.node_dir("c1", iid) / "setup.txt").read_text() == "ran\n"
    vm = await env.compute.virtual_machine_scale_set_vms.get_instance_view(RG, "c1", "0")
    (ext,) = vm.extensions
    assert ext.name == "setup" and ext.statuses[0].code == "ProvisioningState/succeeded"
    assert "[stdout]\nout" in ext.statuses[0].message

    with pytest.raises(HttpResponseError) as info:
        await env.create("bad", capacity=1, setup="echo broken >&2; exit 3", prefix="bad")
    assert info.value.error is not None
    assert info.value.error.code == "VMExtensionProvisioningError"
    view = await env.compute.virtual_machine_scale_set_vms.get_instance_view(RG, "bad", "0")
    codes = [s.code for s in view.statuses]
    assert "ProvisioningState/failed/VMExtensionProvisioningError" in codes
    assert view.extensions[0].statuses[0].code == "ProvisioningState/failed/3"
    assert "broken" in view.extensions[0].statuses[0].message
    assert (await env.compute.virtual_machine_scale_sets.get(RG, "bad")).provisioning_state == (
        "Failed"
    )


async def test_instances_stay_creating_until_polled_enough(env: Env) -> None:
    env.arm.instance_delay_polls = 3
    poller = await env.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "c1", VirtualMachineScaleSet(model(env.arm, capacity=1)), polling=False
    )
    await poller.result()
    ops = env.compute.virtual_machine_scale_set_vm_run_commands
    body = {"location": "eastus", "properties": {"source": {"script": "true\n"}}}
    await ops.begin_create_or_update(
        RG, "c1", "0", "early", VirtualMachineRunCommand(body), polling=False
    )
    assert await env.arm.settle(5)  # the run command waits for the boot, settle does not
    assert (await env.view("c1", "0", "early")).execution_state == "Pending"
    states = []
    for _ in range(300):
        vms = [
            vm
            async for vm in env.compute.virtual_machine_scale_set_vms.list(
                RG, "c1", expand="instanceView"
            )
        ]
        states.append(tuple(s.code for s in vms[0].instance_view.statuses))
        if states[-1][0] == "ProvisioningState/succeeded":
            break
        await env.arm.settle(5)
    creating = ("ProvisioningState/creating", "PowerState/starting")
    assert states[0] == creating
    assert states[:2] == [creating, creating]  # not booted before the third look
    assert states[-1] == ("ProvisioningState/succeeded", "PowerState/running")
    assert len(states) >= 3


async def test_run_command_runs_the_script_on_the_node_with_the_systemd_shim(env: Env) -> None:
    await env.create(capacity=1)
    script = (
        'echo "job $JOB_ID in $PWD"\n'
        "systemd-run --unit=job-1 --collect --quiet --property=KillMode=mixed "
        '--setenv=GREETING=hello -- bash -c \'echo "$GREETING $SECRET_TOKEN" > unit.txt; '
        "sleep 30'\n"
        "for i in $(seq 400); do [ -s unit.txt ] && break; sleep 0.05; done\n"
        "systemctl is-active job-1\n"
        'echo "$SECRET_TOKEN" > secret.txt\n'
        "echo warn >&2\n"
    )
    await env.run(
        "c1",
        "0",
        "job-1",
        script,
        asyncExecution=True,
        parameters=[{"name": "JOB_ID", "value": "1"}],
        protectedParameters=[{"name": "SECRET_TOKEN", "value": "s3cr3t"}],
    )
    view = await env.wait_state("c1", "0", "job-1", "Succeeded", "Failed")
    node = env.arm.node_dir("c1", "0")
    assert view.execution_state == "Succeeded" and view.exit_code == 0
    assert view.output == f"job 1 in {node}\nactive\n"
    assert view.error == "warn\n"
    assert view.start_time is not None and view.end_time >= view.start_time
    # systemd-run gives a clean environment: only --setenv reaches the unit.
    assert (node / "unit.txt").read_text() == "hello \n"
    assert (node / "secret.txt").read_text() == "s3cr3t\n"
    rc = await env.compute.virtual_machine_scale_set_vm_run_commands.get(RG, "c1", "0", "job-1")
    assert "s3cr3t" not in json.dumps(rc.as_dict())
    assert rc.parameters[0].value == "1" and rc.provisioning_state == "Succeeded"

    pgid = int((node / "run" / "fake-systemd" / "job-1.pgid").read_text())
    assert alive(pgid)
    await env.run("c1", "0", "stop-1", "systemctl stop job-1\nsystemctl is-active job-1 || true\n")
    stopped = await env.wait_state("c1", "0", "stop-1", "Succeeded", "Failed")
    assert stopped.output == "inactive\n"
    assert await dead(pgid)


async def test_instance_view_follows_the_script_and_delete_kills_it(env: Env) -> None:
    await env.create(capacity=1)
    await env.run(
        "c1",
        "0",
        "long",
        "echo started; touch started; sleep 30; touch finished\n",
        asyncExecution=True,
    )
    view = await env.wait_state("c1", "0", "long", "Running")
    for _ in range(200):
        if (await env.view("c1", "0", "long")).output == "started\n":
            break
        await asyncio.sleep(0.01)
    assert view.end_time is None
    script = env.arm.scale_sets["c1"].instances["0"].run_commands["long"].script
    assert script.pgid is not None and alive(script.pgid)

    poller = await env.compute.virtual_machine_scale_set_vm_run_commands.begin_delete(
        RG, "c1", "0", "long"
    )
    await poller.result()
    await env.arm.settle(5)
    assert await dead(script.pgid)
    assert not (env.arm.node_dir("c1", "0") / "finished").exists()
    with pytest.raises(ResourceNotFoundError):
        await env.view("c1", "0", "long")


async def test_failed_and_timed_out_scripts_and_a_synchronous_run(env: Env) -> None:
    await env.create(capacity=1)
    result = await env.run("c1", "0", "fail", "echo no >&2; exit 7\n", asyncExecution=False)
    assert result.provisioning_state == "Succeeded"  # the platform ran it; the script failed
    view = await env.view("c1", "0", "fail")
    assert (view.execution_state, view.exit_code, view.error) == ("Failed", 7, "no\n")

    await env.run("c1", "0", "slow", "sleep 30\n", asyncExecution=True, timeoutInSeconds=1)
    view = await env.wait_state("c1", "0", "slow", "TimedOut", "Succeeded", "Failed")
    assert view.execution_state == "TimedOut"

    with pytest.raises(HttpResponseError) as info:
        await env.run("c1", "0", "strict", "exit 2\n", treatFailureAsDeploymentFailure=True)
    assert info.value.error is not None
    assert info.value.error.code == "VMExtensionProvisioningError"


async def test_output_is_the_last_4096_bytes(env: Env) -> None:
    await env.create(capacity=1)
    await env.run("c1", "0", "big", "for i in $(seq 2000); do echo line-$i; done\n")
    view = await env.wait_state("c1", "0", "big", "Succeeded")
    assert len(view.output.encode()) == 4096
    assert view.output.endswith("line-2000\n")


async def test_re_put_with_the_same_properties_does_not_re_execute(env: Env) -> None:
    await env.create(capacity=1)
    script = "echo x >> runs.txt\n"
    await env.run("c1", "0", "once", script)
    await env.wait_state("c1", "0", "once", "Succeeded")
    await env.run("c1", "0", "once", script)
    await env.arm.settle(5)
    runs = env.arm.node_dir("c1", "0") / "runs.txt"
    assert runs.read_text() == "x\n"
    await env.run("c1", "0", "once", script, timeoutInSeconds=60)
    await env.wait_state("c1", "0", "once", "Succeeded")
    await env.arm.settle(5)
    assert runs.read_text() == "x\nx\n"


async def test_at_most_25_managed_run_commands_per_vm(env: Env) -> None:
    await env.create(capacity=1)
    for i in range(MAX_RUN_COMMANDS):
        await env.run("c1", "0", f"rc-{i}", "true\n", asyncExecution=True)
    with pytest.raises(HttpResponseError) as info:
        await env.run("c1", "0", "one-too-many", "true\n")
    assert info.value.status_code == 409
    assert "limited to 25" in str(info.value.message)
    listed = [
        rc async for rc in env.compute.virtual_machine_scale_set_vm_run_commands.list(RG, "c1", "0")
    ]
    assert len(listed) == MAX_RUN_COMMANDS
    poller = await env.compute.virtual_machine_scale_set_vm_run_commands.begin_delete(
        RG, "c1", "0", "rc-0"
    )
    await poller.result()
    await env.run("c1", "0", "one-too-many", "true\n")


async def test_action_run_command_returns_stdout_and_stderr(env: Env) -> None:
    await env.create(capacity=1)
    poller = await env.compute.virtual_machine_scale_set_vms.begin_run_command(
        RG,
        "c1",
        "0",
        RunCommandInput(
            command_id="RunShellScript",
            script=["echo hi $WHO", "echo oops >&2"],
            parameters=[{"name": "WHO", "value": "there"}],
        ),
    )
    result = await poller.result()
    assert [(s.code, s.message) for s in result.value] == [
        ("ComponentStatus/StdOut/succeeded", "hi there\n"),
        ("ComponentStatus/StdErr/succeeded", "oops\n"),
    ]


async def test_429_with_retry_after_is_retried_by_the_sdk(env: Env) -> None:
    await env.create(capacity=1)
    env.arm.fail_next(1, 429, retry_after=0, match="/virtualMachineScaleSets/c1", method="PATCH")
    mark = env.arm.mark()
    poller = await env.compute.virtual_machine_scale_sets.begin_update(
        RG, "c1", VirtualMachineScaleSetUpdate({"sku": {"capacity": 2}})
    )
    assert (await poller.result()).sku.capacity == 2
    patches = [r.status for r in env.arm.since(mark) if r.method == "PATCH"]
    assert patches == [429, 200]

    env.arm.fail_next(1, 429, match="/virtualMachineScaleSets/c1", method="PATCH")
    with pytest.raises(HttpResponseError) as info:  # a PATCH without Retry-After is not retried
        await env.compute.virtual_machine_scale_sets.begin_update(
            RG, "c1", VirtualMachineScaleSetUpdate({"sku": {"capacity": 1}})
        )
    assert info.value.status_code == 429


async def test_requests_need_the_bearer_token(env: Env) -> None:
    compute, network = clients(env.arm, FakeCredential("someone-else"))
    async with compute, network:
        with pytest.raises(ClientAuthenticationError):
            await compute.virtual_machine_scale_sets.get(RG, "c1")
    ctx = ssl.create_default_context(cafile=env.arm.ca_path)
    async with aiohttp.ClientSession() as http:
        url = f"{env.arm.base_url}/subscriptions/{env.arm.subscription}/resourceGroups/{RG}"
        async with http.get(url, params={"api-version": "2021-04-01"}, ssl=ctx) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "AuthenticationFailed"


async def test_unknown_resource_group_and_subnet(env: Env) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        [vmss async for vmss in env.compute.virtual_machine_scale_sets.list("nope")]
    assert info.value.error is not None and info.value.error.code == "ResourceGroupNotFound"
    assert [v async for v in env.compute.virtual_machine_scale_sets.list(RG)] == []
    subnet = await env.network.subnets.get(RG, "batchai-vnet", "default")
    assert subnet.id == env.arm.subnet_id
    with pytest.raises(ResourceNotFoundError):
        await env.network.subnets.get(RG, "batchai-vnet", "other")


async def test_eviction_and_scale_set_delete_kill_the_nodes_processes(env: Env) -> None:
    await env.create(capacity=2, spot=True)  # eviction policy Delete
    # The unit's child leaves the unit's session: only a cgroup-like kill reaches it.
    unit = "systemd-run --unit=job --quiet bash -c 'setsid sleep 300 & echo $! > child.pid; wait'"
    wait = "for i in $(seq 400); do [ -s child.pid ] && break; sleep 0.05; done"
    for iid in ("0", "1"):
        await env.run("c1", iid, "job", f"{unit}\n{wait}\n", asyncExecution=True)
        await env.wait_state("c1", iid, "job", "Succeeded")
    children = [int((env.arm.node_dir("c1", i) / "child.pid").read_text()) for i in ("0", "1")]
    assert all(alive(p) for p in children)
    assert os.getpgid(children[0]) == children[0]  # its own session and group
    env.arm.evict("c1", "1")
    assert await dead(children[1]) and alive(children[0])
    ids = [vm.instance_id async for vm in env.compute.virtual_machine_scale_set_vms.list(RG, "c1")]
    assert ids == ["0"]
    assert (await env.compute.virtual_machine_scale_sets.get(RG, "c1")).sku.capacity == 1
    poller = await env.compute.virtual_machine_scale_sets.begin_delete(RG, "c1")
    await poller.result()
    assert await dead(children[0])


async def test_stopping_the_fake_leaves_no_process_behind(tmp_path: Path) -> None:
    async with FakeArm(tmp_path / "nodes") as arm, FakeCredential() as cred:
        compute, network = clients(arm, cred)
        async with compute, network:
            env = Env(arm, compute, network)
            await env.create(capacity=1)
            await env.run("c1", "0", "u", "systemd-run --unit=u sleep 30\n", asyncExecution=True)
            await env.run("c1", "0", "s", "sleep 30\n", asyncExecution=True)
            await env.wait_state("c1", "0", "s", "Running")
            await env.wait_state("c1", "0", "u", "Succeeded")
            unit = int((arm.node_dir("c1", "0") / "run/fake-systemd/u.pgid").read_text())
            script = arm.scale_sets["c1"].instances["0"].run_commands["s"].script.pgid
            assert script is not None and alive(unit) and alive(script)
    assert await dead(unit) and await dead(script)


async def test_faults_match_paths_and_delays_hold_requests(env: Env) -> None:
    env.arm.fail_next(1, 503, match="/usages", code="ServerBusy")
    compute, network = clients(env.arm, FakeCredential(), retry_total=0)
    async with compute, network:
        with pytest.raises(HttpResponseError) as info:
            [u async for u in compute.usage.list("eastus")]
        assert info.value.status_code == 503
        assert info.value.error is not None and info.value.error.code == "ServerBusy"
        assert [u async for u in compute.usage.list("eastus")]
        env.arm.delay_next(1, 1.0, match="/skus")
        with pytest.raises(ServiceResponseError):  # the SDK's read timeout
            [s async for s in compute.resource_skus.list(read_timeout=0.2)]
    assert os.path.exists(env.arm.ca_path)


async def test_lists_page_through_next_link(env: Env) -> None:
    env.arm.page_size = 2
    await env.create(capacity=5)
    await env.create("c2", capacity=1, prefix="c2")
    mark = env.arm.mark()
    ids = [vm.instance_id async for vm in env.compute.virtual_machine_scale_set_vms.list(RG, "c1")]
    assert ids == ["0", "1", "2", "3", "4"]
    assert env.arm.count(mark, method="GET", match="/virtualMachines") == 3
    names = [v.name async for v in env.compute.virtual_machine_scale_sets.list_all()]
    assert sorted(names) == ["c1", "c2"]


async def test_deleting_what_is_gone_succeeds_as_on_arm(env: Env) -> None:
    await env.create(capacity=1)
    mark = env.arm.mark()
    poller = await env.compute.virtual_machine_scale_set_vm_run_commands.begin_delete(
        RG, "c1", "0", "never-made"
    )
    await poller.result()
    poller = await env.compute.virtual_machine_scale_sets.begin_delete(RG, "no-such-set")
    await poller.result()
    assert [r.status for r in env.arm.since(mark)] == [204, 204]


async def test_lro_answers_can_carry_retry_after(env: Env) -> None:
    env.arm.lro_retry_after = 0
    env.arm.lro_polls = 2
    mark = env.arm.mark()
    await env.create(capacity=1, setup=None)
    assert env.arm.count(mark, match="/operations/") == 2
    ctx = ssl.create_default_context(cafile=env.arm.ca_path)
    async with aiohttp.ClientSession() as http:
        url = f"{env.arm.base_url}{env.arm.scale_sets['c1'].id}"
        body = model(env.arm, capacity=0, setup=None)
        headers = {"Authorization": "Bearer " + (await FakeCredential().get_token()).token}
        params = {"api-version": "2026-04-01"}
        async with http.put(url, json=body, params=params, headers=headers, ssl=ctx) as resp:
            assert resp.status == 200
            assert resp.headers["Retry-After"] == "0"
            assert resp.headers["Azure-AsyncOperation"].startswith(env.arm.base_url)


async def test_extension_script_setting_and_the_node_stand_ins(env: Env) -> None:
    setup = (
        "mkdir -p mnt\n"
        "mountpoint -q mnt && mount -t cifs //acct.file.core.windows.net/s mnt -o vers=3.1.1\n"
        "command -v mount.cifs >/dev/null && apt-get install -y -q cifs-utils\n"
        "! mountpoint -q nowhere\n"
        "systemd-run --unit=probe --wait --working-directory=mnt --setenv=A=1 -E B=2 "
        "bash -c 'echo \"$PWD $A $B\" > probe.txt'\n"
        "echo $? > probe-exit.txt\n"
    )
    ext = {
        "name": "setup",
        "properties": {
            "publisher": "Microsoft.Azure.Extensions",
            "type": "CustomScript",
            "typeHandlerVersion": "2.1",
            "settings": {},
            "protectedSettings": {
                "script": base64.b64encode(gzip.compress(setup.encode())).decode()
            },
        },
    }
    body = model(env.arm, capacity=1, setup=None)
    body["properties"]["virtualMachineProfile"]["extensionProfile"] = {"extensions": [ext]}
    poller = await env.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "c1", VirtualMachineScaleSet(body)
    )
    await poller.result()
    node = env.arm.node_dir("c1", "0")
    assert (node / "mnt" / "probe.txt").read_text() == f"{node / 'mnt'} 1 2\n"
    assert (node / "probe-exit.txt").read_text() == "0\n"


async def test_docker_stand_in_runs_the_command_and_rm_f_stops_it(env: Env) -> None:
    await env.create(capacity=1, setup="mount -t cifs //acct/share mnt -o vers=3.1.1,cred=/x")
    script = (
        "mkdir -p work\n"
        "systemd-run --unit=job --setenv=TOKEN=t0k -- docker run --rm --name job-c "
        '--network host --init -w "$PWD/work" -e TOKEN ubuntu:22.04 '
        "bash -c 'echo \"$PWD $TOKEN\" > c.txt; sleep 30'\n"
        "for i in $(seq 400); do [ -s work/c.txt ] && break; sleep 0.05; done\n"
        "docker ps -q --filter name=job-c\n"
        "docker rm -f job-c\n"
        "systemctl is-active job || true\n"
    )
    await env.run("c1", "0", "docker", script)
    view = await env.wait_state("c1", "0", "docker", "Succeeded", "Failed")
    node = env.arm.node_dir("c1", "0")
    assert (node / "work" / "c.txt").read_text() == f"{node / 'work'} t0k\n"
    assert view.output == "job-c\njob-c\ninactive\n"
    log = (node / "run" / "fake-mounts.log").read_text()
    assert log == "mount -t cifs //acct/share mnt -o vers=3.1.1,cred=/x\n"


async def test_spot_eviction_follows_the_eviction_policy(env: Env) -> None:
    await env.create(capacity=1)
    with pytest.raises(ValueError):
        env.arm.evict("c1", "0")  # regular VMs are not evicted
    body = model(env.arm, capacity=2, spot=True, prefix="d")
    del body["properties"]["virtualMachineProfile"]["evictionPolicy"]  # Azure's default
    poller = await env.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "dealloc", VirtualMachineScaleSet(body)
    )
    await poller.result()
    env.arm.evict("dealloc", "1")
    view = await env.compute.virtual_machine_scale_set_vms.get_instance_view(RG, "dealloc", "1")
    assert [s.code for s in view.statuses][1] == "PowerState/deallocated"
    usages = {u.name.value: u.current_value async for u in env.compute.usage.list("eastus")}
    assert usages["lowPriorityCores"] == 8  # deallocated VMs still count
    with pytest.raises(HttpResponseError) as info:
        await env.run("dealloc", "1", "x", "true\n")
    assert info.value.status_code == 409


async def test_a_subnet_in_another_resource_group(env: Env) -> None:
    other = env.arm.subnet_id.replace("/resourceGroups/batchai-rg/", "/resourceGroups/net-rg/")
    with pytest.raises(ResourceNotFoundError):
        await env.network.subnets.get("net-rg", "batchai-vnet", "default")
    env.arm.add_subnet(other)
    assert (await env.network.subnets.get("net-rg", "batchai-vnet", "default")).id == other


async def test_quota_for_an_update_counts_only_what_it_adds(env: Env) -> None:
    env.arm.set_quota("standardNCASv3_T4Family", 16)
    await env.create(capacity=2)  # 2 × 4 vCPUs
    await env.create(capacity=2, size="Standard_NC8as_T4_v3")  # same set, 2 × 8: +8
    usages = {u.name.value: u.current_value async for u in env.compute.usage.list("eastus")}
    assert usages["standardNCASv3_T4Family"] == 16
    with pytest.raises(HttpResponseError) as info:
        await env.create(capacity=3, size="Standard_NC8as_T4_v3")
    assert "Current Usage: 16, Additional Required: 8," in str(info.value.message)


def shim(node: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAKE_NODE_DIR": str(node), "PATH": f"{SHIM_DIR}:{os.environ['PATH']}"}
    return subprocess.run(argv, env=env, cwd=node, capture_output=True, text=True, timeout=30)


async def test_systemd_stand_ins_answer_like_systemd(tmp_path: Path) -> None:
    node = tmp_path
    unknown = shim(node, "systemctl", "is-active", "nope")
    assert (unknown.returncode, unknown.stdout) == (3, "inactive\n")
    missing = shim(node, "systemctl", "stop", "nope")
    assert missing.returncode == 5 and "Unit nope.service not loaded" in missing.stderr
    trap = "trap 'echo usr1 > got.txt; exit 0' USR1; while true; do sleep 0.05; done"
    started = shim(node, "systemd-run", "--unit=u", "--uid=1000", "-p", "X=y", "bash", "-c", trap)
    assert started.returncode == 0
    pgid = int((node / "run/fake-systemd/u.pgid").read_text())
    try:
        again = shim(node, "systemd-run", "--unit=u", "true")
        assert again.returncode == 1 and "already exists" in again.stderr
        assert shim(node, "systemctl", "is-active", "--quiet", "u.service").returncode == 0
        shim(node, "systemctl", "kill", "--signal=SIGUSR1", "u")
        for _ in range(500):
            got = node / "got.txt"
            if got.exists() and got.read_text().endswith("\n"):
                break
            await asyncio.sleep(0.01)
        assert (node / "got.txt").read_text() == "usr1\n"
        assert await dead(pgid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    assert shim(node, "systemctl", "is-active", "u").stdout == "inactive\n"
    escape = "setsid sleep 300 & echo $! > esc.pid; wait"
    assert shim(node, "systemd-run", "--unit=esc", "bash", "-c", escape).returncode == 0
    for _ in range(500):
        if (node / "esc.pid").exists() and (node / "esc.pid").read_text().endswith("\n"):
            break
        await asyncio.sleep(0.01)
    child = int((node / "esc.pid").read_text())
    try:
        assert shim(node, "systemctl", "stop", "esc").returncode == 0
        assert await dead(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    waited = shim(node, "systemd-run", "--wait", "--quiet", "bash", "-c", "exit 4")
    assert waited.returncode == 4
    assert shim(node, "mountpoint", "-q", str(node)).returncode != 0  # a directory, not mounted
    mounted = shim(node, "mount", "-t", "cifs", "//acct/s", str(node), "-o", "vers=3.1.1")
    assert mounted.returncode == 0
    assert shim(node, "mountpoint", "-q", str(node)).returncode == 0
    assert shim(node, "mountpoint", "-q", str(node / "absent")).returncode != 0


async def test_an_instance_stays_creating_while_its_setup_extension_runs(env: Env) -> None:
    body = model(env.arm, capacity=1, setup="until [ -e go ]; do sleep 0.05; done; echo set")
    poller = await env.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "c1", VirtualMachineScaleSet(body), polling=False
    )
    await poller.result()
    node = env.arm.node_dir("c1", "0")
    for _ in range(500):  # the extension has started once its script is on the node
        if (node / "var/lib/waagent/custom-script/download/0/script.sh").exists():
            break
        await asyncio.sleep(0.01)
    vm = await env.compute.virtual_machine_scale_set_vms.get(RG, "c1", "0", expand="instanceView")
    assert vm.provisioning_state == "Creating"
    assert [s.code for s in vm.instance_view.statuses] == [
        "ProvisioningState/creating",
        "PowerState/running",
    ]
    assert vm.instance_view.extensions[0].statuses[0].code == "ProvisioningState/transitioning"
    vmss = await env.compute.virtual_machine_scale_sets.get(RG, "c1")
    assert vmss.provisioning_state == "Creating"
    (node / "go").touch()
    for _ in range(500):
        vm = await env.compute.virtual_machine_scale_set_vms.get(RG, "c1", "0")
        if vm.provisioning_state != "Creating":
            break
        await asyncio.sleep(0.01)
    assert vm.provisioning_state == "Succeeded"
    assert (await env.compute.virtual_machine_scale_sets.get(RG, "c1")).provisioning_state == (
        "Succeeded"
    )
