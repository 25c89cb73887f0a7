"""SQLAlchemy's aiosqlite driver with one thread hop per statement instead of four or five.

aiosqlite runs each call on the connection's own thread and wakes the event loop when it is
done; SQLAlchemy's adapter makes four such calls per statement (open a cursor, execute, fetch
every row, close the cursor) and one more for the rollback that ends every read. Each wake-up is
a queue put, a write to the loop's self-pipe and a future callback: under a burst of slash
commands those hops were most of the bot's CPU per command. Here a statement is one call that
does all four on the connection's thread, and a rollback or commit with no transaction open (a
read: Python's sqlite3 opens one only before a write) is not sent at all.

Statements stay off the event loop: SQLite's busy handler sleeps while another connection
holds a lock, and its C work runs beside the loop on the other core (reads run on the loop
were measured: less CPU per command, but fewer commands a second and longer loop stalls).

Everything else is SQLAlchemy's own dialect: the SQL, the pool, the error wrapping, the types.
The connection is opened with `check_same_thread=False` only so that the event loop may read
`in_transaction` (a flag, no I/O) while the worker thread is idle; every statement still runs on
the worker thread, one at a time.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int | None]  # description, rows, rowcount, lastrowid


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
            outcome = await self._connection._execute(  # noqa: SLF001 - aiosqlite's queue
                _run, self._connection, operation, parameters, many
            )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)

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
