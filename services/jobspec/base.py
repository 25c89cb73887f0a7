"""Building blocks of the Batch AI models: base model, scalar checks, durations, shared objects."""

from __future__ import annotations

import posixpath
import re
import shlex
from datetime import timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)
from pydantic.alias_generators import to_camel

ApiVersion = Literal["2017-09-01-preview", "2018-03-01", "2018-05-01"]
API_VERSIONS: Final[tuple[ApiVersion, ...]] = ("2017-09-01-preview", "2018-03-01", "2018-05-01")
OLDEST_API: Final[ApiVersion] = "2017-09-01-preview"

DEFAULT_MAX_WALL_CLOCK: Final = timedelta(days=7)
MAX_NODES: Final = 100  # Batch AI's hard limit per cluster
MAX_PROCESSES: Final = 1024  # our own ceiling: a typo must not fork a million processes
RESERVED_ENV_PREFIX: Final = "AZ_BATCHAI_"
RESERVED_OUTPUT_ID: Final = "stdouterr"  # the id `job file list -d stdouterr` uses for the logs

# ----------------------------------------------------------------------------- scalar types


def _check_args(value: str) -> str:
    # Argument strings are split the POSIX way at launch; refuse at load what cannot be split.
    try:
        shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot be split into arguments: {exc}") from None
    return value


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIR_ID_RE = re.compile(r"[A-Za-z0-9_]+")


def _check_env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(
            "must be an environment variable name (letters, digits, _; no leading digit)"
        )
    if value.upper().startswith(RESERVED_ENV_PREFIX):
        raise ValueError(f"names starting with {RESERVED_ENV_PREFIX} are set by the service")
    return value


def _check_dir_id(value: str) -> str:
    # The id becomes part of an environment variable name (AZ_BATCHAI_INPUT_<id>).
    if not _DIR_ID_RE.fullmatch(value):
        raise ValueError("must use only letters, digits and _ (it becomes part of a variable name)")
    return value


def _check_relative(value: str) -> str:
    # Mount paths and suffixes are joined under a root; they must not climb out of it.
    if value.startswith("/") or "\\" in value or "\x00" in value:
        raise ValueError("must be a relative path with / separators")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    return value


def _check_mount_path(value: str) -> str:
    if not value or posixpath.normpath(value) == ".":
        raise ValueError("must name a directory below the mount root")
    return _check_relative(value)


Str = Annotated[str, Strict()]
NonEmpty = Annotated[str, Strict(), Field(min_length=1)]
Args = Annotated[str, Strict(), AfterValidator(_check_args)]
EnvName = Annotated[str, Strict(), AfterValidator(_check_env_name)]
DirId = Annotated[str, Strict(), AfterValidator(_check_dir_id)]
MountPath = Annotated[str, Strict(), AfterValidator(_check_mount_path)]
Suffix = Annotated[str, Strict(), AfterValidator(_check_relative)]
NodeCount = Annotated[int, Strict(), Field(ge=1, le=MAX_NODES)]
ProcessCount = Annotated[int, Strict(), Field(ge=1, le=MAX_PROCESSES)]
Count = Annotated[int, Strict(), Field(ge=0)]


class SpecModel(BaseModel):
    """Base: camelCase JSON keys, snake_case attributes, unknown keys refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
    )


def fold_legacy(data: Any, old: str, new: str) -> Any:
    """Rename a legacy key to its current name before validation (refusing both at once)."""
    if isinstance(data, dict) and old in data:
        if new in data:
            raise ValueError(f"give {new} or its old name {old}, not both")
        data = dict(data)
        data[new] = data.pop(old)
    return data


# ----------------------------------------------------------------------------- durations

_ISO_RE = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.IGNORECASE,
)
_DOTNET_RE = re.compile(r"(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d{2})(?::(?P<s>\d{2}(?:\.\d{1,7})?))?")
_PYTHON_RE = re.compile(r"(?P<d>\d+) days?, (?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d{1,6})?)")


def parse_duration(text: str) -> timedelta:
    """A duration as Batch AI users wrote it: "7.00:00:00", "1:00:00", "7 days, 0:00:00", "PT1H"."""
    value = text.strip()
    iso = _ISO_RE.fullmatch(value)
    if iso and value.upper() not in ("P", "PT") and not value.upper().endswith("T"):
        return timedelta(
            weeks=int(iso["w"] or 0),
            days=int(iso["d"] or 0),
            hours=int(iso["h"] or 0),
            minutes=int(iso["m"] or 0),
            seconds=float(iso["s"] or 0),
        )
    match = _DOTNET_RE.fullmatch(value) or _PYTHON_RE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; write d.hh:mm:ss, hh:mm:ss, "
            "'7 days, 0:00:00' or ISO 8601 such as PT1H"
        )
    days, hours, minutes = int(match["d"] or 0), int(match["h"]), int(match["m"])
    seconds = float(match["s"] or 0)
    if minutes >= 60 or seconds >= 60 or (match["d"] is not None and hours >= 24):
        raise ValueError(f"{text!r} is not a duration: a field is out of range")
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The service's own d.hh:mm:ss form."""
    total = int(value.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days}.{hours:02d}:{minutes:02d}:{seconds:02d}"


