"""The local backend's data directory: its layout, safe names and paths, links, small file reads.

Every other module of the backend reaches the disk through these names, so a cluster or job name
can never leave `<root>/clusters` or `<root>/jobs`, nor a path its share.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from services.core.errors import Conflict, NotAllowed, UserError

SEGMENT_RE = re.compile(r"^[A-Za-z0-9][-\w.]{0,63}$", re.ASCII)


def segment(what: str, value: str) -> str:
    if not SEGMENT_RE.match(value) or value in (".", ".."):
        raise UserError(f"{what} {value!r} is not a safe name")
    return value


def clean_rel(path: str) -> PurePosixPath:
    """A relative path without `..`, root or NUL; "" and "." both mean the top."""
    if "\x00" in path or "\\" in path:
        raise NotAllowed(f"bad path {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise NotAllowed(f"path {path!r} leaves its share")
    return pure


def inside(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def link(link: Path, target: Path) -> None:
    """Point `link` at `target` (relative, so the root may move); replace a stale link."""
    link.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == rel:
            return
        link.unlink()
    elif link.exists():
        raise Conflict(f"{link} exists and is not a mount link")
    link.symlink_to(rel, target_is_directory=True)


def read(path: Path | str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_float(path: Path) -> float | None:
    text = read(path)
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


class DataDir:
    """`<root>/shares/<share>`, `<root>/clusters/<cluster>/`, `<root>/jobs/<job_id>/run/`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def shares(self) -> Path:
        return self.root / "shares"

    def file_server(self, name: str) -> Path:
        """An NFS file server's export: `<root>/file-servers/<name>/data`."""
        return self.root / "file-servers" / segment("file server name", name) / "data"

    def volume(self, kind: str, name: str) -> Path:
        """What a mount points at: a share or blob container is `shares/<name>` whatever its
        account (this machine is one storage namespace, so the job's files on it are listed
        and streamed like any share's); a file server is its export."""
        if kind == "nfs":
            return self.file_server(name)
        return self.shares() / segment("share name", name)

    def cluster_dir(self, name: str) -> Path:
        return self.root / "clusters" / segment("cluster name", name)

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / segment("job id", job_id)

    def run_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "run"
