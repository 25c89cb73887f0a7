"""The launch plan: per node and rank, the argv, environment and log names a job spec implies."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Final

from services.core.errors import SpecError
from services.jobspec.schema import (
    AzureBlobFileSystem,
    AzureFileShare,
    Caffe2Settings,
    CaffeSettings,
    ChainerSettings,
    CntkSettings,
    CustomMpiSettings,
    CustomToolkitSettings,
    HorovodSettings,
    JobSpec,
    KeyVaultSecretReference,
    PyTorchSettings,
    TensorFlowSettings,
)
from services.jobspec.values import expand_vars, referenced_vars

STDOUT: Final = "stdout.txt"
STDERR: Final = "stderr.txt"
TF_PORT_BASE: Final = 2222
TORCH_MASTER_PORT: Final = 29500

_NAME_RE = re.compile(r"[-\w.]+", re.ASCII)


@dataclass(frozen=True)
class NodeInfo:
    index: int  # 0-based node index in the job
    host: str  # ip or hostname ("127.0.0.1" locally)
    gpus: int = 0
    node_id: str | None = (
        None  # Batch AI-style node id for per-node log names; node-<index> if None
    )

    @property
    def log_id(self) -> str:
        return self.node_id or f"node-{self.index}"


@dataclass(frozen=True)
class LaunchContext:
    subscription: str  # "local" for the local backend
    resource_group: str
    workspace: str
    experiment: str
    cluster_name: str
    job_name: str
    job_uuid: str  # hex; keeps re-created jobs apart
    mount_root: str  # AZ_BATCHAI_MOUNT_ROOT (absolute path on the node)
    job_mount_root: str  # AZ_BATCHAI_JOB_MOUNT_ROOT
    job_temp_root: str  # AZ_BATCHAI_JOB_TEMP_DIR (parent of per-job temp dirs)
    nodes: tuple[NodeInfo, ...]  # exactly nodeCount entries
    python: str = "python3"  # interpreter when pythonInterpreterPath is absent
    extra_env: Mapping[str, str] = field(default_factory=dict)  # never secrets of the bot
    port_base: int = TF_PORT_BASE  # first TensorFlow port per host; vary it for concurrent jobs
    master_port: int = TORCH_MASTER_PORT  # PyTorch MASTER_PORT
    attempt: int = 1  # a retry after lost nodes: its logs go to a directory of their own
    # Planned at submit, before the backend reads any Key Vault reference (the azure backend
    # reads them when the job starts): say nothing yet about references not resolved.
    submitting: bool = False


@dataclass(frozen=True)
class ProcessPlan:
    rank: int  # global rank / task index
    node_index: int
    role: str  # "master", "worker", "ps", "rank", "prep"
    argv: tuple[str, ...]  # exec'd directly, never through a shell
    env: Mapping[str, str]  # complete job environment for this process
    stdout_name: str  # file name inside the stdouterr dir
    stderr_name: str


@dataclass(frozen=True)
class OutputDir:
    id: str
    path: str  # absolute node path: <pathPrefix>/<segment>/outputs[/<pathSuffix>]


@dataclass(frozen=True)
class LaunchPlan:
    toolkit: str
    node_count: int
    job_dir_segment: str
    stdouterr_dir: str
    output_dirs: tuple[OutputDir, ...]
    input_dirs: Mapping[str, str]
    job_temp: str
    shared_job_temp: str
    env: Mapping[str, str]  # common env for every process
    preparation: tuple[ProcessPlan, ...]
    processes: tuple[ProcessPlan, ...]
    container_image: str | None
    max_wall_clock: timedelta
    secret_names: frozenset[str]
    mpi_host_file_lines: tuple[str, ...]
    warnings: tuple[str, ...]
    node_ids: tuple[str, ...] = ()  # per node index: the id in its log names
    # Per node index: its execution log in stdouterr (2018-03-01 on; none before): `execution.log`
    # for a one-node job, `execution-<node id>.log` per node for more, as Batch AI named them.
    execution_logs: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- helpers


def toolkit_name(spec: JobSpec) -> str:
    """cntk, pytorch, tensorflow, caffe, caffe2, chainer, custom, custommpi or horovod."""
    return spec.properties.toolkit_settings[0]


def max_wall_clock(spec: JobSpec) -> timedelta:
    """constraints.maxWallClockTime, 7 days when absent."""
    return spec.properties.max_wall_clock


def primary_log(plan: LaunchPlan) -> tuple[str, str]:
    """(stdout, stderr) names of rank 0 / the master: what the UI streams by default."""
    first = plan.processes[0]
    return first.stdout_name, first.stderr_name


def job_dir_segment(spec: JobSpec, ctx: LaunchContext) -> str:
    """jobOutputDirectoryPathSegment: workspaces/experiments exist from 2018-05-01 on."""
    if spec.api_version == "2018-05-01":
        return (
            f"{ctx.subscription}/{ctx.resource_group}/workspaces/{ctx.workspace}"
            f"/experiments/{ctx.experiment}/jobs/{ctx.job_name}/{ctx.job_uuid}"
        )
    return f"{ctx.subscription}/{ctx.resource_group}/jobs/{ctx.job_name}/{ctx.job_uuid}"


def _check_context(spec: JobSpec, ctx: LaunchContext) -> None:
    # Caller bugs, not user errors: the dispatcher hands over names and nodes it validated.
    names = {
        "subscription": ctx.subscription,
        "resource_group": ctx.resource_group,
        "workspace": ctx.workspace,
        "experiment": ctx.experiment,
        "cluster_name": ctx.cluster_name,
        "job_name": ctx.job_name,
        "job_uuid": ctx.job_uuid,
    }
    for label, value in names.items():
        if not _NAME_RE.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"LaunchContext.{label} {value!r} is not a safe path segment")
    for label, root in (
        ("mount_root", ctx.mount_root),
        ("job_mount_root", ctx.job_mount_root),
        ("job_temp_root", ctx.job_temp_root),
    ):
        if not posixpath.isabs(root):
            raise ValueError(f"LaunchContext.{label} must be absolute, got {root!r}")
    count = spec.properties.node_count
    if [n.index for n in ctx.nodes] != list(range(count)):
        raise ValueError(f"LaunchContext.nodes must be nodes 0..{count - 1} in order")


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


class _Paths:
    """Expands and confines the paths the service itself creates and writes."""

    def __init__(self, ctx: LaunchContext) -> None:
        self.roots = tuple(
            posixpath.normpath(r) for r in (ctx.mount_root, ctx.job_mount_root, ctx.job_temp_root)
        )

    def storage(self, where: str, raw: str, env: Mapping[str, str]) -> str:
        path = posixpath.normpath(expand_vars(raw, env))
        if not posixpath.isabs(path):
            raise SpecError(f"{where}: {raw!r} is not an absolute path once variables are expanded")
        if not _inside(path, self.roots):
            raise SpecError(
                f"{where}: {raw!r} is outside the job's storage "
                "($AZ_BATCHAI_MOUNT_ROOT, $AZ_BATCHAI_JOB_MOUNT_ROOT or $AZ_BATCHAI_JOB_TEMP_DIR)"
            )
        return path


def _keyvault_warning(what: str, ref: KeyVaultSecretReference) -> str:
    return f"{what} comes from Key Vault ({ref.secret_url}), which cannot be resolved here"


def key_vault_refs(
    spec: JobSpec, *, secrets: bool = True
) -> Iterator[tuple[str, KeyVaultSecretReference]]:
    """Every Key Vault reference of a job.json (without `secrets`: but the secrets'), with what
    it stands for."""
    props = spec.properties
    for secret in props.secrets if secrets else ():
        if secret.value_secret_reference is not None:
            yield f"secret {secret.name!r}", secret.value_secret_reference
    registry = props.container_settings.image_source_registry if props.container_settings else None
    if registry and registry.credentials and registry.credentials.password_secret_reference:
        yield "the registry password", registry.credentials.password_secret_reference
    volumes = props.mount_volumes
    if volumes is not None:
        mounts: tuple[AzureFileShare | AzureBlobFileSystem, ...] = (
            *volumes.azure_file_shares,
            *volumes.azure_blob_file_systems,
        )
        for volume in mounts:
            creds = volume.credentials
            if creds and creds.account_key_secret_reference:
                what = f"the storage key for {volume.relative_mount_path!r}"
                yield what, creds.account_key_secret_reference


def _credential_warnings(spec: JobSpec) -> Iterator[str]:
    for what, ref in key_vault_refs(spec, secrets=False):
        yield _keyvault_warning(what, ref)


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Proc:
    rank: int
    node_index: int
    role: str
    command: tuple[tuple[str, bool], ...]  # (token, expand it?)
    env: Mapping[str, str]
    stdout_name: str
    stderr_name: str


def _tokens(args: str | None) -> tuple[tuple[str, bool], ...]:
    return tuple((token, True) for token in shlex.split(args or ""))


def _python(settings_interpreter: str | None, ctx: LaunchContext) -> tuple[str, bool]:
    return (settings_interpreter, True) if settings_interpreter else (ctx.python, False)


def _rank_logs(rank: int, total: int) -> tuple[str, str]:
    if total == 1:
        return STDOUT, STDERR
    return f"stdout-{rank}.txt", f"stderr-{rank}.txt"


def _spread(
    total: int,
    ctx: LaunchContext,
    command: tuple[tuple[str, bool], ...],
    extra: Mapping[int, Mapping[str, str]] | None = None,
) -> list[_Proc]:
    """`total` ranks round-robin over the nodes, each running `command`."""
    procs = []
    for rank in range(total):
        out, err = _rank_logs(rank, total)
        env = {"AZ_BATCHAI_TASK_INDEX": str(rank), **((extra or {}).get(rank, {}))}
        node = rank % len(ctx.nodes)
        procs.append(_Proc(rank, node, "rank", command, env, out, err))
    return procs


def _bash(command_line: str) -> tuple[tuple[str, bool], ...]:
    # The job's own program, like train.py: bash interprets it on the node, we never do.
    return (("bash", False), ("-c", False), (command_line, False))


def _torch_env(total: int, ctx: LaunchContext) -> dict[int, dict[str, str]]:
    per_node: dict[int, int] = {}
    env: dict[int, dict[str, str]] = {}
    for rank in range(total):
        node = rank % len(ctx.nodes)
        local = per_node.get(node, 0)
        per_node[node] = local + 1
        env[rank] = {"RANK": str(rank), "LOCAL_RANK": str(local)}
    return env


def _tensorflow(tf: TensorFlowSettings, ctx: LaunchContext, common: dict[str, str]) -> list[_Proc]:
    count = len(ctx.nodes)
    workers = tf.worker_count or count
    ps = tf.parameter_server_count
    if ps is None:
        ps = 1 if workers > 1 else 0
    script = (_python(tf.python_interpreter_path, ctx), (tf.python_script_file_path, True))
    next_port: dict[str, int] = {}

    def address(node: int) -> str:
        host = ctx.nodes[node].host
        port = next_port.get(host, ctx.port_base)
        next_port[host] = port + 1
        return f"{host}:{port}"

    # Parameter servers take the first ports, as in the service's own example output.
    ps_hosts = [address(i % count) for i in range(ps)]
    worker_hosts = [address(i % count) for i in range(workers)]
    common["AZ_BATCHAI_PS_HOSTS"] = ",".join(ps_hosts)
    common["AZ_BATCHAI_WORKER_HOSTS"] = ",".join(worker_hosts)
    cluster: dict[str, list[str]] = {"worker": worker_hosts}
    if ps_hosts:
        cluster = {"ps": ps_hosts, **cluster}
    single = workers + ps == 1

    def tf_config(kind: str, index: int) -> str:
        task = {"type": kind, "index": index}
        return json.dumps({"cluster": cluster, "task": task, "environment": "cloud"})

    procs = []
    for i in range(workers):
        master = i == 0
        args = tf.worker_command_line_args
        if master and tf.master_command_line_args is not None:
            args = tf.master_command_line_args  # the single-process case is the master too
        out, err = (STDOUT, STDERR) if single else (f"stdout-wk-{i}.txt", f"stderr-wk-{i}.txt")
        env = {
            "AZ_BATCHAI_TASK_INDEX": str(i),
            "TF_CONFIG": tf_config("master" if master else "worker", i),
        }
        role = "master" if master else "worker"
        procs.append(_Proc(i, i % count, role, (*script, *_tokens(args)), env, out, err))
    for j in range(ps):
        env = {"AZ_BATCHAI_TASK_INDEX": str(j), "TF_CONFIG": tf_config("ps", j)}
        command = (*script, *_tokens(tf.parameter_server_command_line_args))
        out, err = f"stdout-ps-{j}.txt", f"stderr-ps-{j}.txt"
        procs.append(_Proc(workers + j, j % count, "ps", command, env, out, err))
    return procs


def _toolkit_processes(spec: JobSpec, ctx: LaunchContext, common: dict[str, str]) -> list[_Proc]:
    props = spec.properties
    count = props.node_count
    _, settings = props.toolkit_settings
    if isinstance(settings, TensorFlowSettings):
        return _tensorflow(settings, ctx, common)
    if isinstance(settings, CustomToolkitSettings):
        env = {"AZ_BATCHAI_TASK_INDEX": "0"}
        return [_Proc(0, 0, "master", _bash(settings.command_line), env, STDOUT, STDERR)]
    if isinstance(settings, CustomMpiSettings):
        return _spread(settings.process_count or count, ctx, _bash(settings.command_line))
    if isinstance(settings, Caffe2Settings):
        # One shard per node; the shard id is the node's task index.
        command = (
            _python(settings.python_interpreter_path, ctx),
            (settings.python_script_file_path, True),
            *_tokens(settings.command_line_args),
        )
        return _spread(count, ctx, command)
    if isinstance(settings, CntkSettings) and settings.language == "BrainScript":
        command = (
            ("cntk", False),
            (f"configFile={settings.config_file_path}", True),
            *_tokens(settings.command_line_args),
        )
        return _spread(settings.process_count or count, ctx, command)
    if isinstance(settings, CaffeSettings) and settings.config_file_path:
        command = (
            ("caffe", False),
            ("train", False),
            (f"--solver={settings.config_file_path}", True),
            *_tokens(settings.command_line_args),
        )
        return _spread(settings.process_count or count, ctx, command)
    assert isinstance(
        settings, CntkSettings | CaffeSettings | ChainerSettings | HorovodSettings | PyTorchSettings
    )
    assert settings.python_script_file_path is not None  # validated for cntk/caffe above
    total = settings.process_count or count
    command = (
        _python(settings.python_interpreter_path, ctx),
        (settings.python_script_file_path, True),
        *_tokens(settings.command_line_args),
    )
    if isinstance(settings, PyTorchSettings):
        common["AZ_BATCHAI_PYTORCH_INIT_METHOD"] = (
            f"file://{common['AZ_BATCHAI_SHARED_JOB_TEMP']}/pytorch_init"
        )
        if settings.communication_backend:
            common["AZ_BATCHAI_PYTORCH_BACKEND"] = settings.communication_backend.lower()
        common["WORLD_SIZE"] = str(total)
        common["MASTER_ADDR"] = ctx.nodes[0].host
        common["MASTER_PORT"] = str(ctx.master_port)
        return _spread(total, ctx, command, _torch_env(total, ctx))
    return _spread(total, ctx, command)


# ----------------------------------------------------------------------------- the plan


def _host_file(toolkit: str, procs: list[_Proc], ctx: LaunchContext) -> tuple[str, ...]:
    """OpenMPI hostfile lines; nodes sharing a host (local backend) share one line."""
    slots: dict[str, int] = {}
    for node in ctx.nodes:
        if toolkit == "custom":
            # The command fans out itself (mpirun --hostfile): offer one slot per GPU.
            n = max(node.gpus, 1)
        else:
            n = max(sum(1 for p in procs if p.node_index == node.index), 1)
        slots[node.host] = slots.get(node.host, 0) + n
    return tuple(f"{host} slots={n}" for host, n in slots.items())


def _base_env(ctx: LaunchContext, job_temp: str) -> dict[str, str]:
    env = dict(ctx.extra_env)
    env.update(
        {
            "AZ_BATCHAI_MOUNT_ROOT": ctx.mount_root,
            "AZ_BATCHAI_JOB_MOUNT_ROOT": ctx.job_mount_root,
            "AZ_BATCHAI_JOB_TEMP_DIR": ctx.job_temp_root,
            "AZ_BATCHAI_JOB_TEMP": job_temp,
            "AZ_BATCHAI_SHARED_JOB_TEMP": f"{job_temp}/shared",
            "AZ_BATCHAI_MPI_HOST_FILE": f"{job_temp}/hostfile",
            "AZ_BATCHAI_CLUSTER_NAME": ctx.cluster_name,
            "AZ_BATCHAI_JOB_NAME": ctx.job_name,
            # Azure Batch's own list, used by the 2017 Intel MPI recipes (mpirun -hosts).
            "AZ_BATCH_HOST_LIST": ",".join(dict.fromkeys(n.host for n in ctx.nodes)),
        }
    )
    return env


@dataclass(frozen=True)
class _Layout:
    stdouterr: str
    inputs: dict[str, str]
    outputs: tuple[OutputDir, ...]


def _layout(spec: JobSpec, ctx: LaunchContext, segment: str, env: dict[str, str]) -> _Layout:
    """Log, input and output directories; adds their variables to `env`."""
    props = spec.properties
    paths = _Paths(ctx)
    prefix = paths.storage(
        "properties.stdOutErrPathPrefix",
        props.std_out_err_path_prefix or "$AZ_BATCHAI_MOUNT_ROOT",
        env,
    )
    # 2017-09-01-preview wrote the logs straight into the job directory (reference §6.1).
    stdouterr = posixpath.join(prefix, segment)
    if ctx.attempt > 1:
        # A retry (lost nodes) logs beside the first attempt, never into its files; the
        # outputs below stay where they were, so the retry resumes from its checkpoints.
        stdouterr = posixpath.join(stdouterr, f"attempt-{ctx.attempt}")
    if spec.api_version != "2017-09-01-preview":
        stdouterr = posixpath.join(stdouterr, "stdouterr")
    inputs = {d.id: expand_vars(d.path, env) for d in props.input_directories}
    env.update({f"AZ_BATCHAI_INPUT_{k}": v for k, v in inputs.items()})
    outputs: list[OutputDir] = []
    for i, o in enumerate(props.output_directories):
        base = paths.storage(f"properties.outputDirectories[{i}].pathPrefix", o.path_prefix, env)
        if o.create_new is not False:
            base = posixpath.join(base, segment, "outputs")
        outputs.append(
            OutputDir(o.id, posixpath.normpath(posixpath.join(base, o.path_suffix or "")))
        )
    env.update({f"AZ_BATCHAI_OUTPUT_{o.id}": o.path for o in outputs})
    env["AZ_BATCHAI_STDOUTERR_DIR"] = stdouterr
    return _Layout(stdouterr, inputs, tuple(outputs))


def _user_env(
    spec: JobSpec, env: dict[str, str], *, notes: bool = True
) -> tuple[dict[str, str], list[str]]:
    """Adds environmentVariables (expanded, in order) and secrets (literal) to `env`.

    Returns the job's own variables and (with `notes`) the warnings about Key Vault references
    still unresolved at launch (a backend that reads them replaces them by values first).
    """
    props = spec.properties
    for var in props.environment_variables:
        env[var.name] = expand_vars(var.value, env)
    own = {var.name: env[var.name] for var in props.environment_variables}
    warnings = []
    for secret in props.secrets:
        if secret.value_secret_reference is not None:
            warnings.append(
                _keyvault_warning(f"secret {secret.name!r}", secret.value_secret_reference)
                + "; the variable is not set"
            )
        elif secret.value is not None:
            env[secret.name] = secret.value  # data, not a template: never expanded
    if not notes:
        return own, []
    return own, [*warnings, *_credential_warnings(spec)]


def _finish(p: _Proc, common: Mapping[str, str], ctx: LaunchContext) -> ProcessPlan:
    """The process's full environment, and its argv with the tokens expanded against it."""
    full = {**common, **p.env, "AZ_BATCHAI_NUM_GPUS": str(ctx.nodes[p.node_index].gpus)}
    argv = tuple(expand_vars(tok, full) if expand else tok for tok, expand in p.command)
    env = MappingProxyType(full)
    return ProcessPlan(p.rank, p.node_index, p.role, argv, env, p.stdout_name, p.stderr_name)


def _preparation(spec: JobSpec, ctx: LaunchContext) -> list[_Proc]:
    prep = spec.properties.job_preparation
    if prep is None:
        return []
    command = _bash(prep.command_line)
    return [
        _Proc(
            n.index,
            n.index,
            "prep",
            command,
            {},
            f"stdout-job_prep-{n.log_id}.txt",
            f"stderr-job_prep-{n.log_id}.txt",
        )
        for n in ctx.nodes
    ]


def plan_launch(spec: JobSpec, ctx: LaunchContext) -> LaunchPlan:
    """Everything a backend needs to start `spec` on `ctx.nodes`; pure, raises SpecError."""
    _check_context(spec, ctx)
    props = spec.properties
    toolkit = toolkit_name(spec)
    segment = job_dir_segment(spec, ctx)
    job_temp = posixpath.join(
        posixpath.normpath(ctx.job_temp_root), f"{ctx.job_name}-{ctx.job_uuid}"
    )
    env = _base_env(ctx, job_temp)
    layout = _layout(spec, ctx, segment, env)
    own, warnings = _user_env(spec, env, notes=not ctx.submitting)
    procs = _toolkit_processes(spec, ctx, env)
    common = MappingProxyType(dict(env))
    processes = tuple(_finish(p, common, ctx) for p in procs)
    for name, value in own.items():
        if any(p.env[name] != value for p in processes):
            warnings.append(
                f"{name} is set by the launcher for {toolkit} jobs; the job's value is ignored"
            )
    warnings.extend(_undefined_references(spec, processes))
    settings = props.container_settings
    return LaunchPlan(
        toolkit=toolkit,
        node_count=props.node_count,
        job_dir_segment=segment,
        stdouterr_dir=layout.stdouterr,
        output_dirs=layout.outputs,
        input_dirs=MappingProxyType(layout.inputs),
        job_temp=job_temp,
        shared_job_temp=env["AZ_BATCHAI_SHARED_JOB_TEMP"],
        env=common,
        preparation=tuple(_finish(p, common, ctx) for p in _preparation(spec, ctx)),
        processes=processes,
        container_image=settings.image_source_registry.image if settings else None,
        max_wall_clock=props.max_wall_clock,
        secret_names=frozenset(s.name for s in props.secrets),
        mpi_host_file_lines=_host_file(toolkit, procs, ctx),
        warnings=tuple(warnings),
        node_ids=tuple(n.log_id for n in ctx.nodes),
        execution_logs=_execution_logs(spec, ctx),
    )


def _execution_logs(spec: JobSpec, ctx: LaunchContext) -> tuple[str, ...]:
    """Batch AI's execution logs, kept in stdouterr from 2018-03-01 on: one `execution.log` for a
    one-node job (the old CLI's scenario tests list it beside stdout.txt and stderr.txt), one
    `execution-<node id>.log` per node for a multi-node job (the service's own listings of
    distributed jobs show only those)."""
    if spec.api_version == "2017-09-01-preview":
        return ()
    if len(ctx.nodes) == 1:
        return ("execution.log",)
    return tuple(f"execution-{n.log_id}.log" for n in ctx.nodes)


def _undefined_references(spec: JobSpec, processes: tuple[ProcessPlan, ...]) -> Iterator[str]:
    """`$AZ_BATCHAI_*` names the job uses but this job does not define (a recipe bug, usually)."""
    defined = set().union(*(p.env for p in processes))
    props = spec.properties
    texts = [
        str(value) for value in props.toolkit_settings[1].model_dump().values() if value is not None
    ]
    texts += [d.path for d in props.input_directories]
    texts += [o.path_prefix for o in props.output_directories]
    texts += [v.value for v in props.environment_variables]
    if props.job_preparation is not None:
        texts.append(props.job_preparation.command_line)
    if props.std_out_err_path_prefix:
        texts.append(props.std_out_err_path_prefix)
    used = set().union(*(referenced_vars(t) for t in texts))
    for name in sorted(used):
        if name.startswith("AZ_BATCHAI_") and name not in defined:
            yield f"${name} is used but not defined for this job"
