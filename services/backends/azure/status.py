"""A job's status, read from its node runners' files on the control share: exited (the first
failure decides), lost (cluster deleted, node evicted or unusable, heartbeats stopped), a launch
that never reported (asked of the run command only then), and the end kept in `final.json`.

Only the run command's instance view of a node that has not started is asked of ARM; the cluster's
VMs come from the snapshot the poll cycle shares (`scalesets`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from services.backends.azure.config import AzureConfig
from services.backends.azure.control import ControlRecords, JobInfo, status_json
from services.backends.azure.runcommands import RunCommands
from services.backends.azure.scalesets import ScaleSets
from services.backends.noderun import gpu
from services.backends.noderun import runner as noderunner
from services.backends.noderun.launch import NodeRun, exited_status, from_epoch
from services.backends.noderun.specs import TERMINATE
from services.core.errors import BatchAIError, NotFound
from services.core.ports import RunStatus
from services.models import FileEntry, GpuUse

log = logging.getLogger(__name__)


def _int(text: str | None) -> int | None:
    """A status number; None while absent or half-written (Files writes are not atomic)."""
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


class JobStatus:
    """get_job_status for the backend; what a poll learns (start times, running) is kept."""

    def __init__(
        self,
        config: AzureConfig,
        *,
        control: ControlRecords,
        scalesets: ScaleSets,
        runcommands: RunCommands,
        wall_time: Callable[[], float],
    ) -> None:
        self._config = config
        self._control = control
        self._scalesets = scalesets
        self._runcommands = runcommands
        self._now = wall_time

    async def _node_run(self, job: JobInfo, index: int, names: Mapping[str, FileEntry]) -> NodeRun:
        base = ("jobs", job.job_id, f"node-{index}")

        async def text(name: str) -> str | None:
            return (
                await self._control.read(self._control.loc(*base, name)) if name in names else None
            )

        code, reason, ended = await asyncio.gather(
            text(noderunner.EXIT_CODE), text(noderunner.REASON), text(noderunner.ENDED)
        )
        started = job.started.get(index)
        if started is None and noderunner.STARTED in names:
            started = _float(await text(noderunner.STARTED))
            if started is not None:
                job.started[index] = started
        phase = "running" if index in job.running else None
        if code is None and phase is None and noderunner.PHASE in names:
            phase = await text(noderunner.PHASE)
            if phase == "running":
                job.running.add(index)
        return NodeRun(
            index=index,
            alive=_int(code) is None and noderunner.PID in names,
            pending=noderunner.PID not in names and _int(code) is None,
            exit_code=_int(code),
            reason=reason or "",
            phase=phase,
            started=started,
            ended=_float(ended),
        )

    async def get_job_status(self, job_id: str) -> RunStatus:
        job = await self._control.load(job_id)
        if job is None:
            raise NotFound(f"job {job_id} is not known to the azure backend")
        if job.final is not None:
            if not job.cleaned:
                await self._finish(job, job.final)
            return job.final
        listings = await asyncio.gather(
            *(self._control.node_files(job_id, i) for i in range(len(job.instances)))
        )
        runs = list(
            await asyncio.gather(*(self._node_run(job, i, n) for i, n in enumerate(listings)))
        )
        started = min((r.started for r in runs if r.started is not None), default=None)
        if all(r.exit_code is not None for r in runs):
            return await self._finish(job, exited_status(runs))
        lost = await self._lost(job, runs, listings)
        if lost is not None:
            detail, retryable = lost
            status = RunStatus(
                phase="lost",
                detail=detail,
                started_at=from_epoch(started),
                ended_at=from_epoch(self._now()),
                retryable=retryable,
            )
            await self._control.write(
                self._control.loc("jobs", job_id, TERMINATE), ""
            )  # stop the others
            return await self._finish(job, status)
        waited = self._now() - job.launched_at
        nodes = await self._positions(job)
        if any(r.pending for r in runs):
            # A runner starts within a second of its run command; ask ARM only about a late one.
            if waited >= self._config.launch_check_seconds and await self._failed_launch(job, runs):
                return await self.get_job_status(job_id)
            return RunStatus(phase="preparing", started_at=from_epoch(started), nodes=nodes)
        preparing = any(r.phase in (None, "prep") for r in runs if r.exit_code is None)
        if preparing:
            return RunStatus(phase="preparing", started_at=from_epoch(started), nodes=nodes)
        return RunStatus(
            phase="running",
            started_at=from_epoch(started),
            gpu=await self._gpu_use(job, runs, listings),
            nodes=nodes,
        )

    async def _positions(self, job: JobInfo) -> tuple[int, ...] | None:
        """Where the job's VMs are in the scale set's list now (the cycle's shared snapshot):
        a deleted VM before them (evicted) moves them down, and the dispatcher must know."""
        snap = await self._scalesets.snapshot(job.cluster)
        at = {vm.instance_id: i for i, vm in enumerate(snap.vms)}
        if not all(instance in at for instance in job.instances):
            return None  # one is gone: the job is lost, and says so
        return tuple(at[instance] for instance in job.instances)

    async def _gpu_use(
        self, job: JobInfo, runs: Sequence[NodeRun], listings: Sequence[Mapping[str, FileEntry]]
    ) -> GpuUse | None:
        """The running nodes' GPU samples: the listing the poll made already gives each file's
        size, so a sample costs one ranged read per node and no ARM call."""

        async def sample(index: int) -> gpu.NodeGpu | None:
            entry = listings[index].get(noderunner.GPU)
            if entry is None or entry.size <= 0 or entry.size > gpu.MAX_BYTES:
                return None
            loc = self._control.loc("jobs", job.job_id, f"node-{index}", noderunner.GPU)
            try:
                return gpu.parse(await self._control.share.read_range(loc, 0, entry.size))
            except NotFound:
                return None

        found = await asyncio.gather(*(sample(r.index) for r in runs if r.exit_code is None))
        return gpu.combine([s for s in found if s is not None])

    async def _lost(
        self, job: JobInfo, runs: Sequence[NodeRun], listings: Sequence[Mapping[str, FileEntry]]
    ) -> tuple[str, bool] | None:
        """Why the job cannot finish (its cluster or a node is gone) and whether another
        attempt on other nodes could (a node went, the cluster did not), or None."""
        snap = await self._scalesets.snapshot(job.cluster)
        if not snap.exists:
            return f"cluster {job.cluster} was deleted while the job ran", False
        vms = snap.by_instance()
        for run in runs:
            if run.exit_code is not None:
                continue
            vm = vms.get(job.instances[run.index])
            if vm is None:
                how = "evicted (Spot capacity reclaimed)" if job.spot else "deleted"
                return f"node {run.index} (instance {job.instances[run.index]}) was {how}", True
            if vm.state in ("unusable", "leaving"):
                return f"node {run.index} ({vm.name}) became unusable: {vm.detail}", True
            beat = listings[run.index].get(noderunner.HEARTBEAT)
            if run.alive and beat is not None and beat.modified is not None:
                silent = self._now() - beat.modified.timestamp()
                if silent > self._config.heartbeat_timeout:
                    return f"node {run.index} ({vm.name}) stopped sending heartbeats", True
        return None

    async def _failed_launch(self, job: JobInfo, runs: Sequence[NodeRun]) -> bool:
        """Ask the run command of each unstarted node; end the nodes whose launch failed."""
        ended = False
        for run in runs:
            if not run.pending:
                continue
            reason = await self._runcommands.launch_problem(job, run.index)
            if reason is not None:
                await self._end_node(job, run.index, noderunner.EXIT_LAUNCH_ERROR, reason)
                ended = True
        if ended:
            await self._control.write(self._control.loc("jobs", job.job_id, TERMINATE), "")
        return ended

    async def _end_node(self, job: JobInfo, index: int, code: int, reason: str) -> None:
        """Write a node's end as its runner would have (exit_code last)."""
        base = ("jobs", job.job_id, f"node-{index}")
        for name, text in noderunner.end_files(code, reason, self._now()):
            await self._control.write(self._control.loc(*base, name), text)

    async def _finish(self, job: JobInfo, status: RunStatus) -> RunStatus:
        """Keep the end (on the share too, for a restarted bot) and delete the run commands."""
        job.final = status
        try:
            await asyncio.gather(
                *(
                    self._runcommands.delete_run_command(job, i, f"job-{job.job_id}-{i}")
                    for i in range(len(job.instances))
                )
            )
            job.cleaned = True
        except BatchAIError as err:
            log.warning("job %s: run commands not deleted yet: %s", job.job_id, err)
        await self._control.write(
            self._control.loc("jobs", job.job_id, "final.json"),
            self._control.seal(status_json(status, job.cleaned)),
        )
        return status
