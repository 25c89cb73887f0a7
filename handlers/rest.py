"""Resources shaped as the 2018-05-01 Batch AI REST model, flattened as the Python SDK printed them.

`az batchai … -o json` printed the SDK's model objects: `properties` flattened into the resource
(the spec marks it `x-ms-client-flatten`), camelCase keys, every key of the model present and
`null` when absent, secrets (account keys, passwords, secret values) `null`. Ids are the ARM path
below the subscription, which the local backend does not have.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final, cast

from services.jobspec.values import map_secrets
from services.models import (
    Cluster,
    ClusterView,
    ExperimentView,
    FileServer,
    Job,
    ShareMount,
    Usage,
    WorkspaceView,
)

PROVIDER: Final = "providers/Microsoft.BatchAI"
_JOB_PROPERTIES: Final = (
    "schedulingPriority",
    "cluster",
    "mountVolumes",
    "nodeCount",
    "containerSettings",
    "toolType",
    "cntkSettings",
    "pyTorchSettings",
    "tensorFlowSettings",
    "caffeSettings",
    "caffe2Settings",
    "chainerSettings",
    "customToolkitSettings",
    "customMpiSettings",
    "horovodSettings",
    "jobPreparation",
    "jobOutputDirectoryPathSegment",
    "stdOutErrPathPrefix",
    "inputDirectories",
    "outputDirectories",
    "environmentVariables",
    "secrets",
    "constraints",
    "creationTime",
    "provisioningState",
    "provisioningStateTransitionTime",
    "executionState",
    "executionStateTransitionTime",
    "executionInfo",
)
# Batch AI's executionState had five values; the bot's extra states end or wait as these did.
_EXECUTION_STATE: Final = {
    "pending_approval": "queued",
    "queued": "queued",
    "preparing": "running",
    "running": "running",
    "terminating": "terminating",
    "succeeded": "succeeded",
    "failed": "failed",
    "terminated": "failed",
    "denied": "failed",
    "expired": "failed",
}
_PROVISIONING: Final = {"creating": "creating", "deleting": "deleting", "failed": "failed"}


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def _timespan(value: timedelta) -> str:
    """A duration as Batch AI printed one (.NET TimeSpan): `7.00:00:00`, `01:30:00`."""
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}.{clock}" if days else clock


def _workspace_path(resource_group: str, workspace: str) -> str:
    return f"/resourceGroups/{resource_group}/{PROVIDER}/workspaces/{workspace}"


def cluster_id(cluster: Cluster) -> str:
    """The cluster's ARM path (below the subscription)."""
    return f"{_workspace_path(cluster.resource_group, cluster.workspace)}/clusters/{cluster.name}"


def workspace_resource(view: WorkspaceView) -> dict[str, Any]:
    """A workspace as `az batchai workspace show -o json` printed it (2018-05-01 Workspace).
    It entered its one provisioning state, succeeded, when it was created."""
    w = view.workspace
    return {
        "id": _workspace_path(w.resource_group, w.name),
        "name": w.name,
        "type": "Microsoft.BatchAI/workspaces",
        "location": w.location,
        "tags": None,
        "resourceGroup": w.resource_group,
        "creationTime": _iso(w.created_at),
        "provisioningState": "succeeded",
        "provisioningStateTransitionTime": _iso(w.created_at),
    }


def experiment_resource(view: ExperimentView) -> dict[str, Any]:
    """An experiment as `az batchai experiment show -o json` printed it (2018-05-01 Experiment,
    a proxy resource: no location or tags)."""
    e = view.experiment
    return {
        "id": f"{_workspace_path(e.resource_group, e.workspace)}/experiments/{e.name}",
        "name": e.name,
        "type": "Microsoft.BatchAI/workspaces/experiments",
        "resourceGroup": e.resource_group,
        "creationTime": _iso(e.created_at),
        "provisioningState": "succeeded",
        "provisioningStateTransitionTime": _iso(e.created_at),
    }


def _errors(message: str | None) -> list[dict[str, Any]] | None:
    return None if not message else [{"code": None, "message": message, "details": None}]


def _credentials() -> dict[str, Any]:
    return {"accountKey": None, "accountKeySecretReference": None}


