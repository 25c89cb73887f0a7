"""Button handlers: Logs, Terminate, Refresh, Approve, Deny, Extend, Stop now, Keep 1 h, Scale
down now, and Keep / Stop on an idle-GPU warning.

Parse the payload, call one service, render; the same for Slack and the console."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from handlers import sweepviews, views
from handlers.commands import Reply
from services.access import AccessGuard, Caller
from services.clusters.idle import IdleService
from services.core.errors import BatchAIError
from services.jobs.gpu_idle import GpuIdleService
from services.jobs.service import JobService
from services.jobs.sweeps import SweepService
from services.jobs.tailer import split_lines
from services.models import Actor
from services.spend.approvals.service import ApprovalService

LOG_TAIL_BYTES = 16 * 1024


class ActionHandler:
    def __init__(
        self,
        jobs: JobService,
        now: Callable[[], datetime],
        guard: AccessGuard,
        approvals: ApprovalService | None = None,
        idle: IdleService | None = None,
        *,
        gpu_idle: GpuIdleService | None = None,
        sweeps: SweepService | None = None,
    ) -> None:
        self._gpu_idle = gpu_idle
        self._sweeps = sweeps
        self._guard = guard
        self._jobs = jobs
        self._now = now
        self._approvals = approvals
        self._idle = idle

    async def handle(
        self, action_id: str, value: str, *, caller: Caller, reason: str | None = None
    ) -> Reply:
        """Through the guard first: Keep / Scale down now change a cluster's size, so the rules
        of `cluster resize` apply to them."""
        destructive = action_id in views.IDLE_ACTIONS
        decision = await self._guard.admit(caller, action=action_id, destructive=destructive)
        if not decision.allowed:
            return Reply(views.error(decision.reason), failed=True)
        return await self._press(action_id, value, self._guard.actor(caller), reason)

    async def _press(self, action_id: str, value: str, actor: Actor, reason: str | None) -> Reply:
        try:
            if action_id in (views.ACTION_APPROVE, views.ACTION_DENY, views.ACTION_EXTEND):
                return await self._spend_action(action_id, value, actor, reason)
            if action_id in views.IDLE_ACTIONS:
                return await self._idle_action(action_id, value, actor)
            if action_id in views.GPU_IDLE_ACTIONS:
                return await self._gpu_action(action_id, value, actor)
            if action_id in sweepviews.SWEEP_ACTIONS:
                return await self._sweep_action(action_id, value, actor)
            if action_id == views.ACTION_STOP:
                action_id = views.ACTION_TERMINATE
            if action_id == views.ACTION_LOGS:
                return await self._logs(value, actor)
            if action_id == views.ACTION_TERMINATE:
                job, applied = await self._jobs.terminate_job(actor=actor, job_id=value)
                if not applied:
                    return Reply(views.info(f"job *{job.name}* is already {job.state.value}"))
                return Reply(
                    views.info(f"<@{actor.user}> is terminating *{job.name}*…"), public=True
                )
            if action_id == views.ACTION_REFRESH:
                job = await self._jobs.get_job_by_id(value, actor=actor)
                return Reply(views.status_card(job, now=self._now()))
        except BatchAIError as err:
            return Reply(views.error(views.refusal(err)), failed=True)
        return Reply(views.error(f"unknown action {action_id!r}"), failed=True)

    async def _spend_action(
        self, action_id: str, value: str, actor: Actor, reason: str | None
    ) -> Reply:
        if self._approvals is None:
            return Reply(views.error("approvals are not configured"), failed=True)
        if action_id == views.ACTION_EXTEND:
            return Reply(
                views.extension_reply(await self._approvals.extend_job(value, actor=actor))
            )
        if action_id == views.ACTION_APPROVE:
            outcome = await self._approvals.approve(value, actor=actor)
        else:
            outcome = await self._approvals.deny(value, actor=actor, reason=reason or "")
        return Reply(views.approval_outcome(outcome), failed=not outcome.applied)

    async def _idle_action(self, action_id: str, value: str, actor: Actor) -> Reply:
        if self._idle is None:
            return Reply(views.error("idle scale-down is not running"), failed=True)
        click = self._idle.keep if action_id == views.ACTION_IDLE_KEEP else self._idle.scale_now
        outcome = await click(value, actor=actor)
        return Reply(views.idle_click(outcome), failed=not outcome.applied)

    async def _gpu_action(self, action_id: str, value: str, actor: Actor) -> Reply:
        if self._gpu_idle is None:
            return Reply(views.error("GPU watching is not running"), failed=True)
        keep = action_id == views.ACTION_GPU_KEEP
        click = self._gpu_idle.keep if keep else self._gpu_idle.stop
        outcome = await click(value, actor=actor)
        return Reply(views.gpu_click(outcome), failed=not outcome.applied, public=outcome.applied)

    async def _sweep_action(self, action_id: str, sweep_id: str, actor: Actor) -> Reply:
        """Logs of best, Stop all, Stop losing half. Stopping is `job terminate`'s right (the
        sweep's requester or an admin) and is audited, allowed or refused."""
        if self._sweeps is None:
            return Reply(views.error("sweeps are not available here"), failed=True)
        view = await self._sweeps.get_sweep_by_id(sweep_id, actor=actor)
        if action_id == sweepviews.ACTION_SWEEP_BEST:
            best = self._sweeps.best(view)
            if best is None:
                return Reply(views.info(f"no job of *{view.sweep.name}* reports a metric yet"))
            return await self._logs(best.id, actor)
        half = action_id == sweepviews.ACTION_SWEEP_HALF
        caller = Caller(actor.user, actor.conversation.channel if actor.conversation else None)
        try:
            stopped = await self._sweeps.stop_sweep(view, actor=actor, losing_half=half)
        except BatchAIError as err:
            await self._guard.record(
                caller, action=action_id, outcome="denied", detail=str(err), target=view.sweep.name
            )
            raise
        detail = f"stopped {', '.join(stopped.stopped) or 'nothing'}"
        await self._guard.record(
            caller, action=action_id, outcome="allowed", detail=detail, target=view.sweep.name
        )
        return Reply(sweepviews.sweep_stopped(stopped, by=actor.user, half=half), public=True)

    async def _logs(self, job_id: str, actor: Actor) -> Reply:
        """The last lines of the job's main log (stderr of rank 0, like Batch AI users watched),
        or of the first log that has anything in it."""
        job = await self._jobs.get_job_by_id(job_id, actor=actor)
        if job.layout is None or job.layout.stdouterr is None:
            return Reply(views.info(f"*{job.name}* has no logs yet ({job.state.value})"))
        for name in dict.fromkeys((job.layout.primary_log, *job.layout.log_files)):
            tail, first_line = await self._jobs.tail_file(job, name, LOG_TAIL_BYTES, actor=actor)
            if tail:
                lines: Sequence[str] = split_lines(tail, final=True)[0]
                return Reply(views.log_snippet(name, first_line, lines))
        return Reply(views.info(f"*{job.name}* has not written any log lines yet"))
