"""What clusters and jobs mount: shares, blob containers and file servers, from flags and files.

Pure: the flags of `cluster create`/`job create` and the `mountVolumes` of a cluster.json become
`ShareMount`s; a job's mount flags are written into its job.json's `mountVolumes`, as az batchai
did. `<AZURE_BATCHAI_STORAGE_ACCOUNT>` and `<AZURE_BATCHAI_STORAGE_KEY>` in a file mean the
account of --storage-account-name (the bot's own when not given) and its key, as in az.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from services.core.errors import UserError
from services.jobspec.base import MountVolumes
from services.models import (
    AUTO_CONTAINER,
    AUTO_CONTAINER_PATH,
    AUTO_SHARE,
    AUTO_SHARE_PATH,
    ShareMount,
)

ACCOUNT_PLACEHOLDER = "<AZURE_BATCHAI_STORAGE_ACCOUNT>"
KEY_PLACEHOLDER = "<AZURE_BATCHAI_STORAGE_KEY>"
_SHARE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_SERVER_RE = re.compile(r"^[-\w]{1,64}$", re.ASCII)
_MOUNT_RE = re.compile(r"^[-\w.]{1,64}$", re.ASCII)
_KINDS = {"afs": "Azure File share", "bfs": "blob container", "nfs": "file server"}


@dataclass(frozen=True)
class MountFlags:
    """The storage flags of `cluster create` and `job create`, as typed."""

    afs_name: str | None = None
    afs_mount_path: str = "afs"
    bfs_name: str | None = None
    bfs_mount_path: str = "bfs"
    nfs: str | None = None
    nfs_mount_path: str = "nfs"
    use_auto_storage: bool = False
    storage_account_name: str | None = None
    storage_account_key: str | None = None

    @property
    def account(self) -> tuple[str | None, str | None]:
        """(account, key) the shares and containers of the flags belong to; (None, None) for
        the bot's own account."""
        if self.storage_account_key is not None and self.storage_account_name is None:
            raise UserError("--storage-account-key needs --storage-account-name (whose key it is)")
        return self.storage_account_name, self.storage_account_key


def server_name(value: str) -> str:
    """`--nfs NAME` or its ARM id (…/fileServers/NAME) -> NAME."""
    name = value.rstrip("/").rsplit("/", 1)[-1]
    if not _SERVER_RE.match(name):
        raise UserError(f"{value!r} does not name a file server")
    return name


def auto_storage() -> list[ShareMount]:
    """`--use-auto-storage`: the bot's share and container, where az batchai mounted them."""
    return [
        ShareMount(AUTO_SHARE, AUTO_SHARE_PATH, "afs"),
        ShareMount(AUTO_CONTAINER, AUTO_CONTAINER_PATH, "bfs"),
    ]


def from_flags(flags: MountFlags) -> list[ShareMount]:
    """The mounts the flags ask for, in the order az added them."""
    account, key = flags.account
    mounts = []
    if flags.afs_name:
        mounts.append(ShareMount(flags.afs_name, flags.afs_mount_path, "afs", account, key))
    if flags.bfs_name:
        mounts.append(ShareMount(flags.bfs_name, flags.bfs_mount_path, "bfs", account, key))
    if flags.nfs:
        mounts.append(ShareMount(server_name(flags.nfs), flags.nfs_mount_path, "nfs"))
    if flags.use_auto_storage:
        mounts += auto_storage()
    return mounts


def merged(base: Sequence[ShareMount], extra: Sequence[ShareMount]) -> list[ShareMount]:
    """`extra` (the flags) over `base` (the file): a flag's mount path replaces the file's."""
    paths = {m.mount_path for m in extra}
    return [m for m in base if m.mount_path not in paths] + list(extra)


def _account_of(
    name: str | None, key: str | None, flags: MountFlags, own: str | None
) -> tuple[str | None, str | None]:
    """A file's account and key with az's placeholders filled; the bot's own account is None."""
    if name is None or name == ACCOUNT_PLACEHOLDER:
        name = flags.storage_account_name
    if key == KEY_PLACEHOLDER:
        key = flags.storage_account_key
    if name is not None and name == own:
        return None, None
    return name, key if name is not None else None


