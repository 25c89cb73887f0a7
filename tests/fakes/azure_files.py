"""A fake Azure Files REST server on 127.0.0.1 (port 0), backed by a real directory; it also
serves the account's Blob service on the same port.

Share `<name>` of the account is the directory `<root>/<name>`; processes that write there (the
fake ARM server's simulated nodes, through a symlink) are seen at once by the REST clients, as
an SMB mount is on Azure. Blob container `<name>` is the directory `<root>/.blobs/<name>`
(`container_dir`; share names cannot start with "."), and blob `a/b/c.txt` is the file
`<root>/.blobs/<name>/a/b/c.txt`: directories are only name prefixes, as in Blob storage, so an
empty directory lists nothing. A name in `containers` wins over a share of the same name for
requests without `restype`. URLs are IP-style, the account in the path like Azurite's:
`http://127.0.0.1:PORT/<account>/<share or container>/<path>`. azure-storage-file-share and
azure-storage-blob take the account name from the path for hosts starting with `127.0.0.1` or
`localhost` (`_shared/base_client.py`), and sign `/<account>` + the URL path, so the
canonicalized resource is `/<account>/<account>/...`.

Authentication is checked as the service does it (FileREST and Blob "Authorize with Shared Key",
"Create a service SAS"): the SharedKey StringToSign is rebuilt from the request (verb, the
standard headers, the sorted `x-ms-*` headers, the canonicalized resource with its decoded,
sorted query) and HMAC-SHA256'd with the account key; a service SAS is accepted for GET/HEAD of
exactly the file or blob it names (`sr=f` over `/file/<account>/<share>/<path>` in the 13-field
string; `sr=b` over `/blob/<account>/<container>/<blob>` in the 16-field string of `sv`
2020-12-06 on, the shorter ones of older `sv`; `sp` with `r`, `st`/`se`, `spr`). Anything else
is 403 AuthenticationFailed (AuthorizationProtocolMismatch for an https-only SAS over http),
without a body for HEAD, as the service answers.

Operations (names as counted in `ops`): Files: share create/properties (CreateShare,
GetShareProperties); directory create/properties/delete/list (CreateDirectory,
GetDirectoryProperties, DeleteDirectory, ListDirectoriesAndFiles: XML EnumerationResults,
`prefix`, `marker`/`maxresults` paging, `include=Timestamps`); file create (CreateFile,
`x-ms-content-length`), put range (PutRange, `x-ms-write: update|clear`), properties
(GetFileProperties, HEAD), get (GetFile: full, or `x-ms-range`/`Range` -> 206 + Content-Range;
an offset at or past the end -> 416 InvalidRange with `Content-Range: bytes */<size>`, as Blob
storage answers), delete (DeleteFile).
Blob: container create/properties (CreateContainer, GetContainerProperties, `restype=container`);
List Blobs (ListBlobs, `restype=container&comp=list`: XML EnumerationResults as
`list_blob_flat_segment` / `list_blob_hierarchy_segment` parse it, `prefix`, `delimiter` ->
BlobPrefix entries, `marker`/`maxresults` paging with NextMarker, `include` checked and tolerated,
`metadata` giving an empty Metadata); Get Blob Properties (GetBlobProperties, HEAD; missing ->
404 BlobNotFound); Get Blob (GetBlob, whole or ranged as GetFile; an empty blob asked for a range
-> 416 InvalidRange with `Content-Range: bytes */0`, as the service answers and download_blob
expects); Put Blob (PutBlob: BlockBlob in one shot, up to MAX_PUT_BLOB bytes, written whole or
not at all, `If-None-Match: *` / `If-Match` honoured); Delete Blob (DeleteBlob). Blobs are
BlockBlobs of type application/octet-stream: content settings and metadata sent on upload are not
kept; Put Block, snapshots, versions and leases are not served. A blob name with an empty, `.` or
`..` segment, a backslash or a NUL is 400 InvalidResourceName, so no name leaves its container;
a Put Blob where a name is both a blob and a prefix (`a` beside `a/b`), which a directory cannot
hold, is 409 ResourceTypeMismatch.

Testing aids: `ops` (requests per REST operation), `bytes_served` (file and blob bytes sent),
`bytes_written`, `requests` (a log, never the signature), `fail_next` / `delay_next` faults,
`delay_path` (one slow file or blob), `latency` (every request's round trip), `in_flight` /
`max_in_flight` (requests being handled at once),
`share_dir` / `create_share` and `container_dir` / `create_container` (the backing directories),
a settable `clock` for SAS expiry, `replace_after_write`
(the next write of a file is followed at once by other content, as when someone else with
write access to the share replaces it right after the bot wrote it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import re
import stat as stat_mod
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote
from xml.sax.saxutils import escape

from aiohttp import web

ACCOUNT = "devacct"
# A made-up account key (base64 of 64 bytes), the shape Azure hands out.
KEY = base64.b64encode(hashlib.sha512(b"batchai-bot fake azure files").digest()).decode()
MAX_PUT_RANGE = 4 * 1024 * 1024
# azure-storage-blob's max_single_put_size: the SDK sends no bigger Put Blob (larger uploads go
# as Put Block + Put Block List, which this fake does not serve).
MAX_PUT_BLOB = 64 * 1024 * 1024
MAX_BLOB_NAME = 1024  # characters, the service's limit
BLOB_ROOT = ".blobs"  # under `root`: the containers' directories (share names cannot start ".")
BLOB_OPS = frozenset({"GetBlob", "GetBlobProperties", "PutBlob", "DeleteBlob"})
CONTAINER_OPS = frozenset({"CreateContainer", "GetContainerProperties", "ListBlobs"})
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_LIST_INCLUDES = frozenset(
    {
        "copy",
        "deleted",
        "deletedwithversions",
        "immutabilitypolicy",
        "legalhold",
        "metadata",
        "permissions",
        "snapshots",
        "tags",
        "uncommittedblobs",
        "versions",
    }
)
# Characters XML 1.0 cannot carry (or that parsers rewrite): the service percent-encodes such a
# name and marks it `Encoded="true"`.
_XML_UNSAFE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
SERVICE_VERSION = "2026-10-06"
_STANDARD_HEADERS = (
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-MD5",
    "Content-Type",
    "Date",
    "If-Modified-Since",
    "If-Match",
    "If-None-Match",
    "If-Unmodified-Since",
    "Range",
)
_SAS_OVERRIDES = {
    "rscc": "Cache-Control",
    "rscd": "Content-Disposition",
    "rsce": "Content-Encoding",
    "rscl": "Content-Language",
    "rsct": "Content-Type",
}
_MESSAGES = {
    "AuthenticationFailed": "Server failed to authenticate the request. Make sure the value of "
    "Authorization header is formed correctly including the signature.",
    "AuthorizationProtocolMismatch": "This request is not authorized to perform this operation "
    "using this protocol.",
    "NoAuthenticationInformation": "Server failed to authenticate the request. Please refer to "
    "the information in the www-authenticate header.",
    "ResourceNotFound": "The specified resource does not exist.",
    "ParentNotFound": "The specified parent path does not exist.",
    "ShareNotFound": "The specified share does not exist.",
    "ShareAlreadyExists": "The specified share already exists.",
    "ContainerAlreadyExists": "The specified container already exists.",
    "ContainerNotFound": "The specified container does not exist.",
    "BlobNotFound": "The specified blob does not exist.",
    "BlobAlreadyExists": "The specified blob already exists.",
    "ConditionNotMet": "The condition specified using HTTP conditional header(s) is not met.",
    "MissingContentLengthHeader": "Content-Length HTTP header is missing.",
    "MissingRequiredHeader": "An HTTP header that's mandatory for this request is not specified.",
    "ResourceAlreadyExists": "The specified resource already exists.",
    "ResourceTypeMismatch": "The specified resource type does not match the type of the "
    "existing resource.",
    "DirectoryNotEmpty": "The specified directory is not empty.",
    "InvalidRange": "The range specified is invalid for the current size of the resource.",
    "InvalidHeaderValue": "The value for one of the HTTP headers is not in the correct format.",
    "InvalidQueryParameterValue": "Value for one of the query parameters specified in the "
    "request URI is invalid.",
    "InvalidResourceName": "The specifed resource name contains invalid characters.",
    "RequestBodyTooLarge": "The request body is too large and exceeds the maximum permissible "
    "limit.",
    "UnsupportedHttpVerb": "The resource doesn't support specified Http Verb.",
    "InternalError": "The server encountered an internal error. Please retry the request.",
    "ServerBusy": "The server is currently unable to receive requests. Please retry your request.",
    "TooManyRequests": "Too many requests.",
}
_FAULT_CODES = {500: "InternalError", 503: "ServerBusy", 429: "TooManyRequests"}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    op: str  # the REST operation, e.g. "GetFile", "ListDirectoriesAndFiles", "GetBlob"
    share: str  # or the blob container
    path: str  # inside the share, decoded (or the blob's name)
    status: int
    auth: str  # "SharedKey", "SAS" or "none"
    range: str | None = None


@dataclass
class _Fault:
    status: int = 0
    retry_after: str | None = None
    delay: float = 0.0


class _Reject(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}


def sign(key: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _http_date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC), usegmt=True)


def _iso7(when: float) -> str:
    """FileREST's timestamp format, 7 fractional digits."""
    dt = datetime.fromtimestamp(when, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}0Z"


