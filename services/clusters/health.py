"""NodeHealthService: tell each cluster's channel, once, about every node that failed its health
check (the backends keep such nodes out of every job; see noderun/health.py).

One sweep asks the backend once for all failed nodes (Azure: one Files listing), stores which
nodes are known to have failed with the announcement events in one transaction, so a restart
neither repeats nor loses one."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from services.clusters.lifecycle import ClusterState
from services.core.events import NodeUnusable
from services.core.ports import ComputeBackend
from services.models import NodeProblem
from services.store import SqlStore

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0  # how often the scheduler runs check()


class NodeHealthService:
    def __init__(self, *, store: SqlStore, backend: ComputeBackend) -> None:
        self._store = store
        self._backend = backend
        self._lock = asyncio.Lock()

    async def check(self) -> None:
        """The periodic work (scheduler id "health")."""
        async with self._lock:
            found: dict[str, list[NodeProblem]] = defaultdict(list)
            for problem in await self._backend.failed_nodes():
                found[problem.cluster].append(problem)
            for cluster in await self._store.list_clusters():
                if cluster.state is ClusterState.DELETING:
                    continue
                failing = tuple(found.get(cluster.name, ()))
                if failing == cluster.unusable:
                    continue
                known = {p.node for p in cluster.unusable}
                channel = cluster.conversation.channel if cluster.conversation else None
                events = [
                    NodeUnusable(
                        cluster=cluster.name,
                        channel=channel,
                        node=p.node,
                        reason=p.reason,
                        vm_size=cluster.vm_size,
                    )
                    for p in failing
                    if p.node not in known
                ]
                for e in events:
                    log.warning("cluster %s: node %s is unusable: %s", e.cluster, e.node, e.reason)
                await self._store.update_unusable(cluster.name, failing, events)
