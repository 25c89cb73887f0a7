"""The scale set's model that ARM is sent: images (Gen1/Gen2, GPU and InfiniBand routes), admin
user and SSH key, Spot, custom data (cloud-init) and the setup extension that mounts the shares."""

from __future__ import annotations

import re
from typing import Any

from services.backends.azure import cloudinit, node
from services.backends.azure.config import AzureConfig
from services.backends.azure.sizes import SkuInfo
from services.clusters import setuptask
from services.clusters.names import DISALLOWED_ADMIN_NAMES, check_cluster_name
from services.core.errors import UserError
from services.models import Cluster

SETUP_EXTENSION = "batchai-setup"
IMAGES = {
    "ubuntults": "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest",
    "ubuntuhpc": "microsoft-dsvm:ubuntu-hpc:2204:latest",
    "ubuntudsvm": "microsoft-dsvm:ubuntu-2204:2204-gen2:latest",
}
# The Gen1 image of an alias, for sizes whose HyperVGenerations lack V2 (None: Gen2 only).
GEN1_IMAGES: dict[str, str | None] = {
    "ubuntults": "Canonical:0001-com-ubuntu-server-jammy:22_04-lts:latest",
    "ubuntuhpc": None,
    "ubuntudsvm": "microsoft-dsvm:ubuntu-2204:2204:latest",
}
_RESERVED_USERS = DISALLOWED_ADMIN_NAMES


def _alias(image: str) -> str:
    return image.replace("-", "").replace("_", "").lower()


# Images that ship the NVIDIA driver, CUDA and the InfiniBand (OFED) driver: on them no driver
# route is added. UbuntuLTS (plain Ubuntu) has none, so on GPU and InfiniBand sizes it means
# UbuntuHPC (a first-party image: no `plan` block); the NvidiaGpuDriverLinux extension's CUDA
# route covers Ubuntu 20.04 only, and ubuntu-drivers would need a reboot the setup extension
# must not do.
DRIVER_IMAGES = frozenset({"ubuntuhpc", "ubuntudsvm"})
_AMD = re.compile(r"MI\d{3}X", re.IGNORECASE)


def ships_drivers(image: str) -> bool:
    """The image brings the GPU and InfiniBand drivers itself (no driver route is added)."""
    return _alias(image) in DRIVER_IMAGES


def node_image(image: str, sku: SkuInfo | None) -> str:
    """The image a cluster's nodes boot: `image`, except that the driverless UbuntuLTS becomes
    UbuntuHPC on GPU and InfiniBand sizes; AMD GPU sizes need an image given as a URN."""
    if sku is None:
        return image
    alias = _alias(image)
    if _AMD.search(sku.name) and alias in IMAGES:
        raise UserError(
            f"{sku.name} has AMD GPUs: {image} carries no ROCm driver; give an image with ROCm "
            "as publisher:offer:sku:version"
        )
    if alias == "ubuntults" and (sku.gpus > 0 or sku.rdma):
        return "UbuntuHPC"
    return image


def image_reference(image: str, sku: SkuInfo | None = None) -> dict[str, str]:
    """An alias (UbuntuLTS, UbuntuHPC) or a full URN publisher:offer:sku:version; for a size
    that boots only Gen1 (HyperVGenerations without V2) the alias's Gen1 image, or a one-line
    refusal when there is none."""
    urn = IMAGES.get(_alias(image), image)
    if sku is not None and "V2" not in sku.generations:
        if _alias(image) in GEN1_IMAGES:
            gen1 = GEN1_IMAGES[_alias(image)]
            if gen1 is None:
                raise UserError(
                    f"{sku.name} boots only Generation 1 images and {image} is Generation 2 "
                    "only; use UbuntuLTS or a size with HyperVGenerations V2"
                )
            urn = gen1
        elif "gen2" in urn.lower():
            raise UserError(f"{sku.name} boots only Generation 1 images; {image} is a Gen2 image")
    parts = urn.split(":")
    if len(parts) != 4 or not all(parts):
        aliases = "UbuntuLTS, UbuntuHPC, UbuntuDSVM"
        raise UserError(
            f"image {image!r} is neither an alias ({aliases}) nor a publisher:offer:sku:version URN"
        )
    return dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))


def os_disk_type(sku: SkuInfo | None) -> str:
    """Premium SSD where the size has the PremiumIO capability, else Standard SSD."""
    return "Premium_LRS" if sku is None or sku.premium_io else "StandardSSD_LRS"


def admin_name(wanted: str | None, default: str) -> str:
    """A Linux admin user name Azure accepts (lower case, no reserved name), else `default`."""
    name = re.sub(r"[^a-z0-9_-]", "", (wanted or "").lower())[:32]
    if not name or not name[0].isalpha() or name in _RESERVED_USERS:
        return default
    return name


def ssh_key(cfg: AzureConfig) -> str:
    """The configured public key, or a throwaway one nobody holds (the nodes are reached by run
    command then)."""
    if cfg.ssh_public_key:
        return cfg.ssh_public_key.strip()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " batchai-bot-unused"


def node_mounts(cfg: AzureConfig, cluster: Cluster) -> list[node.NodeMount]:
    """The bot's share at the control mount (root only), then the cluster's shares below the
    mount root (owned by the jobs' uid)."""
    root = cfg.mount_root.rstrip("/")
    options = job_share_options(cfg)
    mounts = [node.NodeMount(cfg.share, cfg.control_mount)]
    for m in cluster.mounts:
        if m.kind != "afs" or (m.account is None and m.share == cfg.share):
            continue
        host = None if m.account is None else f"{m.account}.file.{cfg.storage_suffix}"
        mounts.append(node.NodeMount(m.share, f"{root}/{m.mount_path}", options, m.account, host))
    return mounts


