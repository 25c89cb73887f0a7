"""GPU spend approvals: the policy (pure) and the workflow (idempotent decisions, expiry)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from services.errors import NotAllowed, NotFound, UserError
from services.events import ApprovalDecided, ApprovalRequested, Event, JobNote
from services.models import Actor, Approval, AuditEntry, Job, Vote
from services.ports import Clock
from services.pricing import format_usd
from services.spend import SpendService
from services.states import JobState
from services.store import SqlStore
from services.transitions import advance, finished_event

MembersOf = Callable[[str], Awaitable[frozenset[str]]]


@dataclass(frozen=True)
class Assessment:
    needs_approval: bool
    required: int = 1
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApprovalPolicy:
    """Who may spend how much without asking, and who decides when they must ask.

    With no approvers and no approver groups the team runs open: nothing needs approval."""

    default_limit: Decimal = Decimal("50")
    user_limits: Mapping[str, Decimal] = field(default_factory=dict)
    approvers: frozenset[str] = frozenset()
    approver_groups: frozenset[str] = frozenset()
    two_approver_threshold: Decimal | None = Decimal("1000")
    expiry: timedelta = timedelta(hours=24)
    budgets: Mapping[str, Decimal] = field(default_factory=dict)  # channel -> USD per month
    approvals_channel: str | None = None
    warn_before: timedelta = timedelta(minutes=10)
    extend_by: timedelta = timedelta(hours=2)

    @property
    def enabled(self) -> bool:
        return bool(self.approvers or self.approver_groups)

    def limit_for(self, user: str) -> Decimal:
        return self.user_limits.get(user, self.default_limit)

    def assess(
        self, *, requester: str, estimate: Decimal, month_spend: Decimal, budget: Decimal | None
    ) -> Assessment:
        if not self.enabled:
            return Assessment(False)
        reasons = []
        limit = self.limit_for(requester)
        if estimate > limit:
            reasons.append(
                f"{format_usd(estimate)} is above <@{requester}>'s limit of {format_usd(limit)}"
            )
        if budget is not None and month_spend + estimate > budget:
            reasons.append(
                f"this month's spend {format_usd(month_spend)} + {format_usd(estimate)} would "
                f"pass the channel's budget of {format_usd(budget)}"
            )
        if not reasons:
            return Assessment(False)
        threshold = self.two_approver_threshold
        required = 2 if threshold is not None and estimate >= threshold else 1
        return Assessment(True, required, tuple(reasons))

    @classmethod
    def from_json(cls, text: str, *, source: str = "approvals.json") -> ApprovalPolicy:
        """The policy file (manifests/approvals.json); errors name the field."""
        try:
            raw = json.loads(text)
            return cls(
                default_limit=_usd(raw.get("default_limit_usd", "50"), "default_limit_usd"),
                user_limits={
                    str(u): _usd(v, f"user_limits.{u}")
                    for u, v in dict(raw.get("user_limits", {})).items()
                },
                approvers=frozenset(map(str, raw.get("approvers", []))),
                approver_groups=frozenset(map(str, raw.get("approver_groups", []))),
                two_approver_threshold=(
                    None
                    if raw.get("two_approver_threshold_usd") is None
                    else _usd(raw["two_approver_threshold_usd"], "two_approver_threshold_usd")
                ),
                expiry=timedelta(hours=float(raw.get("expiry_hours", 24))),
                budgets={
                    str(c): _usd(v, f"budgets.{c}") for c, v in dict(raw.get("budgets", {})).items()
                },
                approvals_channel=raw.get("approvals_channel"),
                warn_before=timedelta(minutes=float(raw.get("warn_before_minutes", 10))),
                extend_by=timedelta(hours=float(raw.get("extend_hours", 2))),
            )
        except (ValueError, TypeError, AttributeError) as err:
            raise UserError(f"{source}: {err}") from err


def _usd(value: Any, where: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{where}: {value!r} is not an amount in USD") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{where}: {value!r} is not an amount in USD")
    return amount


@dataclass(frozen=True)
class Outcome:
    """What a click or a command did: `applied` is False when it changed nothing."""

    approval: Approval
    applied: bool
    message: str


class ApprovalService:
    def __init__(
        self,
        *,
        store: SqlStore,
        policy: ApprovalPolicy,
        clock: Clock,
        spend: SpendService | None = None,
        members_of: MembersOf | None = None,
    ) -> None:
        self._store = store
        self._spend = spend
        self.policy = policy
        self._clock = clock
        self._members_of = members_of

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
            state="pending",
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

    async def list_approvals(self, *, include_decided: bool = False) -> list[Approval]:
        return await self._store.list_approvals(state=None if include_decided else "pending")

    async def get_approval(self, approval_id: str) -> Approval:
        approval = await self._store.get_approval(approval_id)
        if approval is None:
            raise NotFound(f"no approval request {approval_id}")
        return approval

    async def _decide(
        self, approval_id: str, *, actor: Actor, decision: str, reason: str | None
    ) -> Outcome:
        approval = await self.get_approval(approval_id)
        await self._check_approver(approval, actor, decision)
        if approval.state != "pending":
            return Outcome(approval, False, _already(approval))
        now = self._clock.now()
        if now >= approval.expires_at:
            await self._expire(approval)
            return Outcome(
                await self.get_approval(approval_id),
                False,
                f"this request expired at {approval.expires_at:%Y-%m-%d %H:%M} UTC",
            )
        if not await self._store.add_vote(approval.id, Vote(actor.user, decision, now, reason)):
            fresh = await self.get_approval(approval_id)
            if fresh.state != "pending":
                return Outcome(fresh, False, _already(fresh))
            return Outcome(fresh, False, "you have decided on this request already")
        await self._audit(actor, f"{decision} {approval.kind}", approval, reason)
        fresh = await self.get_approval(approval_id)
        if fresh.state != "pending":  # decided while this vote was on its way
            return Outcome(fresh, False, _already(fresh))
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
            await self._store.add_events([event])
            missing = fresh.required - len(fresh.approvers)
            return Outcome(fresh, True, f"approved by <@{actor.user}>; {missing} more needed")
        return await self._close(fresh, "approved", actor, None)

    async def _close(
        self, approval: Approval, state: str, actor: Actor | None, reason: str | None
    ) -> Outcome:
        """Decide once: a second closer finds the request decided and changes nothing."""
        job = await self._store.get_job(approval.job_id)
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
        moved = None
        expect = None
        if job is not None and approval.kind == "job" and job.state is JobState.PENDING_APPROVAL:
            target = {"approved": JobState.QUEUED, "denied": JobState.DENIED}.get(
                state, JobState.EXPIRED
            )
            detail = _detail(state, actor, reason)
            step = advance(
                job,
                target,
                detail=detail,
                queued_at=now if target is JobState.QUEUED else None,
                error=None if target is JobState.QUEUED else detail,
                ended_at=None if target is JobState.QUEUED else now,
            )
            if step is not None:
                moved, more = step
                events += more
                if moved.state.finished:
                    events.append(finished_event(moved, ()))
                expect = job.state
        extend_by = None
        if job is not None and approval.kind == "extend" and state == "approved":
            extend_by = timedelta(hours=float(approval.extra_hours or 0))
            note = f"limit extended by {_hours(extend_by)} (approved)"
            events.append(JobNote(job_id=job.id, cluster=job.cluster, text=note))
        closed = await self._store.close_approval(
            approval.id, state, now, moved, events, expect_job=expect, extend_by=extend_by
        )
        fresh = await self.get_approval(approval.id)
        if not closed:
            return Outcome(fresh, False, _already(fresh))
        return Outcome(fresh, True, _detail(state, actor, reason))

    async def extend_job(self, job_id: str, *, actor: Actor) -> str:
        """More wall-clock time for a running job: at once within the requester's limit,
        else through a new approval request. Returns what happened, for the user."""
        job = await self._store.get_job(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return "the job is no longer running"
        if actor.user != job.requester and not actor.is_admin:
            raise NotAllowed(f"only <@{job.requester}> or an admin may extend {job.name}")
        if self._spend is None:
            raise UserError("extensions need the price table")
        cluster = await self._store.get_cluster(job.cluster)
        if cluster is None:
            return f"cluster {job.cluster} is gone"
        extra = self.policy.extend_by
        estimate = self._spend.estimate(cluster, nodes=job.node_count, hours=extra)
        channel = job.conversation.channel if job.conversation else None
        month_spend = await self._spend.month_spend(channel)
        budget = await self._spend.budget(channel)
        assessment = self.policy.assess(
            requester=job.requester, estimate=estimate.total, month_spend=month_spend, budget=budget
        )
        if assessment.needs_approval:
            pending = await self._store.list_approvals(state="pending", job_id=job.id)
            if pending:
                return "an extension is already waiting for approval"
            approval = self.new_approval(
                job=job,
                kind="extend",
                estimate=estimate.total,
                formula=estimate.formula(),
                assessment=assessment,
                extra_hours=Decimal(extra.total_seconds()) / 3600,
                month_spend=month_spend,
                budget=budget,
                requester=actor.user,  # whoever asked may not approve it
            )
            if not await self._store.add_extension_approval(
                approval, [ApprovalRequested(job_id=job.id, approval_id=approval.id)]
            ):
                return "an extension is already waiting for approval"
            return f"the extension ({estimate.formula()}) waits for {self.approvers_text()}"
        note = JobNote(
            job_id=job.id,
            cluster=job.cluster,
            text=f"<@{actor.user}> extended the limit by {_hours(extra)} ({estimate.formula()})",
        )
        if not await self._store.extend_wall_clock(job.id, extra, [note]):
            return "the job is no longer running"
        return f"extended by {_hours(extra)}"

    async def withdraw(self, job: Job, *, actor: Actor) -> Job:
        """The requester (or an admin) takes a waiting request back: the job ends denied."""
        for approval in await self._store.list_approvals(state="pending", job_id=job.id):
            await self._close(approval, "denied", actor, "withdrawn")
        return await self._store.get_job(job.id) or job

    async def expire_due(self) -> int:
        """Deny, with a message, every request nobody decided in time."""
        now = self._clock.now()
        count = 0
        for approval in await self._store.list_approvals(state="pending"):
            if now >= approval.expires_at:
                count += await self._expire(approval)
        return count

    async def _expire(self, approval: Approval) -> int:
        outcome = await self._close(approval, "expired", None, None)
        return 1 if outcome.applied else 0

    async def _check_approver(self, approval: Approval, actor: Actor, decision: str) -> None:
        """Refusals are audited: who tried to decide what, and why they could not."""
        if actor.user == approval.requester:
            verb = "approve" if decision == "approve" else "deny"
            refusal = f"you cannot {verb} your own request"
        elif await self._is_approver(actor.user):
            return
        else:
            refusal = f"only {self.approvers_text()} may decide on this"
        await self._audit(actor, f"{decision} {approval.kind}", approval, refusal, "denied")
        raise NotAllowed(refusal)

    async def _is_approver(self, user: str) -> bool:
        if user in self.policy.approvers:
            return True
        for group in sorted(self.policy.approver_groups):
            if self._members_of is not None and user in await self._members_of(group):
                return True
        return False

    async def _audit(
        self,
        actor: Actor,
        action: str,
        approval: Approval,
        detail: str | None,
        outcome: str = "allowed",
    ) -> None:
        await self._store.add_audit(
            AuditEntry(
                at=self._clock.now(),
                actor=actor.user,
                action=action,
                outcome=outcome,
                channel=actor.conversation.channel if actor.conversation else None,
                target=approval.job_id,
                detail=detail,
            )
        )

    def approvers_text(self) -> str:
        users = [f"<@{u}>" for u in sorted(self.policy.approvers)]
        groups = [f"<!subteam^{g}>" for g in sorted(self.policy.approver_groups)]
        return ", ".join(users + groups) or "an approver"


def _already(approval: Approval) -> str:
    if approval.state == "expired":
        return f"this request expired at {approval.expires_at:%Y-%m-%d %H:%M} UTC"
    decided = {"approved": "approve", "denied": "deny"}.get(approval.state)
    who = ", ".join(f"<@{v.approver}>" for v in approval.votes if v.decision == decided)
    return f"already {approval.state}" + (f" by {who}" if who else "")


def _detail(state: str, actor: Actor | None, reason: str | None) -> str:
    if state == "expired":
        return "approval request expired"
    by = f" by <@{actor.user}>" if actor else ""
    return f"{state}{by}" + (f": {reason}" if reason else "")


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h"
