"""What the azure backend needs to know, resolved from settings by the composition root."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.core.errors import UserError

Cloud = Literal["public", "china", "usgov"]

# ARM endpoint, storage suffix and Key Vault DNS zone of each cloud (azure-identity knows the
# matching authorities).
CLOUDS: dict[str, tuple[str, str, str]] = {
    "public": ("https://management.azure.com", "core.windows.net", "vault.azure.net"),
    "china": ("https://management.chinacloudapi.cn", "core.chinacloudapi.cn", "vault.azure.cn"),
    "usgov": (
        "https://management.usgovcloudapi.net",
        "core.usgovcloudapi.net",
        "vault.usgovcloudapi.net",
    ),
}

# Where Batch AI mounted shares on a node; jobs see it as $AZ_BATCHAI_MOUNT_ROOT.
DEFAULT_MOUNT_ROOT = "/mnt/batch/tasks/shared/LS_root/mounts"
# Where every node mounts the bot's own share: the node runner, job specs and status files.
DEFAULT_CONTROL_MOUNT = "/mnt/batchai-bot"
# Node-local per-job temp directories ($AZ_BATCHAI_JOB_TEMP_DIR), on the VM's resource disk.
DEFAULT_JOB_TEMP_ROOT = "/mnt/batch/tasks/shared/LS_root/jobs"


SUBNET_SHAPE = (
    "AZURE_SUBNET_ID must look like /subscriptions/<id>/resourceGroups/<rg>/providers/"
    "Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>"
)


def subnet_parts(subnet_id: str) -> tuple[str, str, str]:
    """(resource group, virtual network, subnet) of a subnet's resource id; a UserError
    saying the shape when it is not one."""
    parts = subnet_id.strip("/").split("/")
    keys = {parts[i].lower(): parts[i + 1] for i in range(0, len(parts) - 1, 2)}
    rg, vnet, subnet = keys.get("resourcegroups"), keys.get("virtualnetworks"), keys.get("subnets")
    if not (rg and vnet and subnet):
        raise UserError(SUBNET_SHAPE)
    return rg, vnet, subnet


@dataclass(frozen=True)
class AzureConfig:
    subscription_id: str
    resource_group: str
    location: str
    subnet_id: str
    storage_account: str
    share: str  # the bot's own share: job logs, outputs and status files live here
    storage_key: str = field(repr=False)  # never logged, never in a scale-set model
    cloud: Cloud = "public"
    arm_endpoint: str | None = None  # overrides the cloud's
    storage_endpoint_suffix: str | None = None  # overrides the cloud's
    key_vault_suffix: str | None = None  # overrides the cloud's Key Vault DNS zone
    storage_scheme: str = "https"  # tests use http against the fake Files server
    storage_endpoint: str | None = (
        None  # full account URL override (tests: http://127.0.0.1:PORT/acct)
    )
    mount_root: str = DEFAULT_MOUNT_ROOT  # node-side path; tests point it at a directory
    connection_verify: str | bool = True  # a CA bundle path for the fake ARM server in tests
    polling_interval: float = 15.0  # seconds between LRO polls when the server gives no Retry-After
    ssh_public_key: str | None = field(default=None, repr=False)
    admin_user: str = "batchai"  # when the cluster names none
    admin_password: str | None = field(default=None, repr=False)  # only if given; never logged
    control_mount: str = DEFAULT_CONTROL_MOUNT
    share_mount_root: str = "/mnt/batchai-shares"  # shares of job-level mountVolumes, once each
    job_temp_root: str = DEFAULT_JOB_TEMP_ROOT
    node_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # jobs' PATH
    node_python: str = "python3"  # runs the node runner and python jobs on the nodes
    # The group of every job's processes (each job has a uid of its own, see node.job_uid); it
    # may write the job shares' mounts. None (tests only): jobs run as the runner's user.
    job_gid: int | None = 7000
    grace_seconds: float = 10.0  # SIGTERM -> SIGKILL on terminate
    heartbeat_seconds: float = 15.0  # how often a node runner touches its heartbeat file
    gpu_sample_seconds: float = 30.0  # how often a node runner samples nvidia-smi (0: never)
    heartbeat_timeout: float = 600.0  # a node silent this long (and not ended) is lost
    # A synchronous stop run command gets this long (ARM's own limit is 120 s); then the bot moves
    # on and the TERMINATE file stops the runner, so the poll loop never waits on a stuck node.
    stop_timeout: float = 150.0
    launch_grace: float = 300.0  # a started run command has this long to start its runner
    launch_check_seconds: float = 20.0  # ask a run command about its node only after this long
    # ARM reads of a cluster are shared by every status call within this window (a poll cycle,
    # or several: exit codes come from the share at once; ARM only tells of lost nodes).
    poll_cache_seconds: float = 10.0

    @property
    def arm_url(self) -> str:
        return (self.arm_endpoint or CLOUDS[self.cloud][0]).rstrip("/")

    @property
    def credential_scope(self) -> str:
        return f"{self.arm_url}/.default"

    @property
    def storage_suffix(self) -> str:
        return self.storage_endpoint_suffix or CLOUDS[self.cloud][1]

    @property
    def key_vault_dns_suffix(self) -> str:
        """The DNS zone of this cloud's vaults: the only hosts a job's secretUrl may name."""
        return (self.key_vault_suffix or CLOUDS[self.cloud][2]).strip(".").lower()

    @property
    def smb_host(self) -> str:
        """The SMB endpoint the nodes mount (port 445)."""
        return f"{self.storage_account}.file.{self.storage_suffix}"

    @property
    def blob_url(self) -> str:
        """The account's Blob endpoint (the tests' fake serves blobs at the Files URL)."""
        if self.storage_endpoint:
            return self.storage_endpoint.rstrip("/")
        return f"{self.storage_scheme}://{self.storage_account}.blob.{self.storage_suffix}"

    @property
    def account_url(self) -> str:
        if self.storage_endpoint:
            return self.storage_endpoint.rstrip("/")
        return f"{self.storage_scheme}://{self.smb_host}"
