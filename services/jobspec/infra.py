"""Pydantic models of Batch AI cluster.json and file-server (NFS) JSON."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, Strict, field_validator, model_validator

from services.jobspec.base import (
    MAX_NODES,
    EnvironmentVariable,
    KeyVaultSecretReference,
    MountVolumes,
    NonEmpty,
    ResourceId,
    SecretVariable,
    SpecDocument,
    SpecModel,
    Str,
    parse_schema_url,
)

# ----------------------------------------------------------------------------- cluster


class ManualScaleSettings(SpecModel):
    target_node_count: Annotated[int, Strict(), Field(ge=0, le=MAX_NODES)] = 0
    node_deallocation_option: Literal["requeue", "terminate", "waitforjobcompletion"] | None = None


class AutoScaleSettings(SpecModel):
    minimum_node_count: Annotated[int, Strict(), Field(ge=0, le=MAX_NODES)]
    maximum_node_count: Annotated[int, Strict(), Field(ge=1, le=MAX_NODES)]
    initial_node_count: Annotated[int, Strict(), Field(ge=0, le=MAX_NODES)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AutoScaleSettings:
        if self.minimum_node_count > self.maximum_node_count:
            raise ValueError("minimumNodeCount must not exceed maximumNodeCount")
        if self.initial_node_count is not None and self.initial_node_count > (
            self.maximum_node_count
        ):
            raise ValueError("initialNodeCount must not exceed maximumNodeCount")
        return self


class ScaleSettings(SpecModel):
    manual: ManualScaleSettings | None = None
    auto_scale: AutoScaleSettings | None = None

    @model_validator(mode="after")
    def _one(self) -> ScaleSettings:
        if (self.manual is None) == (self.auto_scale is None):
            raise ValueError("give exactly one of manual or autoScale")
        return self


class ImageReference(SpecModel):
    publisher: NonEmpty
    offer: NonEmpty
    sku: NonEmpty
    version: Str | None = None
    virtual_machine_image_id: Str | None = None


class VirtualMachineConfiguration(SpecModel):
    image_reference: ImageReference | None = None


class SetupTask(SpecModel):
    command_line: NonEmpty
    std_out_err_path_prefix: NonEmpty
    environment_variables: tuple[EnvironmentVariable, ...] = ()
    secrets: tuple[SecretVariable, ...] = ()
    std_out_err_path_suffix: Str | None = None  # read-only; tolerated in pasted `show` output
    # 2017-09-01-preview: `true` (its examples' value) is what every setup task does since
    # 2018-03-01, run as root; `false` asked for the admin user, which no later API offers.
    run_elevated: bool | None = None

    @field_validator("run_elevated")
    @classmethod
    def _as_root(cls, value: bool | None) -> bool | None:
        if value is False:
            raise ValueError(
                "false is not supported: a setup task runs as root (Batch AI 2018-03-01 and"
                " later); drop the key, or run the user's part with sudo -u <user>"
            )
        return value


class AppInsightsReference(SpecModel):
    component: ResourceId
    instrumentation_key: Str | None = Field(default=None, repr=False)
    instrumentation_key_secret_reference: KeyVaultSecretReference | None = None


class PerformanceCountersSettings(SpecModel):
    app_insights_reference: AppInsightsReference


class NodeSetup(SpecModel):
    setup_task: SetupTask | None = None
    mount_volumes: MountVolumes | None = None
    performance_counters_settings: PerformanceCountersSettings | None = None


class UserAccountSettings(SpecModel):
    # A Linux user name: at most 32 characters (and the store keeps at most 64).
    admin_user_name: Annotated[str, Strict(), Field(min_length=1, max_length=32)]
    admin_user_ssh_public_key: Str | None = None
    admin_user_password: Str | None = Field(default=None, repr=False)


class ClusterProperties(SpecModel):
    """`ClusterBaseProperties`: the body of a cluster.json under "properties"."""

    vm_size: NonEmpty
    vm_priority: Literal["dedicated", "lowpriority"] | None = None
    scale_settings: ScaleSettings | None = None
    virtual_machine_configuration: VirtualMachineConfiguration | None = None
    node_setup: NodeSetup | None = None
    # Required by the 2018-05-01 schema, but the CLI fills it from flags (simple_cluster.json).
    user_account_settings: UserAccountSettings | None = None
    subnet: ResourceId | None = None


class ClusterSpec(SpecDocument):
    """A cluster.json: `{"$schema"?, "location"?, "properties": {...}}`."""

    location: Str | None = None
    properties: ClusterProperties

    @field_validator("schema_url")
    @classmethod
    def _cluster_schema(cls, value: str | None) -> str | None:
        if value is not None and parse_schema_url(value)[1] != "cluster.json":
            raise ValueError("does not name a cluster schema (…/cluster.json)")
        return value


# ----------------------------------------------------------------------------- file server


class DataDisks(SpecModel):
    disk_size_in_gb: Annotated[int, Strict(), Field(ge=1, alias="diskSizeInGB")]
    disk_count: Annotated[int, Strict(), Field(ge=1)]
    storage_account_type: Literal["Standard_LRS", "Premium_LRS"]
    caching_type: Literal["none", "readonly", "readwrite"] | None = None


class SshConfiguration(SpecModel):
    public_ips_to_allow: tuple[Str, ...] | None = Field(default=None, alias="publicIPsToAllow")
    user_account_settings: UserAccountSettings


class FileServerProperties(SpecModel):
    vm_size: NonEmpty
    ssh_configuration: SshConfiguration
    data_disks: DataDisks
    subnet: ResourceId | None = None


class FileServerSpec(SpecDocument):
    """A file-server (NFS) JSON: `{"$schema"?, "location"?, "properties": {...}}`."""

    location: Str | None = None
    properties: FileServerProperties

    @field_validator("schema_url")
    @classmethod
    def _nfs_schema(cls, value: str | None) -> str | None:
        if value is not None and parse_schema_url(value)[1] != "nfs.json":
            raise ValueError("does not name a file-server schema (…/nfs.json)")
        return value


# ----------------------------------------------------------------------------- what is honoured

# Parts of a cluster.json the bot does not honour, with why; each refuses the whole file.
_NOT_BUILT: Final = (
    (
        "nodeSetup.mountVolumes.unmanagedFileSystems",
        "mount commands from a file would run as root on every node, where the storage key is",
    ),
    ("nodeSetup.performanceCountersSettings", "App Insights counters are not collected"),
)


def cluster_parts_not_honoured(spec: ClusterSpec) -> list[str]:
    """One line per part of the file the bot would otherwise drop, naming its JSON path."""
    p = spec.properties
    setup = p.node_setup
    volumes = setup.mount_volumes if setup is not None else None
    present = {
        "nodeSetup.mountVolumes.unmanagedFileSystems": bool(
            volumes and volumes.unmanaged_file_systems
        ),
        "nodeSetup.performanceCountersSettings": bool(
            setup and setup.performance_counters_settings
        ),
    }
    return [f"properties.{path}: {why}" for path, why in _NOT_BUILT if present[path]]
