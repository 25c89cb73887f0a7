"""Money: the current price book, job estimates, the spend ledger, channel budgets, reports."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.core.errors import NotAllowed, UserError
from services.core.ports import Clock, Store
from services.jobs.lifecycle import ACTIVE_STATES
from services.models import Actor, Attempt, Cluster, Job, LedgerEntry
from services.spend.pricing import (
    Estimate,
    Price,
    PriceTable,
    cost_so_far,
    estimate_capacity,
    estimate_job,
    money,
    to_hours,
)

RUNNING = ACTIVE_STATES


class PriceBook:
    """The price table in force: the bundled one, replaced when a refresh brings newer prices."""

    def __init__(self, table: PriceTable) -> None:
        self.table = table

    def price_of(self, cluster: Cluster) -> Price:
        """Unknown VM sizes raise a UserError naming close matches: never a $0 estimate."""
        return self.table.get_price(cluster.vm_size, spot=cluster.vm_priority == "lowpriority")

    def gpus_of(self, vm_size: str) -> int:
        """The GPUs one node of `vm_size` has (0 for a size the table does not know)."""
        try:
            return self.table.get_price(vm_size).gpus
        except UserError:
            return 0


@dataclass(frozen=True)
class SpendRow:
    key: str
    jobs: int
    node_hours: Decimal
    usd: Decimal


def month_bounds(month: str | None, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of a `YYYY-MM` month in UTC (this month when None)."""
    if month is None:
        start = datetime(now.year, now.month, 1, tzinfo=UTC)
    else:
        try:
            start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        except ValueError:
            raise UserError(f"{month!r} is not a month (YYYY-MM)") from None
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


class SpendService:
    def __init__(
        self,
        *,
        store: Store,
        prices: PriceBook,
        clock: Clock,
        default_budgets: dict[str, Decimal] | None = None,
    ) -> None:
        self._store = store
        self.prices = prices
        self._clock = clock
        self._default_budgets = dict(default_budgets or {})

    def estimate(self, cluster: Cluster, *, nodes: int, hours: timedelta | Decimal) -> Estimate:
        return estimate_job(self.prices.price_of(cluster), nodes=nodes, hours=hours)

    def estimate_capacity(
        self, cluster: Cluster, *, nodes: int, hours: timedelta | Decimal
    ) -> Estimate:
        """Standing capacity: `nodes` of the cluster (possibly none) for `hours`."""
        return estimate_capacity(self.prices.price_of(cluster), nodes=nodes, hours=hours)

    def estimate_entry(self, job: Job, cluster: Cluster, estimate: Estimate) -> LedgerEntry:
        return LedgerEntry(
            at=self._clock.now(),
            kind="estimate",
            job_id=job.id,
            user=job.requester,
            channel=job.conversation.channel if job.conversation else None,
            cluster=cluster.name,
            vm_size=cluster.vm_size,
            nodes=job.node_count,
            hours=estimate.hours,
            usd=estimate.total,
        )

    def actual_entry(self, job: Job, vm_size: str) -> LedgerEntry | None:
        """What a finished job cost: node-hours × the rate it was priced at."""
        if job.node_rate is None or job.started_at is None or job.ended_at is None:
            return None
        elapsed = job.ended_at - job.started_at
        return LedgerEntry(
            at=job.ended_at,
            kind="actual",
            job_id=job.id,
            user=job.requester,
            channel=job.conversation.channel if job.conversation else None,
            cluster=job.cluster,
            vm_size=vm_size,
            nodes=job.node_count,
            hours=to_hours(elapsed),
            usd=cost_so_far(job.node_rate, nodes=job.node_count, elapsed=elapsed),
        )

    def attempt_cost(
        self, job: Job, *, started: datetime | None, ended: datetime
    ) -> Decimal | None:
        """What one attempt cost: its node-hours × the rate the job was priced at."""
        if job.node_rate is None:
            return None
        elapsed = timedelta(0) if started is None else max(timedelta(0), ended - started)
        return cost_so_far(job.node_rate, nodes=job.node_count, elapsed=elapsed)

    def attempt_entry(self, job: Job, attempt: Attempt, vm_size: str) -> LedgerEntry | None:
        """The actual cost of an attempt whose nodes were lost; the last attempt's comes with
        the job's end (actual_entry), so every attempt is charged once."""
        if attempt.usd is None:
            return None
        return LedgerEntry(
            at=attempt.ended_at,
            kind="actual",
            job_id=job.id,
            user=job.requester,
            channel=job.conversation.channel if job.conversation else None,
            cluster=job.cluster,
            vm_size=vm_size,
            nodes=job.node_count,
            hours=to_hours(attempt.duration),
            usd=attempt.usd,
        )

    async def month_spend(self, channel: str | None, *, month: str | None = None) -> Decimal:
        """Actual cost of jobs that ended this month, plus what running jobs have cost so far."""
        total = sum(
            (
                r.usd
                for r in await self.report(by="channel", month=month)
                if channel is None or r.key == channel
            ),
            Decimal(0),
        )
        return money(total)

    async def report(self, *, by: str, month: str | None = None) -> list[SpendRow]:
        now = self._clock.now()
        start, end = month_bounds(month, now)
        async with self._store.unit() as uow:
            entries = await uow.ledger.list(since=start, until=end, kind="actual")
            running = await uow.jobs.list(states=RUNNING, include_deleted=True)
        rows: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        counted: dict[str, set[str]] = defaultdict(set)  # a retried job has an entry per attempt

        def add(key: str | None, job_id: str, node_hours: Decimal, usd: Decimal) -> None:
            row = rows[key or "(none)"]
            counted[key or "(none)"].add(job_id)
            row[0] += node_hours
            row[1] += usd

        for e in entries:
            add(_key(by, e.user, e.channel, e.cluster), e.job_id, e.hours * e.nodes, e.usd)
        if start <= now < end:  # running jobs accrue into the current month
            for job in running:
                if job.node_rate is None or job.started_at is None:
                    continue
                elapsed = now - job.started_at
                channel = job.conversation.channel if job.conversation else None
                usd = cost_so_far(job.node_rate, nodes=job.node_count, elapsed=elapsed)
                add(
                    _key(by, job.requester, channel, job.cluster),
                    job.id,
                    to_hours(elapsed) * job.node_count,
                    usd,
                )
        return sorted(
            (SpendRow(k, len(counted[k]), v[0], money(v[1])) for k, v in rows.items()),
            key=lambda r: (-r.usd, r.key),
        )

    async def budget(self, channel: str | None) -> Decimal | None:
        if channel is None:
            return None
        async with self._store.unit() as uow:
            stored = await uow.ledger.get_budget(channel)
        return stored if stored is not None else self._default_budgets.get(channel)

    async def set_budget(self, channel: str, amount: Decimal, *, actor: Actor) -> Decimal:
        if not actor.is_admin:
            raise NotAllowed("only an admin may set a budget")
        async with self._store.unit() as uow:
            await uow.ledger.set_budget(channel, money(amount), actor.user, self._clock.now())
            await uow.commit()
        return money(amount)


def _key(by: str, user: str, channel: str | None, cluster: str) -> str | None:
    return {"user": user, "channel": channel, "cluster": cluster}[by]
