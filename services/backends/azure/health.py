"""Node health on Azure: the setup extension's health check leaves `.batchai/nodes/<cluster>.<host>`
on the control share; one listing of that directory (Files, no ARM) serves every cluster, and a
result is read once (again only when its size or time changes).

A VM that ARM calls ready is idle only once its result says ok; failed, it is unusable with the
check's reason; no result yet, it is still preparing, and after SLOW_REPORT seconds without one
its detail says why that may be (a long setup task, or a cluster made before the check, whose
nodes never report: it gets no job until it is made again).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from services.backends.azure.control import ControlRecords
from services.backends.azure.node import NODES_DIR
from services.backends.azure.scalesets import VmState
from services.backends.noderun.health import Health, parse
from services.core.errors import NotFound
from services.models import FileLocation, NodeProblem

log = logging.getLogger(__name__)

WAITING = "checking its GPUs and share mounts"
SLOW_REPORT = 30 * 60.0  # seconds a ready VM may go without a health result before it is said
SLOW = (
    "no health result for {} min: its setup task may still run; the nodes of "
    "a cluster made before the bot checked node health never report one (recreate the cluster)"
)


@dataclass(frozen=True)
class _Seen:
    size: int
    modified: datetime | None
    result: Health


def node_state(vm: VmState, result: Health | None, waited: float = 0.0) -> tuple[str, str]:
    """(state, detail) of a VM given its health result: ready only once it passed. `waited`:
    seconds the ready VM has gone without a result, as far as this process saw."""
    if vm.state != "ready":
        return vm.state, vm.detail
    if result is None:
        return "preparing", SLOW.format(int(waited // 60)) if waited >= SLOW_REPORT else WAITING
    if not result.ok:
        return "unusable", result.reason
    return "ready", ""


class NodeHealthRecords:
    """The health results on the control share, listed at most once per `max_age` seconds."""

    def __init__(
        self, control: ControlRecords, *, monotonic: Callable[[], float], max_age: float
    ) -> None:
        self._control = control
        self._monotonic = monotonic
        self._max_age = max_age
        self._seen: dict[str, _Seen] = {}  # file name -> what it said
        self._listed = -math.inf
        self._looked: dict[str, float] = {}  # `<cluster>.<host>` -> when last looked for
        self._missing_since: dict[str, float] = {}  # `<cluster>.<host>` ready, no result yet

    def _dir(self) -> FileLocation:
        return self._control.loc(NODES_DIR)

    async def _refresh(self) -> None:
        self._listed = self._monotonic()
        try:
            entries = await self._control.share.list_files(self._dir())
        except NotFound:
            entries = []
        seen: dict[str, _Seen] = {}
        for e in entries:
            if e.is_directory or "." not in e.name or e.name.startswith("."):
                continue  # `<file>.tmp` of a result being written starts with neither
            old = self._seen.get(e.name)
            if old is not None and (old.size, old.modified) == (e.size, e.modified):
                seen[e.name] = old
                continue
            loc = self._dir().child(e.name)
            data = await self._control.share.read_range(loc, 0, max(e.size, 1))
            result = parse(data.decode("utf-8", "replace"))
            if result is not None:  # half-written: read again at the next listing
                seen[e.name] = _Seen(e.size, e.modified, result)
        self._seen = seen

    async def of_cluster(self, cluster: str, want: Collection[str] = ()) -> dict[str, Health]:
        """Host name (lower case) -> result for `cluster`'s nodes; listed again when one of
        `want` has none yet (at most once per `max_age`)."""
        results = self._of(cluster)
        now = self._monotonic()
        missing = [f"{cluster}.{w.lower()}" for w in want if w.lower() not in results]
        # A node still without a result is looked for again once per `max_age`, not per call.
        if any(now - self._looked.get(m, -math.inf) >= self._max_age for m in missing):
            await self._refresh()
            self._looked.update(dict.fromkeys(missing, now))
            results = self._of(cluster)
        for w in want:
            key = f"{cluster}.{w.lower()}"
            if w.lower() in results:
                self._missing_since.pop(key, None)
            else:
                self._missing_since.setdefault(key, now)
        return results

    def waited(self, cluster: str, host: str) -> float:
        """Seconds `cluster`'s ready VM `host` has been wanted without a result (0: it has one,
        or was never asked for)."""
        since = self._missing_since.get(f"{cluster}.{host.lower()}")
        return 0.0 if since is None else self._monotonic() - since

    def _of(self, cluster: str) -> dict[str, Health]:
        prefix = f"{cluster}."
        return {
            name[len(prefix) :].lower(): seen.result
            for name, seen in self._seen.items()
            if name.startswith(prefix)
        }

    async def failed(self) -> list[NodeProblem]:
        """Every node whose result says failed (one listing, for all clusters)."""
        if self._monotonic() - self._listed >= self._max_age:
            await self._refresh()
        found = []
        for name, seen in sorted(self._seen.items()):
            if not seen.result.ok:
                cluster, _, host = name.partition(".")
                found.append(NodeProblem(cluster, host, seen.result.reason))
        return found

    async def prune(self, cluster: str, hosts: Collection[str]) -> None:
        """Delete `cluster`'s results of hosts that are not among `hosts` (its VMs now): a VM
        scaled in or evicted takes its result along, so a failed one is not listed forever."""
        await self._refresh()
        keep = {h.lower() for h in hosts if h}
        prefix = f"{cluster}."
        for name in [n for n in self._seen if n.startswith(prefix)]:
            if name[len(prefix) :].lower() not in keep:
                await self._control.share.delete_tree(self._dir().child(name))
                self._seen.pop(name, None)
        for name in [n for n in self._missing_since if n.startswith(prefix)]:
            if name[len(prefix) :] not in keep:
                del self._missing_since[name]

    async def forget(self, cluster: str) -> None:
        """A deleted cluster's results go with it (a new one of that name reuses host names)."""
        await self._refresh()
        for name in [n for n in self._seen if n.startswith(f"{cluster}.")]:
            await self._control.share.delete_tree(self._dir().child(name))
            self._seen.pop(name, None)
        for name in [n for n in self._missing_since if n.startswith(f"{cluster}.")]:
            del self._missing_since[name]
