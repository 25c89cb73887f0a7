"""Fakes of the ports that fail on demand: the real local backend and share behind them, and
the next N calls of a method raising what a test asks for (a throttled or lost Azure)."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from datetime import datetime, timedelta

from services.backends.local import LocalBackend, LocalShare
from services.core.errors import NotFound
from services.core.ports import LaunchRequest, LaunchResult, RunStatus
from services.models import Cluster, FileEntry, FileLocation, Node, NodeOutput, NodeProblem


class _Faults:
    def __init__(self) -> None:
        self._next: dict[str, deque[Exception]] = defaultdict(deque)
        self.calls: Counter[str] = Counter()
        self.raised: Counter[str] = Counter()

    def fail_next(self, method: str, error: Exception, *, count: int = 1) -> None:
        """The next `count` calls of `method` raise `error` instead of doing anything."""
        self._next[method].extend([error] * count)

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        queue = self._next.get(method)
        if queue:
            self.raised[method] += 1
            raise queue.popleft()


class FaultyBackend(_Faults):
    """A ComputeBackend: the real LocalBackend, unless a fault is due or the job was forgotten
    (as when someone deletes it in the Azure portal)."""

    def __init__(self, inner: LocalBackend) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.reserved_shares = inner.reserved_shares
        self.forgotten: set[str] = set()

    def forget(self, job_id: str) -> None:
        self.forgotten.add(job_id)

    async def create_cluster(self, cluster: Cluster) -> None:
        self._enter("create_cluster")
        await self.inner.create_cluster(cluster)

    async def resize_cluster(self, cluster: Cluster, target: int) -> None:
        self._enter("resize_cluster")
        await self.inner.resize_cluster(cluster, target)

    async def delete_cluster(self, cluster: Cluster) -> None:
        self._enter("delete_cluster")
        await self.inner.delete_cluster(cluster)

    async def list_nodes(self, cluster: Cluster) -> list[Node]:
        self._enter("list_nodes")
        return await self.inner.list_nodes(cluster)

    async def unusable_nodes(self, cluster: Cluster) -> dict[int, str]:
        self._enter("unusable_nodes")
        return await self.inner.unusable_nodes(cluster)

    async def failed_nodes(self, *, cluster: str | None = None) -> list[NodeProblem]:
        self._enter("failed_nodes")
        return await self.inner.failed_nodes(cluster=cluster)

    async def start_job(self, request: LaunchRequest) -> LaunchResult:
        self._enter("start_job")
        return await self.inner.start_job(request)

    async def get_job_status(self, job_id: str) -> RunStatus:
        self._enter("get_job_status")
        if job_id in self.forgotten:
            raise NotFound(f"job {job_id} does not exist")
        return await self.inner.get_job_status(job_id)

    async def terminate_job(self, job_id: str) -> None:
        self._enter("terminate_job")
        if job_id not in self.forgotten:
            await self.inner.terminate_job(job_id)

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        self._enter("set_time_left")
        await self.inner.set_time_left(job_id, remaining)

    async def run_on_node(
        self, cluster: Cluster, node_id: str, command: str, *, timeout: float, job_id: str | None
    ) -> NodeOutput:
        self._enter("run_on_node")
        return await self.inner.run_on_node(
            cluster, node_id, command, timeout=timeout, job_id=job_id
        )

    async def ping(self) -> None:
        self._enter("ping")
        await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()


class FaultyShare(_Faults):
    """A FileShare: the real LocalShare, unless a fault is due."""

    def __init__(self, inner: LocalShare) -> None:
        super().__init__()
        self.inner = inner

    async def stat(self, loc: FileLocation) -> FileEntry | None:
        self._enter("stat")
        return await self.inner.stat(loc)

    async def read_range(self, loc: FileLocation, offset: int, length: int) -> bytes:
        self._enter("read_range")
        return await self.inner.read_range(loc, offset, length)

    async def list_files(self, loc: FileLocation, *, recursive: bool = False) -> list[FileEntry]:
        self._enter("list_files")
        return await self.inner.list_files(loc, recursive=recursive)

    async def get_download_url(self, loc: FileLocation, *, expires_at: datetime) -> str:
        self._enter("get_download_url")
        return await self.inner.get_download_url(loc, expires_at=expires_at)

    async def aclose(self) -> None:
        await self.inner.aclose()
