"""A FileShare wrapper that counts what it hands out: proves the tailer reads no byte twice."""

from __future__ import annotations

from datetime import datetime

from services.backends.local import LocalShare
from services.models import FileEntry, FileLocation


class CountingShare:
    """The real LocalShare, counting the bytes it hands the tailer."""

    def __init__(self, inner: LocalShare) -> None:
        self.inner = inner
        self.bytes_read = 0
        self.reads = 0

    async def stat(self, loc: FileLocation) -> FileEntry | None:
        return await self.inner.stat(loc)

    async def read_range(self, loc: FileLocation, offset: int, length: int) -> bytes:
        data = await self.inner.read_range(loc, offset, length)
        self.bytes_read += len(data)
        self.reads += 1
        return data

    async def list_files(self, loc: FileLocation, *, recursive: bool = False) -> list[FileEntry]:
        return await self.inner.list_files(loc, recursive=recursive)

    async def get_download_url(self, loc: FileLocation, *, expires_at: datetime) -> str:
        return await self.inner.get_download_url(loc, expires_at=expires_at)

    async def aclose(self) -> None:
        await self.inner.aclose()
