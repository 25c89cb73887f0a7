"""GPU spend approvals: the workflow (idempotent decisions, expiry, extensions). Whether a request
is needed is decided in services/spend/gate.py, who may decide it in approvals/policy.py. Every
answer is a typed outcome; handlers/views.py words it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum

from services.access.reads import JobReaders
from services.core.errors import NotAllowed, NotFound, NotOwner, UserError
from services.core.events import ApprovalDecided, ApprovalRequested, Event, JobNote
from services.core.ports import Clock, Store
from services.core.spans import say_span
from services.jobs.lifecycle import JobState, advance, finished_event
from services.models import Actor, Approval, AuditEntry, Job, Vote
from services.spend.approvals.lifecycle import ApprovalState, decide
from services.spend.approvals.policy import Approvers, MembersOf, NotApprover
from services.spend.gate import (
    Allowed,
    ApprovalPolicy,
    Assessment,
    NeedsApproval,
    Refused,
    SpendGate,
)

__all__ = ["ApprovalPolicy", "ApprovalService", "Assessment", "Decision", "Outcome"]


class Decision(StrEnum):
    """What a vote came to."""

    DECIDED = "decided"  # this vote (or the expiry, or a withdrawal) closed the request
    COUNTED = "counted"  # an approval counted; `missing` more are needed
    ALREADY = "already"  # decided before: see the approval's state and votes
    EXPIRED = "expired"  # it expired before this vote
    REPEATED = "repeated"  # this approver had voted on it already


@dataclass(frozen=True)
class Outcome:
    """What a click or a command did: `applied` is False when it changed nothing. `by` and
    `reason` say who closed or counted it, and why (a denial)."""

    approval: Approval
    applied: bool
    decision: Decision
    by: str | None = None
    reason: str | None = None
    missing: int = 0


class Extended(StrEnum):
    """What an Extend click came to."""

    NOT_RUNNING = "not_running"
    CLUSTER_GONE = "cluster_gone"
    REFUSED = "refused"  # `detail` says why
    WAITING = "waiting"  # a request is waiting already
    ASKED = "asked"  # a request now waits for the approvers; `detail` is the estimate
    EXTENDED = "extended"  # at once, by `hours`
    RACED = "raced"  # extended already by another click


@dataclass(frozen=True)
class Extension:
    """The outcome of extend_job(): `detail` is a refusal or the estimate's formula."""

    result: Extended
    job: Job | None = None
    detail: str = ""
    hours: timedelta | None = None
    approvers: Approvers | None = None


