"""IdleService: warn about a cluster that pays for nodes nobody uses, then scale it to its minimum.

A cluster is idle-costly when it is steady, has more nodes than its minimum, no job is queued,
preparing, running or terminating on it, and its idle timeout is not 0. After `timeout - lead`
idle (lead: the warning lead, at most half the timeout) its conversation gets one warning with
Keep and Scale-down-now buttons; nobody answering, it is scaled to its minimum at the deadline.
A job arriving cancels the warning. Every state change is stored with the event announcing it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from services.clusters.lifecycle import ClusterState
from services.clusters.service import ClusterService
from services.core.errors import UserError
from services.core.events import idle_warning
from services.core.ports import Clock
from services.jobs.lifecycle import LIVE_STATES
from services.models import Actor, AuditEntry, Cluster, IdleNotice, IdleState
from services.spend.gate import SpendGate, refusal
from services.spend.ledger import PriceBook
from services.store import SqlStore

log = logging.getLogger(__name__)

KEEP = timedelta(hours=1)  # what the Keep button buys
CHECK_SECONDS = 15.0  # how often the scheduler runs check(): the precision of every idle time
BOT = "batchai-bot"  # who the audit log names for automatic scale-downs
STALE = "that warning is no longer current"


@dataclass(frozen=True)
class ClickOutcome:
    """What a Keep / Scale down now click did: `applied` is False when it changed nothing.
    `detail` is plain text about `cluster` (None when the click found no current warning or
    was refused); handlers/views.py words it."""

    applied: bool
    detail: str
    cluster: str | None = None


class IdleService:
    def __init__(
        self,
        *,
        store: SqlStore,
        clusters: ClusterService,
        clock: Clock,
        prices: PriceBook | None = None,
        warn_before: timedelta = timedelta(minutes=5),
        gate: SpendGate | None = None,
    ) -> None:
        self._gate = gate
        self._store = store
        self._clusters = clusters
        self._clock = clock
        self._prices = prices
        self._warn_before = warn_before
        self._lock = asyncio.Lock()  # one decision at a time: a click never races a check

    async def check(self) -> None:
        """The periodic work (scheduler id "idle"): warn, cancel or scale each cluster."""
        async with self._lock:
            now = self._clock.now()
            for cluster in await self._store.list_clusters():
                try:
                    await self._check(cluster, now)
                except Exception:  # one broken cluster must not stop the others
                    log.exception("idle check of cluster %s failed", cluster.name)

    async def keep(self, value: str, *, actor: Actor) -> ClickOutcome:
        """Keep: no scale-down for KEEP; a new warning comes after that if it is still idle."""
        async with self._lock:
            now = self._clock.now()
            cluster = await self._current(value, actor, "idle keep")
            if cluster is None:
                return ClickOutcome(False, STALE)
            refusal = await self._keep_refusal(cluster, actor)
            if refusal is not None:
                await self._audit(actor.user, "idle keep", cluster, "denied", refusal, actor)
                return ClickOutcome(False, refusal)
            until = now + KEEP
            kept = IdleState(since=cluster.idle.since, keep_until=until)
            closing = idle_warning(
                cluster, outcome="kept", by=actor.user, at=now.isoformat(), until=until.isoformat()
            )
            await self._store.update_idle(cluster.name, kept, [closing])
            detail = f"kept at {cluster.target_nodes} nodes until {until:%Y-%m-%d %H:%M} UTC"
            await self._audit(actor.user, "idle keep", cluster, "allowed", detail, actor)
            return ClickOutcome(True, detail, cluster.name)

    async def _keep_refusal(self, cluster: Cluster, actor: Actor) -> str | None:
        """Keep pays for the idle nodes another hour: the spend gate decides, like any spend."""
        if self._gate is None:
            return None
        commitment = self._gate.capacity(
            actor=actor,
            cluster=cluster,
            nodes_before=0,
            nodes_after=cluster.target_nodes - cluster.min_nodes,  # what Keep pays for
            hours=KEEP,
        )
        return refusal(await self._gate.assess(commitment, actor=actor))

    async def scale_now(self, value: str, *, actor: Actor) -> ClickOutcome:
        async with self._lock:
            now = self._clock.now()
            cluster = await self._current(value, actor, "idle scale down")
            if cluster is None:
                return ClickOutcome(False, STALE)
            why_not = await self._scale_down(cluster, now, actor)
            if why_not is None:
                return ClickOutcome(True, f"is scaled down to {_nodes(cluster)}", cluster.name)
            return ClickOutcome(False, f"was not scaled down: {why_not}", cluster.name)

    # -- deciding ------------------------------------------------------------------------------

    async def _check(self, cluster: Cluster, now: datetime, *, may_scale: bool = True) -> None:
        if cluster.state is not ClusterState.STEADY:
            return  # creating, resizing, deleting, failed: nothing to warn about now
        idle = cluster.idle
        timeout = self._clusters.idle_timeout_of(cluster)
        live = await self._store.list_jobs(
            cluster=cluster.name, states=LIVE_STATES, include_deleted=True
        )
        why_not = _not_idle(cluster, timeout, [j.name for j in live])
        if why_not is not None or timeout is None:
            keep = idle.keep_until if idle.keep_until and idle.keep_until > now else None
            await self._settle(cluster, IdleState(keep_until=keep), now, why_not)
            return
        since = idle.since or now
        lead = min(self._warn_before, timeout / 2)
        warn_at = since + timeout - lead
        if idle.keep_until is not None:
            warn_at = max(warn_at, idle.keep_until)
        if idle.warning is None:
            if now >= warn_at:
                await self._warn(cluster, since, max(since + timeout, now + lead), now)
            elif idle.since is None:
                await self._store.update_idle(cluster.name, replace(idle, since=since))
            return
        if now < warn_at:  # the timeout grew since the warning went out
            minutes = f"{timeout.total_seconds() / 60:g}"
            reason = f"the idle timeout is now {minutes} min"
            await self._settle(cluster, IdleState(since=since), now, reason)
        elif now >= idle.warning.deadline and may_scale:
            await self._scale_down(cluster, now, None)

    async def _settle(
        self, cluster: Cluster, state: IdleState, now: datetime, reason: str | None
    ) -> None:
        """Store `state`; a pending warning is cancelled with `reason` (its message says why)."""
        if state == cluster.idle:
            return
        events = []
        if cluster.idle.warning is not None:
            why = reason or "idle scale-down is off for this cluster"
            events.append(
                idle_warning(cluster, outcome="cancelled", at=now.isoformat(), reason=why)
            )
        await self._store.update_idle(cluster.name, state, events)

    async def _warn(
        self, cluster: Cluster, since: datetime, deadline: datetime, now: datetime
    ) -> None:
        notice = IdleNotice(
            id=uuid.uuid4().hex[:12],
            at=now,
            deadline=deadline,
            nodes=cluster.target_nodes,
            min_nodes=cluster.min_nodes,
            saves_per_hour=self._saving(cluster),
        )
        state = IdleState(since=since, warning=notice)
        warned = replace(cluster, idle=state)
        await self._store.update_idle(cluster.name, state, [idle_warning(warned)])

    async def _scale_down(self, cluster: Cluster, now: datetime, actor: Actor | None) -> str | None:
        """Down to the minimum, then close the warning. Otherwise why not: a job got there
        first (the warning is then cancelled with its name), or the cluster is not steady."""
        resized = await self._clusters.shrink_idle(cluster.name)
        if resized is None:
            fresh = await self._store.get_cluster(cluster.name)
            if fresh is None:
                return "it was deleted"
            if fresh.state is not ClusterState.STEADY:
                return f"it is {fresh.state.value}"
            live = await self._store.list_jobs(cluster=fresh.name, states=LIVE_STATES)
            await self._check(fresh, now, may_scale=False)
            timeout = self._clusters.idle_timeout_of(fresh)
            return _not_idle(fresh, timeout, [j.name for j in live]) or "it is busy"
        by = actor.user if actor else None
        closing = idle_warning(cluster, outcome="scaled", by=by, at=now.isoformat())
        await self._store.update_idle(cluster.name, IdleState(), [closing])
        since = cluster.idle.since or now
        detail = (
            f"{cluster.target_nodes} -> {resized.target_nodes} nodes, "
            f"idle since {since:%Y-%m-%d %H:%M} UTC"
        )
        how = "idle scale down" if actor else "idle scale down (nobody answered)"
        await self._audit(by or BOT, how, cluster, "allowed", detail, actor)
        return None

    async def _current(self, value: str, actor: Actor, action: str) -> Cluster | None:
        """The cluster whose pending warning the button names; None (audited) when stale."""
        name, _, warning_id = value.rpartition(":")
        cluster = await self._store.get_cluster(name) if name else None
        warning = cluster.idle.warning if cluster is not None else None
        if cluster is None or warning is None or warning.id != warning_id:
            await self._audit(actor.user, action, cluster, "denied", STALE, actor, name=name)
            return None
        return cluster

    def _saving(self, cluster: Cluster) -> Decimal | None:
        if self._prices is None:
            return None
        try:
            rate = self._prices.price_of(cluster).usd_per_hour
        except UserError:  # a size the price table has lost: warn without a figure
            return None
        return rate * (cluster.target_nodes - cluster.min_nodes)

    async def _audit(
        self,
        user: str,
        action: str,
        cluster: Cluster | None,
        outcome: str,
        detail: str,
        actor: Actor | None,
        *,
        name: str | None = None,
    ) -> None:
        channel = actor.conversation.channel if actor and actor.conversation else None
        if channel is None and cluster is not None and cluster.conversation is not None:
            channel = cluster.conversation.channel
        await self._store.add_audit(
            AuditEntry(
                at=self._clock.now(),
                actor=user,
                action=action,
                outcome=outcome,
                channel=channel,
                target=cluster.name if cluster is not None else name,
                detail=detail,
            )
        )


def _not_idle(cluster: Cluster, timeout: timedelta | None, live: list[str]) -> str | None:
    """Why the cluster is not idle-costly (None: it is); the reason a warning is cancelled."""
    if live:
        return f"job {live[0]} arrived"
    if cluster.target_nodes <= cluster.min_nodes:
        return f"the cluster is at its minimum ({_nodes(cluster)})"
    if timeout is None:
        return "idle scale-down is off for this cluster"
    return None


def _nodes(cluster: Cluster) -> str:
    n = cluster.min_nodes
    return f"{n} node" if n == 1 else f"{n} nodes"
