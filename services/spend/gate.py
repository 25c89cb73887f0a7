"""The spend gate: the approval policy (pure) and one `assess()` for every way money is committed.

Submitting a job (also from a schedule), extending one, creating or growing a cluster's standing
capacity and keeping idle nodes all describe what they would commit as a `Commitment` and ask
`SpendGate.assess`; the verdict is allowed, needs approval (with the estimate) or refused."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from services.core.errors import UserError
from services.models import Actor, Cluster, Job
from services.spend.ledger import SpendService
from services.spend.pricing import (
    Estimate,
    cost_so_far,
    disks_usd_per_hour,
    estimate_capacity,
    format_usd,
    money,
)

# Without a policy nothing needs approval; above this the answer says so out loud.
UNGUARDED_NOTICE_USD = Decimal("50")


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
    capacity_horizon: timedelta = timedelta(hours=24)  # standing capacity is priced this long

    @property
    def enabled(self) -> bool:
        return bool(self.approvers or self.approver_groups)

    def limit_for(self, user: str) -> Decimal:
        return self.user_limits.get(user, self.default_limit)

    def assess(
        self,
        *,
        requester: str,
        estimate: Decimal,
        month_spend: Decimal,
        budget: Decimal | None,
        adds: Decimal | None = None,
    ) -> Assessment:
        """`estimate` is judged against the requester's limit; `adds` (default: the estimate),
        what it adds to this month, against the channel's budget."""
        if not self.enabled:
            return Assessment(False)
        reasons = []
        limit = self.limit_for(requester)
        if estimate > limit:
            reasons.append(
                f"{format_usd(estimate)} is above the requester's limit of {format_usd(limit)}"
            )
        added = estimate if adds is None else adds
        if budget is not None and month_spend + added > budget:
            reasons.append(
                f"this month's spend {format_usd(month_spend)} + {format_usd(added)} would "
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
                capacity_horizon=_hours(raw.get("capacity_horizon_hours", 24)),
            )
        except (ValueError, TypeError, AttributeError) as err:
            raise UserError(f"{source}: {err}") from err


def _usd(value: Any, where: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{where}: {value!r} is not an amount in USD") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{where}: {value!r} is not an amount in USD") from None
    return amount


def _hours(value: Any) -> timedelta:
    hours = float(value)
    if not 0 < hours <= 24 * 31:
        raise ValueError(f"capacity_horizon_hours: {value!r} must be above 0 and at most 744")
    return timedelta(hours=hours)


@dataclass(frozen=True)
class Commitment:
    """Money about to be committed: what is judged, whose limit and which budget apply."""

    kind: str  # job (submit, scheduled run) | extend | retry (lost nodes) | capacity | server
    requester: str  # whose limit applies: the job's owner, or who changes the cluster
    channel: str | None
    estimate: Estimate  # the whole amount judged (a job's estimate after an extension)
    adds: Decimal  # what it adds to this month's spend (the budget check)
    before: Decimal = Decimal(0)  # capacity: the standing cost before; retry: spent so far

    def formula(self) -> str:
        """What an approval request shows: the estimate's formula, and for a retry what the
        earlier attempts cost before it."""
        if self.kind != "retry":
            return self.estimate.formula()
        attempt = replace(self.estimate, total=self.adds)
        return (
            f"{format_usd(self.before)} spent + {attempt.formula()} "
            f"= {format_usd(self.estimate.total)}"
        )


@dataclass(frozen=True)
class Allowed:
    commitment: Commitment
    unguarded: bool = False  # no approval policy, and the amount is above the notice level


@dataclass(frozen=True)
class NeedsApproval:
    commitment: Commitment
    assessment: Assessment
    month_spend: Decimal
    budget: Decimal | None


@dataclass(frozen=True)
class Refused:
    commitment: Commitment | None
    reason: str


Verdict = Allowed | NeedsApproval | Refused


def refusal(verdict: Verdict) -> str | None:
    """Why a spend that cannot wait for approval (capacity, Keep) may not go ahead; None: it may."""
    if isinstance(verdict, Allowed):
        return None
    if isinstance(verdict, Refused):
        return verdict.reason
    return "; ".join(verdict.assessment.reasons)


