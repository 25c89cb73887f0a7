"""The scale set's custom data: cloud-init that installs the mount tools and writes the mounts.

It holds no secret (custom data is readable from the scale-set model): a share's entry names a
credentials file, a blob container's (blobfuse2) names its config file, both written root-only
by the setup extension from its protected settings; a file server needs no credential.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence

from services.backends.azure.node import NFS_OPTIONS, BlobMount, NfsMount, NodeMount

MAX_CUSTOM_DATA = 65535
_FSTAB_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")


def cloud_config(
    *,
    host: str,
    account: str,
    mounts: Sequence[NodeMount],
    dirs: Sequence[str],
    blobs: Sequence[BlobMount] = (),
    servers: Sequence[NfsMount] = (),
) -> str:
    """`#cloud-config` as JSON (YAML's subset): no quoting surprises in paths. Each entry becomes
    an /etc/fstab line, so a field with blanks or control characters is refused, not written."""
    entries = []
    for m in mounts:
        cred = f"credentials=/etc/smbcredentials/{m.account or account}.cred,_netdev,nofail"
        entries.append([f"//{m.host or host}/{m.share}", m.path, "cifs", f"{m.options},{cred}"])
    # blobfuse2's fstab form: the options name the config file, which holds the key.
    entries += [
        ["blobfuse2", b.path, "fuse3", f"defaults,_netdev,nofail,--config-file={b.config_file}"]
        for b in blobs
    ]
    entries += [[n.source, n.path, "nfs", NFS_OPTIONS] for n in servers]
    for entry in entries:
        if any(_FSTAB_UNSAFE.search(part) for part in entry):
            raise ValueError(f"fstab field {entry[:2]!r} holds a blank or a control character")
    packages = ["cifs-utils", "python3"]
    packages += ["fuse3"] if blobs else []
    packages += ["nfs-common"] if servers else []
    paths = [m.path for m in mounts] + [b.path for b in blobs] + [n.path for n in servers]
    config = {
        "package_update": True,
        "packages": packages,
        "mounts": [[*entry, "0", "0"] for entry in entries],
        "runcmd": [["mkdir", "-p", *paths, *dirs]],
    }
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def custom_data(
    *,
    host: str,
    account: str,
    mounts: Sequence[NodeMount],
    dirs: Sequence[str],
    blobs: Sequence[BlobMount] = (),
    servers: Sequence[NfsMount] = (),
) -> str:
    """Base64 custom data for the scale-set model."""
    text = cloud_config(
        host=host, account=account, mounts=mounts, dirs=dirs, blobs=blobs, servers=servers
    )
    if len(text.encode()) > MAX_CUSTOM_DATA:
        raise ValueError("custom data exceeds 64 KiB")
    return base64.b64encode(text.encode()).decode()
