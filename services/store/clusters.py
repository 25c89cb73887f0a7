"""The clusters repository: settings, guarded state moves, and the idle bookkeeping apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.clusters.lifecycle import ClusterState, ClusterTransition
from services.core.errors import Conflict
from services.models import Cluster, IdleNotice, IdleState, NodeProblem
from services.store.guard import check_moved
from services.store.schema import clusters
from services.store.sealing import SecretBox


class SqlClusterRepository:
    """Clusters; the storage keys of their mounts (another account's) are sealed at rest."""

    def __init__(self, conn: AsyncConnection, box: SecretBox | None = None) -> None:
        self._conn = conn
        self._box = box

    def _sealed(self, cluster: Cluster) -> Cluster:
        if self._box is not None and cluster.setup_task_secrets:
            box = self._box
            sealed = tuple((n, box.seal(box.open(v))) for n, v in cluster.setup_task_secrets)
            cluster = replace(cluster, setup_task_secrets=sealed)
        if self._box is None or not any(m.account_key for m in cluster.mounts):
            return cluster
        box = self._box
        mounts = tuple(
            replace(m, account_key=box.seal(box.open(m.account_key))) if m.account_key else m
            for m in cluster.mounts
        )
        return replace(cluster, mounts=mounts)

    def _opened(self, cluster: Cluster) -> Cluster:
        if self._box is not None and cluster.setup_task_secrets:
            box = self._box
            opened = tuple((n, box.open(v)) for n, v in cluster.setup_task_secrets)
            cluster = replace(cluster, setup_task_secrets=opened)
        if self._box is None or not any(m.account_key for m in cluster.mounts):
            return cluster
        box = self._box
        mounts = tuple(
            replace(m, account_key=box.open(m.account_key)) if m.account_key else m
            for m in cluster.mounts
        )
        return replace(cluster, mounts=mounts)

    async def add(self, cluster: Cluster) -> None:
        try:
            await self._conn.execute(insert(clusters).values(**_cluster_row(self._sealed(cluster))))
        except IntegrityError as err:
            raise Conflict(f"cluster {cluster.name} already exists") from err

    async def update(
        self, cluster: Cluster, *, transition: ClusterTransition | None = None
    ) -> None:
        """Write the cluster's settings; its state only with a `transition` from the lifecycle,
        and then only while the stored state still is `transition.old` (else Conflict)."""
        row = _cluster_row(self._sealed(cluster))
        stmt = update(clusters).where(clusters.c.name == cluster.name)
        if transition is None:
            del row["state"]
        else:
            check_moved(cluster.state, transition.new, transition)
            stmt = stmt.where(clusters.c.state == transition.old.value)
        result = await self._conn.execute(stmt.values(row))
        if transition is not None and result.rowcount == 0:
            raise Conflict(
                f"cluster {cluster.name} is no longer {transition.old.value}; "
                f"it did not become {transition.new.value}"
            )

    async def set_idle(self, name: str, idle: IdleState) -> None:
        """Only the idle bookkeeping (update never writes it: a stale copy of a cluster must
        not bring back a warning that was answered)."""
        stmt = update(clusters).where(clusters.c.name == name).values(_idle_row(idle))
        await self._conn.execute(stmt)

    async def set_unusable(self, name: str, nodes: Sequence[NodeProblem]) -> None:
        """Only the failed health checks (update never writes them, as for the idle state)."""
        value = [[n.node, n.reason] for n in nodes] or None
        stmt = update(clusters).where(clusters.c.name == name).values(unusable_nodes=value)
        await self._conn.execute(stmt)

    async def delete(self, name: str) -> None:
        await self._conn.execute(clusters.delete().where(clusters.c.name == name))

    async def get(self, name: str) -> Cluster | None:
        row = (await self._conn.execute(_GET, {"name": name})).first()
        return None if row is None else self._opened(_cluster_from(row._mapping))

    async def list(self) -> list[Cluster]:
        rows = await self._conn.execute(_LIST)
        return [self._opened(_cluster_from(r._mapping)) for r in rows]


# Built once (the commands' reads): SQLAlchemy then skips building them and their cache key
_GET = select(clusters).where(clusters.c.name == bindparam("name"))
_LIST = select(clusters).order_by(clusters.c.name)


def _cluster_row(c: Cluster) -> dict[str, Any]:
    return {
        "name": c.name,
        "resource_group": c.resource_group,
        "workspace": c.workspace,
        "vm_size": c.vm_size,
        "image": c.image,
        "vm_priority": c.vm_priority,
        "min_nodes": c.min_nodes,
        "max_nodes": c.max_nodes,
        "target_nodes": c.target_nodes,
        "autoscale": c.autoscale,
        "state": c.state.value,
        "mounts": c.mounts,
        "admin_user": c.admin_user,
        "setup_task": c.setup_task,
        "setup_task_spec": setup_spec_row(c),
        "created_by": c.created_by,
        "created_at": c.created_at,
        "conversation": c.conversation,
        "error": c.error,
        "idle_timeout_s": c.idle_timeout_s,
    }


def _idle_row(idle: IdleState) -> dict[str, Any]:
    w = idle.warning
    return {
        "idle_since": idle.since,
        "idle_keep_until": idle.keep_until,
        "idle_warned_at": None if w is None else w.at,
        "idle_warning": None
        if w is None
        else {
            "id": w.id,
            "deadline": w.deadline.isoformat(),
            "nodes": w.nodes,
            "min_nodes": w.min_nodes,
            "saves_per_hour": None if w.saves_per_hour is None else str(w.saves_per_hour),
        },
    }


def _idle_from(r: Any) -> IdleState:
    data, at = r["idle_warning"], r["idle_warned_at"]
    warning = None
    if data and at is not None:
        saves = data.get("saves_per_hour")
        warning = IdleNotice(
            id=data["id"],
            at=at,
            deadline=datetime.fromisoformat(data["deadline"]),
            nodes=data["nodes"],
            min_nodes=data["min_nodes"],
            saves_per_hour=None if saves is None else Decimal(saves),
        )
    return IdleState(since=r["idle_since"], warning=warning, keep_until=r["idle_keep_until"])


def _cluster_from(r: Any) -> Cluster:
    return Cluster(
        name=r["name"],
        resource_group=r["resource_group"],
        workspace=r["workspace"],
        vm_size=r["vm_size"],
        image=r["image"],
        vm_priority=r["vm_priority"],
        min_nodes=r["min_nodes"],
        max_nodes=r["max_nodes"],
        target_nodes=r["target_nodes"],
        autoscale=r["autoscale"],
        state=ClusterState(r["state"]),
        mounts=r["mounts"],
        admin_user=r["admin_user"],
        setup_task=r["setup_task"],
        **_setup_from(r["setup_task_spec"]),
        created_by=r["created_by"],
        created_at=r["created_at"],
        conversation=r["conversation"],
        error=r["error"],
        idle_timeout_s=r["idle_timeout_s"],
        idle=_idle_from(r),
        unusable=tuple(
            NodeProblem(r["name"], str(node), str(reason))
            for node, reason in r["unusable_nodes"] or ()
        ),
    )


def setup_spec_row(c: Cluster) -> dict[str, Any] | None:
    """The setup task's other parts as stored (its secrets as the caller sealed them)."""
    if not c.setup_task:
        return None
    return {
        "output": c.setup_task_output,
        "suffix": c.setup_task_suffix,
        "env": [list(p) for p in c.setup_task_env],
        "secrets": [list(p) for p in c.setup_task_secrets],
    }


def _setup_from(data: Any) -> dict[str, Any]:
    if not data:
        return {}
    return {
        "setup_task_output": data.get("output"),
        "setup_task_suffix": data.get("suffix"),
        "setup_task_env": tuple((str(n), str(v)) for n, v in data.get("env") or ()),
        "setup_task_secrets": tuple((str(n), str(v)) for n, v in data.get("secrets") or ()),
    }
