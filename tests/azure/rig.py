"""The azure rig: the fake ARM (TLS) and fake Files servers, and an AzureBackend wired to them.

The fake nodes reach the shares the way SMB mounts would: `<mount_root>/<mount path>` and the
bot's control mount are links to the directories behind the fake Files shares.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from services.backends.azure.backend import AzureBackend
from services.backends.azure.config import AzureConfig
from services.backends.azure.files import AzureShare, FilesRetry
from tests.fakes.arm import FakeArm, FakeCredential
from tests.fakes.arm.server import SHIM_DIR
from tests.fakes.azure_files import FakeAzureFiles

BOT_SHARE = "batchai"  # the bot's own share: node runner, specs, status files
JOB_SHARE = "data"  # the share the contract's clusters mount at "afs"
MOUNT_PATH = "afs"
NO_PAUSE = {"retry_backoff_factor": 0, "jitter": 0}


@dataclass
class AzureRig:
    arm: FakeArm
    files: FakeAzureFiles
    config: AzureConfig
    credential: FakeCredential
    root: Path

    def share(self) -> AzureShare:
        return AzureShare(self.config, retry_policy=FilesRetry(**NO_PAUSE))

    def backend(
        self,
        files: AzureShare,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> AzureBackend:
        """A backend over `files` on the `monotonic` clock; `overrides` replace config fields."""
        config = replace(self.config, **overrides) if overrides else self.config
        return AzureBackend(config, credential=self.credential, share=files, monotonic=monotonic)

    def mount(self, share: str, mount_path: str) -> Path:
        """Make `<mount_root>/<mount_path>` reach `share` on every fake node."""
        link = Path(self.config.mount_root) / mount_path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(self.files.create_share(share), target_is_directory=True)
        return link


def bot_azure_settings(rig: AzureRig) -> dict[str, Any]:
    """The settings that point a whole bot (`running(...)`) at the rig's fake ARM and Files."""
    cfg = rig.config
    return {
        "batchai_backend": "azure",
        "azure_subscription_id": cfg.subscription_id,
        "azure_resource_group": cfg.resource_group,
        "azure_location": cfg.location,
        "azure_subnet_id": cfg.subnet_id,
        "azure_storage_account": cfg.storage_account,
        "azure_storage_key": cfg.storage_key,
        "azure_share": BOT_SHARE,
        "azure_arm_endpoint": cfg.arm_endpoint,
        "azure_storage_endpoint": cfg.storage_endpoint,
        "azure_ca_bundle": cfg.connection_verify,
        "azure_polling_interval": 0,
    }


def rig_config(arm: FakeArm, files: FakeAzureFiles, root: Path) -> AzureConfig:
    return AzureConfig(
        subscription_id=arm.subscription,
        resource_group=arm.resource_group,
        location=arm.location,
        subnet_id=arm.subnet_id,
        storage_account=files.account,
        share=BOT_SHARE,
        storage_key=files.key,
        arm_endpoint=arm.base_url,
        storage_endpoint=files.account_url,
        connection_verify=arm.ca_path,
        polling_interval=0,
        mount_root=str(root / "mounts"),
        control_mount=str(root / "control"),
        share_mount_root=str(root / "shares"),
        job_temp_root=str(root / "jobtemp"),
        node_python=sys.executable,
        # Jobs run as the test's own user here (the interpreter may sit where no other user can
        # reach it); tests/security runs them as an unprivileged uid.
        job_gid=None,
        # The nodes' own tools (docker, systemctl …) are the fake's stand-ins.
        node_path=f"{SHIM_DIR}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        grace_seconds=0.5,
        heartbeat_seconds=0.5,
        poll_cache_seconds=0.2,
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test@rig",
    )


@asynccontextmanager
async def azure_rig(tmp_path: Path) -> AsyncIterator[AzureRig]:
    root = tmp_path / "azure"
    async with FakeArm(root / "nodes") as arm, FakeAzureFiles(root / "files") as files:
        config = rig_config(arm, files, root)
        control = Path(config.control_mount)
        control.parent.mkdir(parents=True, exist_ok=True)
        control.symlink_to(files.create_share(BOT_SHARE), target_is_directory=True)
        # Azure's GPU sizes come with working GPUs: the fake nodes get a healthy driver (a test
        # gives another with `arm.give_gpus(mode=...)`, the newest rule wins).
        arm.give_gpus()
        rig = AzureRig(arm, files, config, FakeCredential(), root)
        rig.mount(JOB_SHARE, MOUNT_PATH)
        shares = Path(config.share_mount_root)  # where nodes mount shares of job mountVolumes
        shares.mkdir(parents=True, exist_ok=True)
        (shares / JOB_SHARE).symlink_to(files.create_share(JOB_SHARE), target_is_directory=True)
        yield rig
