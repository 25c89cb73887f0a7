"""ClusterService: create, resize, auto-scale, delete and describe clusters (Batch AI semantics)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

from services.access.owners import check_job_owner, check_node_exec
from services.clusters import mounts as volumes
from services.clusters import setuptask
from services.clusters.files import VM_SIZE_RE as _VM_SIZE_RE
from services.clusters.fileservers import check_ready
from services.clusters.lifecycle import ClusterState, ClusterTransition, move
from services.clusters.names import check_admin_name, check_cluster_name
from services.core.downloads import download_links
from services.core.errors import BatchAIError, Conflict, NotAllowed, NotFound, UserError
from services.core.events import ClusterChanged, Event, idle_warning
from services.core.ports import Clock, ComputeBackend, FileShare, StorageBackend
from services.core.suggest import did_you_mean
from services.jobs.lifecycle import ACTIVE_STATES, LIVE_STATES, JobState
from services.jobs.sources import ConfigLoader
from services.jobspec import ClusterSpec, cluster_parts_not_honoured, load_cluster_spec
from services.models import (
    ANYWHERE,
    AUTO_CONTAINER,
    AUTO_SHARE,
    NAME_RE,
    Actor,
    Cluster,
    ClusterFileListing,
    ClusterView,
    ConfigSource,
    Job,
    Node,
    NodeCounts,
    NodeOutput,
    ShareMount,
    Usage,
    Where,
)
from services.spend.gate import SpendGate, refusal
from services.spend.ledger import PriceBook
from services.spend.pricing import Estimate, Price
from services.store import SqlStore
from services.workspaces.service import Homes, claim_workspace

log = logging.getLogger(__name__)

MAX_NODES = 100  # Batch AI's hard limit per cluster
MAX_IDLE_MINUTES = 7 * 24 * 60
DEFAULT_IMAGE = "UbuntuLTS"
EXEC_TIMEOUT_S = 120.0  # a node exec waits this long for its command, then stops it
MAX_EXEC_CHARS = 4096


def check_exec_command(command: str) -> str:
    """A `node exec --exec` command line: given, one bash line of printable text, not huge."""
    text = command.strip()
    if not text:
        raise UserError('give the command to run on the node with --exec, e.g. --exec "nvidia-smi"')
    if len(text) > MAX_EXEC_CHARS:
        raise UserError(f"--exec is {len(text)} characters; at most {MAX_EXEC_CHARS} are run")
    if any(not (c.isprintable() or c in "\t\n") for c in text):
        raise UserError("--exec holds control characters; type the command as text")
    return text


def _pick_node(nodes: list[Node], node_id: str | None, where: str) -> Node:
    """The node of that id (case as typed or not), or the first one when none is named."""
    if not nodes:
        raise Conflict(f"{where} has no nodes now; resize the cluster first")
    if node_id is None:
        return nodes[0]
    for n in nodes:
        if n.id == node_id or n.id.lower() == node_id.lower():
            return n
    known = [n.id for n in nodes]
    raise NotFound(
        f"{where} has no node {node_id}{did_you_mean(node_id, known)} (nodes: {', '.join(known)})"
    )


@dataclass(frozen=True)
class ClusterRequest:
    """A `cluster create` after parsing; None means "not given" (file or defaults decide)."""

    name: str
    vm_size: str | None = None
    image: str | None = None
    min_nodes: int | None = None
    max_nodes: int | None = None
    target_nodes: int | None = None
    vm_priority: str | None = None
    afs_name: str | None = None
    afs_mount_path: str = "afs"
    bfs_name: str | None = None
    bfs_mount_path: str = "bfs"
    nfs: str | None = None
    nfs_mount_path: str = "nfs"
    use_auto_storage: bool = False
    storage_account_name: str | None = None
    storage_account_key: str | None = field(default=None, repr=False)
    subnet: str | None = None
    user_name: str | None = None
    setup_task: str | None = None
    setup_task_output: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    config: ConfigSource | None = None
    idle_timeout_minutes: int | None = None  # None: the bot's default; 0: never


class ClusterService:
    def __init__(
        self,
        *,
        store: SqlStore,
        backend: ComputeBackend,
        clock: Clock,
        configs: ConfigLoader,
        resource_group: str,
        workspace: str,
        prices: PriceBook | None = None,
        idle_timeout: timedelta = timedelta(minutes=15),
        gate: SpendGate | None = None,
        homes: Homes | None = None,
        storage: StorageBackend | None = None,
        storage_account: str | None = None,
        subscription: str = "local",
        share: FileShare | None = None,
    ) -> None:
        self._share = share  # where setup-task logs are listed (cluster file list)
        self._subscription = subscription  # the first segment of a setup task's log suffix
        self._homes = homes or Homes(resource_group, workspace)
        self._storage = storage
        self._account = storage_account  # the bot's own: mounts of it name no account
        self._prices = prices
        self._gate = gate
        self._idle_timeout = idle_timeout
        self._store = store
        self._backend = backend
        self._clock = clock
        self._configs = configs
        self._rg = resource_group
        self._ws = workspace

    async def create_cluster(self, request: ClusterRequest, *, actor: Actor) -> Cluster:
        spec = None
        if request.config is not None:
            text, label = self._configs.load(
                request.config, may_read_paths=actor.may_read_paths, folder="clusters"
            )
            spec = load_cluster_spec(text, source=label)
        cluster = self._build(request, spec, actor)
        self.price_of(cluster)  # an unknown VM size is refused now, not when money is at stake
        if await self._store.get_cluster(cluster.name) is not None:
            raise Conflict(f"cluster {cluster.name} already exists")
        await self.check_servers(cluster.mounts)
        await self._check_spend(actor, None, cluster)
        async with self._store.unit() as uow:  # the cluster and its workspace, together
            await claim_workspace(
                uow,
                self._homes,
                resource_group=cluster.resource_group,
                name=cluster.workspace,
                by=actor.user,
                at=self._clock.now(),
            )
            await uow.clusters.add(cluster)
            await uow.commit()
        try:
            await self.ensure_storage(cluster.mounts)
            await self._backend.create_cluster(cluster)
        except Exception as err:
            failed, to_failed = move(cluster, ClusterState.FAILED, error=str(err))
            await self._store.update_cluster(failed, transition=to_failed)
            raise
        ready, to_ready = move(cluster, ClusterState.STEADY)
        await self._store.update_cluster(
            ready,
            [ClusterChanged(cluster=cluster.name, text=f"cluster {cluster.name} is ready")],
            transition=to_ready,
        )
        return ready

    async def check_servers(self, mounts: tuple[ShareMount, ...]) -> None:
        """Every file server a mount names exists and is ready (`file-server create` first)."""
        await check_ready(self._store, [m.share for m in mounts if m.kind == "nfs"])

    async def ensure_storage(self, mounts: tuple[ShareMount, ...]) -> None:
        """--use-auto-storage: the bot's share and container are created when missing."""
        names = {(m.kind, m.share) for m in mounts if m.account is None}
        if self._storage is not None and {("afs", AUTO_SHARE), ("bfs", AUTO_CONTAINER)} & names:
            await self._storage.ensure_auto_storage(AUTO_SHARE, AUTO_CONTAINER)

    def standing_nodes(self, cluster: Cluster) -> int:
        """Nodes the cluster pays for with no job on it: its minimum when idle nodes are scaled
        away; else its target (fixed size), or its maximum (auto-scale that never shrinks)."""
        if _can_shrink(cluster) and self.idle_timeout_of(cluster) is not None:
            return cluster.min_nodes
        return max(cluster.target_nodes, cluster.max_nodes if cluster.autoscale else 0)

    def unguarded_standing(self, cluster: Cluster) -> Estimate | None:
        """The standing capacity's cost when no policy guards it and it is worth saying."""
        if self._gate is None:
            return None
        commitment = self._gate.capacity(
            actor=Actor(cluster.created_by or ""),
            cluster=cluster,
            nodes_before=0,
            nodes_after=self.standing_nodes(cluster),
        )
        return commitment.estimate if self._gate.unguarded(commitment.estimate.total) else None

    async def _check_spend(self, actor: Actor, old: Cluster | None, new: Cluster) -> None:
        """The gate decides a change of standing capacity; a refusal changes nothing."""
        if self._gate is None:
            return
        commitment = self._gate.capacity(
            actor=actor,
            cluster=new,
            nodes_before=0 if old is None else self.standing_nodes(old),
            nodes_after=self.standing_nodes(new),
        )
        why_not = refusal(await self._gate.assess(commitment, actor=actor))
        if why_not is not None:
            raise NotAllowed(why_not)

    def price_of(self, cluster: Cluster) -> Price | None:
        """Per node-hour; None without a price book. Unknown sizes raise a UserError."""
        return None if self._prices is None else self._prices.price_of(cluster)

    async def reconcile(self) -> list[str]:
        """After a restart: finish creates, resizes and deletes a crash left half-done (every
        backend call is idempotent). Returns the names of the clusters it touched."""
        touched = []
        for cluster in await self._store.list_clusters():
            if cluster.state is ClusterState.CREATING:
                await self._backend.create_cluster(cluster)
            elif cluster.state is ClusterState.RESIZING:
                await self._backend.resize_cluster(cluster, cluster.target_nodes)
            elif cluster.state is ClusterState.DELETING:
                await self._backend.delete_cluster(cluster)
                await self._store.delete_cluster(cluster.name)
                touched.append(cluster.name)
                continue
            else:
                continue
            steady, to_steady = move(cluster, ClusterState.STEADY)
            await self._store.update_cluster(steady, transition=to_steady)
            touched.append(cluster.name)
        return touched

    async def list_clusters(
        self, *, resource_group: str | None = None, workspace: str | None = None
    ) -> list[ClusterView]:
        """Every cluster, or those of one resource group and/or workspace (`-g`, `-w`)."""
        async with self._store.unit() as uow:  # two reads, however many clusters
            clusters = await uow.clusters.list()
            live = await uow.jobs.list(states=LIVE_STATES, include_deleted=True)
        by_cluster: dict[str, list[Job]] = {}
        for job in live:
            by_cluster.setdefault(job.cluster, []).append(job)
        return [
            self._view_of(c, by_cluster.get(c.name, []))
            for c in clusters
            if (resource_group is None or c.resource_group.lower() == resource_group.lower())
            and (workspace is None or c.workspace == workspace)
        ]

    async def get_cluster(self, name: str, *, where: Where = ANYWHERE) -> ClusterView:
        """With the nodes that failed their health check as the backend knows them now (the
        stored list is the sweep's, which may lag by its interval)."""
        async with self._store.unit() as uow:  # the cluster and its jobs: one connection
            found = await uow.clusters.get(name)
            live = (
                []
                if found is None
                else await uow.jobs.list(
                    cluster=found.name, states=LIVE_STATES, include_deleted=True
                )
            )
        # Not found: _get answers with the names that come close (a cluster made since has
        # no live jobs yet)
        cluster = await self._get(name, where) if found is None else found
        self._check_where(cluster, where)
        try:
            failed = await self._backend.failed_nodes(cluster=cluster.name)
        except BatchAIError as err:
            log.info("cluster %s: node health unavailable: %s", name, err)
        else:
            cluster = replace(cluster, unusable=tuple(failed))
        return self._view_of(cluster, live)

    async def list_setup_files(
        self,
        name: str,
        *,
        where: Where = ANYWHERE,
        path: str = ".",
        expiry_minutes: int = 60,
    ) -> ClusterFileListing:
        """`cluster file list`: the setup-task logs (stdout-<node>.txt, stderr-<node>.txt) with
        expiring download links."""
        low, high = setuptask.MIN_LINK_MINUTES, setuptask.MAX_LINK_MINUTES
        if not low <= expiry_minutes <= high:
            raise UserError(f"--expiry must be {low}-{high} minutes")
        cluster = await self._get(name, where)
        logs = setuptask.logs_of(cluster)
        if logs is None:
            raise NotFound(f"cluster {cluster.name} has no setup task, so no setup-task logs")
        if self._share is None:
            raise Conflict("this bot was started without a file share to list logs from")
        folder = logs.location
        rel = path.strip().strip("/")
        if rel not in ("", "."):
            if ".." in rel.split("/") or "\\" in rel:
                raise UserError(f"--path {path!r} must be a folder below the setup-task logs")
            folder = folder.child(rel)
        entries = await self._share.list_files(folder, recursive=False)
        expires = self._clock.now() + timedelta(minutes=expiry_minutes)
        links = await download_links(self._share, folder, entries, expires_at=expires)
        return ClusterFileListing(cluster, path, tuple(entries), links)

    async def list_nodes(self, name: str, *, where: Where = ANYWHERE) -> list[Node]:
        return await self._backend.list_nodes(await self._get(name, where))

    async def usages(self, location: str | None = None) -> list[Usage]:
        """`az batchai list-usages`: the bot's clusters and their nodes (nothing caps those
        but the quotas), then the backend's quotas with their use and limits."""
        clusters = await self._store.list_clusters()
        nodes = sum(c.target_nodes for c in clusters)
        return [
            Usage("Clusters", "Clusters", len(clusters), None),
            Usage("Nodes", "Cluster nodes (target counts)", nodes, None),
            *await self._backend.usages(location),
        ]

    async def list_job_nodes(self, job: Job) -> list[Node]:
        """The nodes a job holds (or held) on its cluster (`az batchai job node list`)."""
        cluster = await self._get(job.cluster, ANYWHERE)
        return [n for n in await self._backend.list_nodes(cluster) if n.index in job.nodes]

    async def exec_on_node(
        self,
        name: str,
        *,
        node_id: str | None,
        command: str,
        actor: Actor,
        where: Where = ANYWHERE,
    ) -> NodeOutput:
        """`az batchai cluster node exec --exec`: one command on one node (default: the first),
        for whoever may terminate every job running there (an admin on an idle node)."""
        cluster = await self._get(name, where)
        command = check_exec_command(command)
        node = _pick_node(await self._backend.list_nodes(cluster), node_id, f"cluster {name}")
        jobs = await self._jobs_on_node(cluster.name, node.index)
        check_node_exec(node.id, jobs, actor)
        owner = jobs[0].id if len(jobs) == 1 else None
        return await self._backend.run_on_node(
            cluster, node.id, command, timeout=EXEC_TIMEOUT_S, job_id=owner
        )

    async def exec_on_job_node(
        self, job: Job, *, node_id: str | None, command: str, actor: Actor
    ) -> NodeOutput:
        """`az batchai job node exec --exec`: one command on a node the job holds (default: its
        first), as the job's user, for its requester or an admin."""
        check_job_owner(job, actor, "run a command on the nodes of")
        command = check_exec_command(command)
        if not job.state.active or not job.nodes:
            raise Conflict(
                f"job {job.name} is {job.state.value}: it holds no nodes to run a command on"
            )
        cluster = await self._get(job.cluster, ANYWHERE)
        held = [n for n in await self._backend.list_nodes(cluster) if n.index in job.nodes]
        node = _pick_node(held, node_id, f"job {job.name}")
        check_node_exec(node.id, await self._jobs_on_node(cluster.name, node.index), actor)
        return await self._backend.run_on_node(
            cluster, node.id, command, timeout=EXEC_TIMEOUT_S, job_id=job.id
        )

    async def _jobs_on_node(self, cluster: str, index: int) -> list[Job]:
        active = await self._store.list_jobs(
            cluster=cluster, states=ACTIVE_STATES, include_deleted=True
        )
        return [j for j in active if index in j.nodes]

    async def resize_cluster(
        self, name: str, *, target: int, actor: Actor, where: Where = ANYWHERE
    ) -> Cluster:
        """Manual scale to `target` nodes; like az, this also ends auto-scaling."""
        cluster = await self._get(name, where)
        _check_count("--target", target)
        in_use = await self._nodes_in_use(cluster.name)
        if in_use and target <= max(in_use):
            raise Conflict(
                f"nodes {sorted(in_use)} of {name} are running jobs; "
                f"terminate them first or resize to at least {max(in_use) + 1}"
            )
        changed = replace(
            cluster, target_nodes=target, autoscale=False, min_nodes=target, max_nodes=target
        )
        await self._check_spend(actor, cluster, changed)
        return await self._apply_size(cluster, changed, f"resized to {target} nodes")

    async def auto_scale_cluster(
        self,
        name: str,
        *,
        min_nodes: int,
        max_nodes: int,
        actor: Actor,
        where: Where = ANYWHERE,
        idle_timeout_minutes: int | None = None,
    ) -> Cluster:
        cluster = await self._get(name, where)
        _check_range(min_nodes, max_nodes)
        target = max(min_nodes, min(cluster.target_nodes, max_nodes))
        in_use = await self._nodes_in_use(cluster.name)
        target = max(target, max(in_use) + 1 if in_use else 0)
        changed = replace(
            cluster, min_nodes=min_nodes, max_nodes=max_nodes, target_nodes=target, autoscale=True
        )
        if idle_timeout_minutes is not None:
            idle_s = _idle_timeout_s(idle_timeout_minutes, can_shrink=min_nodes < max_nodes)
            changed = replace(changed, idle_timeout_s=idle_s)
        await self._check_spend(actor, cluster, changed)
        return await self._apply_size(
            cluster, changed, f"auto-scales between {min_nodes} and {max_nodes} nodes"
        )

    async def update_cluster(
        self,
        name: str,
        *,
        idle_timeout_minutes: int,
        actor: Actor,
        where: Where = ANYWHERE,
    ) -> Cluster:
        """`cluster update --idle-timeout`: how long it may sit idle above its minimum."""
        cluster = await self._get(name, where)
        idle_s = _idle_timeout_s(idle_timeout_minutes, can_shrink=_can_shrink(cluster))
        changed = replace(cluster, idle_timeout_s=idle_s)
        await self._check_spend(actor, cluster, changed)
        await self._store.update_cluster(changed)
        return changed

    def idle_timeout_of(self, cluster: Cluster) -> timedelta | None:
        """How long the cluster may sit idle above its minimum; None: forever."""
        seconds = cluster.idle_timeout_s
        timeout = self._idle_timeout if seconds is None else timedelta(seconds=seconds)
        return timeout if timeout > timedelta(0) else None

    async def scale_for_demand(self, cluster: Cluster, needed: int) -> Cluster:
        """Auto-scale: grow toward `needed` nodes (within max) at once. Shrinking is the idle
        flow's (services/clusters/idle.py): a warning first, then down to the minimum."""
        if not cluster.autoscale or cluster.state is not ClusterState.STEADY:
            return cluster
        target = max(cluster.min_nodes, min(needed, cluster.max_nodes))
        if target <= cluster.target_nodes:
            return cluster
        changed = replace(cluster, target_nodes=target)
        return await self._apply_size(cluster, changed, f"auto-scaled to {target} nodes")

    async def restore_nodes(self, cluster: Cluster) -> None:
        """Grow the backend's nodes back to the cluster's size after some were lost (Azure
        deletes an evicted Spot VM, which shrinks its scale set). The size is the stored one,
        so the cluster stays within its limits and nothing is committed that was not before;
        a backend already at that size changes nothing."""
        if cluster.state is ClusterState.STEADY and cluster.target_nodes > 0:
            await self._backend.resize_cluster(cluster, cluster.target_nodes)

    async def shrink_idle(self, name: str) -> Cluster | None:
        """Scale an idle cluster to its minimum; None (nothing changed) when it is not steady,
        already there, or a job turned up while it was being marked resizing."""
        cluster = await self._store.get_cluster(name)
        if cluster is None or cluster.state is not ClusterState.STEADY:
            return None
        if cluster.target_nodes <= cluster.min_nodes:
            return None
        smaller = replace(cluster, target_nodes=cluster.min_nodes)
        resizing, to_resizing = move(smaller, ClusterState.RESIZING)
        # the dispatcher leaves a resizing cluster be
        await self._store.update_cluster(resizing, transition=to_resizing)
        if await self._store.list_jobs(cluster=name, states=LIVE_STATES, include_deleted=True):
            back, to_back = _reverted(resizing, cluster)
            await self._store.update_cluster(back, transition=to_back)
            return None
        try:
            await self._backend.resize_cluster(resizing, smaller.target_nodes)
        except Exception as err:
            back, to_back = _reverted(resizing, cluster, error=str(err))
            await self._store.update_cluster(back, transition=to_back)
            raise
        steady, to_steady = move(resizing, ClusterState.STEADY)
        what = f"cluster {name} scaled down to {steady.target_nodes} nodes after being idle"
        await self._store.update_cluster(
            steady, [ClusterChanged(cluster=name, text=what)], transition=to_steady
        )
        return steady

    async def delete_cluster(self, name: str, *, where: Where = ANYWHERE) -> bool:
        """Deleting what is gone succeeds (False); a cluster with live jobs is refused."""
        cluster = await self._store.get_cluster(name)
        if cluster is None:
            return False
        self._check_where(cluster, where)
        live = await self._store.list_jobs(cluster=name, states=LIVE_STATES)
        if live:
            names = ", ".join(j.name for j in live[:5])
            raise Conflict(f"cluster {name} still has jobs ({names}); terminate them first")
        deleting, to_deleting = move(cluster, ClusterState.DELETING)
        await self._store.update_cluster(deleting, transition=to_deleting)
        await self._backend.delete_cluster(cluster)
        done: list[Event] = [ClusterChanged(cluster=name, text=f"cluster {name} deleted")]
        if cluster.idle.warning is not None:  # its buttons must not outlive it
            at = self._clock.now().isoformat()
            done.append(
                idle_warning(cluster, outcome="cancelled", at=at, reason="the cluster was deleted")
            )
        await self._store.delete_cluster(name, done)
        return True

    # -- helpers ----------------------------------------------------------------------------

    def _own(self, mount: ShareMount) -> ShareMount:
        """A mount of the bot's own account names none (the bot holds that key)."""
        if mount.account is not None and mount.account == self._account:
            return replace(mount, account=None, account_key=None)
        return mount

    def _subnet_refusal(self) -> str:
        if self._backend.name == "local":
            return "the local backend runs every node on this machine, which is in no subnet"
        return (
            f"the {self._backend.name} backend places every node in the bot's own subnet "
            "(AZURE_SUBNET_ID), which its network rules are made for"
        )

    async def _get(self, name: str, where: Where) -> Cluster:
        cluster = await self._store.get_cluster(name)
        if cluster is None:
            known = [c.name for c in await self._store.list_clusters()]
            raise NotFound(f"cluster {name} not found{did_you_mean(name, known)}")
        self._check_where(cluster, where)
        return cluster

    @staticmethod
    def _check_where(cluster: Cluster, where: Where) -> None:
        if (miss := where.misses(cluster.resource_group, cluster.workspace)) is not None:
            raise NotFound(f"cluster {cluster.name} not found{miss}")

    async def _nodes_in_use(self, cluster: str) -> set[int]:
        active = await self._store.list_jobs(
            cluster=cluster,
            states=ACTIVE_STATES,
            include_deleted=True,
        )
        return {n for j in active for n in j.nodes}

    def _view_of(self, cluster: Cluster, jobs: Sequence[Job]) -> ClusterView:
        """The cluster with its node counts, from its live jobs."""
        preparing = {n for j in jobs if j.state is JobState.PREPARING for n in j.nodes}
        running = {n for j in jobs if j.state.active for n in j.nodes} - preparing
        unusable = min(len(cluster.unusable), cluster.target_nodes)
        idle = max(0, cluster.target_nodes - len(preparing) - len(running) - unusable)
        counts = NodeCounts(
            idle=idle, running=len(running), preparing=len(preparing), unusable=unusable
        )
        queued = sum(1 for j in jobs if j.state is JobState.QUEUED)
        idle_after = self.idle_timeout_of(cluster) if _can_shrink(cluster) else None
        return ClusterView(cluster, counts, queued, idle_after, self._account)

    async def _apply_size(self, old: Cluster, new: Cluster, what: str) -> Cluster:
        resizing, to_resizing = move(new, ClusterState.RESIZING)
        await self._store.update_cluster(resizing, transition=to_resizing)
        try:
            await self._backend.resize_cluster(resizing, new.target_nodes)
        except Exception as err:
            back, to_back = _reverted(resizing, old, error=str(err))
            await self._store.update_cluster(back, transition=to_back)
            raise
        steady, to_steady = move(resizing, ClusterState.STEADY)
        await self._store.update_cluster(
            steady,
            [ClusterChanged(cluster=new.name, text=f"cluster {new.name} {what}")],
            transition=to_steady,
        )
        return steady

    def _build(self, r: ClusterRequest, spec: ClusterSpec | None, actor: Actor) -> Cluster:
        if not NAME_RE.match(r.name):
            raise UserError(f"cluster name {r.name!r} must be 1-64 letters, digits, - or _")
        check_cluster_name(r.name)
        from_file = _from_spec(spec) if spec is not None else _FromFile()
        vm_size = r.vm_size or from_file.vm_size
        if not vm_size:
            raise UserError("--vm-size is required (or give it in the cluster config file)")
        if not _VM_SIZE_RE.match(vm_size):
            raise UserError(f"{vm_size!r} is not a VM size (e.g. Standard_NC6)")
        if r.subnet or from_file.subnet:
            where = "--subnet" if r.subnet else "properties.subnet"
            raise UserError(f"{where}: {self._subnet_refusal()}")
        min_nodes, max_nodes, target, autoscale = _scale(r, from_file)
        idle_s = None
        if r.idle_timeout_minutes is not None:
            idle_s = _idle_timeout_s(r.idle_timeout_minutes, can_shrink=min_nodes < max_nodes)
        flags = volumes.MountFlags(
            afs_name=r.afs_name,
            afs_mount_path=r.afs_mount_path,
            bfs_name=r.bfs_name,
            bfs_mount_path=r.bfs_mount_path,
            nfs=r.nfs,
            nfs_mount_path=r.nfs_mount_path,
            use_auto_storage=r.use_auto_storage,
            storage_account_name=r.storage_account_name,
            storage_account_key=r.storage_account_key,
        )
        from_volumes = volumes.from_volumes(
            spec.properties.node_setup.mount_volumes
            if spec is not None and spec.properties.node_setup is not None
            else None,
            flags,
            own_account=self._account,
        )
        mounts = volumes.merged(from_volumes, volumes.from_flags(flags))
        mounts = [self._own(m) for m in mounts]
        volumes.check_mounts(mounts, self._backend.reserved_shares)
        command = r.setup_task or from_file.setup_task
        output = r.setup_task_output or from_file.setup_task_output
        if command or output:
            setuptask.check_may_give(actor)  # root on every node: an admin's decision alone
            if not command or not output:
                raise UserError("--setup-task and --setup-task-output are given together")
            command = setuptask.check_command(command)
            setuptask.locate(output, mounts)
        env = from_file.setup_task_env if command else ()
        secrets = from_file.setup_task_secrets if command else ()
        setuptask.check_env(env, "environmentVariables")
        setuptask.check_env(secrets, "secrets")
        priority = r.vm_priority or from_file.vm_priority or "dedicated"
        if r.user_name or from_file.admin_user:
            check_admin_name(r.user_name or from_file.admin_user or "")
        cluster = Cluster(
            name=r.name,
            resource_group=r.resource_group or self._rg,
            workspace=r.workspace or self._ws,
            vm_size=vm_size,
            image=r.image or from_file.image or DEFAULT_IMAGE,
            vm_priority=priority,
            min_nodes=min_nodes,
            max_nodes=max_nodes,
            target_nodes=target,
            autoscale=autoscale,
            state=ClusterState.CREATING,
            mounts=tuple(mounts),
            admin_user=r.user_name or from_file.admin_user or actor.user,
            setup_task=command,
            setup_task_output=output if command else None,
            setup_task_env=env,
            setup_task_secrets=secrets,
            created_by=actor.user,
            created_at=self._clock.now(),
            conversation=actor.conversation,
            idle_timeout_s=idle_s,
        )
        if command:
            cluster = replace(
                cluster, setup_task_suffix=setuptask.suffix(cluster, self._subscription)
            )
        return cluster


