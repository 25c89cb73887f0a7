"""The one RunnerSpec builder: a job's launch plan -> each node's runner spec (both backends)."""

from __future__ import annotations

from collections.abc import Callable

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
        peers=tuple(node_dir(control_dir, j) for j in range(count) if j != index),
        terminate_file=f"{control_dir}/{TERMINATE}",
        deadline_file=f"{control_dir}/{DEADLINE}",
        run_as=run_as,
        job_dirs=job_dirs,
    )
