"""Leadership: the loop that takes and keeps the lease, starting the periodic work when it is
won and stopping it when it is lost; the other replicas wait as standbys and answer Slack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from services.store.lease import Lease

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[object]]


class Leadership:
    """Every `retry` seconds: a standby asks for the lease, the leader checks it still holds it.
    `fenced` work runs only after the lease was confirmed just before it (a leader whose
    connection died stops there, before the next one posts)."""

    def __init__(
        self,
        lease: Lease,
        *,
        retry: float,
        on_win: Work,
        on_lose: Work,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._lease, self._retry = lease, retry
        self._on_win, self._on_lose, self._on_change = on_win, on_lose, on_change
        self.is_leader = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._step_lock = asyncio.Lock()

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else "standby"

    async def step(self) -> None:
        """One round: take the lease when free, or give up the work when it is lost."""
        async with self._step_lock:
            if not self.is_leader:
                if await self._lease.acquire():
                    self._set(True)
                    log.info("leader: this replica runs the periodic work now")
                    await self._on_win()
            elif not await self._lease.held():
                await self._lose("the leader lease was lost")

    async def confirm(self) -> bool:
        """Whether this replica leads, asked of the database just now."""
        if not self.is_leader:
            return False
        if await self._lease.held():
            return True
        self._wake.set()  # the loop stops the work (not this round: it may be part of it)
        self.is_leader = False
        return False

    def fenced(self, work: Work) -> Work:
        """`work`, run only while the lease is confirmed."""

        async def run() -> None:
            if await self.confirm():
                await work()

        return run

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def aclose(self) -> None:
        """Stop the loop and the work, then give the lease back (a standby takes over now)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.is_leader:
            await self._lose("shutting down")
        await self._lease.release()

    async def _loop(self) -> None:
        while True:
            try:
                if self._wake.is_set() and not self.is_leader:
                    self._wake.clear()
                    await self._lose("the leader lease was lost")
                await self.step()
            except Exception:  # the loop must outlive a bad round; the next one tries again
                log.exception("leadership round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._retry)

    async def _lose(self, why: str) -> None:
        self._set(False)
        log.warning("standby: %s; the periodic work stops", why)
        await self._on_lose()

    def _set(self, leader: bool) -> None:
        self.is_leader = leader
        if self._on_change is not None:
            self._on_change(leader)