def _check_count(flag: str, value: int) -> None:
    if not 0 <= value <= MAX_NODES:
        raise UserError(f"{flag} must be between 0 and {MAX_NODES}, not {value}")


def _can_shrink(cluster: Cluster) -> bool:
    """Only nodes above the minimum are scaled away when idle; a fixed-size cluster keeps its
    nodes (`cluster resize -t 0` stops paying for them)."""
    return cluster.min_nodes < max(cluster.max_nodes, cluster.target_nodes)


def _idle_timeout_s(minutes: int, *, can_shrink: bool) -> int:
    if not 0 <= minutes <= MAX_IDLE_MINUTES:
        raise UserError(f"--idle-timeout must be 0 to {MAX_IDLE_MINUTES} minutes, not {minutes}")
    if minutes and not can_shrink:
        raise UserError(
            "--idle-timeout needs a cluster that can shrink: a fixed-size cluster keeps its "
            "nodes (give --min below --max, or use cluster auto-scale)"
        )
    return minutes * 60


def _check_range(min_nodes: int, max_nodes: int) -> None:
    _check_count("--min", min_nodes)
    _check_count("--max", max_nodes)
    if min_nodes > max_nodes:
        raise UserError(f"--min ({min_nodes}) is greater than --max ({max_nodes})")


