"""Download links for the files of one folder listing (`job file list`, `cluster file list`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from services.core.ports import FileShare
from services.models import DownloadLink, FileEntry, FileLocation


async def download_links(
    share: FileShare, folder: FileLocation, entries: Iterable[FileEntry], *, expires_at: datetime
) -> dict[str, DownloadLink]:
    """Name -> an expiring link for each file (not folder) of `entries`, all in `folder`."""
    return {
        e.name: DownloadLink(
            e.name,
            e.size,
            await share.get_download_url(folder.child(e.name), expires_at=expires_at),
            expires_at,
        )
        for e in entries
        if not e.is_directory
    }
