"""Reads job.json / cluster.json text from a manifest name, inline JSON or (console only) a path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from services.errors import NotAllowed, NotFound, UserError
from services.models import ConfigSource

MAX_CONFIG_BYTES = 1 << 20
_MANIFEST_RE = re.compile(r"^(?:manifests/(?:jobs|clusters)/)?([-\w]{1,64})(?:\.json)?$", re.ASCII)
Folder = Literal["jobs", "clusters"]


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
        if source.kind == "inline":
            return _checked_size(source.value, "inline JSON"), "inline JSON"
        if source.kind == "manifest":
            match = _MANIFEST_RE.match(source.value)
            if match is None:
                raise UserError(f"{source.value!r} is not a manifest name")
            path = self._dir / folder / f"{match.group(1)}.json"
            if not path.is_file():
                known = ", ".join(self.manifest_names(folder)) or "none"
                raise NotFound(
                    f"no {folder[:-1]} manifest named {match.group(1)!r} (known: {known})"
                )
            return _read(path), f"manifests/{folder}/{path.name}"
        if source.kind == "path":
            if not may_read_paths:
                raise NotAllowed("a config path is read only from the console; use a manifest name")
            path = Path(source.value).expanduser()
            if not path.is_file():
                raise NotFound(f"no such file: {source.value}")
            return _read(path), source.value
        raise UserError(f"unknown config kind {source.kind!r}")


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path.name} is larger than 1 MiB")
    return path.read_bytes().decode("utf-8-sig", errors="replace")


def _checked_size(text: str, label: str) -> str:
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise UserError(f"{label} is larger than 1 MiB")
    return text
