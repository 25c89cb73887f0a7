"""AzureBackend with the real azure-mgmt-compute/-network aio clients against the fake ARM (TLS)
and the real Files client against the fake Files server; jobs really run on the fake nodes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from bot.bootstrap import azure_config
from bot.check import check_azure, format_results
from bot.config import Settings
from services.backends.azure.backend import AzureBackend
from services.backends.azure.files import AzureShare
from services.backends.azure.scaleset_model import image_reference
from services.backends.azure.sizes import gpu_model
from services.core.errors import (
    BatchAIError,
    NotFound,
    QuotaError,
    TransientError,
    UserError,
)
from services.models import Cluster, FileLocation
from tests.azure.rig import AzureRig
from tests.contract import cluster, job_spec, launch_request, log_loc, read_text, wait_for
from tests.contract import wait_for_text as wait_text

A100 = "Standard_NC24ads_A100_v4"
A100_FAMILY = "standardNCADSA100v4Family"
PASSWORD = "Sup3r-Secret-Passw0rd!"


def gpu_cluster(name: str, size: str, nodes: int, *, spot: bool = False) -> Cluster:
    return replace(
        cluster(name, nodes=nodes),
        vm_size=size,
        vm_priority="lowpriority" if spot else "dedicated",
    )


def vmss_writes(rig: AzureRig, mark: int) -> list[str]:
    return [
        f"{r.method} {r.path}"
        for r in rig.arm.since(mark)
        if r.method in ("PUT", "PATCH") and r.path.rstrip("/").count("/") == 8
    ]


# --------------------------------------------------------------------------- pre-flight


async def test_create_with_quota_exceeded_names_the_quota_numbers_and_alternatives(
    rig: AzureRig, backend: AzureBackend
) -> None:
    rig.arm.set_quota(A100_FAMILY, 48)
    mark = rig.arm.mark()
    with pytest.raises(QuotaError) as err:
        await backend.create_cluster(gpu_cluster("big", A100, 4))
    message = str(err.value)
    assert "\n" not in message
    assert A100_FAMILY in message and "needs 96" in message and "48 of 48 free" in message
    assert "2 nodes fit" in message  # fewer nodes
    assert "--vm-priority lowpriority (Spot: 100 vCPUs free)" in message  # Spot
    assert vmss_writes(rig, mark) == []  # refused before anything was created
    assert "big" not in rig.arm.scale_sets


async def test_spot_is_checked_against_low_priority_quota(
    rig: AzureRig, backend: AzureBackend
) -> None:
    rig.arm.set_quota("lowPriorityCores", 10)
    with pytest.raises(QuotaError) as err:
        await backend.create_cluster(gpu_cluster("spot", A100, 1, spot=True))
    assert "Spot vCPU quota" in str(err.value) and "lowPriorityCores has 10 of 10" in str(err.value)


async def test_a_quota_409_that_gets_past_the_check_is_a_quota_error(
    rig: AzureRig, backend: AzureBackend
) -> None:
    rig.arm.fail_next(
        1,
        status=409,
        code="OperationNotAllowed",
        message="Operation could not be completed as it results in exceeding approved "
        f"{A100_FAMILY} Cores quota. Current Limit: 100, Current Usage: 96, Additional "
        "Required: 24",
        method="PUT",
        match="virtualMachineScaleSets/raced",
    )
    with pytest.raises(QuotaError) as err:
        await backend.create_cluster(gpu_cluster("raced", A100, 1))
    assert A100_FAMILY in str(err.value) and "\n" not in str(err.value)


async def test_a_size_not_available_here_is_refused_with_sizes_of_the_same_gpu(
    rig: AzureRig, backend: AzureBackend
) -> None:
    rig.arm.restrict_sku(A100)
    with pytest.raises(QuotaError) as err:
        await backend.create_cluster(gpu_cluster("r", A100, 1))
    message = str(err.value)
    assert f"{A100} is not available (NotAvailableForSubscription) in eastus" in message
    assert "Standard_NC48ads_A100_v4" in message
    with pytest.raises(QuotaError, match="Standard_NC6 is not offered in eastus"):
        await backend.create_cluster(gpu_cluster("old", "Standard_NC6", 1))  # retired size


def test_image_aliases_and_urns() -> None:
    assert image_reference("UbuntuLTS")["offer"] == "0001-com-ubuntu-server-jammy"
    assert image_reference("UbuntuHPC") == {
        "publisher": "microsoft-dsvm",
        "offer": "ubuntu-hpc",
        "sku": "2204",
        "version": "latest",
    }
    assert image_reference("Canonical:ubuntu-24_04-lts:server:latest")["sku"] == "server"
    with pytest.raises(UserError, match="UbuntuLTS"):
        image_reference("Windows")
    assert gpu_model(A100) == "A100" and gpu_model("Standard_NC4as_T4_v3") == "T4"
    assert gpu_model("Standard_NC6s_v3") is None


# --------------------------------------------------------------------------- clusters


async def test_spot_cluster_model_and_no_secret_in_it(rig: AzureRig, share: AzureShare) -> None:
    backend = rig.backend(share, admin_password=PASSWORD)
    try:
        c = replace(gpu_cluster("spot", "Standard_NC4as_T4_v3", 2, spot=True), setup_task="true")
        await backend.create_cluster(c)
    finally:
        await backend.aclose()
    vmss = rig.arm.scale_sets["spot"]
    view = vmss.view()  # what anyone with read access to the scale set gets
    props = view["properties"]
    profile = props["virtualMachineProfile"]
    assert (profile["priority"], profile["evictionPolicy"]) == ("Spot", "Delete")
    assert profile["billingProfile"] == {"maxPrice": -1}
    assert props["overprovision"] is False and props["upgradePolicy"] == {"mode": "Manual"}
    assert props["orchestrationMode"] == "Uniform"
    assert view["sku"] == {"name": "Standard_NC4as_T4_v3", "tier": "Standard", "capacity": 2}
    custom = base64.b64decode(profile["osProfile"]["customData"]).decode()
    assert custom.startswith("#cloud-config") and "cifs-utils" in custom and "vers=3.1.1" in custom

    key = rig.config.storage_key
    everything = json.dumps(view) + custom
    for secret in (key, PASSWORD, base64.b64encode(key.encode()).decode()):
        assert secret not in everything
    # ... yet the key reached every node, through the extension's protected settings only.
    for inst in vmss.instances.values():
        cred = inst.dir / "etc" / "smbcredentials" / f"{rig.config.storage_account}.cred"
        assert f"password={key}" in cred.read_text()
        assert cred.stat().st_mode & 0o777 == 0o600


async def test_resize_checks_quota_on_scale_up_and_delete_is_idempotent(
    rig: AzureRig, backend: AzureBackend
) -> None:
    c = gpu_cluster("grow", "Standard_NC8as_T4_v3", 1)
    await backend.create_cluster(c)
    await backend.resize_cluster(c, 3)
    assert [n.state for n in await backend.list_nodes(c)] == ["idle"] * 3
    rig.arm.set_quota("standardNCASv3_T4Family", 32)  # 24 used, room for one more node
    with pytest.raises(QuotaError, match="1 node fit"):
        await backend.resize_cluster(c, 6)
    assert len(await backend.list_nodes(c)) == 3
    await backend.resize_cluster(c, 1)
    nodes = await backend.list_nodes(c)
    assert [(n.index, n.port) for n in nodes] == [(0, 22)] and nodes[0].ip.startswith("10.0.0.")
    await backend.delete_cluster(c)
    await backend.delete_cluster(c)
    with pytest.raises(NotFound):
        await backend.list_nodes(c)


# --------------------------------------------------------------------------- jobs


async def test_two_node_job_from_start_to_exit_code(rig: AzureRig, backend: AzureBackend) -> None:
    c = gpu_cluster("duo", "Standard_NC4as_T4_v3", 2)
    await backend.create_cluster(c)
    ips = [n.ip for n in await backend.list_nodes(c)]
    request = launch_request(job_spec("ok", node_count=2, process_count=2), c, (0, 1))
    result = await backend.start_job(request)
    status = await wait_for(backend, request.job_id)
    assert status.exit_code == 0 and status.phase == "exited"
    for rank in (0, 1):
        out = await read_text(backend_share(backend), log_loc(result, f"stdout-{rank}.txt"))
        env = json.loads(out)["env"]
        assert env["AZ_BATCHAI_TASK_INDEX"] == str(rank)
        assert env["AZ_BATCH_HOST_LIST"] == ",".join(ips)  # the nodes' private IPs
        assert env["MASTER_ADDR"] == ips[0]
        assert env["AZ_BATCHAI_NUM_GPUS"] == "1"
    # One run command per node while it ran; every one deleted once the job ended.
    vmss = rig.arm.scale_sets["duo"]
    created = {
        r.path.rsplit("/", 1)[-1]
        for r in rig.arm.requests
        if r.method == "PUT" and "/runCommands/" in r.path
    }
    assert created == {f"job-{request.job_id}-0", f"job-{request.job_id}-1"}
    assert all(not inst.run_commands for inst in vmss.instances.values())


def backend_share(backend: AzureBackend) -> AzureShare:
    share = backend._share
    assert isinstance(share, AzureShare)
    return share


async def test_terminate_stops_the_unit_on_every_node(rig: AzureRig, backend: AzureBackend) -> None:
    c = gpu_cluster("stop", "Standard_NC4as_T4_v3", 2)
    await backend.create_cluster(c)
    request = launch_request(job_spec("sleep", node_count=2, process_count=2), c, (0, 1))
    result = await backend.start_job(request)
    share = backend_share(backend)
    for rank in (0, 1):
        await wait_text(share, log_loc(result, f"stdout-{rank}.txt"), '"pgid"')
    assert (await backend.get_job_status(request.job_id)).phase == "running"
    assert [n.state for n in await backend.list_nodes(c)] == ["running", "running"]
    mark = rig.arm.mark()
    await backend.terminate_job(request.job_id)
    stops = [r for r in rig.arm.since(mark) if r.method == "PUT" and "/runCommands/stop-" in r.path]
    assert len(stops) == 2
    terminate = FileLocation("batchai", f".batchai/jobs/{request.job_id}/terminate")
    assert await share.stat(terminate) is not None
    status = await wait_for(backend, request.job_id)
    assert (status.exit_code, status.detail) == (143, "terminated by user")
    assert all(not i.run_commands for i in rig.arm.scale_sets["stop"].instances.values())
    assert [n.state for n in await backend.list_nodes(c)] == ["idle", "idle"]


async def test_evicted_spot_node_ends_the_job_as_lost(rig: AzureRig, backend: AzureBackend) -> None:
    c = gpu_cluster("evict", "Standard_NC4as_T4_v3", 2, spot=True)
    await backend.create_cluster(c)
    request = launch_request(job_spec("sleep", node_count=2, process_count=2), c, (0, 1))
    result = await backend.start_job(request)
    await wait_text(backend_share(backend), log_loc(result, "stdout-1.txt"), '"pgid"')
    victim = sorted(rig.arm.scale_sets["evict"].instances, key=int)[1]
    rig.arm.evict("evict", victim)
    status = await wait_for(backend, request.job_id, ("exited", "lost"))
    assert status.phase == "lost"
    assert status.detail == f"node 1 (instance {victim}) was evicted (Spot capacity reclaimed)"
    # The surviving node was told to stop; the job is not reported twice.
    assert await backend.get_job_status(request.job_id) == status


async def test_arm_429_with_retry_after_is_retried(rig: AzureRig, backend: AzureBackend) -> None:
    c = gpu_cluster("busy", "Standard_NC4as_T4_v3", 1)
    await backend.create_cluster(c)
    mark = rig.arm.mark()
    rig.arm.fail_next(2, status=429, retry_after=0, match="/virtualMachines", method="GET")
    assert len(await backend.list_nodes(c)) == 1
    statuses = [r.status for r in rig.arm.since(mark) if r.path.endswith("/virtualMachines")]
    assert statuses == [429, 429, 200]

    rig.arm.fail_next(30, status=429, retry_after=0, match="/virtualMachines", method="GET")
    with pytest.raises(TransientError) as err:
        await backend.list_nodes(c)
    assert err.value.retry_after == 0


async def test_a_status_poll_costs_one_arm_request_per_cluster(
    rig: AzureRig, share: AzureShare
) -> None:
    ticks = [0.0]
    backend = rig.backend(share, poll_cache_seconds=5.0, monotonic=lambda: ticks[0])
    try:
        jobs = []
        for name in ("p1", "p2"):
            c = gpu_cluster(name, "Standard_NC4as_T4_v3", 3)
            await backend.create_cluster(c)
            for node in range(3):
                request = launch_request(job_spec("sleep"), c, (node,))
                result = await backend.start_job(request)
                jobs.append((request.job_id, result))
        for _, result in jobs:
            await wait_text(share, log_loc(result, "stdout.txt"), '"pgid"')
        for job_id, _ in jobs:
            assert (await backend.get_job_status(job_id)).phase == "running"
        ticks[0] += 10.0  # a new poll cycle
        mark = rig.arm.mark()
        for job_id, _ in jobs:
            assert (await backend.get_job_status(job_id)).phase == "running"
        reads = rig.arm.since(mark)
        assert len(reads) == 2  # one VM list per cluster for six jobs
        assert all(r.method == "GET" and r.path.endswith("/virtualMachines") for r in reads)
        for job_id, _ in jobs:
            await backend.terminate_job(job_id)
        for job_id, _ in jobs:
            await wait_for(backend, job_id)
    finally:
        await backend.aclose()


async def test_check_setup_reports_each_prerequisite(rig: AzureRig, share: AzureShare) -> None:
    backend = rig.backend(share)
    try:
        uses = [(A100, "UbuntuLTS")]
        rows = {name: (ok, detail) for name, ok, detail in await backend.check_setup(uses)}
        assert all(ok for ok, _ in rows.values()), rows
        assert "room for 4 × Standard_NC24ads_A100_v4" in rows["quota standardNCADSA100v4Family"][1]
    finally:
        await backend.aclose()
    missing = rig.backend(
        share, share="nosuchshare", subnet_id=rig.config.subnet_id.replace("default", "other")
    )
    try:
        rows = {
            name: (ok, detail)
            for name, ok, detail in await missing.check_setup([(A100, "UbuntuLTS")])
        }
    finally:
        await missing.aclose()
    assert not rows["share"][0] and "az storage share create" in rows["share"][1]
    assert not rows["subnet"][0]
    assert rows["resource group"][0]


async def test_ping_reaches_arm_and_files(rig: AzureRig, backend: AzureBackend) -> None:
    await backend.ping()
    rig.arm.fail_next(30, status=503, retry_after=0)
    with pytest.raises(BatchAIError):
        await backend.ping()


# --------------------------------------------------------------------------- secrets


async def test_no_key_or_password_in_any_log_line(
    rig: AzureRig, share: AzureShare, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("azure", "azure.core.pipeline.policies.http_logging_policy"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    backend = rig.backend(share, admin_password=PASSWORD)
    try:
        c = gpu_cluster("logs", "Standard_NC4as_T4_v3", 1, spot=True)
        await backend.create_cluster(c)
        request = launch_request(job_spec("ok"), c)
        await backend.start_job(request)
        await wait_for(backend, request.job_id)
        rig.arm.set_quota("lowPriorityCores", 0)
        with pytest.raises(QuotaError):
            await backend.resize_cluster(c, 2)
        await backend.check_setup([(A100, "UbuntuLTS")])
    finally:
        await backend.aclose()
    text = caplog.text
    azure_lines = [r for r in caplog.records if r.name.startswith("azure")]
    assert any("virtualMachineScaleSets" in r.getMessage() for r in azure_lines)  # it did log
    key = rig.config.storage_key
    for secret in (key, PASSWORD, base64.b64encode(key.encode()).decode()):
        assert secret not in text


async def test_set_time_left_moves_the_wall_clock_on_the_nodes(
    rig: AzureRig, backend: AzureBackend
) -> None:
    c = gpu_cluster("clock", "Standard_NC4as_T4_v3", 1)
    await backend.create_cluster(c)
    request = launch_request(job_spec("sleep", wall_clock="10:00:00"), c)
    result = await backend.start_job(request)
    await wait_text(backend_share(backend), log_loc(result, "stdout.txt"), '"pgid"')
    await backend.set_time_left(request.job_id, timedelta(0))  # the runner re-reads DEADLINE
    status = await wait_for(backend, request.job_id)
    assert (status.exit_code, status.detail) == (124, "max wall clock time (extended) exceeded")


async def test_batchai_bot_check_prints_one_line_per_azure_prerequisite(rig: AzureRig) -> None:
    cfg = rig.config
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        batchai_backend="azure",
        azure_subscription_id=cfg.subscription_id,
        azure_resource_group=cfg.resource_group,
        azure_location=cfg.location,
        azure_subnet_id=cfg.subnet_id,
        azure_storage_account=cfg.storage_account,
        azure_storage_key=cfg.storage_key,
        azure_share="nosuchshare",
        azure_arm_endpoint=cfg.arm_endpoint,
        azure_storage_endpoint=cfg.storage_endpoint,
        azure_ca_bundle=cfg.connection_verify,
        azure_check_vm_size="Standard_NC4as_T4_v3",
    )
    results = await check_azure(settings, credential=rig.credential)
    assert [r.name for r in results] == [
        "azure credential",
        "azure resource group",
        "azure subnet",
        "azure share",
        "azure vm size Standard_NC4as_T4_v3",
        "azure quota standardNCASv3_T4Family",
        "azure image UbuntuHPC",
    ]
    assert [r.name for r in results if not r.ok] == ["azure share"]
    text = format_results(results)
    assert "FAIL azure share" in text and "create it" in text
    assert cfg.storage_key not in text
    assert not rig.credential.closed  # a credential passed in belongs to the caller


def test_settings_name_what_the_azure_backend_misses() -> None:
    with pytest.raises(ValueError, match="AZURE_SUBNET_ID, AZURE_STORAGE_ACCOUNT"):
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            batchai_backend="azure",
            azure_subscription_id="s",
            azure_resource_group="rg",
            azure_location="eastus",
            azure_storage_key="k",
        )


async def test_a_failing_setup_task_leaves_the_node_unusable_without_leaking_the_key(
    rig: AzureRig, backend: AzureBackend
) -> None:
    c = replace(gpu_cluster("broken", "Standard_NC4as_T4_v3", 1), setup_task="env; exit 3")
    await backend.create_cluster(c)  # the cluster is made; its node says why it cannot work
    inst = rig.arm.scale_sets["broken"].instances["0"]
    (node,) = await backend.list_nodes(c)
    assert node.state == "unusable"
    assert node.detail == f"setup task failed (exit 3), see stdout-{inst.computer_name}.txt"
    logs = inst.dir / "var" / "log" / "batchai-setup"  # no --setup-task-output: node-local
    out = (logs / f"stdout-{inst.computer_name}.txt").read_text()
    assert "AZ_BATCHAI_MOUNT_ROOT=" in out and rig.config.storage_key not in out
    await backend.delete_cluster(c)


async def test_a_job_waits_for_nodes_still_preparing(rig: AzureRig, backend: AzureBackend) -> None:
    rig.arm.instance_delay_polls = 1_000_000  # the new node never finishes booting
    c = gpu_cluster("slow", "Standard_NC4as_T4_v3", 1)
    creating = asyncio.create_task(backend.create_cluster(c))
    try:
        while not rig.arm.scale_sets.get("slow") or not rig.arm.scale_sets["slow"].instances:
            await asyncio.sleep(0.01)  # until the fake holds the half-made scale set
        assert [n.state for n in await backend.list_nodes(c)] == ["preparing"]
        with pytest.raises(TransientError, match="still preparing"):
            await backend.start_job(launch_request(job_spec("ok"), c))
    finally:
        creating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await creating


def test_sovereign_clouds_pick_their_endpoints_and_explicit_ones_win() -> None:
    base = {
        "batchai_backend": "azure",
        "azure_subscription_id": "s",
        "azure_resource_group": "rg",
        "azure_location": "chinanorth3",
        "azure_subnet_id": "/subscriptions/s/resourceGroups/rg/providers/x",
        "azure_storage_account": "acct",
        "azure_storage_key": "StorageKey0123==",
    }
    china = azure_config(Settings(_env_file=None, azure_cloud="china", **base))  # type: ignore[call-arg]
    assert china.arm_url == "https://management.chinacloudapi.cn"
    assert china.credential_scope == "https://management.chinacloudapi.cn/.default"
    assert china.account_url == "https://acct.file.core.chinacloudapi.cn"
    custom = azure_config(
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            azure_cloud="usgov",
            azure_arm_endpoint="https://arm.example.test/",
            azure_storage_endpoint_suffix="core.example.test",
            **base,
        )
    )
    assert custom.arm_url == "https://arm.example.test"
    assert custom.smb_host == "acct.file.core.example.test"
    assert custom.storage_key == "StorageKey0123=="
    assert "StorageKey0123" not in repr(custom)


async def test_job_mount_volumes_of_the_account_are_linked_like_batch_ai_recipes(
    rig: AzureRig, backend: AzureBackend
) -> None:
    account = rig.config.storage_account
    c = gpu_cluster("vols", "Standard_NC4as_T4_v3", 1)
    await backend.create_cluster(c)
    extra = {
        "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs",
        "mountVolumes": {
            "azureFileShares": [
                {
                    "azureFileUrl": f"https://{account}.file.core.windows.net/data",
                    "relativeMountPath": "logs",
                },
                {
                    "azureFileUrl": "https://otheracct.file.core.windows.net/x",
                    "relativeMountPath": "elsewhere",
                },
            ]
        },
    }
    request = launch_request(job_spec("ok", extra=extra), c)
    result = await backend.start_job(request)
    assert result.layout.stdouterr is not None and result.layout.stdouterr.share == "data"
    assert any("otheracct" in note for note in result.notes)
    assert (await wait_for(backend, request.job_id)).exit_code == 0
    out = json.loads(await read_text(backend_share(backend), log_loc(result, "stdout.txt")))
    env = out["env"]  # written through the job's link to the share: the bot read it from there
    assert env["AZ_BATCHAI_STDOUTERR_DIR"].startswith(env["AZ_BATCHAI_JOB_MOUNT_ROOT"] + "/logs/")


async def test_a_container_job_runs_under_docker_on_the_node(
    rig: AzureRig, backend: AzureBackend
) -> None:
    c = gpu_cluster("boxed", "Standard_NC4as_T4_v3", 1)
    await backend.create_cluster(c)
    image = {"containerSettings": {"imageSourceRegistry": {"image": "pytorch/pytorch:2.3"}}}
    request = launch_request(job_spec("ok", extra=image), c)
    result = await backend.start_job(request)
    assert (await wait_for(backend, request.job_id)).exit_code == 0
    out = json.loads(await read_text(backend_share(backend), log_loc(result, "stdout.txt")))
    assert out["task"] == "0" and out["argv"] == ["ok"]
    # The docker stand-in keeps its containers where it runs (the job's working directory).
    temp = Path(rig.config.job_temp_root)
    containers = [p.name for p in temp.glob(f"*-{request.job_id}/wd/run/fake-docker/*.pgid")]
    assert containers == [f"job-{request.job_id}-rank-0.pgid"]
