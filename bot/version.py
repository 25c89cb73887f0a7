"""`batchai-bot --version`: the package version and the git commit it was built from, if known."""

from __future__ import annotations

import subprocess
from importlib import metadata, resources
from pathlib import Path

DIST = "batchai-bot"
BUILD_COMMIT = "BUILD_COMMIT"  # put into the wheel's bot/ by setup.py: the commit it was built from
DESCRIBE = ("describe", "--always", "--dirty", "--abbrev=12", "--exclude=*")  # a hash, never a tag


def version() -> str:
    """The installed distribution's version (pyproject.toml's)."""
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def commit() -> str | None:
    """The commit recorded at build time, else the checkout's own (an editable install)."""
    recorded = resources.files("bot") / BUILD_COMMIT
    if recorded.is_file():
        return recorded.read_text(encoding="utf-8").strip() or None
    return checkout_commit(Path(__file__).resolve().parents[1])


def checkout_commit(root: Path) -> str | None:
    """`git describe` of `root` (`<hash>` or `<hash>-dirty`) if `root` is a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *DESCRIBE], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def version_line() -> str:
    """`batchai-bot 0.1.0 (commit 1a2b3c4d5e6f)`, without the parenthesis when unknown."""
    known = commit()
    return f"{DIST} {version()}" + (f" (commit {known})" if known else "")
