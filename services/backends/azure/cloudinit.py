"""The scale set's custom data: cloud-init that installs cifs-utils and prepares the share mounts.

It holds no secret (custom data is readable from the scale-set model): the mount entries name a
credentials file that the setup extension writes from its protected settings.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from services.backends.azure.node import SMB_OPTIONS, NodeMount

MAX_CUSTOM_DATA = 65535


def cloud_config(
    *, host: str, account: str, mounts: Sequence[NodeMount], dirs: Sequence[str]
) -> str:
    """`#cloud-config` as JSON (YAML's subset): no quoting surprises in paths."""
    options = f"{SMB_OPTIONS},credentials=/etc/smbcredentials/{account}.cred,_netdev,nofail"
    config = {
        "package_update": True,
        "packages": ["cifs-utils", "python3"],
        "mounts": [[f"//{host}/{m.share}", m.path, "cifs", options, "0", "0"] for m in mounts],
        "runcmd": [["mkdir", "-p", *[m.path for m in mounts], *dirs]],
    }
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def custom_data(
    *, host: str, account: str, mounts: Sequence[NodeMount], dirs: Sequence[str]
) -> str:
    """Base64 custom data for the scale-set model."""
    text = cloud_config(host=host, account=account, mounts=mounts, dirs=dirs)
    if len(text.encode()) > MAX_CUSTOM_DATA:
        raise ValueError("custom data exceeds 64 KiB")
    return base64.b64encode(text.encode()).decode()
