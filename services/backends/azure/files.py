"""Azure Files as the FileShare port: byte-range reads, listings and one-file SAS links.

One `ShareServiceClient` (shared key) per `AzureShare`; share, directory and file clients are
derived from it, so they all use its transport and connection pool. Every azure-core error is
translated by `errors.azure_errors` into the project's error tree.

Notes on the service that shape this module (see reference/azure-sdk.md §3):
- `download_file(offset, length)` at or past the end answers 416 InvalidRange, also at offset 0
  of an empty file; `read_range` turns that into b"".
- Sizes come from Get File Properties (HEAD): a listing's Content-Length can lag for a file an
  SMB client holds open, so `stat` (what the tailer uses) never reads it from a listing.
- `generate_file_sas` takes the path as a list of segments; a string is signed letter by letter.
- IP-style account URLs (`http://127.0.0.1:PORT/<account>`, the tests' fake, Azurite) work:
  the SDK takes the account from the path for 127.0.0.1/localhost hosts, and the shared-key
  credential below names the account for any host. Links then say `spr=https,http`, since
  such an endpoint is plain http; a real (https) account gets https-only links.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.fileshare import (
    FileProperties,
    FileSasPermissions,
    generate_file_sas,
)
from azure.storage.fileshare._shared.authentication import AzureSigningError
from azure.storage.fileshare._shared.policies import is_retry
from azure.storage.fileshare._shared.policies_async import ExponentialRetry
from azure.storage.fileshare.aio import (
    ShareClient,
    ShareDirectoryClient,
    ShareFileClient,
    ShareServiceClient,
)

from services.backends.azure.config import AzureConfig
from services.backends.azure.errors import azure_errors, error_code
from services.core.errors import Conflict, NotAllowed, NotFound, UserError
from services.models import FileEntry, FileLocation

log = logging.getLogger(__name__)

MAX_RANGE = 4 * 1024 * 1024  # Put Range takes at most 4 MiB per request
MAX_RETRY_AFTER = 60.0  # seconds; a longer Retry-After is the runner's business, not a pause here


class FilesRetry(ExponentialRetry):
    """The storage SDK's exponential retry, with a bot's timings, that also honours throttling.

    The SDK's own policy never retries 429 and ignores Retry-After (`_shared/policies.py`
    `is_retry`, `get_backoff_time`); Azure Storage throttles with 503 ServerBusy, but a proxy or
    a future service version may say 429. Here both are retried, after Retry-After when the
    answer has one (capped), else after about 2 s, 4 s, 8 s (± 1 s) instead of the SDK's 18 s,
    24 s, 42 s, which would stall a tail cycle. Content-MD5 retries are not needed: we never ask
    the service to validate content. (The async base class lives only in the SDK's private
    `_shared.policies_async`; the public `ExponentialRetry` is the sync one.)
    """

    def __init__(
        self, *, sleep: Callable[[float], Awaitable[None]] | None = None, **kwargs: Any
    ) -> None:
        self._sleep = sleep  # tests record the pauses; by default the transport sleeps
        kwargs.setdefault("initial_backoff", 0)
        kwargs.setdefault("increment_base", 2)
        kwargs.setdefault("random_jitter_range", 1)
        super().__init__(**kwargs)

    async def send(self, request: Any) -> Any:  # type: ignore[override]  # typed as sync upstream
        settings = self.configure_retries(request)
        while True:
            try:
                response = await self.next.send(request)  # type: ignore[misc]
            except AzureError as err:
                if isinstance(err, AzureSigningError):
                    raise
                if not self.increment(settings, request=request.http_request, error=err):
                    raise
                await self._pause(settings, request, None)
                continue
            http = response.http_response
            retryable = http.status_code == 429 or is_retry(response, settings["mode"])  # type: ignore[no-untyped-call]
            if not retryable or not self.increment(
                settings, request=request.http_request, response=http
            ):
                if settings["history"]:
                    response.context["history"] = settings["history"]
                http.location_mode = settings["mode"]
                return response
            await self._pause(settings, request, http)

    async def _pause(self, settings: dict[str, Any], request: Any, http: Any) -> None:
        delay = _retry_after(http)
        if delay is None:
            delay = float(self.get_backoff_time(settings))
        if delay > 0:
            sleep = request.context.transport.sleep if self._sleep is None else self._sleep
            await sleep(min(delay, MAX_RETRY_AFTER))


def _retry_after(http: Any) -> float | None:
    value = http.headers.get("Retry-After") if http is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _segments(loc: FileLocation, *, allow_root: bool = False) -> list[str]:
    """The path's segments; "", "." and "/" name the share's root. Refuses `..`, NUL, `\\`."""
    if "\x00" in loc.path or "\\" in loc.path:
        raise NotAllowed(f"bad path {loc.path!r}")
    pure = PurePosixPath(loc.path)
    if pure.is_absolute() or ".." in pure.parts:
        raise NotAllowed(f"path {loc.path!r} leaves its share")
    parts = [p for p in pure.parts if p != "."]
    if not parts and not allow_root:
        raise NotFound(f"no file at the root of share {loc.share!r}")
    return parts


def _disposition(name: str) -> str:
    """`attachment; filename="<name>"`, with an RFC 6266 `filename*` for names that need it."""
    plain = name.isascii() and name.isprintable() and not any(c in name for c in '"\\')
    if plain:
        return f'attachment; filename="{name}"'
    fallback = "".join(c if c.isascii() and c.isalnum() or c in "._-" else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class AzureShare:
    """The FileShare port over the Azure Files REST API, plus the writes the backend needs.

    `client_kwargs` go to the service client (tests: `retry_total`, `read_timeout`,
    `logging_enable`, `transport`, `connection_verify`).
    """

    def __init__(self, config: AzureConfig, **client_kwargs: Any) -> None:
        self._config = config
        self._account_url = config.account_url
        client_kwargs.setdefault("retry_policy", FilesRetry(**client_kwargs))
        credential = {"account_name": config.storage_account, "account_key": config.storage_key}
        self._service = ShareServiceClient(
            self._account_url, credential=credential, **client_kwargs
        )
        self._shares: dict[str, ShareClient] = {}
        # https-only links, unless the account itself is plain http (the tests' fake).
        https = urlsplit(self._account_url).scheme == "https"
        self.link_protocol = "https" if https else "https,http"

    async def __aenter__(self) -> AzureShare:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._service.close()

    # -- clients ---------------------------------------------------------------------------------

    def _share(self, share: str) -> ShareClient:
        client = self._shares.get(share)
        if client is None:
            client = self._shares[share] = self._service.get_share_client(share)
        return client

    def _file(self, loc: FileLocation) -> ShareFileClient:
        return self._share(loc.share).get_file_client("/".join(_segments(loc)))

    def _directory(self, share: str, parts: list[str]) -> ShareDirectoryClient:
        return self._share(share).get_directory_client("/".join(parts))

    # -- the port --------------------------------------------------------------------------------

    async def stat(self, loc: FileLocation) -> FileEntry | None:
        parts = _segments(loc, allow_root=True)
        async with azure_errors(f"stat {loc.share}/{loc.path}"):
            if parts:
                try:
                    props = await self._file(loc).get_file_properties()
                except ResourceNotFoundError as err:
                    if error_code(err) == "ParentNotFound":
                        return None  # no directory to be in: nothing there (one request)
                else:
                    return FileEntry(parts[-1], False, int(props.size), props.last_modified)
            try:
                dprops = await self._directory(loc.share, parts).get_directory_properties()
            except ResourceNotFoundError:
                return None
        return FileEntry(parts[-1] if parts else "", True, 0, dprops.last_modified)

    async def read_range(self, loc: FileLocation, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise UserError("offset and length must not be negative")
        client = self._file(loc)
        if length == 0:
            return b""
        async with azure_errors(f"read {loc.share}/{loc.path}"):
            try:
                stream = await client.download_file(offset=offset, length=length)
                data: bytes = await stream.readall()
            except HttpResponseError as err:
                if err.status_code == 416:  # at or past the end, or an empty file
                    return b""
                raise
        return data[:length]

    async def list_files(self, loc: FileLocation, *, recursive: bool = False) -> list[FileEntry]:
        top = _segments(loc, allow_root=True)
        out: list[FileEntry] = []
        pending: list[tuple[list[str], str]] = [(top, "")]
        async with azure_errors(f"list {loc.share}/{loc.path}"):
            while pending:
                parts, prefix = pending.pop()
                client = self._directory(loc.share, parts)
                try:
                    items = [
                        i async for i in client.list_directories_and_files(include=["timestamps"])
                    ]
                except ResourceNotFoundError as err:
                    if parts is top:
                        raise NotFound(
                            f"no directory {loc.path or '.'!r} on share {loc.share!r}"
                        ) from err
                    continue  # removed while we walked: list what is still there
                for item in items:
                    name = f"{prefix}{item.name}"
                    is_dir = not isinstance(item, FileProperties)
                    size = 0 if is_dir else int(getattr(item, "size", 0) or 0)
                    out.append(FileEntry(name, is_dir, size, item.last_modified))
                    if recursive and is_dir:
                        pending.append(([*parts, item.name], f"{name}/"))
        out.sort(key=lambda e: e.name)
        return out

    async def get_download_url(self, loc: FileLocation, *, expires_at: datetime) -> str:
        """A read-only SAS for this one file (signed here, no request is made: a link to a
        missing file answers 404 when it is fetched)."""
        parts = _segments(loc)
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        token = generate_file_sas(
            account_name=self._config.storage_account,
            share_name=loc.share,
            file_path=parts,  # a list: a string would be signed character by character
            account_key=self._config.storage_key,
            permission=FileSasPermissions(read=True),
            expiry=expires_at.astimezone(UTC),
            protocol=self.link_protocol,
            content_disposition=_disposition(parts[-1]),
        )
        return f"{self._file(loc).url}?{token}"

    # -- writes (the backend puts job files on the share) ----------------------------------------

    async def ensure_share(self, share: str | None = None) -> None:
        """Create the share (the configured one by default) unless it exists."""
        name = share or self._config.share
        async with azure_errors(f"create share {name}"):
            with contextlib.suppress(ResourceExistsError):
                await self._share(name).create_share()

    async def make_dirs(self, loc: FileLocation) -> None:
        """Create the directory and its missing parents (Azure creates one level at a time)."""
        parts = _segments(loc, allow_root=True)
        async with azure_errors(f"create directory {loc.share}/{loc.path}"):
            await self._make_dirs(loc.share, parts)

    async def _make_dirs(self, share: str, parts: list[str]) -> None:
        # Deepest first: when the parents exist (the usual case) this is one request.
        depth = len(parts)
        while depth > 0 and not await self._create_directory(share, parts[:depth]):
            depth -= 1
        for deeper in range(depth + 1, len(parts) + 1):
            await self._create_directory(share, parts[:deeper])

    async def _create_directory(self, share: str, parts: list[str]) -> bool:
        """Create one directory (fine when it exists); False when its parent is missing."""
        try:
            await self._directory(share, parts).create_directory()
        except ResourceExistsError as err:
            if error_code(err) == "ResourceTypeMismatch":
                raise Conflict(f"{'/'.join(parts)!r} is a file, not a directory") from err
        except ResourceNotFoundError as err:
            if error_code(err) != "ParentNotFound":
                raise
            return False
        return True

    async def write_file(self, loc: FileLocation, data: bytes) -> None:
        """Create or replace the file with `data`, creating missing parent directories.

        Not atomic: a reader may see the file zero-filled until the last range is written, so
        write a file before anything is told to read it."""
        parts = _segments(loc)
        client = self._file(loc)
        async with azure_errors(f"write {loc.share}/{loc.path}"):
            try:
                await client.create_file(size=len(data))
            except ResourceNotFoundError as err:
                if error_code(err) != "ParentNotFound" or len(parts) < 2:
                    raise
                await self._make_dirs(loc.share, parts[:-1])
                await client.create_file(size=len(data))
            for start in range(0, len(data), MAX_RANGE):
                chunk = data[start : start + MAX_RANGE]
                await client.upload_range(chunk, offset=start, length=len(chunk))

    async def delete_tree(self, loc: FileLocation) -> int:
        """Delete a file, or a directory with everything below it (not the share's root).

        Best effort, for clean-up: what is already gone is fine, other failures are logged
        and skipped. Returns how many entries could not be deleted."""
        parts = _segments(loc, allow_root=True)
        entry = await self.stat(loc)
        if entry is None:
            return 0
        if not entry.is_directory:
            return 0 if await self._delete(loc, directory=False) else 1
        entries = await self.list_files(loc, recursive=True)
        failed = 0
        for e in (e for e in entries if not e.is_directory):
            failed += not await self._delete(loc.child(e.name), directory=False)
        dirs = sorted((e.name for e in entries if e.is_directory), key=lambda n: -n.count("/"))
        for name in dirs:
            failed += not await self._delete(loc.child(name), directory=True)
        if parts:
            failed += not await self._delete(loc, directory=True)
        return failed

    async def _delete(self, loc: FileLocation, *, directory: bool) -> bool:
        parts = _segments(loc)
        try:
            async with azure_errors(f"delete {loc.share}/{loc.path}"):
                if directory:
                    await self._directory(loc.share, parts).delete_directory()
                else:
                    await self._file(loc).delete_file()
        except NotFound:
            return True
        except Exception as err:  # best effort: say what stayed, go on
            log.warning("clean-up left %s/%s: %s", loc.share, loc.path, err)
            return False
        return True
