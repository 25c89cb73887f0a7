"""SQLAlchemy's aiosqlite driver, without the thread hops that cost more than the statements.

aiosqlite runs each call on the connection's own thread and wakes the event loop when it is
done; SQLAlchemy's adapter makes four such calls per statement (open a cursor, execute, fetch
every row, close the cursor) and one more for the rollback that ends every read. Each wake-up is
a queue put, a write to the loop's self-pipe and a future callback: under a burst of slash
commands those hops cost more CPU than the SQL itself. Here:

- a SELECT on a connection with no transaction open runs on the event loop itself: in WAL mode
  a read never waits for a writer, and reading a few rows from SQLite's page cache is tens of
  microseconds. It fetches at most INLINE_ROWS rows there; the rest of a long result is fetched
  on the connection's thread, so a big listing does not hold the loop;
- every other statement (writes, and reads inside a write transaction, which may wait for the
  write lock up to the busy timeout) is one call on the connection's thread that executes,
  fetches and closes the cursor;
- a rollback or commit with no transaction open (after reads: Python's sqlite3 opens one only
  before a write) is not sent at all.

Everything else is SQLAlchemy's own dialect: the SQL, the pool, the error wrapping, the types.
The connection is opened with `check_same_thread=False` so that the loop may run those reads
and read `in_transaction`; statements on one connection still run one at a time (SQLAlchemy's
execute mutex, and nothing else is queued on the connection while one of its statements runs).
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int | None]  # description, rows, rowcount, lastrowid
INLINE_ROWS = 200  # rows a read fetches on the event loop; the rest on the connection's thread


def _run(conn: aiosqlite.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """On the connection's thread: execute, fetch every row, close the cursor."""
    cursor = conn._conn.cursor()  # noqa: SLF001 - aiosqlite's sqlite3 connection, on its thread
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _fetch_rest(cursor: sqlite3.Cursor) -> list[Any]:
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _is_read(operation: str) -> bool:
    return operation[:7].lstrip().upper().startswith("SELECT")


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statement is one call on the connection's thread."""

    __slots__ = ("_description", "_rowcount", "_lastrowid")

    def __init__(self, adapt_connection: Any) -> None:  # no aiosqlite cursor: nothing to open
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._run(operation, parameters, many=False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._run(operation, seq_of_parameters, many=True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            adapted = cast(OneHopConnection, self._adapt_connection)
            if not many and _is_read(operation) and adapted._idle():
                outcome = await self._read_inline(operation, parameters)
            else:
                outcome = await self._connection._execute(  # noqa: SLF001 - aiosqlite's queue
                    _run, self._connection, operation, parameters, many
                )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)

    async def _read_inline(self, operation: str, parameters: Any) -> _Outcome:
        cursor = self._connection._conn.cursor()  # noqa: SLF001 - see the module's docstring
        on_thread = False
        try:
            cursor.execute(operation, () if parameters is None else parameters)
            rows = cursor.fetchmany(INLINE_ROWS)
            if len(rows) == INLINE_ROWS:  # a long result: the rest off the loop
                on_thread = True
                rows += await self._connection._execute(_fetch_rest, cursor)  # noqa: SLF001
            return cursor.description, rows, cursor.rowcount, cursor.lastrowid
        finally:
            if not on_thread:
                cursor.close()

    async def _async_soft_close(self) -> None:
        return None  # the rows are buffered and the cursor is already closed

    def close(self) -> None:
        self._rows.clear()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor

    def _idle(self) -> bool:
        """No transaction open (or no connection): nothing to commit or roll back."""
        db: sqlite3.Connection | None = self._connection._connection  # noqa: SLF001
        return db is None or not db.in_transaction

    def rollback(self) -> None:
        if not self._idle():
            super().rollback()

    def commit(self) -> None:
        if not self._idle():
            super().commit()


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module to give create_async_engine(module=…) for a sqlite+aiosqlite URL."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        kw["check_same_thread"] = False  # see the module's docstring
        connection = self.aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # noqa: SLF001 - as SQLAlchemy's own connect does
        return OneHopConnection(self, await_(connection))