def _scale(r: ClusterRequest, from_file: _FromFile) -> tuple[int, int, int, bool]:
    """az's `_get_scale_settings`: equal min/max (or only -t) is manual, else auto-scale."""
    if r.min_nodes is None and r.max_nodes is None and r.target_nodes is None:
        if from_file.scale is None:
            raise UserError("give the node count: --target N, or --min N --max M")
        return from_file.scale
    if (r.min_nodes is None) != (r.max_nodes is None):
        raise UserError("--min and --max must be given together")
    if r.min_nodes is None or r.max_nodes is None or r.min_nodes == r.max_nodes:
        target = r.target_nodes if r.target_nodes is not None else r.min_nodes
        assert target is not None
        _check_count("--target", target)
        return target, target, target, False
    _check_range(r.min_nodes, r.max_nodes)
    initial = r.target_nodes if r.target_nodes is not None else r.min_nodes
    _check_count("--target", initial)
    return r.min_nodes, r.max_nodes, max(r.min_nodes, min(initial, r.max_nodes)), True


@dataclass(frozen=True)
class _FromFile:
    """The parts of a cluster.json the bot uses; command-line flags override them."""

    vm_size: str | None = None
    vm_priority: str | None = None
    scale: tuple[int, int, int, bool] | None = None
    image: str | None = None
    admin_user: str | None = None
    setup_task: str | None = None
    setup_task_output: str | None = None
    setup_task_env: tuple[tuple[str, str], ...] = ()
    setup_task_secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    subnet: str | None = None


