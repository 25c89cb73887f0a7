"""What `cluster create -f/-c` and `file-server create -c` refuse in a file, beyond its shape.

Pure (no store, backend or event loop), so `batchai-bot validate` runs the same checks the
create commands run, and answers one line per problem with its JSON path. The shape itself
(keys, types, `scaleSettings` with exactly one of manual/autoScale, …) is services/jobspec's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Final

from services.clusters import mounts, setuptask
from services.clusters.names import check_admin_name
from services.core.errors import UserError
from services.jobspec import ClusterSpec, FileServerSpec, cluster_parts_not_honoured
from services.jobspec.base import MountVolumes
from services.jobspec.infra import SetupTask

VM_SIZE_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{1,63}$")
MAX_DISKS: Final = 63  # what az batchai allowed (one LUN short of the 64 a VM takes)
MAX_DISK_GB: Final = 32767
# Whichever backend: a file's subnet is never used (each create command says it for its backend).
SUBNET_NOT_HONOURED: Final = (
    "the bot places every node itself (the local backend on this machine, in no subnet; the "
    "azure backend in the bot's own subnet, AZURE_SUBNET_ID)"
)
_VOLUMES = "properties.nodeSetup.mountVolumes"


def cluster_file_problems(spec: ClusterSpec) -> list[str]:
    """One line per part of a cluster.json that `cluster create` would refuse."""
    p = spec.properties
    problems = list(cluster_parts_not_honoured(spec))
    if not VM_SIZE_RE.match(p.vm_size):
        problems.append(f"properties.vmSize: {p.vm_size!r} is not a VM size (e.g. Standard_NC6)")
    if p.subnet is not None:
        problems.append(f"properties.subnet: {SUBNET_NOT_HONOURED}")
    if p.user_account_settings is not None:
        problems += _admin(
            "properties.userAccountSettings.adminUserName",
            p.user_account_settings.admin_user_name,
        )
    volumes = p.node_setup.mount_volumes if p.node_setup is not None else None
    if volumes is not None:
        problems += _volume_problems(volumes)
    task = p.node_setup.setup_task if p.node_setup is not None else None
    if task is not None:
        problems += _setup_task_problems(task)
    return problems


def _setup_task_problems(task: SetupTask) -> list[str]:
    """What `cluster create` refuses in nodeSetup.setupTask, whoever gives it (only an admin
    may, and its stdOutErrPathPrefix must be on one of the cluster's Azure File shares, which
    flags may add: both are decided at create)."""
    where = "properties.nodeSetup.setupTask"
    problems = _refused(f"{where}.commandLine", lambda: setuptask.check_command(task.command_line))
    env = [(v.name, v.value) for v in task.environment_variables]
    for pairs, what in ((env, "environmentVariables"), (_names(task), "secrets")):
        try:
            setuptask.check_env(pairs, what)
        except UserError as err:  # it names its path below properties
            problems.append(f"properties.{err}")
    for i, secret in enumerate(task.secrets):
        if secret.value is None:
            problems.append(
                f"{where}.secrets[{i}] ({secret.name}): a Key Vault reference is not resolved "
                "for a setup task; give its value"
            )
    return problems


def _names(task: SetupTask) -> list[tuple[str, str]]:
    return [(s.name, "") for s in task.secrets]


def file_server_file_problems(spec: FileServerSpec) -> list[str]:
    """One line per part of a file-server JSON that `file-server create -c` would refuse."""
    p = spec.properties
    problems = []
    if not VM_SIZE_RE.match(p.vm_size):
        problems.append(f"properties.vmSize: {p.vm_size!r} is not a VM size (e.g. Standard_D2s_v3)")
    disks = p.data_disks
    if not 1 <= disks.disk_count <= MAX_DISKS:
        problems.append(
            f"properties.dataDisks.diskCount: must be from 1 to {MAX_DISKS}, not {disks.disk_count}"
        )
    if not 1 <= disks.disk_size_in_gb <= MAX_DISK_GB:
        problems.append(
            f"properties.dataDisks.diskSizeInGB: must be from 1 to {MAX_DISK_GB} GB, not "
            f"{disks.disk_size_in_gb}"
        )
    problems += _admin(
        "properties.sshConfiguration.userAccountSettings.adminUserName",
        p.ssh_configuration.user_account_settings.admin_user_name,
    )
    if p.subnet is not None:
        problems.append(f"properties.subnet: {SUBNET_NOT_HONOURED}")
    return problems


def _admin(path: str, name: str) -> list[str]:
    return _refused(path, lambda: check_admin_name(name))


def _refused(path: str, check: Callable[[], object]) -> list[str]:
    try:
        check()
    except UserError as err:
        return [f"{path}: {err}"]
    return []


def _entries(volumes: MountVolumes) -> Iterator[tuple[str, MountVolumes]]:
    """Each mount of the file on its own, with its JSON path."""
    for i, share in enumerate(volumes.azure_file_shares):
        yield f"{_VOLUMES}.azureFileShares[{i}]", MountVolumes(azure_file_shares=(share,))
    for i, blob in enumerate(volumes.azure_blob_file_systems):
        yield f"{_VOLUMES}.azureBlobFileSystems[{i}]", MountVolumes(azure_blob_file_systems=(blob,))
    for i, server in enumerate(volumes.file_servers):
        yield f"{_VOLUMES}.fileServers[{i}]", MountVolumes(file_servers=(server,))


def _volume_problems(volumes: MountVolumes) -> list[str]:
    """What `cluster create` refuses in nodeSetup.mountVolumes beyond the shape (which keeps
    the mount paths distinct): the names it mounts (share, container, account, file server).
    The placeholders `<AZURE_BATCHAI_STORAGE_ACCOUNT>`/`_KEY>` stand for the bot's own account
    here, as without --storage-account-name."""
    problems = []
    for path, one in _entries(volumes):
        try:
            found = mounts.from_volumes(one, mounts.MountFlags(), own_account=None)
            mounts.check_mounts(found, frozenset())
        except UserError as err:
            problems.append(f"{path}: {err}")
    return problems
