"""Azure Files on this machine: share `<name>` is the directory `<root>/shares/<name>`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat as stat_mod
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from services.backends.links import LinkSigner
from services.backends.local.paths import clean_rel, inside
from services.backends.noderun.launch import check_share_name
from services.core.errors import NotAllowed, NotFound, UserError
from services.models import FileEntry, FileLocation

_READ_INLINE = 1 << 20  # a local pread this small takes microseconds: no thread hop needed


class LocalShare:
    """Azure Files stand-in: share `<name>` is the directory `<root>/shares/<name>`.

    Every location is resolved (symlinks too) and must stay inside its share's directory.
    Download links are signed by the bot and served by its own web app (`local_path`).
    """

    def __init__(self, root: Path, signer: LinkSigner) -> None:
        self._shares = Path(root) / "shares"
        self._signer = signer

    def share_dir(self, share: str) -> Path:
        return self._shares / check_share_name(share)

    def _resolve(self, loc: FileLocation) -> Path:
        """The real path; NotFound without the share, NotAllowed when it leaves the share."""
        try:
            share_dir = self.share_dir(loc.share)
        except UserError as err:
            raise NotFound(f"no share {loc.share!r}") from err
        rel = clean_rel(loc.path)
        if not share_dir.is_dir():
            raise NotFound(f"no share {loc.share!r}")
        base = share_dir.resolve()
        target = (base / rel).resolve()
        if not inside(target, base):
            raise NotAllowed(f"path {loc.path!r} leaves share {loc.share!r}")
        return target

    @staticmethod
    def _normalized(loc: FileLocation) -> FileLocation:
        rel = str(clean_rel(loc.path))
        return FileLocation(loc.share, "" if rel == "." else rel)

    def local_path(self, loc: FileLocation) -> Path:
        """The file a verified download link names; NotFound unless it is a regular file."""
        path = self._resolve(loc)
        if not path.is_file():
            raise NotFound(f"no file {loc.path!r} on share {loc.share!r}")
        return path

    async def stat(self, loc: FileLocation) -> FileEntry | None:
        try:
            path = self._resolve(loc)
            st = path.stat()
        except (NotFound, FileNotFoundError, NotADirectoryError):
            return None
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        return FileEntry(
            name=PurePosixPath(self._normalized(loc).path).name,
            is_directory=is_dir,
            size=0 if is_dir else st.st_size,
            modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    async def read_range(self, loc: FileLocation, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise UserError("offset and length must not be negative")
        path = self._resolve(loc)
        if length <= _READ_INLINE:
            return _pread(path, offset, length)
        return await asyncio.to_thread(_pread, path, offset, length)

    async def list_files(self, loc: FileLocation, *, recursive: bool = False) -> list[FileEntry]:
        path = self._resolve(loc)
        if not path.is_dir():
            raise NotFound(f"no directory {loc.path or '.'!r} on share {loc.share!r}")
        base = self.share_dir(loc.share).resolve()
        return await asyncio.to_thread(_list_tree, path, base, recursive)

    async def get_download_url(self, loc: FileLocation, *, expires_at: datetime) -> str:
        self.local_path(loc)
        return self._signer.sign(self._normalized(loc), expires_at)

    async def aclose(self) -> None:
        return None

    def create_share(self, share: str) -> Path:
        """Create the share's directory (idempotent)."""
        path = self.share_dir(share)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def seed_share(self, share: str, src: Path, dest: str) -> int:
        """Copy directory `src` to `dest` on the share, skipping unchanged files; the count copied.

        Synchronous on purpose: it runs once at start-up, before the loop has work to do.
        """
        target = self.create_share(share) / clean_rel(dest)
        return _copy_tree(Path(src), target)


def _pread(path: Path, offset: int, length: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise NotFound(f"no file {path.name!r}") from err
    try:
        if stat_mod.S_ISDIR(os.fstat(fd).st_mode):
            raise NotFound(f"{path.name!r} is a directory")
        parts: list[bytes] = []
        while length > 0:
            data = os.pread(fd, length, offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(parts)
    finally:
        os.close(fd)


def _list_tree(path: Path, base: Path, recursive: bool) -> list[FileEntry]:
    out: list[FileEntry] = []
    stack: list[tuple[Path, str]] = [(path, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # removed or unreadable while we walked: list what is still there
        for entry in entries:
            name = f"{prefix}{entry.name}"
            try:
                if entry.is_symlink():
                    real = Path(entry.path).resolve()
                    if not inside(real, base):
                        continue  # the share's own tree only
                    st = real.stat()
                    recurse = False  # never walk through links: no cycles, no listing twice
                else:
                    st = entry.stat(follow_symlinks=False)
                    recurse = stat_mod.S_ISDIR(st.st_mode)
            except (FileNotFoundError, PermissionError, RuntimeError):
                continue
            is_dir = stat_mod.S_ISDIR(st.st_mode)
            out.append(
                FileEntry(
                    name=name,
                    is_directory=is_dir,
                    size=0 if is_dir else st.st_size,
                    modified=datetime.fromtimestamp(st.st_mtime, UTC),
                )
            )
            if recursive and recurse:
                stack.append((Path(entry.path), f"{name}/"))
    out.sort(key=lambda e: e.name)
    return out


def _copy_tree(src: Path, dest: Path) -> int:
    if not src.is_dir():
        raise NotFound(f"no directory {str(src)!r} to seed from")
    copied = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(filenames):
            source, target = Path(dirpath) / name, dest / rel / name
            s = source.stat()
            with contextlib.suppress(FileNotFoundError):
                t = target.stat()
                if t.st_size == s.st_size and int(t.st_mtime) == int(s.st_mtime):
                    continue
            shutil.copy2(source, target)
            copied += 1
    return copied
