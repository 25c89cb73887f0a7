"""The scale set's custom data: cloud-init that installs cifs-utils and prepares the share mounts.

It holds no secret (custom data is readable from the scale-set model): the mount entries name a
credentials file that the setup extension writes from its protected settings.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence

from services.backends.azure.node import NodeMount

MAX_CUSTOM_DATA = 65535
_FSTAB_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")


def cloud_config(
    *, host: str, account: str, mounts: Sequence[NodeMount], dirs: Sequence[str]
) -> str:
    """`#cloud-config` as JSON (YAML's subset): no quoting surprises in paths. Each entry becomes
    an /etc/fstab line, so a field with blanks or control characters is refused, not written."""
    cred = f"credentials=/etc/smbcredentials/{account}.cred,_netdev,nofail"
    entries = [[f"//{host}/{m.share}", m.path, "cifs", f"{m.options},{cred}"] for m in mounts]
    for entry in entries:
        if any(_FSTAB_UNSAFE.search(part) for part in entry):
            raise ValueError(f"fstab field {entry[:2]!r} holds a blank or a control character")
    config = {
        "package_update": True,
        "packages": ["cifs-utils", "python3"],
        "mounts": [[*entry, "0", "0"] for entry in entries],
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
