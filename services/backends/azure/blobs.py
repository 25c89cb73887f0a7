"""Blob containers of the bot's storage account as part of the FileShare port: job output
directories on a container a job or its cluster mounts (blobfuse2) are listed, read and linked
like those on a share. `AzureShare` hands this module every location with `container` set.

Blob storage has no directories: a "directory" is a prefix of blob names ending in "/". A
listing one level down asks with that delimiter (BlobPrefix entries are the folders); a
recursive one lists every blob under the prefix and names the folders between. A link is a
read-only service SAS for that one blob, signed here with the account key (no request made).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobPrefix, BlobServiceClient

from services.backends.azure.config import AzureConfig
from services.backends.azure.errors import azure_errors, error_code
from services.backends.azure.paths import disposition, read_ranged, segments
from services.core.errors import NotFound
from services.models import FileEntry, FileLocation


class ContainerFiles:
    """stat, read_range, list_files and get_download_url for locations in blob containers."""

    def __init__(self, config: AzureConfig, *, link_protocol: str, **client_kwargs: Any) -> None:
        self._config = config
        self._protocol = link_protocol
        credential = {"account_name": config.storage_account, "account_key": config.storage_key}
        self._service = BlobServiceClient(config.blob_url, credential=credential, **client_kwargs)

    async def aclose(self) -> None:
        await self._service.close()

    def _blob(self, loc: FileLocation) -> BlobClient:
        return self._service.get_blob_client(loc.share, "/".join(segments(loc)))

    async def stat(self, loc: FileLocation) -> FileEntry | None:
        """A blob, or a "directory" (a prefix some blob has, or the container's root)."""
        parts = segments(loc, allow_root=True)
        async with azure_errors(f"stat {loc.share}/{loc.path}"):
            if parts:
                try:
                    props = await self._blob(loc).get_blob_properties()
                except ResourceNotFoundError as err:
                    if error_code(err) == "ContainerNotFound":
                        return None
                else:
                    return FileEntry(parts[-1], False, int(props.size), props.last_modified)
            container = self._service.get_container_client(loc.share)
            prefix = "".join(f"{p}/" for p in parts)
            try:
                async for _ in container.list_blobs(name_starts_with=prefix, results_per_page=1):
                    return FileEntry(parts[-1] if parts else "", True, 0, None)
            except ResourceNotFoundError:
                return None
        return None if parts else FileEntry("", True, 0, None)  # an empty container

    async def read_range(self, loc: FileLocation, offset: int, length: int) -> bytes:
        client = self._blob(loc)
        return await read_ranged(
            f"read {loc.share}/{loc.path}", offset, length, client.download_blob
        )

    async def list_files(self, loc: FileLocation, *, recursive: bool = False) -> list[FileEntry]:
        prefix = "".join(f"{p}/" for p in segments(loc, allow_root=True))
        container = self._service.get_container_client(loc.share)
        found: dict[str, FileEntry] = {}
        async with azure_errors(f"list {loc.share}/{loc.path}"):
            try:
                if recursive:
                    async for blob in container.list_blobs(name_starts_with=prefix):
                        rel = str(blob.name)[len(prefix) :]
                        folders = rel.split("/")[:-1]
                        for i in range(1, len(folders) + 1):  # the prefixes above it
                            name = "/".join(folders[:i])
                            found.setdefault(name, FileEntry(name, True, 0, None))
                        if rel and not rel.endswith("/"):
                            found[rel] = FileEntry(rel, False, int(blob.size), blob.last_modified)
                else:
                    async for item in container.walk_blobs(name_starts_with=prefix, delimiter="/"):
                        rel = str(item.name)[len(prefix) :].rstrip("/")
                        if not rel:
                            continue  # a folder marker blob (`name/`): the folder itself
                        if isinstance(item, BlobPrefix):
                            found[rel] = FileEntry(rel, True, 0, None)
                        else:
                            found[rel] = FileEntry(rel, False, int(item.size), item.last_modified)
            except ResourceNotFoundError as err:
                raise NotFound(f"no blob container {loc.share!r}") from err
        found.pop("", None)
        return sorted(found.values(), key=lambda e: e.name)

    async def get_download_url(self, loc: FileLocation, *, expires_at: datetime) -> str:
        """A read-only SAS for this one blob (a link to a missing blob answers 404)."""
        parts = segments(loc)
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        token = generate_blob_sas(
            account_name=self._config.storage_account,
            container_name=loc.share,
            blob_name="/".join(parts),
            account_key=self._config.storage_key,
            permission=BlobSasPermissions(read=True),
            expiry=expires_at.astimezone(UTC),
            protocol=self._protocol,
            content_disposition=disposition(parts[-1]),
        )
        return f"{self._blob(loc).url}?{token}"
