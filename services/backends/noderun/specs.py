"""The one RunnerSpec builder: a job's launch plan -> each node's runner spec, and each planned
process -> what the runner runs (on the host or in the job's container), for both backends."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from services.backends.noderun.launch import docker_argv
from services.backends.noderun.runner import ProcessSpec, RunnerSpec
from services.jobspec import LaunchPlan, ProcessPlan

TERMINATE = "terminate"  # in a job's control dir: the user asked to terminate the job
DEADLINE = "deadline"  # in a job's control dir: a later wall-clock deadline (epoch seconds)


def node_dir(control_dir: str, index: int) -> str:
    """Node `index`'s status directory under a job's control directory."""
    return f"{control_dir}/node-{index}"


def runner_spec(
    plan: LaunchPlan,
    *,
    job_id: str,
    index: int,
    count: int,
    control_dir: str,
    process: Callable[[ProcessPlan], ProcessSpec],
    deadline: float,
    grace_seconds: float,
    heartbeat_seconds: float,
    run_as: tuple[int, int] | None = None,
    job_dirs: tuple[str, ...] = (),
    gpu_seconds: float = 30.0,
    journal: bool = False,
) -> RunnerSpec:
    """Node `index`'s runner spec; `process` turns one planned process into what the runner runs."""
    prep = [p for p in plan.preparation if p.node_index == index]
    return RunnerSpec(
        job_id=job_id,
        node_index=index,
        status_dir=node_dir(control_dir, index),
        stdouterr_dir=plan.stdouterr_dir,
        deadline=deadline,
        max_wall_clock=str(plan.max_wall_clock),
        processes=tuple(process(p) for p in plan.processes if p.node_index == index),
        preparation=process(prep[0]) if prep else None,
        grace_seconds=grace_seconds,
        heartbeat_seconds=heartbeat_seconds,
        gpu_seconds=gpu_seconds,
        peers=tuple(node_dir(control_dir, j) for j in range(count) if j != index),
        terminate_file=f"{control_dir}/{TERMINATE}",
        deadline_file=f"{control_dir}/{DEADLINE}",
        run_as=run_as,
        job_dirs=job_dirs,
        execution_log=plan.execution_logs[index] if plan.execution_logs else None,
        job_name=plan.env.get("AZ_BATCHAI_JOB_NAME", ""),
        cluster=plan.env.get("AZ_BATCHAI_CLUSTER_NAME", ""),
        node_id=plan.node_ids[index] if plan.node_ids else f"node-{index}",
        node_count=count,
        job_nodes=plan.node_ids,
        journal=journal,
    )


@dataclass(frozen=True)
class Container:
    """How a job's processes run in its image: the docker CLI, the image and what it mounts."""

    docker: str
    image: str
    volumes: Sequence[str]
    shm_size: str | None = None
    gpus: bool = False  # pass the node's GPUs in when a process has any (AZ_BATCHAI_NUM_GPUS)
    user: tuple[int, int] | None = None  # run as this uid:gid inside (see docker_argv)
    # The docker CLI's DOCKER_CONFIG: the job's own registry login; not passed into the container.
    config_dir: str | None = None


def process_spec(
    proc: ProcessPlan,
    *,
    job_id: str,
    cwd: str,
    env: Mapping[str, str],
    container: Container | None,
) -> ProcessSpec:
    """One planned process as the runner runs it: the node's `env` under the job's own variables,
    on the host or under `docker run` in `container`. A container is named after the job and
    process, and removed with `docker rm -f` when the process must stop: killing the docker CLI
    does not stop its container."""
    job_env = {"PYTHONUNBUFFERED": "1", **proc.env}  # live logs unless the job says otherwise
    wrapper: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    cli_env: dict[str, str] = {}
    if container is not None:
        if container.config_dir is not None:
            cli_env["DOCKER_CONFIG"] = container.config_dir
        name = f"job-{job_id}-{proc.role}-{proc.rank}"
        gpus = int(proc.env.get("AZ_BATCHAI_NUM_GPUS", "0") or 0) if container.gpus else 0
        wrapper = docker_argv(
            docker=container.docker,
            name=name,
            image=container.image,
            argv=(),
            env_names=list(job_env),
            volumes=container.volumes,
            workdir=cwd,
            shm_size=container.shm_size,
            gpus=gpus,
            user=container.user,
        )
        stop = (container.docker, "rm", "-f", name)
    return ProcessSpec(
        rank=proc.rank,
        role=proc.role,
        argv=proc.argv,
        env={**env, **job_env, **cli_env},
        stdout=proc.stdout_name,
        stderr=proc.stderr_name,
        cwd=cwd,
        wrapper=wrapper,
        stop_argv=stop,
        # A wrapper (the docker CLI) needs root and drops privileges itself (`--user`); the
        # runner consults this only when it runs jobs as another user (`run_as`).
        drop=not wrapper,
    )