def _share(mount: ShareMount, account: str | None) -> dict[str, Any]:
    name = mount.account or account
    return {
        "accountName": name,
        "azureFileUrl": None
        if name is None
        else f"https://{name}.file.core.windows.net/{mount.share}",
        "credentials": _credentials(),
        "relativeMountPath": mount.mount_path,
        "fileMode": "0777",
        "directoryMode": "0777",
    }


def _container(mount: ShareMount, account: str | None) -> dict[str, Any]:
    return {
        "accountName": mount.account or account,
        "containerName": mount.share,
        "credentials": _credentials(),
        "relativeMountPath": mount.mount_path,
        "mountOptions": None,
    }


def file_server_id(resource_group: str, workspace: str, name: str) -> str:
    """A file server's ARM path (below the subscription)."""
    return f"{_workspace_path(resource_group, workspace)}/fileServers/{name}"


def _file_server_ref(mount: ShareMount, cluster: Cluster) -> dict[str, Any]:
    return {
        "fileServer": {
            "id": file_server_id(cluster.resource_group, cluster.workspace, mount.share)
        },
        "sourceDirectory": None,
        "relativeMountPath": mount.mount_path,
        "mountOptions": None,
    }


def _mount_volumes(c: Cluster, account: str | None) -> dict[str, Any] | None:
    """The cluster's nodeSetup.mountVolumes: each list null when empty, as the SDK printed it."""
    if not c.mounts:
        return None
    shares = [_share(m, account) for m in c.mounts if m.kind == "afs"]
    blobs = [_container(m, account) for m in c.mounts if m.kind == "bfs"]
    servers = [_file_server_ref(m, c) for m in c.mounts if m.kind == "nfs"]
    return {
        "azureFileShares": shares or None,
        "azureBlobFileSystems": blobs or None,
        "fileServers": servers or None,
        "unmanagedFileSystems": None,
    }


def file_server_resource(fs: FileServer) -> dict[str, Any]:
    """A file server as `az batchai file-server show -o json` printed it (2018-05-01)."""
    local = fs.address is not None and fs.address.startswith("/")
    return {
        "id": file_server_id(fs.resource_group, fs.workspace, fs.name),
        "name": fs.name,
        "type": "Microsoft.BatchAI/workspaces/fileservers",
        "resourceGroup": fs.resource_group,
        "vmSize": fs.vm_size,
        "sshConfiguration": {
            "publicIPsToAllow": None,
            "userAccountSettings": {
                "adminUserName": fs.admin_user,
                "adminUserSshPublicKey": None,
                "adminUserPassword": None,
            },
        },
        "dataDisks": {
            "diskSizeInGB": fs.disk_size_gb,
            "cachingType": "none",
            "diskCount": fs.disk_count,
            "storageAccountType": fs.storage_sku,
        },
        "subnet": None,
        "mountSettings": {
            "mountPoint": fs.export,
            "fileServerPublicIP": None,
            "fileServerInternalIP": None if local else fs.address,
        },
        "provisioningStateTransitionTime": None,
        "creationTime": _iso(fs.created_at),
        "provisioningState": fs.state,
    }


def _image(image: str) -> dict[str, Any] | None:
    parts = image.split(":")
    if len(parts) != 4:  # an alias (UbuntuLTS): the backend picks the image
        return None
    publisher, offer, sku, version = parts
    return {
        "imageReference": {
            "publisher": publisher,
            "offer": offer,
            "sku": sku,
            "version": version,
            "virtualMachineImageId": None,
        }
    }


def usage_resource(usage: Usage) -> dict[str, Any]:
    """A Usage of 2018-05-01 (`list-usages`), as the SDK serialised it."""
    return {
        "unit": "Count",
        "currentValue": usage.current,
        "limit": usage.limit,
        "name": {"value": usage.name, "localizedValue": usage.localized_name},
    }


