"""Paths and names in the bot's storage account, for the Files and the Blob clients alike:
the segments of a location (never above its share or container) and a download's
Content-Disposition."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote

from services.core.errors import NotAllowed, NotFound
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