def _etag(st: os.stat_result) -> str:
    return f'"0x{st.st_mtime_ns + st.st_size:X}"'


def _parse_time(value: str) -> datetime:
    text = value.replace("Z", "+00:00")
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _header_sort_key(name: str) -> tuple[str, str]:
    # The service compares header names culture-sensitively: hyphens are ignored first and only
    # break ties (the SDK's `_storage_header_sort` emulates the same order).
    return name.replace("-", ""), name


def _not_found(target: Path) -> _Reject:
    # The service says ParentNotFound when the directory the entry would be in is missing
    # (azure-sdk-for-net#15628), ResourceNotFound when only the entry is.
    return _Reject(404, "ResourceNotFound" if target.parent.is_dir() else "ParentNotFound")


def _parse_range(value: str) -> tuple[int, int | None]:
    if not value.startswith("bytes="):
        raise ValueError(value)
    first, _, last = value[len("bytes=") :].partition("-")
    start = int(first)
    end = int(last) if last.strip() else None
    if start < 0 or (end is not None and end < start):
        raise ValueError(value)
    return start, end


class FakeAzureFiles:
    """`async with FakeAzureFiles(tmp_path) as files:` then `files.account_url`, `files.key`."""

    def __init__(
        self,
        root: Path,
        *,
        account: str = ACCOUNT,
        key: str = KEY,
        page_size: int = 5000,
        clock: Callable[[], datetime] | None = None,
        host: str = "127.0.0.1",
        latency: float = 0.0,
    ) -> None:
        self.root = Path(root)
        self.latency = latency  # seconds every request waits first: a real service's round trip
        self.account = account
        self.key = key
        self.page_size = page_size  # the service's default maxresults
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.host = host
        self.ops: Counter[str] = Counter()
        self.bytes_served = 0
        self.bytes_written = 0
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._delays: list[float] = []
        self._path_delays: dict[tuple[str, str], float] = {}
        self.held: list[str] = []  # paths asked for while `delay_path` held them
        self.in_flight = 0  # requests being handled now
        self.max_in_flight = 0  # the most at once since the last reset_counters
        self._replacements: dict[Path, bytes] = {}
        # The account's blob containers; a name added here directly is an empty container whose
        # directory (`container_dir`) is made on first need.
        self.containers: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeAzureFiles:
        if self._runner is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        app = web.Application(client_max_size=MAX_PUT_RANGE + 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, self.host, 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeAzureFiles:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def account_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeAzureFiles is not started")
        return f"http://{self.host}:{self._port}/{self.account}"

    # ---- test aids ---------------------------------------------------------------------------

    def share_dir(self, share: str) -> Path:
        """The directory that backs `share` (it may not exist yet)."""
        return self.root / share

    def create_share(self, share: str) -> Path:
        path = self.share_dir(share)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def container_dir(self, container: str) -> Path:
        """The directory that backs blob container `container` (it may not exist yet): blob
        `a/b.txt` is the file `<container_dir>/a/b.txt`."""
        if not _CONTAINER_NAME.fullmatch(container):
            raise ValueError(f"not a container name: {container!r}")
        return self.root / BLOB_ROOT / container

    def create_container(self, container: str) -> Path:
        """Adds `container` to `containers` and returns its directory, created."""
        path = self.container_dir(container)
        path.mkdir(parents=True, exist_ok=True)
        self.containers.add(container)
        return path

    def fail_next(self, n: int = 1, *, status: int = 500, retry_after: float | None = None) -> None:
        """The next `n` requests get `status` (with Retry-After when given) and do nothing."""
        after = None if retry_after is None else f"{retry_after:g}"
        self._faults.extend(_Fault(status, after) for _ in range(n))

    def delay_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """The next `n` requests wait `seconds` before they are handled (client timeouts)."""
        self._delays.extend([seconds] * n)

    def delay_path(self, share: str, path: str, seconds: float = 3600.0) -> None:
        """Every request for `path` on `share` waits `seconds` (or until the server closes)
        before it is handled: one slow file among fast ones. 0 ends the delay."""
        if seconds > 0:
            self._path_delays[(share, path)] = seconds
        else:
            self._path_delays.pop((share, path), None)

    def replace_after_write(self, share: str, path: str, data: bytes) -> None:
        """Once the next Put Range to `path` on `share` is done, the file holds `data`."""
        self._replacements[self.share_dir(share) / path] = data

    def reset_counters(self) -> None:
        self.ops.clear()
        self.requests.clear()
        self.bytes_served = self.bytes_written = 0
        self.max_in_flight = self.in_flight

    def count(self, *ops: str) -> int:
        return sum(self.ops[op] for op in ops)

    # ---- dispatch ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.partition("?")[0]
        parts = [unquote(p) for p in raw_path.split("/")[1:]]
        account = parts[0] if parts else ""
        share = parts[1] if len(parts) > 1 else ""
        query = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        blob = share in self.containers and "restype" not in query
        # A blob's name is the rest of the path as sent (an empty segment is part of it, and
        # refused); a file's path skips empty segments.
        rel = "/".join(parts[2:]) if blob else "/".join(p for p in parts[2:] if p)
        op = self._operation(request.method, query, bool(share), blob=blob)
        auth = (
            "SAS"
            if "sig" in query
            else "SharedKey"
            if "Authorization" in request.headers
            else "none"
        )
        xrange = request.headers.get("x-ms-range") or request.headers.get("Range")
        self.ops[op] += 1

        def record(status: int) -> None:
            self.requests.append(
                RecordedRequest(request.method, op, share, rel, status, auth, xrange)
            )

        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._handle_counted(request, op, account, share, rel, query, record)
        finally:
            self.in_flight -= 1

    async def _handle_counted(
        self,
        request: web.Request,
        op: str,
        account: str,
        share: str,
        rel: str,
        query: dict[str, str],
        record: Callable[[int], None],
    ) -> web.StreamResponse:
        is_head = request.method == "HEAD"
        delay = self._delays.pop(0) if self._delays else self._path_delays.get((share, rel), 0.0)
        if delay and (share, rel) in self._path_delays:
            self.held.append(rel)  # asked for while slow (it is recorded once answered)
        delay = delay or self.latency
        if delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        if self._faults:
            fault = self._faults.pop(0)
            code = _FAULT_CODES.get(fault.status, "InternalError")
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            record(fault.status)
            return self._error(fault.status, code, head=is_head, headers=headers)
        try:
            overrides = self._authenticate(request, account, share, rel, query, op)
            response = await self._dispatch(request, op, share, rel, query, overrides)
        except _Reject as rej:
            record(rej.status)
            return self._error(
                rej.status, rej.code, head=is_head, headers=rej.headers, detail=rej.detail
            )
        record(response.status)
        return response

    @staticmethod
    def _operation(
        method: str, query: Mapping[str, str], has_share: bool, *, blob: bool = False
    ) -> str:
        restype, comp = query.get("restype"), query.get("comp")
        if not has_share:
            return "Service"
        if restype == "share":
            return {"PUT": "CreateShare", "DELETE": "DeleteShare"}.get(method, "GetShareProperties")
        if restype == "container":  # the Blob service on the same account
            if comp == "list":
                return "ListBlobs" if method == "GET" else "Unsupported"
            if comp is not None:
                return f"Unsupported:{comp}"
            return {"PUT": "CreateContainer", "GET": "GetContainerProperties"}.get(
                method, "GetContainerProperties" if method == "HEAD" else "Unsupported"
            )
        if blob:
            if comp is not None:
                return f"Unsupported:{comp}"
            return {
                "PUT": "PutBlob",
                "DELETE": "DeleteBlob",
                "HEAD": "GetBlobProperties",
                "GET": "GetBlob",
            }.get(method, "Unsupported")
        if restype == "directory":
            if comp == "list":
                return "ListDirectoriesAndFiles"
            return {"PUT": "CreateDirectory", "DELETE": "DeleteDirectory"}.get(
                method, "GetDirectoryProperties"
            )
        if comp == "range":
            return "PutRange"
        if comp is not None:
            return f"Unsupported:{comp}"
        return {
            "PUT": "CreateFile",
            "DELETE": "DeleteFile",
            "HEAD": "GetFileProperties",
            "GET": "GetFile",
        }.get(method, "Unsupported")

    async def _dispatch(
        self,
        request: web.Request,
        op: str,
        share: str,
        rel: str,
        query: Mapping[str, str],
        overrides: Mapping[str, str],
    ) -> web.StreamResponse:
        if op.startswith("Unsupported") and (
            query.get("restype") == "container" or share in self.containers
        ):
            raise _Reject(400, "UnsupportedHttpVerb")
        if op == "CreateShare":
            return self._create_share(share)
        if op == "CreateContainer":
            return self._create_container(share)
        if op == "GetContainerProperties":
            if share not in self.containers:
                raise _Reject(404, "ContainerNotFound")
            return web.Response(status=200, headers=self._common())
        if op == "ListBlobs":
            return self._list_blobs(request, share, query)
        if op in BLOB_OPS:
            return await self._blob_operation(request, op, share, rel, query, overrides)
        share_dir = self.share_dir(share)
        if not share or not share_dir.is_dir():
            raise _Reject(404, "ShareNotFound")
        if op == "GetShareProperties":
            return self._properties_response(share_dir.stat(), directory=True)
        target = self._resolve(share_dir, rel)
        if op == "GetDirectoryProperties":
            if not target.is_dir():
                raise _not_found(target)
            return self._properties_response(target.stat(), directory=True)
        if op == "ListDirectoriesAndFiles":
            return self._list(request, share, rel, target, query)
        if op == "CreateDirectory":
            return self._create_directory(target)
        if op == "DeleteDirectory":
            return self._delete_directory(target, share_dir)
        if op == "CreateFile":
            return self._create_file(request, target)
        if op == "PutRange":
            return await self._put_range(request, target)
        if op == "DeleteFile":
            if not target.is_file():
                raise _not_found(target)
            target.unlink()
            return web.Response(status=202, headers=self._common())
        if op == "GetFileProperties":
            if not target.is_file():
                raise _not_found(target)
            return self._properties_response(target.stat(), directory=False)
        if op == "GetFile":
            return self._get_file(request, target, overrides)
        raise _Reject(400, "UnsupportedHttpVerb")

    def _resolve(self, share_dir: Path, rel: str) -> Path:
        parts = [p for p in rel.split("/") if p]
        if any(p in (".", "..") or "\\" in p or "\x00" in p for p in parts):
            raise _Reject(400, "InvalidResourceName")
        path = share_dir.joinpath(*parts)
        real, base = path.resolve(), share_dir.resolve()
        if real != base and base not in real.parents:
            raise _Reject(404, "ResourceNotFound")  # a link out of the share: not on the share
        return path

    # ---- authentication ----------------------------------------------------------------------

    def _authenticate(
        self,
        request: web.Request,
        account: str,
        share: str,
        rel: str,
        query: Mapping[str, str],
        op: str,
    ) -> Mapping[str, str]:
        """Checks the request's credential; returns the SAS response-header overrides."""
        if "sig" in query:
            if op in BLOB_OPS or op in CONTAINER_OPS:
                return self._check_blob_sas(request, account, share, rel, query, op)
            return self._check_sas(request, account, share, rel, query, op)
        header = request.headers.get("Authorization")
        if not header:
            raise _Reject(401, "NoAuthenticationInformation")
        scheme, _, rest = header.partition(" ")
        name, _, signature = rest.partition(":")
        if scheme != "SharedKey" or name != self.account or account != self.account:
            raise _Reject(403, "AuthenticationFailed", "Unsupported credential or account")
        if "x-ms-version" not in request.headers:
            raise _Reject(400, "MissingRequiredHeader")
        if "x-ms-date" not in request.headers and "Date" not in request.headers:
            raise _Reject(403, "AuthenticationFailed", "Request date header not specified")
        string_to_sign = self._shared_key_string(request, account)
        if not hmac.compare_digest(sign(self.key, string_to_sign), signature):
            raise _Reject(
                403,
                "AuthenticationFailed",
                f"The MAC signature found in the HTTP request '{signature}' is not the same "
                "as any computed signature.",
            )
        return {}

    @staticmethod
    def _shared_key_string(request: web.Request, account: str) -> str:
        headers = request.headers
        lines = [request.method]
        for name in _STANDARD_HEADERS:
            value = headers.get(name, "")
            if name == "Content-Length" and value == "0":
                value = ""  # from version 2015-02-21 on, a zero length signs as empty
            lines.append(value)
        x_ms = sorted(
            (
                (k.lower(), " ".join(v.split()))
                for k, v in headers.items()
                if k.lower().startswith("x-ms-")
            ),
            key=lambda kv: _header_sort_key(kv[0]),
        )
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in x_ms)
        resource = f"/{account}{request.raw_path.partition('?')[0]}"
        params: dict[str, list[str]] = {}
        for k, v in parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True):
            params.setdefault(k.lower(), []).append(v)
        for k in sorted(params):
            resource += f"\n{k}:{','.join(sorted(params[k]))}"
        return "\n".join(lines) + "\n" + canonical_headers + resource

    def _check_sas(
        self,
        request: web.Request,
        account: str,
        share: str,
        rel: str,
        query: Mapping[str, str],
        op: str,
    ) -> Mapping[str, str]:
        if op not in ("GetFile", "GetFileProperties") or account != self.account:
            raise _Reject(403, "AuthenticationFailed", "This SAS does not allow this operation")
        if query.get("sr") != "f" or "r" not in query.get("sp", "") or not query.get("sv"):
            raise _Reject(403, "AuthenticationFailed", "Signed resource or permission not valid")
        self._check_sas_window(request, query)
        return self._signed(query, f"/file/{account}/{share}/{rel}", [query.get("sv", "")])

    def _check_sas_window(self, request: web.Request, query: Mapping[str, str]) -> None:
        """A SAS's validity period (`st`/`se`, by the settable clock) and protocols (`spr`)."""
        now = self.clock()
        try:
            expiry = _parse_time(query["se"])
            start = _parse_time(query["st"]) if query.get("st") else None
        except (KeyError, ValueError) as err:
            raise _Reject(403, "AuthenticationFailed", "Signed expiry time is missing") from err
        if now >= expiry or (start is not None and now < start):
            raise _Reject(403, "AuthenticationFailed", "Signed expiry time must be after now")
        protocols = query.get("spr", "https,http").split(",")
        if request.scheme not in protocols:
            raise _Reject(403, "AuthorizationProtocolMismatch")

    def _check_blob_sas(
        self,
        request: web.Request,
        account: str,
        container: str,
        blob: str,
        query: Mapping[str, str],
        op: str,
    ) -> Mapping[str, str]:
        """A Blob service SAS (`sr=b`), its string-to-sign as azure-storage-blob's
        `BlobSharedAccessSignature.generate_blob` builds it for the version it signs."""
        if op not in ("GetBlob", "GetBlobProperties") or account != self.account:
            raise _Reject(403, "AuthenticationFailed", "This SAS does not allow this operation")
        version = query.get("sv", "")
        if query.get("sr") != "b" or "r" not in query.get("sp", "") or version < "2015-04-05":
            raise _Reject(403, "AuthenticationFailed", "Signed resource or permission not valid")
        self._check_sas_window(request, query)
        tail = [version]
        if version >= "2018-11-09":
            tail += [query.get("sr", ""), query.get("snapshot", "")]
        if version >= "2020-12-06":
            tail.append(query.get("ses", ""))
        return self._signed(query, f"/blob/{account}/{container}/{blob}", tail)

    def _signed(
        self, query: Mapping[str, str], resource: str, tail: list[str]
    ) -> Mapping[str, str]:
        """Check a service SAS's signature: sp, st, se, the canonicalized `resource`, si, sip,
        spr, the service's own `tail` of fields, then the response overrides. Returns the
        headers those overrides ask for."""
        fields = [
            query.get("sp", ""),
            query.get("st", ""),
            query.get("se", ""),
            resource,
            query.get("si", ""),
            query.get("sip", ""),
            query.get("spr", ""),
            *tail,
            *(query.get(k, "") for k in _SAS_OVERRIDES),
        ]
        if not hmac.compare_digest(sign(self.key, "\n".join(fields)), query["sig"]):
            raise _Reject(403, "AuthenticationFailed", "Signature did not match")
        return {header: query[k] for k, header in _SAS_OVERRIDES.items() if query.get(k)}

    # ---- operations --------------------------------------------------------------------------

    def _common(self) -> dict[str, str]:
        return {
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-version": SERVICE_VERSION,
            "Date": _http_date(self.clock().timestamp()),
        }

    def _error(
        self,
        status: int,
        code: str,
        *,
        head: bool = False,
        headers: Mapping[str, str] | None = None,
        detail: str | None = None,
    ) -> web.Response:
        all_headers = {**self._common(), "x-ms-error-code": code, **(headers or {})}
        if head:
            return web.Response(status=status, headers=all_headers)
        extra = (
            f"<AuthenticationErrorDetail>{escape(detail)}</AuthenticationErrorDetail>"
            if detail
            else ""
        )
        message = f"{_MESSAGES.get(code, code)}\nRequestId:{all_headers['x-ms-request-id']}"
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{extra}</Error>"
        )
        return web.Response(
            status=status, headers=all_headers, body=body.encode(), content_type="application/xml"
        )

    def _properties_headers(self, st: os.stat_result, *, directory: bool) -> dict[str, str]:
        headers = {
            **self._common(),
            "ETag": _etag(st),
            "Last-Modified": _http_date(st.st_mtime),
            "x-ms-server-encrypted": "true",
            "x-ms-file-attributes": "Directory" if directory else "Archive",
            "x-ms-file-creation-time": _iso7(st.st_ctime),
            "x-ms-file-last-write-time": _iso7(st.st_mtime),
            "x-ms-file-change-time": _iso7(st.st_ctime),
            "x-ms-file-permission-key": "4066528134148476695*1",
            "x-ms-file-id": str(st.st_ino),
            "x-ms-file-parent-id": "0",
        }
        if not directory:
            headers["x-ms-type"] = "File"
            headers["Content-Type"] = "application/octet-stream"
        return headers

    def _properties_response(self, st: os.stat_result, *, directory: bool) -> web.Response:
        headers = self._properties_headers(st, directory=directory)
        headers["Content-Length"] = "0" if directory else str(st.st_size)
        return web.Response(status=200, headers=headers)

    def _create_share(self, share: str) -> web.Response:
        if not share or not share.replace("-", "").isalnum() or share.lower() != share:
            raise _Reject(400, "InvalidResourceName")
        path = self.share_dir(share)
        if path.is_dir():
            raise _Reject(409, "ShareAlreadyExists")
        path.mkdir(parents=True)
        st = path.stat()
        return web.Response(
            status=201,
            headers={**self._common(), "ETag": _etag(st), "Last-Modified": _http_date(st.st_mtime)},
        )

    def _create_container(self, name: str) -> web.Response:
        if not _CONTAINER_NAME.fullmatch(name):
            raise _Reject(400, "InvalidResourceName")
        if name in self.containers:
            raise _Reject(409, "ContainerAlreadyExists")
        st = self.create_container(name).stat()
        return web.Response(
            status=201,
            headers={**self._common(), "ETag": _etag(st), "Last-Modified": _http_date(st.st_mtime)},
        )

    def _create_directory(self, target: Path) -> web.Response:
        if not target.parent.is_dir():
            raise _Reject(404, "ParentNotFound")
        if target.is_dir():
            raise _Reject(409, "ResourceAlreadyExists")
        if target.exists():
            raise _Reject(409, "ResourceTypeMismatch")
        target.mkdir()
        return web.Response(
            status=201, headers=self._properties_headers(target.stat(), directory=True)
        )

    def _delete_directory(self, target: Path, share_dir: Path) -> web.Response:
        if not target.is_dir() or target == share_dir:
            raise _not_found(target)
        if any(target.iterdir()):
            raise _Reject(409, "DirectoryNotEmpty")
        target.rmdir()
        return web.Response(status=202, headers=self._common())

    def _create_file(self, request: web.Request, target: Path) -> web.Response:
        try:
            size = int(request.headers["x-ms-content-length"])
        except (KeyError, ValueError) as err:
            raise _Reject(400, "InvalidHeaderValue") from err
        if request.headers.get("x-ms-type", "").lower() != "file" or size < 0:
            raise _Reject(400, "InvalidHeaderValue")
        if not target.parent.is_dir():
            raise _Reject(404, "ParentNotFound")
        if target.is_dir():
            raise _Reject(409, "ResourceTypeMismatch")
        with open(target, "wb") as f:  # Create File replaces an existing file
            f.truncate(size)
        return web.Response(
            status=201, headers=self._properties_headers(target.stat(), directory=False)
        )

    async def _put_range(self, request: web.Request, target: Path) -> web.Response:
        if not target.is_file():
            raise _not_found(target)
        try:
            start, end = _parse_range(request.headers.get("x-ms-range", ""))
        except ValueError as err:
            raise _Reject(400, "InvalidHeaderValue") from err
        if end is None:
            raise _Reject(400, "InvalidHeaderValue")
        length = end - start + 1
        if length > MAX_PUT_RANGE:
            raise _Reject(413, "RequestBodyTooLarge")
        if end >= target.stat().st_size:
            raise _Reject(416, "InvalidRange")
        mode = request.headers.get("x-ms-write", "").lower()
        body = await request.read()
        if mode == "update":
            if len(body) != length:
                raise _Reject(400, "InvalidHeaderValue")
            data = body
        elif mode == "clear":
            if body:
                raise _Reject(400, "InvalidHeaderValue")
            data = b"\0" * length
        else:
            raise _Reject(400, "InvalidHeaderValue")
        fd = os.open(target, os.O_WRONLY)
        try:
            os.pwrite(fd, data, start)
        finally:
            os.close(fd)
        if mode == "update":
            self.bytes_written += len(data)
        replacement = self._replacements.pop(target, None)
        if replacement is not None:
            target.write_bytes(replacement)
        st = target.stat()
        return web.Response(
            status=201,
            headers={**self._common(), "ETag": _etag(st), "Last-Modified": _http_date(st.st_mtime)},
        )

    def _get_file(
        self, request: web.Request, target: Path, overrides: Mapping[str, str]
    ) -> web.Response:
        return self._serve(
            request,
            target,
            overrides,
            lambda st: self._properties_headers(st, directory=False),
            lambda: _not_found(target),
        )

    def _serve(
        self,
        request: web.Request,
        target: Path,
        overrides: Mapping[str, str],
        properties: Callable[[os.stat_result], dict[str, str]],
        missing: Callable[[], _Reject],
    ) -> web.Response:
        """Get File / Get Blob: the whole file, or the range asked for (206)."""
        try:
            fd = os.open(target, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
            raise missing() from err
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise missing()
            headers = {**properties(st), "Accept-Ranges": "bytes"}
            headers.update(overrides)
            size = st.st_size
            spec = request.headers.get("x-ms-range") or request.headers.get("Range")
            if spec is None:
                data = os.pread(fd, size, 0) if size else b""
                status = 200
            else:
                try:
                    start, end = _parse_range(spec)
                except ValueError as err:
                    raise _Reject(400, "InvalidHeaderValue") from err
                if start >= size:
                    raise _Reject(416, "InvalidRange", headers={"Content-Range": f"bytes */{size}"})
                last = size - 1 if end is None else min(end, size - 1)
                data = os.pread(fd, last - start + 1, start)
                headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{size}"
                status = 206
        finally:
            os.close(fd)
        self.bytes_served += len(data)
        return web.Response(status=status, headers=headers, body=data)

    def _list(
        self,
        request: web.Request,
        share: str,
        rel: str,
        target: Path,
        query: Mapping[str, str],
    ) -> web.Response:
        if not target.is_dir():
            raise _not_found(target)
        prefix = query.get("prefix", "")
        marker = query.get("marker", "")
        try:
            limit = min(int(query.get("maxresults", self.page_size)), self.page_size)
        except ValueError as err:
            raise _Reject(400, "InvalidQueryParameterValue") from err
        if limit <= 0:
            raise _Reject(400, "InvalidQueryParameterValue")
        timestamps = "timestamps" in query.get("include", "").lower()
        names = sorted(
            e.name for e in os.scandir(target) if e.name.startswith(prefix) and e.name >= marker
        )
        page, rest = names[:limit], names[limit:]
        entries = []
        for name in page:
            try:
                st = (target / name).stat()
            except OSError:
                continue  # removed while we listed
            is_dir = stat_mod.S_ISDIR(st.st_mode)
            props = "" if is_dir else f"<Content-Length>{st.st_size}</Content-Length>"
            if timestamps:
                props += (
                    f"<CreationTime>{_iso7(st.st_ctime)}</CreationTime>"
                    f"<LastAccessTime>{_iso7(st.st_atime)}</LastAccessTime>"
                    f"<LastWriteTime>{_iso7(st.st_mtime)}</LastWriteTime>"
                    f"<ChangeTime>{_iso7(st.st_ctime)}</ChangeTime>"
                    f"<Last-Modified>{_http_date(st.st_mtime)}</Last-Modified>"
                    f"<Etag>{escape(_etag(st))}</Etag>"
                )
            tag = "Directory" if is_dir else "File"
            entries.append(
                f"<{tag}><FileId>{st.st_ino}</FileId><Name>{escape(name)}</Name>"
                f"<Properties>{props}</Properties></{tag}>"
            )
        head = "".join(
            f"<{tag}>{escape(query[key])}</{tag}>"
            for key, tag in (
                ("marker", "Marker"),
                ("prefix", "Prefix"),
                ("maxresults", "MaxResults"),
            )
            if key in query
        )
        next_marker = f"<NextMarker>{escape(rest[0])}</NextMarker>" if rest else "<NextMarker />"
        endpoint = f"{request.scheme}://{request.host}/{self.account}/"
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<EnumerationResults ServiceEndpoint="{escape(endpoint)}" ShareName="{escape(share)}"'
            f' DirectoryPath="{escape(rel)}">{head}'
            f"<DirectoryId>{target.stat().st_ino}</DirectoryId>"
            f"<Entries>{''.join(entries)}</Entries>{next_marker}</EnumerationResults>"
        )
        return web.Response(
            status=200, headers=self._common(), body=body.encode(), content_type="application/xml"
        )

    # ---- blobs -------------------------------------------------------------------------------

    def _container_base(self, container: str) -> Path:
        try:
            return self.container_dir(container)
        except ValueError as err:  # a name put into `containers` by hand, not a valid one
            raise _Reject(400, "InvalidResourceName") from err

    def _blob_path(self, container: str, name: str) -> Path:
        """The file behind blob `name`; a name that could leave the container is refused."""
        parts = name.split("/")
        if (
            not name
            or len(name) > MAX_BLOB_NAME
            or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts)
        ):
            raise _Reject(400, "InvalidResourceName")
        base = self._container_base(container)
        path = base.joinpath(*parts)
        real, base_real = path.resolve(), base.resolve()
        if base_real not in real.parents:
            raise _Reject(404, "BlobNotFound")  # a link out of the container: not in it
        return path

    def _blob_headers(self, st: os.stat_result) -> dict[str, str]:
        return {
            **self._common(),
            "ETag": _etag(st),
            "Last-Modified": _http_date(st.st_mtime),
            "Content-Type": "application/octet-stream",
            "x-ms-blob-type": "BlockBlob",
            "x-ms-creation-time": _http_date(min(st.st_ctime, st.st_mtime)),
            "x-ms-lease-state": "available",
            "x-ms-lease-status": "unlocked",
            "x-ms-server-encrypted": "true",
            "x-ms-access-tier": "Hot",
            "x-ms-access-tier-inferred": "true",
        }

    async def _blob_operation(
        self,
        request: web.Request,
        op: str,
        container: str,
        name: str,
        query: Mapping[str, str],
        overrides: Mapping[str, str],
    ) -> web.Response:
        target = self._blob_path(container, name)
        if op == "PutBlob":
            return await self._put_blob(request, target)
        if "snapshot" in query or "versionid" in query:
            raise _Reject(404, "BlobNotFound")  # this fake keeps no snapshots or versions
        if op == "GetBlob":
            return self._serve(
                request, target, overrides, self._blob_headers, lambda: _Reject(404, "BlobNotFound")
            )
        if not target.is_file():
            raise _Reject(404, "BlobNotFound")
        if op == "GetBlobProperties":
            st = target.stat()
            headers = {**self._blob_headers(st), "Content-Length": str(st.st_size)}
            headers.update(overrides)
            return web.Response(status=200, headers=headers)
        # DeleteBlob: the file goes, and the directories only it kept (they are prefixes only)
        target.unlink()
        base = self._container_base(container)
        parent = target.parent
        while parent != base:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return web.Response(status=202, headers=self._common())

    async def _put_blob(self, request: web.Request, target: Path) -> web.Response:
        blob_type = request.headers.get("x-ms-blob-type")
        if blob_type is None:
            raise _Reject(400, "MissingRequiredHeader")
        if blob_type != "BlockBlob":
            raise _Reject(400, "InvalidHeaderValue")  # page and append blobs are not served
        try:
            length = int(request.headers["Content-Length"])
        except (KeyError, ValueError) as err:
            raise _Reject(411, "MissingContentLengthHeader") from err
        if length > MAX_PUT_BLOB:
            raise _Reject(413, "RequestBodyTooLarge")
        exists = target.is_file()
        if request.headers.get("If-None-Match") == "*" and exists:
            raise _Reject(409, "BlobAlreadyExists")
        if_match = request.headers.get("If-Match")
        if if_match is not None and if_match != "*":
            if not exists or if_match != _etag(target.stat()):
                raise _Reject(412, "ConditionNotMet")
        elif if_match == "*" and not exists:
            raise _Reject(412, "ConditionNotMet")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                target.rmdir()  # an empty directory is no blob and no prefix
        except OSError as err:
            # `a` beside `a/b` is one blob and one prefix in Blob storage; a directory tree
            # cannot hold both.
            raise _Reject(409, "ResourceTypeMismatch") from err
        md5 = hashlib.md5(usedforsecurity=False)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 16):
                    f.write(chunk)
                    md5.update(chunk)
                size = f.tell()
            if size != length:
                raise _Reject(400, "InvalidHeaderValue")
            os.replace(tmp, target)  # the blob appears whole, as a committed blob does
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self.bytes_written += size
        st = target.stat()
        return web.Response(
            status=201,
            headers={
                **self._common(),
                "ETag": _etag(st),
                "Last-Modified": _http_date(st.st_mtime),
                "Content-MD5": base64.b64encode(md5.digest()).decode(),
                "x-ms-request-server-encrypted": "true",
            },
        )

    def _blob_names(self, container: str, prefix: str) -> list[str]:
        """The names of the container's blobs that start with `prefix`, in no order."""
        base = self._container_base(container)
        head = prefix.rpartition("/")[0]
        start = base
        if head:
            parts = head.split("/")
            if any(p in ("", ".", "..") or "\\" in p for p in parts):
                return []  # no blob has such a name
            start = base.joinpath(*parts)
        base_real = base.resolve()
        if start != base and base_real not in start.resolve().parents:
            return []  # a link out of the container: nothing in it is a blob
        names: list[str] = []

        def walk(directory: Path, rel: str) -> None:
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                return
            for entry in entries:
                name = f"{rel}{entry.name}"
                if "\\" in entry.name or not name.startswith(prefix[: len(name)]):
                    continue
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    continue  # not a name a URL can carry
                if entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), name + "/")
                elif entry.is_file() and name.startswith(prefix):
                    if entry.is_symlink():
                        real = Path(entry.path).resolve()
                        if base_real not in real.parents:
                            continue  # a link out of the container is not in it
                    names.append(name)

        walk(start, head + "/" if head else "")
        return names

    def _list_blobs(
        self, request: web.Request, container: str, query: Mapping[str, str]
    ) -> web.Response:
        if container not in self.containers:
            raise _Reject(404, "ContainerNotFound")
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        try:
            marker = _blob_marker_name(query.get("marker", ""))
            limit = min(int(query.get("maxresults", self.page_size)), self.page_size)
        except ValueError as err:
            raise _Reject(400, "InvalidQueryParameterValue") from err
        if limit <= 0:
            raise _Reject(400, "InvalidQueryParameterValue")
        includes = {i.strip().lower() for i in query.get("include", "").split(",") if i.strip()}
        if not includes <= _LIST_INCLUDES:
            raise _Reject(400, "InvalidQueryParameterValue")
        entries: dict[str, bool] = {}  # name -> is a BlobPrefix
        for name in self._blob_names(container, prefix):
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                entries.setdefault(name[: cut + len(delimiter)], True)
            else:
                entries[name] = False
        after = query.get("startFrom", "")
        # By code point, which is UTF-8 byte order: the service's order.
        names = sorted(n for n in entries if n >= marker and n >= after)
        page, rest = names[:limit], names[limit:]
        base = self._container_base(container)
        items = []
        for name in page:
            if entries[name]:
                items.append(f"<BlobPrefix>{_xml_name(name)}</BlobPrefix>")
                continue
            try:
                st = base.joinpath(*name.split("/")).stat()
            except OSError:
                continue  # removed while we listed
            metadata = "<Metadata />" if "metadata" in includes else ""
            items.append(
                f"<Blob>{_xml_name(name)}<Properties>"
                f"<Creation-Time>{_http_date(min(st.st_ctime, st.st_mtime))}</Creation-Time>"
                f"<Last-Modified>{_http_date(st.st_mtime)}</Last-Modified>"
                f"<Etag>{_etag(st)[1:-1]}</Etag>"  # unquoted in a listing
                f"<Content-Length>{st.st_size}</Content-Length>"
                "<Content-Type>application/octet-stream</Content-Type>"
                "<BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier>"
                "<AccessTierInferred>true</AccessTierInferred>"
                "<LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>"
                "<ServerEncrypted>true</ServerEncrypted>"
                f"</Properties>{metadata}</Blob>"
            )
        head = "".join(
            f"<{tag}>{escape(query[key])}</{tag}>"
            for key, tag in (
                ("prefix", "Prefix"),
                ("marker", "Marker"),
                ("maxresults", "MaxResults"),
                ("delimiter", "Delimiter"),
            )
            if key in query
        )
        next_marker = (
            f"<NextMarker>{_blob_marker(rest[0])}</NextMarker>" if rest else "<NextMarker />"
        )
        endpoint = f"{request.scheme}://{request.host}/{self.account}/"
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<EnumerationResults ServiceEndpoint="{escape(endpoint)}"'
            f' ContainerName="{escape(container)}">{head}'
            f"<Blobs>{''.join(items)}</Blobs>{next_marker}</EnumerationResults>"
        )
        return web.Response(
            status=200, headers=self._common(), body=body.encode(), content_type="application/xml"
        )


def _blob_marker(name: str) -> str:
    """An opaque List Blobs continuation marker (the service's are opaque too) for `name`."""
    return "1!" + base64.urlsafe_b64encode(name.encode()).decode()


def _blob_marker_name(marker: str) -> str:
    """The name a marker continues from; ValueError if the fake did not hand it out."""
    if not marker:
        return ""
    if not marker.startswith("1!"):
        raise ValueError(marker)
    return base64.urlsafe_b64decode(marker[2:].encode()).decode()


def _xml_name(name: str) -> str:
    """A List Blobs `<Name>`: percent-encoded and marked when XML cannot carry it as is."""
    if _XML_UNSAFE.search(name):
        return f'<Name Encoded="true">{escape(quote(name, safe="/"))}</Name>'
    return f"<Name>{escape(name)}</Name>"
