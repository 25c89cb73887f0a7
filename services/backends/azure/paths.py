"""Paths, names and ranged reads in the bot's storage account, for the Files and the Blob
clients alike: the segments of a location (never above its share or container), a download's
Content-Disposition, and a byte range read through the SDK's ranged download."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import HttpResponseError

from services.backends.azure.errors import azure_errors
from services.core.errors import NotAllowed, NotFound, UserError
from services.models import FileLocation


def segments(loc: FileLocation, *, allow_root: bool = False) -> list[str]:
    """The path's segments; "", "." and "/" name the root. Refuses `..`, NUL, `\\`."""
    if "\x00" in loc.path or "\\" in loc.path:
        raise NotAllowed(f"bad path {loc.path!r}")
    pure = PurePosixPath(loc.path)
    if pure.is_absolute() or ".." in pure.parts:
        raise NotAllowed(f"path {loc.path!r} leaves its share")
    parts = [p for p in pure.parts if p != "."]
    if not parts and not allow_root:
        raise NotFound(f"no file at the root of share {loc.share!r}")
    return parts


def disposition(name: str) -> str:
    """`attachment; filename="<name>"`, with an RFC 6266 `filename*` for names that need it."""
    plain = name.isascii() and name.isprintable() and not any(c in name for c in '"\\')
    if plain:
        return f'attachment; filename="{name}"'
    fallback = "".join(c if c.isascii() and c.isalnum() or c in "._-" else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def read_ranged(
    what: str, offset: int, length: int, download: Callable[..., Awaitable[Any]]
) -> bytes:
    """`length` bytes from `offset` by `download(offset=, length=)` (`download_file` or
    `download_blob`). At or past the end the service answers 416 InvalidRange, also at offset
    0 of an empty file: that is b""."""
    if offset < 0 or length < 0:
        raise UserError("offset and length must not be negative")
    if length == 0:
        return b""
    async with azure_errors(what):
        try:
            stream = await download(offset=offset, length=length)
            data: bytes = await stream.readall()
        except HttpResponseError as err:
            if err.status_code == 416:
                return b""
            raise
    return data[:length]