class SpendGate:
    """Where money is committed, this decides: every submit, extension and capacity change."""

    def __init__(self, *, policy: ApprovalPolicy, spend: SpendService) -> None:
        self.policy = policy
        self.spend = spend

    @property
    def guarded(self) -> bool:
        """False without a policy (no approvers): nothing needs approval."""
        return self.policy.enabled

    def unguarded(self, amount: Decimal | None) -> bool:
        """Whether an answer must say that this amount needed nobody's approval."""
        return not self.guarded and amount is not None and amount > UNGUARDED_NOTICE_USD

    async def assess(self, commitment: Commitment, *, actor: Actor) -> Verdict:
        """The one decision: allowed, needs approval (with the estimate), or refused."""
        total = commitment.estimate.total
        if commitment.kind == "capacity" and total <= commitment.before:
            return Allowed(commitment)  # less standing capacity never needs asking
        if not self.guarded:
            return Allowed(commitment, unguarded=self.unguarded(total))
        month_spend = await self.spend.month_spend(commitment.channel)
        budget = await self.spend.budget(commitment.channel)
        assessment = self.policy.assess(
            requester=commitment.requester,
            estimate=total,
            month_spend=month_spend,
            budget=budget,
            adds=commitment.adds,
        )
        if not assessment.needs_approval:
            return Allowed(commitment)
        if commitment.kind in ("capacity", "server"):  # nothing to hold: asked now or refused
            if actor.is_admin:
                return Allowed(commitment)
            return Refused(commitment, _capacity_refusal(commitment, assessment))
        return NeedsApproval(commitment, assessment, month_spend, budget)

    # -- what each way of spending commits --------------------------------------------------

    def job(self, job: Job, cluster: Cluster) -> Commitment:
        """A submit: nodes × rate × the job's wall-clock limit."""
        estimate = self.spend.estimate(cluster, nodes=job.node_count, hours=job.max_wall_clock)
        return Commitment("job", job.requester, _channel(job), estimate, estimate.total)

    def sweep(self, jobs: Sequence[Job], cluster: Cluster) -> Commitment:
        """A sweep's submit: N jobs × each job's estimate, judged as one amount (one approval
        covers the sweep)."""
        first = jobs[0]
        one = self.spend.estimate(cluster, nodes=first.node_count, hours=first.max_wall_clock)
        estimate = one.times(len(jobs))
        return Commitment("job", first.requester, _channel(first), estimate, estimate.total)

    def extension(self, job: Job, cluster: Cluster, *, now: datetime) -> Commitment | Refused:
        """An extension is judged on the job's whole estimate after it, and only once the job
        was warned about this deadline: one extension per warning."""
        deadline = _deadline(job)
        warned = job.wall_clock_warned_at
        if deadline is None or warned is None or warned < deadline - self.policy.warn_before:
            return Refused(
                None,
                f"{job.name} can be extended once it is warned about its limit "
                f"({_minutes(self.policy.warn_before)} min before it), once per warning",
            )
        hours = job.max_wall_clock + self.policy.extend_by
        estimate = self.spend.estimate(cluster, nodes=job.node_count, hours=hours)
        spent = Decimal(0)
        if job.started_at is not None and job.node_rate is not None:
            spent = cost_so_far(job.node_rate, nodes=job.node_count, elapsed=now - job.started_at)
        adds = money(max(Decimal(0), estimate.total - spent))  # the month has the rest already
        return Commitment("extend", job.requester, _channel(job), estimate, adds)

    def retry(self, job: Job, cluster: Cluster, *, spent: Decimal) -> Commitment | None:
        """Another attempt after the job's nodes were lost. The approval (or the allowance) at
        submit covers the job, every attempt included, up to its estimate: None while what was
        spent plus one whole new attempt stays within it. Past it, the whole (spent + the new
        attempt) is judged again, and the new attempt is what it adds to the month."""
        attempt = self.spend.estimate(cluster, nodes=job.node_count, hours=job.max_wall_clock)
        total = money(spent + attempt.total)
        if job.estimate is not None and total <= job.estimate:
            return None
        whole = replace(attempt, total=total)
        return Commitment("retry", job.requester, _channel(job), whole, attempt.total, spent)

    def capacity(
        self,
        *,
        actor: Actor,
        cluster: Cluster,
        nodes_before: int,
        nodes_after: int,
        hours: timedelta | None = None,
    ) -> Commitment:
        """Standing capacity (nodes paid for with no job on them) × the policy's horizon, or
        × `hours` when that is all it buys (Keep on an idle warning)."""
        horizon = hours or self.policy.capacity_horizon
        estimate = self.spend.estimate_capacity(cluster, nodes=nodes_after, hours=horizon)
        before = self.spend.estimate_capacity(cluster, nodes=nodes_before, hours=horizon).total
        channel = actor.conversation.channel if actor.conversation else None
        adds = max(Decimal(0), estimate.total - before)
        return Commitment("capacity", actor.user, channel, estimate, adds, before)

    def server(
        self, *, actor: Actor, vm_size: str, disks: int, disk_gb: int, disk_sku: str
    ) -> Commitment:
        """A file server: one VM and its data disks, paid for from its create to its delete,
        × the policy's horizon."""
        price = self.spend.prices.table.get_price(vm_size)
        rate = price.usd_per_hour + disks_usd_per_hour(disks, disk_gb, disk_sku)
        what = f"{vm_size} + {disks} × {disk_gb} GB {disk_sku} disks"
        estimate = estimate_capacity(
            replace(price, usd_per_hour=rate, sku=what),
            nodes=1,
            hours=self.policy.capacity_horizon,
        )
        channel = actor.conversation.channel if actor.conversation else None
        return Commitment("server", actor.user, channel, estimate, estimate.total)


def _capacity_refusal(commitment: Commitment, assessment: Assessment) -> str:
    hint = (
        " (an auto-scaled cluster with --min 0 costs nothing idle)"
        if commitment.kind == "capacity"
        else " (a file server's VM is paid for until it is deleted)"
    )
    return (
        f"only an admin may commit standing capacity of {commitment.estimate.formula()}: "
        f"{'; '.join(assessment.reasons)}{hint}"
    )


def _channel(job: Job) -> str | None:
    return job.conversation.channel if job.conversation else None


def _deadline(job: Job) -> datetime | None:
    return None if job.started_at is None else job.started_at + job.max_wall_clock


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:g}"