def _from_spec(spec: ClusterSpec) -> _FromFile:
    if dropped := cluster_parts_not_honoured(spec):  # refused, never silently left out
        raise UserError(dropped[0] + (f" (and {len(dropped) - 1} more)" if dropped[1:] else ""))
    p = spec.properties
    scale: tuple[int, int, int, bool] | None = None
    if p.scale_settings is not None and p.scale_settings.manual is not None:
        n = p.scale_settings.manual.target_node_count
        scale = (n, n, n, False)
    elif p.scale_settings is not None and p.scale_settings.auto_scale is not None:
        a = p.scale_settings.auto_scale
        initial = max(a.minimum_node_count, min(a.initial_node_count or 0, a.maximum_node_count))
        scale = (a.minimum_node_count, a.maximum_node_count, initial, True)
    image = None
    vmc = p.virtual_machine_configuration
    if vmc is not None and vmc.image_reference is not None:
        ref = vmc.image_reference
        image = ":".join(x for x in (ref.publisher, ref.offer, ref.sku, ref.version) if x)
    setup = p.node_setup
    task = setup.setup_task if setup is not None else None
    secrets: list[tuple[str, str]] = []
    for i, secret in enumerate(task.secrets if task is not None else ()):
        if secret.value is None:  # a Key Vault reference: nothing here reads the vault for a node
            raise UserError(
                f"nodeSetup.setupTask.secrets[{i}] ({secret.name}): a Key Vault reference is not "
                "resolved for a setup task; give its value"
            )
        secrets.append((secret.name, secret.value))
    return _FromFile(
        vm_size=p.vm_size,
        vm_priority=p.vm_priority,
        scale=scale,
        image=image,
        admin_user=p.user_account_settings.admin_user_name if p.user_account_settings else None,
        setup_task=task.command_line if task is not None else None,
        setup_task_output=task.std_out_err_path_prefix if task is not None else None,
        setup_task_env=tuple((v.name, v.value) for v in task.environment_variables) if task else (),
        setup_task_secrets=tuple(secrets),
        subnet=p.subnet.id if p.subnet is not None else None,
    )


def _reverted(
    resizing: Cluster, old: Cluster, *, error: str | None = None
) -> tuple[Cluster, ClusterTransition]:
    """A resize that did not happen: back to `old`'s state and sizes (the error kept)."""
    return move(
        resizing,
        old.state,
        target_nodes=old.target_nodes,
        autoscale=old.autoscale,
        min_nodes=old.min_nodes,
        max_nodes=old.max_nodes,
        idle_timeout_s=old.idle_timeout_s,
        error=old.error if error is None else error,
    )