class ApprovalService:
    def __init__(
        self,
        *,
        store: Store,
        gate: SpendGate,
        clock: Clock,
        members_of: MembersOf | None = None,
        readers: JobReaders | None = None,
    ) -> None:
        self._store = store
        self._readers = readers or JobReaders()
        self.gate = gate
        self.policy = gate.policy
        self.approvers = Approvers(
            frozenset(self.policy.approvers), frozenset(self.policy.approver_groups), members_of
        )
        self._clock = clock

    # -- creating ----------------------------------------------------------------------------

    def new_approval(
        self,
        *,
        job: Job,
        kind: str,
        estimate: Decimal,
        formula: str,
        assessment: Assessment,
        extra_hours: Decimal | None = None,
        month_spend: Decimal | None = None,
        budget: Decimal | None = None,
        requester: str | None = None,
    ) -> Approval:
        now = self._clock.now()
        channel = job.conversation.channel if job.conversation else None
        return Approval(
            id=uuid.uuid4().hex,
            job_id=job.id,
            kind=kind,
            requester=requester or job.requester,
            channel=channel,
            estimate=estimate,
            formula=formula,
            reasons=assessment.reasons,
            required=assessment.required,
            state=ApprovalState.PENDING,
            created_at=now,
            expires_at=now + self.policy.expiry,
            extra_hours=extra_hours,
            month_spend=month_spend,
            budget=budget,
        )

    # -- deciding ----------------------------------------------------------------------------

    async def approve(self, approval_id: str, *, actor: Actor) -> Outcome:
        return await self._decide(approval_id, actor=actor, decision="approve", reason=None)

    async def deny(self, approval_id: str, *, actor: Actor, reason: str) -> Outcome:
        reason = " ".join(reason.split())[:500]
        if not reason:
            raise UserError("say why: a denial needs a reason")
        return await self._decide(approval_id, actor=actor, decision="deny", reason=reason)

    async def list_approvals(
        self, *, actor: Actor, include_decided: bool = False
    ) -> list[Approval]:
        """The requests `actor` may see: all of them for admins and approvers (who decide
        them), else those of the jobs `actor` may read (see JobReaders)."""
        async with self._store.unit() as uow:
            found = await uow.approvals.list(state=None if include_decided else "pending")
        if actor.is_admin or await self._is_approver(actor.user):
            return found
        async with self._store.unit() as uow:
            every_job = await uow.jobs.list()
        jobs = await self._readers.visible(every_job, actor)
        readable = {job.id for job in jobs}
        return [a for a in found if a.job_id in readable]

    async def get_approval(self, approval_id: str) -> Approval:
        async with self._store.unit() as uow:
            approval = await uow.approvals.get(approval_id)
        if approval is None:
            raise NotFound(f"no approval request {approval_id}")
        return approval

    async def _decide(
        self, approval_id: str, *, actor: Actor, decision: str, reason: str | None
    ) -> Outcome:
        approval = await self.get_approval(approval_id)
        await self._check_approver(approval, actor, decision)
        if approval.state != "pending":
            return Outcome(approval, False, Decision.ALREADY)
        now = self._clock.now()
        if now >= approval.expires_at:
            await self._expire(approval)
            return Outcome(await self.get_approval(approval_id), False, Decision.EXPIRED)
        async with self._store.unit() as uow:
            voted = await uow.approvals.add_vote(
                approval.id, Vote(actor.user, decision, now, reason)
            )
            await uow.commit()
        if not voted:
            fresh = await self.get_approval(approval_id)
            if fresh.state != "pending":
                return Outcome(fresh, False, Decision.ALREADY)
            return Outcome(fresh, False, Decision.REPEATED)
        await self._audit(actor, f"{decision} {approval.kind}", approval, reason)
        fresh = await self.get_approval(approval_id)
        if fresh.state != "pending":  # decided while this vote was on its way
            return Outcome(fresh, False, Decision.ALREADY)
        if decision == "deny":
            return await self._close(fresh, "denied", actor, reason)
        if len(fresh.approvers) < fresh.required:
            event = ApprovalDecided(
                job_id=fresh.job_id,
                approval_id=fresh.id,
                state="pending",
                by=actor.user,
                reason=None,
            )
            async with self._store.unit() as uow:
                uow.emit(event)
                await uow.commit()
            missing = fresh.required - len(fresh.approvers)
            return Outcome(fresh, True, Decision.COUNTED, by=actor.user, missing=missing)
        return await self._close(fresh, "approved", actor, None)

    async def _close(
        self, approval: Approval, state: str, actor: Actor | None, reason: str | None
    ) -> Outcome:
        """Decide once: a second closer finds the request decided and changes nothing."""
        job = await self._get_job(approval.job_id)
        now = self._clock.now()
        events: list[Event] = [
            ApprovalDecided(
                job_id=approval.job_id,
                approval_id=approval.id,
                state=state,
                by=actor.user if actor else None,
                reason=reason,
            )
        ]
        moves = []  # a sweep's approval moves all of its jobs that wait for it
        held = [job] if job is not None else []
        if job is not None and approval.kind == "sweep" and job.sweep_id is not None:
            async with self._store.unit() as uow:
                held = await uow.jobs.list(sweep_id=job.sweep_id)
        for waiting in held if approval.kind in ("job", "sweep", "retry") else ():
            if waiting.state is not JobState.PENDING_APPROVAL:
                continue
            target = {"approved": JobState.QUEUED, "denied": JobState.DENIED}.get(
                state, JobState.EXPIRED
            )
            detail = _detail(state, actor, reason)
            if approval.kind == "retry" and target is not JobState.QUEUED:
                # The job ran (and was charged) before its nodes were lost: it failed.
                target = JobState.FAILED
                detail = f"its nodes were lost and the retry was {detail}"
            step = advance(
                waiting,
                target,
                detail=detail,
                queued_at=now if target is JobState.QUEUED else None,
                error=None if target is JobState.QUEUED else detail,
                ended_at=None if target is JobState.QUEUED else now,
            )
            if step is not None:
                moves.append((step.job, step.transition))
                events += step.events
                if step.job.state.finished:
                    events.append(finished_event(step.job, ()))
        extend_by = None
        if job is not None and approval.kind == "extend" and state == "approved":
            extend_by = timedelta(hours=float(approval.extra_hours or 0))
            note = f"limit extended by {_hours(extend_by)} (approved)"
            events.append(JobNote(job_id=job.id, cluster=job.cluster, text=note))
        decision = decide(approval, ApprovalState(state))
        async with self._store.unit() as uow:
            closed = await uow.approvals.decide(approval.id, decision, now)
            for moved, job_move in moves:
                if closed:
                    closed = await uow.jobs.move(moved, job_move)  # it moved: decide nothing
            if closed and extend_by is not None:
                await uow.jobs.extend_wall_clock(approval.job_id, extend_by)
            if closed:
                uow.emit(*events, at=now)
                await uow.commit()
        fresh = await self.get_approval(approval.id)
        if not closed:
            return Outcome(fresh, False, Decision.ALREADY)
        by = actor.user if actor else None
        return Outcome(fresh, True, Decision.DECIDED, by=by, reason=reason)

    async def extend_job(self, job_id: str, *, actor: Actor) -> Extension:
        """More wall-clock time for a running job, once per limit warning: at once when the
        gate allows the job's whole estimate after it, else through a new approval request."""
        async with self._store.unit() as uow:
            job = await uow.jobs.get(job_id)
            cluster = None if job is None else await uow.clusters.get(job.cluster)
        if job is None or job.state is not JobState.RUNNING:
            return Extension(Extended.NOT_RUNNING, job)
        if actor.user != job.requester and not actor.is_admin:
            raise NotOwner(job.requester, f"extend {job.name}")
        if cluster is None:
            return Extension(Extended.CLUSTER_GONE, job)
        commitment = self.gate.extension(job, cluster, now=self._clock.now())
        if isinstance(commitment, Refused):
            return Extension(Extended.REFUSED, job, commitment.reason)
        if await self._pending(job.id):
            return Extension(Extended.WAITING, job)
        verdict = await self.gate.assess(commitment, actor=actor)
        extra = self.policy.extend_by
        formula = commitment.estimate.formula()
        if isinstance(verdict, Refused):
            return Extension(Extended.REFUSED, job, verdict.reason)
        if isinstance(verdict, NeedsApproval):
            approval = self.new_approval(
                job=job,
                kind="extend",
                estimate=commitment.estimate.total,
                formula=formula,
                assessment=verdict.assessment,
                extra_hours=Decimal(extra.total_seconds()) / 3600,
                month_spend=verdict.month_spend,
                budget=verdict.budget,
                requester=actor.user,  # whoever asked may not approve it (nor the job's owner)
            )
            async with self._store.unit() as uow:
                # One pending extension per job: the check and the insert in one transaction.
                if await uow.approvals.list(state="pending", job_id=job.id, kind="extend"):
                    return Extension(Extended.WAITING, job)
                await uow.approvals.add(approval)
                uow.emit(
                    ApprovalRequested(job_id=job.id, approval_id=approval.id),
                    at=approval.created_at,
                )
                await uow.commit()
            return Extension(Extended.ASKED, job, formula, approvers=self.approvers)
        assert isinstance(verdict, Allowed)
        note = JobNote(
            job_id=job.id,
            cluster=job.cluster,
            text=f"extended the limit by {_hours(extra)} (now {formula})",
            by=actor.user,
        )
        async with self._store.unit() as uow:
            if not await uow.jobs.extend_wall_clock(job.id, extra, expect=job.max_wall_clock):
                return Extension(Extended.RACED, job)
            uow.emit(note)
            await uow.commit()
        return Extension(Extended.EXTENDED, job, formula, hours=extra)

    async def withdraw(self, job: Job, *, actor: Actor) -> Job:
        """The requester (or an admin) takes a waiting request back: the job ends denied. The
        job's own request first (a retry's, say); a sweep job without one waits for the sweep's
        request, which is its first job's, and withdrawing that ends all of the sweep's jobs."""
        pending = await self._pending(job.id)
        if not pending and job.sweep_id is not None:
            async with self._store.unit() as uow:
                first = (await uow.jobs.list(sweep_id=job.sweep_id))[0].id
            pending = [a for a in await self._pending(first) if a.kind == "sweep"]
        for approval in pending:
            await self._close(approval, "denied", actor, "withdrawn")
        return await self._get_job(job.id) or job

    async def expire_due(self) -> int:
        """Deny, with a message, every request nobody decided in time."""
        now = self._clock.now()
        count = 0
        async with self._store.unit() as uow:
            pending = await uow.approvals.list(state="pending")
        for approval in pending:
            if now >= approval.expires_at:
                count += await self._expire(approval)
        return count

    async def _expire(self, approval: Approval) -> int:
        outcome = await self._close(approval, "expired", None, None)
        return 1 if outcome.applied else 0

    async def _check_approver(self, approval: Approval, actor: Actor, decision: str) -> None:
        """Refusals are audited: who tried to decide what, and why they could not."""
        if actor.user in await self._parties(approval):
            verb = "approve" if decision == "approve" else "deny"
            refusal = f"you cannot {verb} your own request"
            refused: NotAllowed = NotAllowed(refusal)
        elif await self._is_approver(actor.user):
            return
        else:
            refused = NotApprover(self.approvers)
        await self._audit(actor, f"{decision} {approval.kind}", approval, str(refused), "denied")
        raise refused

    async def _parties(self, approval: Approval) -> set[str]:
        """Who asked and whose job it is: neither may decide, whoever clicked Extend."""
        job = await self._get_job(approval.job_id)
        return {approval.requester} | ({job.requester} if job is not None else set())

    async def _is_approver(self, user: str) -> bool:
        return await self.approvers.includes(user)

    async def _audit(
        self,
        actor: Actor,
        action: str,
        approval: Approval,
        detail: str | None,
        outcome: str = "allowed",
    ) -> None:
        entry = AuditEntry(
            at=self._clock.now(),
            actor=actor.user,
            action=action,
            outcome=outcome,
            channel=actor.conversation.channel if actor.conversation else None,
            target=approval.job_id,
            detail=detail,
        )
        async with self._store.unit() as uow:
            await uow.audit.add(entry)
            await uow.commit()

    async def _get_job(self, job_id: str) -> Job | None:
        async with self._store.unit() as uow:
            return await uow.jobs.get(job_id)

    async def _pending(self, job_id: str) -> list[Approval]:
        async with self._store.unit() as uow:
            return await uow.approvals.list(state="pending", job_id=job_id)


def _detail(state: str, actor: Actor | None, reason: str | None) -> str:
    """The job's stored reason, plain text (views escape it; the decider is mentioned by the
    approval's own message, from its votes)."""
    if state == "expired":
        return "approval request expired"
    by = f" by {actor.user}" if actor else ""
    return f"{state}{by}" + (f": {reason}" if reason else "")


def _hours(delta: timedelta) -> str:
    return say_span(delta)