def cluster_resource(view: ClusterView, *, account: str | None = None) -> dict[str, Any]:
    """A cluster as `az batchai cluster show -o json` printed it."""
    c, n = view.cluster, view.counts
    scale: dict[str, Any] = (
        {
            "manual": None,
            "autoScale": {
                "minimumNodeCount": c.min_nodes,
                "maximumNodeCount": c.max_nodes,
                "initialNodeCount": c.target_nodes,
            },
        }
        if c.autoscale
        else {
            "manual": {"targetNodeCount": c.target_nodes, "nodeDeallocationOption": "requeue"},
            "autoScale": None,
        }
    )
    mounts = _mount_volumes(c, account or view.storage_account)
    setup_task = None
    if c.setup_task:
        setup_task = {
            "commandLine": c.setup_task,
            "environmentVariables": [{"name": n, "value": v} for n, v in c.setup_task_env] or None,
            # A secret's value is never shown: its name, and null (as Batch AI answered).
            "secrets": [
                {"name": n, "value": None, "valueSecretReference": None}
                for n, _ in c.setup_task_secrets
            ]
            or None,
            "stdOutErrPathPrefix": c.setup_task_output,
            "stdOutErrPathSuffix": c.setup_task_suffix,
        }
    node_setup = None
    if mounts is not None or setup_task is not None:
        node_setup = {
            "setupTask": setup_task,
            "mountVolumes": mounts,
            "performanceCountersSettings": None,
        }
    state = c.state.value
    return {
        "id": cluster_id(c),
        "name": c.name,
        "type": "Microsoft.BatchAI/workspaces/clusters",
        "resourceGroup": c.resource_group,
        "vmSize": c.vm_size,
        "vmPriority": c.vm_priority,
        "scaleSettings": scale,
        "virtualMachineConfiguration": _image(c.image),
        "nodeSetup": node_setup,
        "userAccountSettings": {
            "adminUserName": c.admin_user,
            "adminUserSshPublicKey": None,
            "adminUserPassword": None,
        },
        "subnet": None,
        "creationTime": _iso(c.created_at),
        "provisioningState": _PROVISIONING.get(state, "succeeded"),
        "provisioningStateTransitionTime": None,
        "allocationState": "steady" if state == "steady" else "resizing",
        "allocationStateTransitionTime": None,
        "errors": _errors(c.error),
        "currentNodeCount": n.total,
        "nodeStateCounts": {
            "idleNodeCount": n.idle,
            "runningNodeCount": n.running,
            "preparingNodeCount": n.preparing,
            "unusableNodeCount": n.unusable,
            "leavingNodeCount": n.leaving,
        },
    }


def _spec_properties(job: Job) -> dict[str, Any]:
    """The job.json's own properties, every secret value null."""
    try:
        data = json.loads(job.spec_json)
    except ValueError:
        return {}
    props = data.get("properties") if isinstance(data, dict) else None
    if not isinstance(props, dict):
        return {}
    # Batch AI answered a secret with null, so the change returns None where a str was.
    cleaned: dict[str, Any] = map_secrets(props, cast(Callable[[str], str], lambda _: None))
    return _nulled(cleaned)


def _nulled(value: dict[str, Any]) -> dict[str, Any]:
    """Empty lists (the loader's defaults for what the file left out) as null, at every level."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = _nulled(item)
        elif isinstance(item, list):
            item = [_nulled(x) if isinstance(x, dict) else x for x in item] or None
        out[key] = item
    return out


def job_resource(job: Job) -> dict[str, Any]:
    """A job as `az batchai job show -o json` printed it: its properties echoed back."""
    props = _spec_properties(job)
    path = _workspace_path(job.resource_group, job.workspace)
    given = {key: props.get(key) for key in _JOB_PROPERTIES}
    constraints = dict(props.get("constraints") or {})
    constraints["maxWallClockTime"] = _timespan(job.max_wall_clock)
    given.update(
        cluster={"id": f"{path}/clusters/{job.cluster}"},
        nodeCount=job.node_count,
        toolType=props.get("toolType") or job.toolkit,
        constraints=constraints,
        creationTime=_iso(job.created_at),
        provisioningState="succeeded",
        executionState=_EXECUTION_STATE.get(job.state.value, "failed"),
        executionInfo={
            "startTime": _iso(job.started_at),
            "endTime": _iso(job.ended_at),
            "exitCode": job.exit_code,
            "errors": _errors(job.error),
        },
    )
    return {
        "id": f"{path}/experiments/{job.experiment}/jobs/{job.name}",
        "name": job.name,
        "type": "Microsoft.BatchAI/workspaces/experiments/jobs",
        "resourceGroup": job.resource_group,
        **given,
    }


def file_resource(
    name: str, *, directory: bool, size: int | None, url: str | None, modified: Any
) -> dict[str, Any]:
    """One entry of `az batchai job file list -o json`."""
    return {
        "name": name,
        "fileType": "directory" if directory else "file",
        "downloadUrl": url,
        "lastModified": _iso(modified),
        "contentLength": size,
    }
