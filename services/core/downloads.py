"""Download links for the files of one folder listing (`job file list`, `cluster file list`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from services.core.errors import NotAllowed
from services.core.ports import FileShare
from services.models import DownloadLink, FileEntry, FileLocation

log = logging.getLogger(__name__)


async def download_links(
    share: FileShare, folder: FileLocation, entries: Iterable[FileEntry], *, expires_at: datetime
) -> dict[str, DownloadLink]:
    """Name -> an expiring link for each file (not folder) of `entries`, all in `folder`. A
    name no link can be made for (a job may name a file anything, `a\\b` say) is listed
    without one: it never takes the other files' links with it."""
    links: dict[str, DownloadLink] = {}
    for e in entries:
        if e.is_directory:
            continue
        try:
            url = await share.get_download_url(folder.child(e.name), expires_at=expires_at)
        except NotAllowed as err:
            log.info("no link for %r: %s", e.name, err)
            continue
        links[e.name] = DownloadLink(e.name, e.size, url, expires_at)
    return links
