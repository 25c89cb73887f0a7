"""NFS file servers as Azure VMs, and the auto-storage share and container.

A file server (`az batchai file-server create`) is one VM named `batchai-fs-<name>` in the bot's
subnet with `disk_count` empty managed data disks. Its cloud-init stripes them as RAID 0
(mdadm), formats the array with ext4, mounts it at /mnt/data and exports it over NFS to the
subnet, as Batch AI's file servers did. The VM, its NIC and disks are made with the bot's own
credential (azure-mgmt-compute and -network aio); OS disk, data disks and NIC go with the VM.
Cluster nodes and jobs mount it by the VM's name, which Azure's DNS resolves inside the
virtual network, so no address is needed where the mount is written.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachine
from azure.mgmt.network.aio import NetworkManagementClient
from azure.mgmt.network.models import NetworkInterface
from azure.storage.blob.aio import BlobServiceClient

from services.backends.azure.config import AzureConfig, subnet_parts
from services.backends.azure.errors import azure_errors
from services.backends.azure.node import server_host
from services.backends.azure.scaleset_model import admin_name, image_reference, ssh_key
from services.core.errors import BackendError, NotFound
from services.models import FileServer

log = logging.getLogger(__name__)

RAID_DEVICE = "/dev/md0"
CIDR_RE = re.compile(r"[0-9a-fA-F:.]+/[0-9]{1,3}")  # what may go into /etc/exports


def nfs_cloud_config(*, disks: int, export: str, client_ranges: Sequence[str]) -> str:
    """cloud-init of the server: RAID 0 over the data disks (LUNs 0..disks-1), ext4, NFS export
    to the address ranges of the bot's subnet only. Idempotent on reboot: an array or file
    system that exists is kept."""
    if not client_ranges or not all(CIDR_RE.fullmatch(r) for r in client_ranges):
        raise BackendError(f"the subnet's address ranges {list(client_ranges)} are not CIDRs")
    clients = " ".join(f"{r}(rw,sync,no_subtree_check,root_squash)" for r in client_ranges)
    luns = " ".join(f"/dev/disk/azure/scsi1/lun{i}" for i in range(disks))
    # One disk needs no array: it is formatted as it is.
    device = RAID_DEVICE if disks > 1 else luns
    make = (
        [f"  mdadm --create {RAID_DEVICE} --run --level=0 --raid-devices={disks} {luns}"]
        if disks > 1
        else []
    )
    script = "\n".join(
        [
            "set -eu",
            f"for d in {luns}; do while [ ! -e $d ]; do sleep 2; done; done",
            "if ! blkid -L batchai-nfs >/dev/null 2>&1; then",
            *make,
            f"  mkfs.ext4 -F -L batchai-nfs {device}",
            "fi",
            f"mkdir -p {export}",
            f"grep -qs ' {export} ' /etc/fstab || echo 'LABEL=batchai-nfs {export} ext4 "
            "defaults,nofail 0 2' >> /etc/fstab",
            f"mountpoint -q {export} || mount {export}",
            f"chmod 0777 {export}",
            f"grep -qs '^{export} ' /etc/exports || echo '{export} {clients}' >> /etc/exports",
            "exportfs -ra",
            "systemctl enable --now nfs-kernel-server",
        ]
    )
    config = {
        "package_update": True,
        "packages": ["mdadm", "nfs-kernel-server"],
        "write_files": [
            {"path": "/etc/batchai/nfs-setup.sh", "permissions": "0700", "content": script + "\n"}
        ],
        "runcmd": [["bash", "/etc/batchai/nfs-setup.sh"]],
    }
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def server_model(
    cfg: AzureConfig, server: FileServer, nic_id: str, client_ranges: Sequence[str]
) -> dict[str, Any]:
    """The file server VM as ARM JSON: no secret in it (SSH key only, or the configured
    password, as for the cluster nodes); it exports to `client_ranges` (the subnet's)."""
    host = server_host(server.name)
    user = admin_name(server.admin_user, cfg.admin_user)
    custom = nfs_cloud_config(
        disks=server.disk_count, export=server.export, client_ranges=client_ranges
    )
    os_profile: dict[str, Any] = {
        "computerName": host,
        "adminUsername": user,
        "customData": base64.b64encode(custom.encode()).decode(),
        "linuxConfiguration": {
            "disablePasswordAuthentication": cfg.admin_password is None,
            "ssh": {
                "publicKeys": [
                    {"path": f"/home/{user}/.ssh/authorized_keys", "keyData": ssh_key(cfg)}
                ]
            },
        },
    }
    if cfg.admin_password is not None:
        os_profile["adminPassword"] = cfg.admin_password
    return {
        "location": cfg.location,
        "tags": {"batchai-file-server": server.name},
        "properties": {
            "hardwareProfile": {"vmSize": server.vm_size},
            "storageProfile": {
                "imageReference": image_reference("UbuntuLTS"),
                "osDisk": {
                    "name": f"{host}-os",
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "managedDisk": {"storageAccountType": "Premium_LRS"},
                    "deleteOption": "Delete",
                },
                "dataDisks": [
                    {
                        "lun": lun,
                        "name": f"{host}-data{lun}",
                        "createOption": "Empty",
                        "diskSizeGB": server.disk_size_gb,
                        "caching": "None",
                        "managedDisk": {"storageAccountType": server.storage_sku},
                        "deleteOption": "Delete",
                    }
                    for lun in range(server.disk_count)
                ],
            },
            "osProfile": os_profile,
            "networkProfile": {
                "networkInterfaces": [
                    {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}
                ]
            },
        },
    }


class AzureFileServers:
    """StorageBackend's Azure half: file server VMs, and the auto-storage share/container."""

    def __init__(
        self,
        config: AzureConfig,
        *,
        compute: ComputeManagementClient,
        network: NetworkManagementClient,
        blobs: BlobServiceClient,
        files: Any,  # the bot's AzureShare: ensure_share(name)
    ) -> None:
        self._config = config
        self._compute = compute
        self._network = network
        self._blobs = blobs
        self._files = files
        self._rg = config.resource_group

    async def ensure_auto_storage(self, share: str, container: str) -> None:
        await self._files.ensure_share(share)
        async with azure_errors(f"create blob container {container}"):
            with contextlib.suppress(ResourceExistsError):  # made before: nothing to do
                await self._blobs.get_container_client(container).create_container()

    async def create_file_server(self, server: FileServer) -> str:
        host = server_host(server.name)
        nic_body = {
            "location": self._config.location,
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "ipconfig",
                        "properties": {
                            "subnet": {"id": self._config.subnet_id},
                            "privateIPAllocationMethod": "Dynamic",
                        },
                    }
                ]
            },
        }
        async with azure_errors(f"create file server {server.name}"):
            ranges = await self._subnet_ranges()
            poller = await self._network.network_interfaces.begin_create_or_update(
                self._rg, f"{host}-nic", NetworkInterface(nic_body)
            )
            nic = await poller.result()
            model = server_model(self._config, server, str(nic.id), ranges)
            vm_poller = await self._compute.virtual_machines.begin_create_or_update(
                self._rg, host, VirtualMachine(model)
            )
            await vm_poller.result()
        configs = (nic.properties.ip_configurations if nic.properties else None) or []
        first = configs[0].properties if configs else None
        address = str(first.private_ip_address or "") if first is not None else ""
        log.info("file server %s: VM %s with %d data disks", server.name, host, server.disk_count)
        return address or host

    async def _subnet_ranges(self) -> list[str]:
        """The address ranges of the bot's subnet: where the nodes mounting a server are."""
        rg, vnet, name = subnet_parts(self._config.subnet_id)
        subnet = await self._network.subnets.get(rg, vnet, name)
        return list(subnet.address_prefixes or []) or (
            [subnet.address_prefix] if subnet.address_prefix else []
        )

    async def delete_file_server(self, server: FileServer) -> None:
        host = server_host(server.name)
        try:  # the VM takes its disks and NIC with it (deleteOption); the NIC is asked again
            async with azure_errors(f"delete file server {server.name}"):
                poller = await self._compute.virtual_machines.begin_delete(self._rg, host)
                await poller.result()
        except NotFound:
            pass  # deleting what is gone succeeds
        async with azure_errors(f"delete the network interface of file server {server.name}"):
            try:
                nic_poller = await self._network.network_interfaces.begin_delete(
                    self._rg, f"{host}-nic"
                )
                await nic_poller.result()
            except ResourceNotFoundError:
                pass
