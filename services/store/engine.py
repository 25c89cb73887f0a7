"""The database engine: SQLite pragmas and file modes, Alembic migrations, the sealing-key check."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, insert, make_url, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.models import ConfigSource
from services.store.schedules import config_row
from services.store.schema import audit, clusters, jobs, schedules, secrets_check
from services.store.sealing import SecretBox
from services.store.sqlite_driver import OneHopDBAPI

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_FILES = ("", "-wal", "-shm", "-journal")  # the database and the files SQLite keeps beside it

log = logging.getLogger(__name__)


def open_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine for `url`; SQLite waits up to 30 s for a lock and runs in WAL mode."""
    sqlite = url.startswith("sqlite")
    connect_args: dict[str, Any] = {"timeout": 30} if sqlite else {}
    options: dict[str, Any] = {}
    if make_url(url).drivername == "sqlite+aiosqlite":
        options["module"] = OneHopDBAPI()  # one thread hop per statement (see its module)
    engine = create_async_engine(url, echo=echo, connect_args=connect_args, **options)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


async def migrate(engine: AsyncEngine, box: SecretBox) -> None:
    """Bring the schema to the newest Alembic revision, and make sure the secrets in the
    database are sealed with the current key (SecretsKeyError if they cannot be opened)."""
    if engine.dialect.name == "sqlite":
        _private_sqlite_files(engine.url.render_as_string(hide_password=False))
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
        resealed = await _check_key(conn, box)
    if resealed:
        await _scrub(engine)


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(select(1))


def _upgrade(sync_conn: Connection) -> None:
    # Imported here: Alembic costs start-up time, and only a migration needs it.
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


async def _check_key(conn: AsyncConnection, box: SecretBox) -> int:
    """Seal what an older version stored in plain text (first start), or re-seal what the
    previous key sealed (rotation); refuse a key that opens neither. Returns the rows
    rewritten."""
    check = (await conn.execute(select(secrets_check.c.value))).scalar_one_or_none()
    if check is not None and box.recognise(check):
        return 0
    if check is None:
        count = await _reseal(conn, box.seal_spec, box.seal)
        await conn.execute(insert(secrets_check).values(id=1, value=box.check_value()))
        if count:
            log.info("sealed the secret fields of %d rows stored in plain text", count)
    else:
        count = await _reseal(conn, box.rotate_spec, box.rotate)
        await conn.execute(update(secrets_check).values(value=box.check_value()))
        log.info("re-sealed %d stored rows with the new SECRETS_KEY", count)
    return count


async def _reseal(
    conn: AsyncConnection, spec: Callable[[str], str], value: Callable[[str], str]
) -> int:
    """Rewrite every stored secret through `spec` (job.json text) or `value` (a whole value)."""
    count = 0
    for job_id, text in (await conn.execute(select(jobs.c.id, jobs.c.spec_json))).all():
        if (sealed_spec := spec(text)) != text:
            change = update(jobs).where(jobs.c.id == job_id).values(spec_json=sealed_spec)
            await conn.execute(change)
            count += 1
    found = await conn.execute(select(schedules.c.id, schedules.c.request))
    for schedule_id, request in found.all():
        config = ConfigSource(**request["config"])
        if config.kind == "inline":
            sealed = {**request, "config": config_row(config, value)}
            change = update(schedules).where(schedules.c.id == schedule_id)
            await conn.execute(change.values(request=sealed))
            count += 1
    for name, mounts in (await conn.execute(select(clusters.c.name, clusters.c.mounts))).all():
        if any(m.account_key for m in mounts):  # another account's storage key
            keyed = tuple(
                replace(m, account_key=value(m.account_key)) if m.account_key else m for m in mounts
            )
            change = update(clusters).where(clusters.c.name == name).values(mounts=keyed)
            await conn.execute(change)
            count += 1
    found = await conn.execute(select(clusters.c.name, clusters.c.setup_task_spec))
    for name, setup in found.all():
        if setup and setup.get("secrets"):  # a setup task's secrets
            resealed = [[n, value(v)] for n, v in setup["secrets"]]
            change = update(clusters).where(clusters.c.name == name)
            await conn.execute(change.values(setup_task_spec={**setup, "secrets": resealed}))
            count += 1
    stmt = select(audit.c.id, audit.c.detail).where(audit.c.detail.is_not(None))
    for audit_id, detail in (await conn.execute(stmt)).all():
        await conn.execute(update(audit).where(audit.c.id == audit_id).values(detail=value(detail)))
        count += 1
    return count


async def _scrub(engine: AsyncEngine) -> None:
    """Rewrite the tables so the old values of resealed rows are not left in free pages
    (SQLite: and in its write-ahead log; PostgreSQL: in dead row versions)."""
    sqlite = engine.dialect.name == "sqlite"
    statements = (
        ["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"]
        if sqlite
        else ["VACUUM FULL jobs, schedules, audit"]
    )
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for statement in statements:
            await auto.exec_driver_sql(statement)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the web app and the periodic work read while a tick writes.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _private_sqlite_files(url: str) -> None:
    """The database file is created 0600 (SQLite gives its -wal/-shm/-journal files the same
    mode), and a looser one left by an older version is tightened."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():
        return  # SQLite's own error says what is wrong
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for suffix in SQLITE_FILES:
        extra = path.with_name(path.name + suffix)
        if extra.exists() and extra.stat().st_mode & 0o077:
            extra.chmod(0o600)
            log.warning("tightened %s to mode 0600 (others could read it)", extra)