def other_keys(cfg: AzureConfig, cluster: Cluster) -> dict[str, str]:
    """The keys of the other storage accounts the cluster mounts; refused without one (the
    bot holds the key of its own account only)."""
    keys: dict[str, str] = {}
    for m in cluster.mounts:
        if m.kind == "nfs" or m.account is None or m.account == cfg.storage_account:
            continue
        if not m.account_key:
            raise UserError(
                f"{m.share} of storage account {m.account}: the azure backend needs its key "
                "(--storage-account-key, or credentials.accountKey in the file); it holds the "
                "key of its own account only"
            )
        keys[m.account] = m.account_key
    return keys


def blob_mounts(cfg: AzureConfig, cluster: Cluster) -> list[node.BlobMount]:
    """The cluster's blob containers below the mount root (blobfuse2)."""
    root = cfg.mount_root.rstrip("/")
    keys = other_keys(cfg, cluster)
    return [
        node.BlobMount(
            account=m.account or cfg.storage_account,
            container=m.share,
            path=f"{root}/{m.mount_path}",
            endpoint=f"https://{m.account or cfg.storage_account}.blob.{cfg.storage_suffix}",
            key=keys.get(m.account, "") if m.account else cfg.storage_key,
        )
        for m in cluster.mounts
        if m.kind == "bfs"
    ]


def nfs_mounts(cfg: AzureConfig, cluster: Cluster) -> list[node.NfsMount]:
    """The cluster's file servers below the mount root, by their VMs' host names."""
    root = cfg.mount_root.rstrip("/")
    return [
        node.NfsMount(node.server_host(m.share), node.NFS_EXPORT, f"{root}/{m.mount_path}")
        for m in cluster.mounts
        if m.kind == "nfs"
    ]


def job_share_options(cfg: AzureConfig) -> str:
    return node.share_options(0 if cfg.job_gid is None else cfg.job_gid)


def scale_set_model(
    cfg: AzureConfig, cluster: Cluster, sku: SkuInfo | None = None
) -> dict[str, Any]:
    """The scale set as ARM JSON, its disk type and image generation chosen from the size's
    capabilities. It holds no secret: the key goes in protectedSettings."""
    check_cluster_name(cluster.name)
    user = admin_name(cluster.admin_user, cfg.admin_user)
    mounts = node_mounts(cfg, cluster)
    blobs, servers = blob_mounts(cfg, cluster), nfs_mounts(cfg, cluster)
    logs = setuptask.logs_of(cluster)  # on one of the cluster's shares
    setup = node.setup_script(
        host=cfg.smb_host,
        account=cfg.storage_account,
        key=cfg.storage_key,
        mounts=mounts,
        mount_root=cfg.mount_root,
        setup_task=cluster.setup_task,
        setup_logs=logs.node_dir(cfg.mount_root) if logs is not None else None,
        setup_env=setuptask.task_env(cluster),
        health_check=node.health_lines(
            cluster=cluster.name,
            gpus=sku.gpus if sku is not None else 0,
            mounts=[m.path for m in mounts],
            control=cfg.control_mount,
        ),
        other_keys=other_keys(cfg, cluster),
        blobs=blobs,
        servers=servers,
    )
    linux: dict[str, Any] = {
        "disablePasswordAuthentication": cfg.admin_password is None,
        "ssh": {
            "publicKeys": [{"path": f"/home/{user}/.ssh/authorized_keys", "keyData": ssh_key(cfg)}]
        },
        "provisionVMAgent": True,
    }
    os_profile: dict[str, Any] = {
        "computerNamePrefix": re.sub(r"[^A-Za-z0-9-]", "", cluster.name)[:15] or "node",
        "adminUsername": user,
        "linuxConfiguration": linux,
        "customData": cloudinit.custom_data(
            host=cfg.smb_host,
            account=cfg.storage_account,
            mounts=mounts,
            dirs=[cfg.job_temp_root],
            blobs=blobs,
            servers=servers,
        ),
    }
    if cfg.admin_password is not None:
        os_profile["adminPassword"] = cfg.admin_password
    profile: dict[str, Any] = {
        "osProfile": os_profile,
        "storageProfile": {
            "imageReference": image_reference(node_image(cluster.image, sku), sku),
            "osDisk": {
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": {"storageAccountType": os_disk_type(sku)},
            },
        },
        "networkProfile": {
            "networkInterfaceConfigurations": [
                {
                    "name": f"{cluster.name}-nic",
                    "properties": {
                        "primary": True,
                        "ipConfigurations": [
                            {
                                "name": "ipconfig",
                                "properties": {"subnet": {"id": cfg.subnet_id}},
                            }
                        ],
                    },
                }
            ]
        },
        "extensionProfile": {
            "extensions": [
                {
                    "name": SETUP_EXTENSION,
                    "properties": {
                        "publisher": "Microsoft.Azure.Extensions",
                        "type": "CustomScript",
                        "typeHandlerVersion": "2.1",
                        "autoUpgradeMinorVersion": True,
                        "settings": {},
                        "protectedSettings": {"commandToExecute": node.wrap(setup)},
                    },
                }
            ]
        },
    }
    if cluster.vm_priority == "lowpriority":
        profile.update(
            {"priority": "Spot", "evictionPolicy": "Delete", "billingProfile": {"maxPrice": -1}}
        )
    return {
        "location": cfg.location,
        "tags": {"batchai-bot": "cluster", "workspace": cluster.workspace},
        "sku": {"name": cluster.vm_size, "tier": "Standard", "capacity": cluster.target_nodes},
        "properties": {
            "orchestrationMode": "Uniform",
            "overprovision": False,
            "singlePlacementGroup": cluster.max_nodes <= 100,
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": profile,
        },
    }
