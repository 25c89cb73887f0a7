"""Build hook (the metadata is in pyproject.toml): the wheel records the git commit it is built
from in bot/BUILD_COMMIT, which `batchai-bot --version` prints."""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCommit(build_py):
    """build_py, plus bot/BUILD_COMMIT when the source is a git checkout (not in editable mode,
    where `--version` asks git itself)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False) or not Path(".git").exists():
            return
        try:  # the same describe as bot/version.py's (bot is not importable from a build)
            done = subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=12", "--exclude=*"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):  # no git: the wheel just has no commit
            return
        if done.returncode == 0 and done.stdout.strip():
            target = Path(self.build_lib) / "bot" / "BUILD_COMMIT"
            target.write_text(done.stdout.strip() + "\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildPyWithCommit})
