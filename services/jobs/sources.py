"""Reads job.json / cluster.json text from a manifest name, inline JSON or (console only) a path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from services.core.errors import NotAllowed, NotFound, UserError
from services.models import ConfigSource

MAX_CONFIG_BYTES = 1 << 20
_MANIFEST_RE = re.compile(r"^(?:manifests/(?:jobs|clusters)/)?([-\w]{1,64})(?:\.json)?$", re.ASCII)
Folder = Literal["jobs", "clusters", "fileservers"]
_SHOWN = 80  # characters of a typed name quoted back


class ConfigLoader:
    """Resolves a ConfigSource to (text, label); manifests live in `<manifest_dir>/<folder>/`
    (`jobs/` for job.json files, `clusters/` for cluster.json files)."""

    def __init__(self, manifest_dir: Path) -> None:
        self._dir = manifest_dir

    def manifest_names(self, folder: Folder = "jobs") -> list[str]:
        return sorted(p.stem for p in (self._dir / folder).glob("*.json"))

    def load(
        self, source: ConfigSource, *, may_read_paths: bool, folder: Folder = "jobs"
    ) -> tuple[str, str]:
        """Total: every source gives (text, label) or a one-line UserError / NotFound /
        NotAllowed, also for names the file system refuses (too long, a loop, no permission)."""
        if source.kind == "inline":
            return _checked_size(source.value, "inline JSON"), "inline JSON"
        if source.kind == "manifest":
            match = _MANIFEST_RE.match(source.value)
            if match is None:
                raise UserError(f"{_quoted(source.value)} is not a manifest name")
            path = self._dir / folder / f"{match.group(1)}.json"
            label = f"manifests/{folder}/{path.name}"
            if not _is_file(path, label):
                known = ", ".join(self.manifest_names(folder)) or "none"
                raise NotFound(
                    f"no {folder[:-1]} manifest named {match.group(1)!r} (known: {known})"
                )
            return _read(path, label), label
        if source.kind == "path":
            if not may_read_paths:
                raise NotAllowed("a config path is read only from the console; use a manifest name")
            label = _quoted(source.value)
            try:
                path = Path(source.value).expanduser()
            except RuntimeError:  # ~someone who has no home directory here
                raise NotFound(f"no such file: {label} (no such home directory)") from None
            if not _is_file(path, label):
                raise NotFound(f"no such file: {label}")
            return _read(path, label), source.value
        raise UserError(f"unknown config kind {source.kind!r}")


def _quoted(value: str) -> str:
    """A user-typed name as it may appear in a one-line answer: quoted, printable, bounded."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _is_file(path: Path, label: str) -> bool:
    """Path.is_file, except that a name the OS refuses (ENAMETOOLONG, EACCES…) is one line."""
    try:
        return path.is_file()
    except (OSError, ValueError) as err:  # ValueError: an embedded NUL
        raise UserError(f"cannot read {label}: {_reason(err)}") from None


def _read(path: Path, label: str) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise UserError(f"cannot read {label}: {_reason(err)}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path.name} is larger than 1 MiB")
    return data.decode("utf-8-sig", errors="replace")


def _reason(err: OSError | ValueError) -> str:
    return (err.strerror if isinstance(err, OSError) else None) or str(err) or type(err).__name__


def _checked_size(text: str, label: str) -> str:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise UserError(f"{label} is larger than 1 MiB")
    return text
