"""pytest plugin: every bot a test starts keeps its state in a fresh PostgreSQL database.

    .venv/bin/python -m pytest -p tests.pg_everywhere tests/slack tests/test_e2e_console.py

The settings read DATABASE_URL from the environment, so each test gets a new database there;
tests that build their own SQLite store are unaffected. The store's own tests need no plugin:
they run on both databases anyway (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests import pg
from tests.pg import PostgresServer

_servers: list[PostgresServer] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    reason = pg.missing_reason()
    if reason is not None:
        raise pytest.UsageError(f"-p tests.pg_everywhere: {reason}")
    server = PostgresServer()
    server.start()
    _servers.append(server)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    while _servers:
        _servers.pop().stop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    os.environ["DATABASE_URL"] = asyncio.run(_servers[0].create_database())