def _duration_text(value: Any) -> Any:
    return format_duration(value) if isinstance(value, timedelta) else value


def _check_wall_clock(value: str) -> str:
    duration = parse_duration(value)
    if duration <= timedelta(0):
        raise ValueError("must be longer than zero")
    if duration > DEFAULT_MAX_WALL_CLOCK:
        raise ValueError("must be at most 7 days (the Batch AI job lifetime limit)")
    return value


# Strict first so that the before-validator (timedelta -> text) wraps the strict str check.
WallClock = Annotated[
    str, Strict(), BeforeValidator(_duration_text), AfterValidator(_check_wall_clock)
]

# ----------------------------------------------------------------------------- shared objects


class ResourceId(SpecModel):
    id: NonEmpty


class KeyVaultSecretReference(SpecModel):
    source_vault: ResourceId
    secret_url: NonEmpty


class PrivateRegistryCredentials(SpecModel):
    username: NonEmpty
    password: Str | None = Field(default=None, repr=False)
    password_secret_reference: KeyVaultSecretReference | None = None

    @model_validator(mode="after")
    def _one_password(self) -> PrivateRegistryCredentials:
        if (self.password is None) == (self.password_secret_reference is None):
            raise ValueError("give exactly one of password or passwordSecretReference")
        return self


class ImageSourceRegistry(SpecModel):
    image: NonEmpty
    server_url: Str | None = None
    credentials: PrivateRegistryCredentials | None = None


_SHM_RE = re.compile(r"\d+(?:[bkmg]b?)?", re.IGNORECASE)


def _check_shm(value: str) -> str:
    if not _SHM_RE.fullmatch(value):
        raise ValueError("must be a docker --shm-size value such as 16gb")
    return value


class ContainerSettings(SpecModel):
    image_source_registry: ImageSourceRegistry
    shm_size: Annotated[str, Strict(), AfterValidator(_check_shm)] | None = None


class AzureStorageCredentials(SpecModel):
    account_key: Str | None = Field(default=None, repr=False)
    account_key_secret_reference: KeyVaultSecretReference | None = None
    account_key_secret_url: Str | None = None  # 2017-09-01-preview spelling of the Key Vault link


class AzureFileShare(SpecModel):
    # accountName and credentials were filled in by the CLI; recipe files omit them.
    account_name: Str | None = None
    azure_file_url: NonEmpty
    credentials: AzureStorageCredentials | None = None
    relative_mount_path: MountPath
    file_mode: Str | None = None
    directory_mode: Str | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return fold_legacy(data, "credentialsInfo", "credentials")


# Azure's container names: 3-63 lower-case letters, digits and single hyphens. The name becomes
# a directory and a file name on the node: nothing else may pass.
_CONTAINER_RE = re.compile(r"[a-z0-9](?:-?[a-z0-9]){2,62}")


def _container_name(value: str) -> str:
    if not _CONTAINER_RE.fullmatch(value):
        raise ValueError("is not a blob container name (3-63 lower-case letters, digits, single -)")
    return value


class AzureBlobFileSystem(SpecModel):
    account_name: NonEmpty
    container_name: Annotated[NonEmpty, AfterValidator(_container_name)]
    credentials: AzureStorageCredentials | None = None
    relative_mount_path: MountPath
    mount_options: Str | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return fold_legacy(data, "credentialsInfo", "credentials")


