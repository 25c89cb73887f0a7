"""Azure Files as the FileShare port: byte-range reads, listings and one-file SAS links.

One `ShareServiceClient` (shared key) per `AzureShare`; share, directory and file clients are
derived from it, so they all use its transport and connection pool. Every azure-core error is
translated by `errors.azure_errors` into the project's error tree. The one exception is the log
tailer's `read_tail`, the hottest request the bot makes (every log, every round): a plain GET of
the file's read-only SAS URL over an aiohttp session of its own (see its docstring).

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
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.storage.fileshare import (
    FileProperties,
    FileSasPermissions,
    generate_file_sas,
)
from azure.storage.fileshare.aio import (
    ShareClient,
    ShareDirectoryClient,
    ShareFileClient,
    ShareServiceClient,
)

from services.backends.azure.blobs import ContainerFiles
from services.backends.azure.config import AzureConfig
from services.backends.azure.errors import azure_errors, error_code
from services.backends.azure.paths import disposition, read_ranged, segments
from services.core.errors import (
    BackendError,
    Conflict,
    NotAllowed,
    NotFound,
    TransientError,
    UserError,
)
from services.models import FileEntry, FileLocation

log = logging.getLogger(__name__)

MAX_RANGE = 4 * 1024 * 1024  # Put Range takes at most 4 MiB per request
PRIMARY = "primary"  # the storage SDK's LocationMode.PRIMARY
_STORAGE_OPTIONS = ("location_mode", "hosts", "retry_to_secondary", "retry_hook")
MAX_FILE_CLIENTS = 20_000  # file clients kept for reuse (a log tailed every round is one)
TAIL_SAS_TTL = timedelta(hours=1)  # a tail read's SAS URL is signed once an hour per file
TAIL_SAS_RENEW = timedelta(minutes=10)  # ... and again when it has less than this left
TAIL_CONNECTIONS = 64  # tail reads in flight at once (the runner reads 32 jobs at a time)
TAIL_TIMEOUT_S = 30.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
MAX_RETRY_AFTER = 60.0  # seconds; a longer Retry-After is the runner's business, not a pause here


class FilesRetry(AsyncRetryPolicy[Any, Any]):
    """azure-core's public async retry, with a bot's timings, for the storage pipeline.

    Retried: connection and read errors, 408, 429, 500, 502, 503, 504 and any error answer that
    carries Retry-After (azure-core's rule), never a signing or authentication failure. The pause
    is the answer's Retry-After (capped at a minute), else about 2 s, 4 s, 8 s (± `jitter`) instead
    of a long back-off that would stall a tail cycle. The storage pipeline puts its location
    options (`location_mode`, `hosts`, ...) into the request context and its paging reads
    `http_response.location_mode` back, as its own retry policy does: they are taken out and
    the answer is marked as the primary's, the only location the bot uses.
    """

    def __init__(
        self,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        jitter: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self._sleep = sleep  # tests record the pauses; by default the transport sleeps
        self._jitter = jitter
        kwargs.setdefault("retry_total", 3)
        kwargs.setdefault("retry_backoff_factor", 1.0)
        super().__init__(**kwargs)

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        settings: dict[str, Any] = super().configure_retries(options)
        for storage_only in _STORAGE_OPTIONS:  # not for the transport
            options.pop(storage_only, None)
        return settings

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        """backoff × 2^retries ± jitter: 2 s, 4 s, 8 s with the defaults."""
        base = settings["backoff"] * 2 ** len(settings["history"])
        spread = random.uniform(-self._jitter, self._jitter) if self._jitter and base else 0.0
        return float(min(settings["max_backoff"], max(0.0, base + spread)))

    async def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        delay = self.get_retry_after(response) if response is not None else None
        if delay is None:
            delay = self.get_backoff_time(settings)
        delay = min(max(0.0, delay), MAX_RETRY_AFTER)
        if delay > 0:
            await (transport.sleep if self._sleep is None else self._sleep)(delay)

    async def send(self, request: Any) -> Any:
        mode = request.context.options.get("location_mode", PRIMARY)
        response = await super().send(request)
        response.http_response.location_mode = mode
        return response


def _proxy_in_env() -> bool:
    return any(os.environ.get(n) for v in PROXY_VARIABLES for n in (v, v.upper()))


def _share_only(loc: FileLocation) -> None:
    """The Files-only calls (log tails, the backend's writes) never touch a blob container."""
    if loc.container:
        raise NotAllowed(f"{loc.share}/{loc.path} is in a blob container, not on a file share")


def _content_range_size(value: str | None) -> int | None:
    """The complete length in `bytes a-b/size` or `bytes */size`; None when it is not given."""
    _, slash, total = (value or "").rpartition("/")
    return int(total) if slash and total.strip().isdigit() else None


class AzureShare:
    """The FileShare port over the Azure Files REST API, plus the writes the backend needs.

    `client_kwargs` go to the service client (tests: `retry_total`, `read_timeout`,
    `logging_enable`, `transport`, `connection_verify`).
    """

    def __init__(self, config: AzureConfig, **client_kwargs: Any) -> None:
        self._config = config
        self._account_url = config.account_url
        client_kwargs.setdefault("retry_policy", FilesRetry(**client_kwargs))
        # With env settings on, aiohttp reads ~/.netrc in a worker thread for EVERY request
        # (a thread hop per log read); a shared-key request has no use for it. Proxies from
        # the environment are honoured whenever one is set.
        client_kwargs.setdefault("use_env_settings", _proxy_in_env())
        credential = {"account_name": config.storage_account, "account_key": config.storage_key}
        self._service = ShareServiceClient(
            self._account_url, credential=credential, **client_kwargs
        )
        self._shares: dict[str, ShareClient] = {}
        self._files: dict[FileLocation, ShareFileClient] = {}  # the tailer reads the same ones
        self._tail_urls: dict[FileLocation, tuple[str, datetime]] = {}  # SAS URL, its expiry
        self._session: aiohttp.ClientSession | None = None
        # https-only links, unless the account itself is plain http (the tests' fake).
        https = urlsplit(self._account_url).scheme == "https"
        self.link_protocol = "https" if https else "https,http"
        # Job outputs on a blob container of the account (FileLocation.container) go there.
        self._containers = ContainerFiles(config, link_protocol=self.link_protocol, **client_kwargs)

    async def __aenter__(self) -> AzureShare:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._containers.aclose()
        await self._service.close()

    # -- clients ---------------------------------------------------------------------------------

    def _share(self, share: str) -> ShareClient:
        client = self._shares.get(share)
        if client is None:
            client = self._shares[share] = self._service.get_share_client(share)
        return client

    def _file(self, loc: FileLocation) -> ShareFileClient:
        client = self._files.get(loc)
        if client is None:
            if len(self._files) >= MAX_FILE_CLIENTS:
                self._files.clear()  # a bound, not a cache policy: rebuilding one is cheap
            client = self._share(loc.share).get_file_client("/".join(segments(loc)))
            self._files[loc] = client
        return client

    def _directory(self, share: str, parts: list[str]) -> ShareDirectoryClient:
        return self._share(share).get_directory_client("/".join(parts))

    # -- the port --------------------------------------------------------------------------------

    async def stat(self, loc: FileLocation) -> FileEntry | None:
        if loc.container:
            return await self._containers.stat(loc)
        parts = segments(loc, allow_root=True)
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
        if loc.container:
            return await self._containers.read_range(loc, offset, length)
        client = self._file(loc)
        return await read_ranged(
            f"read {loc.share}/{loc.path}", offset, length, client.download_file
        )

    async def read_tail(
        self, loc: FileLocation, offset: int, length: int
    ) -> tuple[bytes, int] | None:
        """Up to `length` bytes from `offset` and the file's size, in ONE ranged GET; None when
        no file is there. What the log tailer uses instead of Get File Properties + Get File,
        every round for every log: a plain GET of the file's read-only SAS URL (signed once an
        hour per file) over one aiohttp session, without the SDK's pipeline, which cost the bot
        ~0.7 ms of CPU a request (py-spy, bench/scale_bench.py). No retry here: the tailer's
        next round is the retry, and a failure is a TransientError that paces that file.

        A 206 names the size in `Content-Range: bytes a-b/size`. An offset at or past the end
        answers 416 with `Content-Range: bytes */size`: nothing new (or, with a size below
        `offset`, the file shrank). A 416 that names no size is taken as "nothing new"."""
        _share_only(loc)
        if offset < 0 or length <= 0:
            raise UserError("offset must not be negative and length must be positive")
        what = f"read {loc.share}/{loc.path}"
        headers = {"x-ms-range": f"bytes={offset}-{offset + length - 1}"}
        try:
            async with self._http().get(self._tail_url(loc), headers=headers) as resp:
                status = resp.status
                size = _content_range_size(resp.headers.get("Content-Range"))
                retry_after = resp.headers.get("Retry-After")
                data = (await resp.read())[:length] if status in (200, 206) else b""
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TransientError(f"{what}: {type(err).__name__}") from None
        if status == 404:
            return None
        if status == 416:
            return b"", offset if size is None else size
        if status in (200, 206):
            return data, offset + len(data) if size is None else max(size, offset + len(data))
        if status == 403:
            self._tail_urls.pop(loc, None)  # signed again next time (a rotated key, say)
            raise NotAllowed(f"{what}: the storage account refused the read ({status})")
        if status == 429 or status >= 500:
            after = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise TransientError(f"{what}: the service answered {status}", retry_after=after)
        raise BackendError(f"{what}: the service answered {status}")

    def _http(self) -> aiohttp.ClientSession:
        """The session of the tail reads, made on first use (in the running loop)."""
        if self._session is None or self._session.closed:
            verify = self._config.connection_verify
            tls: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=TAIL_CONNECTIONS, ssl=tls),
                timeout=aiohttp.ClientTimeout(total=TAIL_TIMEOUT_S),
                trust_env=_proxy_in_env(),
                auto_decompress=False,
            )
        return self._session

    def _tail_url(self, loc: FileLocation) -> str:
        """The file's read-only SAS URL, signed here and kept for an hour (no request made)."""
        now = datetime.now(UTC)
        kept = self._tail_urls.get(loc)
        if kept is not None and kept[1] - now > TAIL_SAS_RENEW:
            return kept[0]
        if len(self._tail_urls) >= MAX_FILE_CLIENTS:
            self._tail_urls.clear()
        expiry = now + TAIL_SAS_TTL
        parts = segments(loc)
        token = generate_file_sas(
            account_name=self._config.storage_account,
            share_name=loc.share,
            file_path=parts,
            account_key=self._config.storage_key,
            permission=FileSasPermissions(read=True),
            expiry=expiry,
            protocol=self.link_protocol,
        )
        url = f"{self._file(loc).url}?{token}"
        self._tail_urls[loc] = (url, expiry)
        return url

    async def list_files(self, loc: FileLocation, *, recursive: bool = False) -> list[FileEntry]:
        if loc.container:
            return await self._containers.list_files(loc, recursive=recursive)
        top = segments(loc, allow_root=True)
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
        if loc.container:
            return await self._containers.get_download_url(loc, expires_at=expires_at)
        parts = segments(loc)
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
            content_disposition=disposition(parts[-1]),
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
        _share_only(loc)
        parts = segments(loc, allow_root=True)
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
        _share_only(loc)
        parts = segments(loc)
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
        _share_only(loc)
        parts = segments(loc, allow_root=True)
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
        parts = segments(loc)
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
