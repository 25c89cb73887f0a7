"""Pydantic models of a Batch AI job.json: toolkit blocks, job properties, API version rules."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import Field, Strict, field_validator, model_validator

from services.jobspec.base import (
    DEFAULT_MAX_WALL_CLOCK,
    MAX_NODES,
    MAX_PROCESSES,
    OLDEST_API,
    RESERVED_OUTPUT_ID,
    ApiVersion,
    Args,
    ContainerSettings,
    DirId,
    EnvironmentVariable,
    MountVolumes,
    NodeCount,
    NonEmpty,
    ProcessCount,
    ResourceId,
    SecretVariable,
    SpecDocument,
    SpecModel,
    Str,
    Suffix,
    WallClock,
    api_rank,
    fold_legacy,
    parse_duration,
    parse_schema_url,
)

# ----------------------------------------------------------------------------- toolkits


class CntkSettings(SpecModel):
    language_type: Literal["BrainScript", "Python"] | None = None
    config_file_path: NonEmpty | None = None
    python_script_file_path: NonEmpty | None = None
    python_interpreter_path: NonEmpty | None = None
    command_line_args: Args | None = None
    process_count: ProcessCount | None = None  # the early recipes' `process_count` is read here too

    @field_validator("language_type", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"brainscript": "BrainScript", "python": "Python"}.get(value.lower(), value)
        return value

    @model_validator(mode="after")
    def _one_program(self) -> CntkSettings:
        if self.config_file_path and self.python_script_file_path:
            raise ValueError("give configFilePath (BrainScript) or pythonScriptFilePath, not both")
        if self.language == "BrainScript":
            if not self.config_file_path:
                raise ValueError("a BrainScript job needs configFilePath")
            if self.python_interpreter_path:
                raise ValueError("pythonInterpreterPath applies to Python jobs only")
        elif not self.python_script_file_path:
            raise ValueError("give configFilePath (BrainScript) or pythonScriptFilePath (Python)")
        return self

    @property
    def language(self) -> Literal["BrainScript", "Python"]:
        if self.language_type is not None:
            return self.language_type
        return "BrainScript" if self.config_file_path else "Python"


class PyTorchSettings(SpecModel):
    python_script_file_path: NonEmpty
    python_interpreter_path: NonEmpty | None = None
    command_line_args: Args | None = None
    process_count: ProcessCount | None = None
    communication_backend: Str | None = None

    @field_validator("communication_backend")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        # The spec lists TCP, Gloo and MPI; nccl is what current PyTorch uses on GPUs.
        if value is not None and value.lower() not in ("tcp", "gloo", "mpi", "nccl"):
            raise ValueError("must be one of TCP, Gloo, MPI or NCCL")
        return value


class TensorFlowSettings(SpecModel):
    python_script_file_path: NonEmpty
    python_interpreter_path: NonEmpty | None = None
    master_command_line_args: Args | None = None
    worker_command_line_args: Args | None = None
    parameter_server_command_line_args: Args | None = None
    worker_count: ProcessCount | None = None
    parameter_server_count: Annotated[int, Strict(), Field(ge=0, le=MAX_NODES)] | None = None


class CaffeSettings(SpecModel):
    config_file_path: NonEmpty | None = None
    python_script_file_path: NonEmpty | None = None
    python_interpreter_path: NonEmpty | None = None
    command_line_args: Args | None = None
    process_count: ProcessCount | None = None

    @model_validator(mode="after")
    def _one_program(self) -> CaffeSettings:
        if bool(self.config_file_path) == bool(self.python_script_file_path):
            raise ValueError("give exactly one of configFilePath or pythonScriptFilePath")
        if self.python_interpreter_path and not self.python_script_file_path:
            raise ValueError("pythonInterpreterPath applies only with pythonScriptFilePath")
        return self


class Caffe2Settings(SpecModel):
    python_script_file_path: NonEmpty
    python_interpreter_path: NonEmpty | None = None
    command_line_args: Args | None = None


class ChainerSettings(SpecModel):
    python_script_file_path: NonEmpty
    python_interpreter_path: NonEmpty | None = None
    command_line_args: Args | None = None
    process_count: ProcessCount | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # The 2017 recipes passed Chainer's arguments as masterCommandLineArgs.
        return fold_legacy(data, "masterCommandLineArgs", "commandLineArgs")


class CustomToolkitSettings(SpecModel):
    command_line: NonEmpty


class CustomMpiSettings(SpecModel):
    command_line: NonEmpty
    process_count: ProcessCount | None = None


class HorovodSettings(SpecModel):
    python_script_file_path: NonEmpty
    python_interpreter_path: NonEmpty | None = None
    command_line_args: Args | None = None
    process_count: ProcessCount | None = None


ToolkitSettings = (
    CntkSettings
    | PyTorchSettings
    | TensorFlowSettings
    | CaffeSettings
    | Caffe2Settings
    | ChainerSettings
    | CustomToolkitSettings
    | CustomMpiSettings
    | HorovodSettings
)

# JSON key -> (attribute, toolkit name, first API version that has it)
TOOLKITS: Final[dict[str, tuple[str, str, ApiVersion]]] = {
    "cntkSettings": ("cntk_settings", "cntk", "2017-09-01-preview"),
    "pyTorchSettings": ("py_torch_settings", "pytorch", "2018-03-01"),
    "tensorFlowSettings": ("tensor_flow_settings", "tensorflow", "2017-09-01-preview"),
    "caffeSettings": ("caffe_settings", "caffe", "2017-09-01-preview"),
    "caffe2Settings": ("caffe2_settings", "caffe2", "2017-09-01-preview"),
    "chainerSettings": ("chainer_settings", "chainer", "2017-09-01-preview"),
    "customToolkitSettings": ("custom_toolkit_settings", "custom", "2017-09-01-preview"),
    "customMpiSettings": ("custom_mpi_settings", "custommpi", "2018-05-01"),
    "horovodSettings": ("horovod_settings", "horovod", "2018-05-01"),
}

# ----------------------------------------------------------------------------- job


class InputDirectory(SpecModel):
    id: DirId
    path: NonEmpty


class OutputDirectory(SpecModel):
    id: DirId
    path_prefix: NonEmpty
    path_suffix: Suffix | None = None
    type: Str | None = None  # legacy (2017-09-01-preview, 2018-03-01): model/logs/summary/custom
    create_new: Annotated[bool, Strict()] | None = None  # legacy: false = use the path as given

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() == RESERVED_OUTPUT_ID:
            raise ValueError(f"{RESERVED_OUTPUT_ID!r} is the id of the job's log directory")
        return value


class JobPreparation(SpecModel):
    command_line: NonEmpty


MAX_RETRIES = 10  # lost-node retries a job may ask for (each may cost a whole attempt)


class JobConstraints(SpecModel):
    max_wall_clock_time: WallClock | None = None
    # 2017-09-01-preview's retry count, read as the job's lost-node retries (--max-retries)
    max_task_retry_count: Annotated[int, Strict(), Field(ge=0, le=MAX_RETRIES)] | None = None


class JobProperties(SpecModel):
    """`JobBaseProperties`: the body of a job.json under "properties"."""

    scheduling_priority: Literal["low", "normal", "high"] | None = None
    priority: Annotated[int, Strict(), Field(ge=-1000, le=1000)] | None = None  # before 2018-05
    cluster: ResourceId | None = None
    mount_volumes: MountVolumes | None = None
    node_count: NodeCount
    container_settings: ContainerSettings | None = None
    cntk_settings: CntkSettings | None = None
    py_torch_settings: PyTorchSettings | None = None
    tensor_flow_settings: TensorFlowSettings | None = None
    caffe_settings: CaffeSettings | None = None
    caffe2_settings: Caffe2Settings | None = None
    chainer_settings: ChainerSettings | None = None
    custom_toolkit_settings: CustomToolkitSettings | None = None
    custom_mpi_settings: CustomMpiSettings | None = None
    horovod_settings: HorovodSettings | None = None
    job_preparation: JobPreparation | None = None
    std_out_err_path_prefix: NonEmpty | None = None
    input_directories: tuple[InputDirectory, ...] = ()
    output_directories: tuple[OutputDirectory, ...] = ()
    environment_variables: tuple[EnvironmentVariable, ...] = ()
    secrets: tuple[SecretVariable, ...] = ()
    constraints: JobConstraints | None = None
    location: Str | None = None  # before 2018-05: the job's region
    experiment_name: Str | None = None  # before 2018-05: a free-text label
    tool_type: Str | None = None  # read-only in the API; the azure-cli test files still send it

    @model_validator(mode="after")
    def _consistent(self) -> JobProperties:
        found = [key for key, (attr, _, _) in TOOLKITS.items() if getattr(self, attr) is not None]
        if len(found) != 1:
            what = "none" if not found else f"{len(found)}: {', '.join(found)}"
            raise ValueError(
                f"exactly one toolkit settings block is required, found {what} "
                f"(one of {', '.join(TOOLKITS)})"
            )
        _unique("inputDirectories", [d.id for d in self.input_directories])
        _unique("outputDirectories", [d.id for d in self.output_directories])
        names = [v.name for v in self.environment_variables] + [s.name for s in self.secrets]
        _unique("environmentVariables and secrets", names, what="name")
        if self.priority is not None and self.scheduling_priority is not None:
            raise ValueError("give schedulingPriority or the older priority, not both")
        tf = self.tensor_flow_settings
        if tf is not None:
            if (tf.parameter_server_count or 0) > self.node_count:
                raise ValueError(
                    "tensorFlowSettings.parameterServerCount must not exceed nodeCount "
                    "(one parameter server per node)"
                )
            processes = (tf.worker_count or self.node_count) + (tf.parameter_server_count or 0)
            if processes > MAX_PROCESSES:
                raise ValueError(f"a job may start at most {MAX_PROCESSES} processes")
        return self

    @property
    def toolkit_settings(self) -> tuple[str, ToolkitSettings]:
        """(toolkit name, its settings block); validation guarantees exactly one."""
        for attr, name, _ in TOOLKITS.values():
            settings = getattr(self, attr)
            if settings is not None:
                return name, settings
        raise AssertionError("validated JobProperties without a toolkit")  # pragma: no cover

    @property
    def max_wall_clock(self) -> timedelta:
        raw = self.constraints.max_wall_clock_time if self.constraints else None
        return DEFAULT_MAX_WALL_CLOCK if raw is None else parse_duration(raw)


def _unique(where: str, values: list[str], *, what: str = "id") -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{where}: {what} {value!r} is used twice")
        seen.add(value)


def required_features(props: JobProperties) -> list[tuple[str, ApiVersion]]:
    """(JSON path, first API version) of every feature in use that the oldest version lacks."""
    found: list[tuple[str, ApiVersion]] = []
    for key, (attr, _, since) in TOOLKITS.items():
        if since != OLDEST_API and getattr(props, attr) is not None:
            found.append((f"properties.{key}", since))
    if props.secrets:
        found.append(("properties.secrets", "2018-03-01"))
    if props.mount_volumes is not None:
        found.append(("properties.mountVolumes", "2018-03-01"))
    if props.scheduling_priority is not None:
        found.append(("properties.schedulingPriority", "2018-05-01"))
    if props.container_settings is not None and props.container_settings.shm_size is not None:
        found.append(("properties.containerSettings.shmSize", "2018-05-01"))
    return found


SCHEMA_2018_05_01: Final = (
    "https://raw.githubusercontent.com/Azure/BatchAI/master/schemas/2018-05-01/job.json"
)


class JobSpec(SpecDocument):
    """A Batch AI job.json: `{"$schema"?: url, "properties": {...}}`."""

    properties: JobProperties

    @field_validator("schema_url")
    @classmethod
    def _job_schema(cls, value: str | None) -> str | None:
        if value is not None and parse_schema_url(value)[1] in ("cluster.json", "nfs.json"):
            raise ValueError("names a cluster or file-server schema, not a job schema")
        return value

    @model_validator(mode="after")
    def _version_allows(self) -> JobSpec:
        declared = self.declared_api_version
        if declared is None:
            return self
        for path, since in required_features(self.properties):
            if api_rank(since) > api_rank(declared):
                raise ValueError(
                    f"{path}: not available in API version {declared} (needs {since} or later; "
                    "the version comes from $schema)"
                )
        return self

    @property
    def api_version(self) -> ApiVersion:
        """From `$schema` when present, else the oldest version that has every feature used.

        Inference only, never an error: `$AZ_BATCHAI_JOB_MOUNT_ROOT` in a value means 2018-03-01+.
        """
        declared = self.declared_api_version
        if declared is not None:
            return declared
        needed = [since for _, since in required_features(self.properties)]
        if "$AZ_BATCHAI_JOB_MOUNT_ROOT" in self.properties.model_dump_json():
            needed.append("2018-03-01")  # job-level mounts (and their root) came with 2018-03-01
        return max(needed, key=api_rank, default=OLDEST_API)

    def in_workspace(self) -> JobSpec:
        """The job as the 2018-05-01 CLI sent it: `job create -w/-e` put every job.json, with or
        without (or with an older) `$schema`, into a workspace and experiment of the 2018-05-01
        API, so the service gave it that version's layout (workspaces/…/stdouterr/ and the
        execution log). Every feature is in 2018-05-01, so nothing that loaded is refused."""
        if self.declared_api_version == "2018-05-01":
            return self
        return self.model_copy(update={"schema_url": SCHEMA_2018_05_01})

    @property
    def toolkit(self) -> str:
        """cntk, pytorch, tensorflow, caffe, caffe2, chainer, custom, custommpi or horovod."""
        return self.properties.toolkit_settings[0]