_FILE_SERVER_NAME = re.compile(r"[-\w]{1,64}", re.ASCII)


class FileServerReference(SpecModel):
    file_server: ResourceId
    source_directory: Str | None = None
    relative_mount_path: MountPath
    mount_options: Str | None = None

    @model_validator(mode="after")
    def _names_a_server(self) -> FileServerReference:
        # The node mounts `batchai-fs-<name>`: a dotted or odd name could be any host.
        if not _FILE_SERVER_NAME.fullmatch(self.server_name):
            raise ValueError(
                f"fileServer.id {self.file_server.id!r} does not name a file server "
                "(…/fileServers/<1-64 letters, digits, - or _>)"
            )
        return self

    @property
    def server_name(self) -> str:
        """The file server's name: the last segment of its resource id."""
        return self.file_server.id.rstrip("/").rsplit("/", 1)[-1]


class UnmanagedFileSystem(SpecModel):
    mount_command: NonEmpty
    relative_mount_path: MountPath


class MountVolumes(SpecModel):
    azure_file_shares: tuple[AzureFileShare, ...] = ()
    azure_blob_file_systems: tuple[AzureBlobFileSystem, ...] = ()
    file_servers: tuple[FileServerReference, ...] = ()
    unmanaged_file_systems: tuple[UnmanagedFileSystem, ...] = ()

    @model_validator(mode="after")
    def _distinct_paths(self) -> MountVolumes:
        seen: set[str] = set()
        volumes: tuple[
            AzureFileShare | AzureBlobFileSystem | FileServerReference | UnmanagedFileSystem, ...
        ] = (
            *self.azure_file_shares,
            *self.azure_blob_file_systems,
            *self.file_servers,
            *self.unmanaged_file_systems,
        )
        for volume in volumes:
            path = posixpath.normpath(volume.relative_mount_path)
            if path in seen:
                raise ValueError(f"two volumes are mounted at {path!r}")
            seen.add(path)
        for path in seen:
            # A mount below another would be made through it: inside that share, not the job's.
            outer = next((o for o in seen if path.startswith(o + "/")), None)
            if outer is not None:
                raise ValueError(f"volume {path!r} would be mounted inside volume {outer!r}")
        return self


class EnvironmentVariable(SpecModel):
    name: EnvName
    value: Str = ""  # required from 2018-05-01 on; the 2017 schema let it default to empty


class SecretVariable(SpecModel):
    """An environment variable whose value is never shown (from the file or from Key Vault)."""

    name: EnvName
    value: Str | None = Field(default=None, repr=False)
    value_secret_reference: KeyVaultSecretReference | None = None

    @model_validator(mode="after")
    def _one_value(self) -> SecretVariable:
        if (self.value is None) == (self.value_secret_reference is None):
            raise ValueError("give exactly one of value or valueSecretReference")
        return self


# ----------------------------------------------------------------------------- documents


_SCHEMA_RE = re.compile(r"(?:^|/)schemas/(?P<api>[^/]+)/(?P<file>[^/]+\.json)$")


def parse_schema_url(url: str) -> tuple[ApiVersion, str]:
    """(api version, schema file name) from a `$schema` such as …/schemas/2018-05-01/job.json."""
    match = _SCHEMA_RE.search(url.split("#", 1)[0].split("?", 1)[0])
    if match is None:
        raise ValueError(
            "cannot tell the API version; expected a URL ending in /schemas/<api-version>/job.json"
        )
    for api in API_VERSIONS:
        if match["api"] == api:
            return api, match["file"]
    raise ValueError(
        f"API version {match['api']!r} is not supported (use one of {', '.join(API_VERSIONS)})"
    )


def api_rank(api: ApiVersion) -> int:
    return API_VERSIONS.index(api)


class SpecDocument(SpecModel):
    """A top-level file: an optional `$schema` beside the REST body."""

    schema_url: Str | None = Field(default=None, alias="$schema")

    @property
    def declared_api_version(self) -> ApiVersion | None:
        return parse_schema_url(self.schema_url)[0] if self.schema_url else None