def from_volumes(
    volumes: MountVolumes | None, flags: MountFlags, *, own_account: str | None
) -> list[ShareMount]:
    """A cluster.json's nodeSetup.mountVolumes (shares, containers, file servers)."""
    if volumes is None:
        return []
    mounts = []
    for share in volumes.azure_file_shares:
        url = share.azure_file_url.replace(ACCOUNT_PLACEHOLDER, "account")
        host = urlsplit(url).hostname or ""
        named = share.account_name or (
            ACCOUNT_PLACEHOLDER if ACCOUNT_PLACEHOLDER in share.azure_file_url else host
        )
        key = share.credentials.account_key if share.credentials else None
        account, key = _account_of(named.split(".")[0] or None, key, flags, own_account)
        name = share.azure_file_url.rstrip("/").rsplit("/", 1)[-1]
        mounts.append(ShareMount(name, share.relative_mount_path, "afs", account, key))
    for blob in volumes.azure_blob_file_systems:
        key = blob.credentials.account_key if blob.credentials else None
        account, key = _account_of(blob.account_name, key, flags, own_account)
        mounts.append(
            ShareMount(blob.container_name, blob.relative_mount_path, "bfs", account, key)
        )
    for server in volumes.file_servers:
        mounts.append(
            ShareMount(server_name(server.file_server.id), server.relative_mount_path, "nfs")
        )
    return mounts


def check_mounts(mounts: Sequence[ShareMount], reserved: frozenset[str]) -> None:
    """One check for the flags and the files alike: names, accounts and distinct paths."""
    seen: set[str] = set()
    for m in mounts:
        what = _KINDS[m.kind]
        if m.kind == "nfs":
            if not _SERVER_RE.match(m.share):
                raise UserError(f"{m.share!r} is not a file server name")
        elif not _SHARE_RE.match(m.share):
            raise UserError(
                f"{m.share!r} is not an {what} name (3-63 lower-case letters, digits, single -)"
            )
        if m.account is not None and not _ACCOUNT_RE.match(m.account):
            raise UserError(f"{m.account!r} is not a storage account name")
        if not _MOUNT_RE.match(m.mount_path) or m.mount_path in (".", ".."):
            raise UserError(
                f"{m.mount_path!r} is not a mount path (1-64 letters, digits, '-', '_', '.')"
            )
        if m.mount_path in seen:
            raise UserError(f"two file systems are mounted at {m.mount_path!r}: give each its own")
        seen.add(m.mount_path)
        if m.kind == "afs" and m.share in reserved:  # whichever account a file names
            raise UserError(
                f"share {m.share} is the bot's control share (AZURE_SHARE); mount another share"
            )


def job_volumes(
    mounts: Sequence[ShareMount], *, own_account: str, file_server_id: Any
) -> dict[str, list[dict[str, Any]]]:
    """Job-level mounts as job.json `mountVolumes` entries (what az's job create added)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m in mounts:
        account = m.account or own_account
        creds = {"accountKey": m.account_key} if m.account_key else None
        if m.kind == "afs":
            entry: dict[str, Any] = {
                "accountName": account,
                "azureFileUrl": f"https://{account}.file.core.windows.net/{m.share}",
                "relativeMountPath": m.mount_path,
            }
            key = "azureFileShares"
        elif m.kind == "bfs":
            entry = {
                "accountName": account,
                "containerName": m.share,
                "relativeMountPath": m.mount_path,
            }
            key = "azureBlobFileSystems"
        else:
            entry = {
                "fileServer": {"id": file_server_id(m.share)},
                "relativeMountPath": m.mount_path,
            }
            key = "fileServers"
            creds = None
        if creds:
            entry["credentials"] = creds
        out.setdefault(key, []).append(entry)
    return out
