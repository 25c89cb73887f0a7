"""A throwaway PostgreSQL server for tests: initdb and pg_ctl in a temp dir, on a free port.

PostgreSQL refuses to run as root, so as root the server runs as `nobody` (through runuser).
Each test gets a database of its own (`create_database`), so tests never see each other's rows.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import asyncpg

RUN_AS = "nobody"


# Debian and Ubuntu keep the server binaries off PATH, one directory per major version.
_DEBIAN_BIN = "/usr/lib/postgresql/*/bin"


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    versions = sorted(glob.glob(f"{_DEBIAN_BIN}/{name}"), key=lambda p: int(p.split("/")[4]))
    return versions[-1] if versions else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    for tool in ("initdb", "pg_ctl"):
        if _tool(tool) is None:
            return f"no PostgreSQL binaries: {tool} is neither on PATH nor in {_DEBIAN_BIN}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One server with trust authentication on 127.0.0.1; `stop` removes all its files."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="batchai-pg-"))
        self.port = _free_port()
        self._names = itertools.count(1)
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, user=RUN_AS)

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", RUN_AS, "--"] if self._as_root else []
        tool = _tool(argv[0]) or argv[0]
        subprocess.run(
            [*prefix, tool, *argv[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user="postgres", database="postgres"
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)
