"""The SQLite driver (services/store/sqlite_driver.py) against a real database file: reads on
an idle connection run on the event loop, everything else on the connection's own thread, and
results and transactions are what SQLAlchemy's own aiosqlite driver gives."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.store.engine import open_engine
from services.store.sqlite_driver import INLINE_ROWS

Trace = list[tuple[int, str]]


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Trace]]:
    """An engine as the store opens it, and every statement SQLite ran with the thread it ran
    on (SQLite's own trace callback, called on the executing thread)."""
    engine = open_engine(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    seen: Trace = []

    def trace(dbapi_conn: Any, _record: Any) -> None:
        raw = dbapi_conn._connection._conn  # the sqlite3 connection under aiosqlite
        raw.set_trace_callback(lambda sql: seen.append((threading.get_ident(), sql)))

    event.listen(engine.sync_engine, "connect", trace)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    yield engine, seen
    await engine.dispose()


def ran(seen: Trace, prefix: str) -> list[int]:
    """The threads that ran the statements starting with `prefix`."""
    return [thread for thread, sql in seen if sql.lstrip().upper().startswith(prefix)]


async def test_a_read_runs_on_the_loop_and_a_write_on_the_connections_thread(
    traced: tuple[AsyncEngine, Trace],
) -> None:
    engine, seen = traced
    loop_thread = threading.get_ident()
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
        await conn.commit()
        assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["a"]
    inserts, selects = ran(seen, "INSERT"), ran(seen, "SELECT")
    assert inserts and loop_thread not in inserts
    assert selects == [loop_thread]
    assert ran(seen, "COMMIT") and loop_thread not in ran(seen, "COMMIT")


async def test_a_long_result_is_whole_and_in_order(traced: tuple[AsyncEngine, Trace]) -> None:
    engine, _ = traced
    count = 3 * INLINE_ROWS + 7  # most of it fetched on the connection's thread
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO t (v) VALUES (:v)"), [{"v": str(i)} for i in range(count)]
        )
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT v FROM t ORDER BY id"))).scalars().all()
        assert rows == [str(i) for i in range(count)]
        # exactly INLINE_ROWS: the fetch on the thread finds nothing more
        async with engine.begin() as other:
            await other.execute(text("DELETE FROM t WHERE id > :n"), {"n": INLINE_ROWS})
        rows = (await conn.execute(text("SELECT id FROM t ORDER BY id"))).scalars().all()
        assert rows == list(range(1, INLINE_ROWS + 1))


async def test_a_read_inside_a_write_sees_it_and_a_rollback_undoes_it(
    traced: tuple[AsyncEngine, Trace],
) -> None:
    engine, seen = traced
    loop_thread = threading.get_ident()
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES ('kept')"))
        await conn.commit()
        seen.clear()
        await conn.execute(text("INSERT INTO t (v) VALUES ('undone')"))
        inside = (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one()
        assert inside == 2
        assert ran(seen, "SELECT") and loop_thread not in ran(seen, "SELECT")  # may wait a lock
        await conn.rollback()
        assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["kept"]


async def test_a_read_does_not_wait_for_another_connections_write(
    traced: tuple[AsyncEngine, Trace],
) -> None:
    engine, _ = traced
    async with engine.connect() as writer, engine.connect() as reader:
        await writer.execute(text("INSERT INTO t (v) VALUES ('pending')"))  # holds the write lock
        found = await asyncio.wait_for(reader.execute(text("SELECT count(*) FROM t")), 5)
        assert found.scalar_one() == 0  # WAL: the last committed state, at once
        await writer.commit()
        assert (await reader.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1


async def test_a_broken_read_raises_sqlalchemys_error_and_the_connection_goes_on(
    traced: tuple[AsyncEngine, Trace],
) -> None:
    engine, _ = traced
    async with engine.connect() as conn:
        with pytest.raises(OperationalError, match="no such table"):
            await conn.execute(text("SELECT * FROM missing"))
        await conn.rollback()
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
