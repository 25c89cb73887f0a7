"""Secrets at rest and files on disk: what someone who can read the database (or the data
directory) finds, on SQLite and PostgreSQL, and that a launched job still gets its secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.config import Config
from cryptography.fernet import Fernet
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.bootstrap import Bot
from bot.config import Settings
from bot.console import ConsoleTransport
from bot.lifecycle import running
from services.access import Caller
from services.core.clock import FakeClock
from services.jobs.lifecycle import JobState
from services.models import (
    AuditEntry,
    ConfigSource,
    FileLocation,
    Schedule,
    ScheduledJob,
)
from services.store import SqlStore
from services.store.engine import MIGRATIONS
from services.store.sealing import SecretBox, SecretsKeyError
from tests.conftest import NOW, make_cluster, make_job
from tests.pg import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-3f9a-never-at-rest"
REGISTRY_PASSWORD = "reg-pw-7c1e-never-at-rest"
ACCOUNT_KEY = "acct-key-51d0-never-at-rest"
SETUP_SECRET = "setup-task-secret-82ab-never-at-rest"
SECRETS = (TOKEN, REGISTRY_PASSWORD, ACCOUNT_KEY, SETUP_SECRET)


def setup_cluster() -> Any:
    """A cluster whose setup task carries a secret (cluster.json nodeSetup.setupTask.secrets)."""
    return make_cluster(
        name="setup",
        setup_task="true",
        setup_task_output="$AZ_BATCHAI_MOUNT_ROOT/afs",
        setup_task_secrets=(("TASK_TOKEN", SETUP_SECRET),),
    )


TIMEOUT = 60.0


def spec(command_line: str = "true") -> dict[str, Any]:
    """A job.json with every kind of secret a job can carry."""
    share = {
        "accountName": "acct",
        "azureFileUrl": "https://acct.file.core.windows.net/data",
        "credentials": {"accountKey": ACCOUNT_KEY},
        "relativeMountPath": "data",
    }
    return {
        "properties": {
            "nodeCount": 1,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            "outputDirectories": [{"id": "OUT", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}],
            "secrets": [{"name": "API_TOKEN", "value": TOKEN}],
            "containerSettings": {
                "imageSourceRegistry": {
                    "image": "registry.example.com/trainer:1",
                    "serverUrl": "registry.example.com",
                    "credentials": {"username": "bot", "password": REGISTRY_PASSWORD},
                }
            },
            "mountVolumes": {"azureFileShares": [share]},
            "customToolkitSettings": {"commandLine": command_line},
        }
    }


def key() -> str:
    return Fernet.generate_key().decode()


# --------------------------------------------------------------------------- the store, raw


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        return await server.create_database()
    return f"sqlite+aiosqlite:///{tmp_path / 'at-rest.db'}"


async def raw_dump(url: str) -> str:
    """Every row of every table, read around the store: sqlite3 itself, or asyncpg."""
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        with sqlite3.connect(path) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            rows = [db.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables]
        files = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        return repr(rows) + files.decode("latin-1")
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        rows = [await conn.fetch(f'SELECT * FROM "{t["tablename"]}"') for t in tables]
    finally:
        await conn.close()
    return repr([[dict(r) for r in table] for table in rows])


def schedule(config: str) -> Schedule:
    job = ScheduledJob(name="nightly", cluster="c1", config=ConfigSource("inline", config))
    return Schedule(
        id="s1",
        kind="cron",
        expression="0 2 * * *",
        timezone="UTC",
        job=job,
        requester="U1",
        channel="C1",
        created_at=NOW,
        next_run_at=NOW,
    )


async def test_secret_fields_are_sealed_in_the_rows_and_opened_for_the_launch(url: str) -> None:
    store = SqlStore(url, secrets=SecretBox.from_keys(key()))
    await store.migrate()
    try:
        document = json.dumps(spec())
        await store.insert_cluster(make_cluster())
        await store.insert_cluster(setup_cluster())
        job = await store.insert_job(make_job(spec_json=document))
        async with store.unit() as uow:
            await uow.schedules.add(schedule(document))
            await uow.commit()
        typed = f"job create -n j1 -c {document}"
        await store.add_audit(AuditEntry(NOW, "U1", "job create", "allowed", detail=typed))

        dump = await raw_dump(url)
        assert not [s for s in SECRETS if s in dump]
        assert "API_TOKEN" in dump and "registry.example.com" in dump  # only secrets are sealed

        stored = await store.get_job(job.id)
        assert stored is not None and TOKEN not in stored.spec_json  # sealed until the launch
        assert json.loads(store.open_spec(stored.spec_json)) == spec()
        assert (await store.list_audit())[0].detail == typed
        again = await store.get_schedule("s1")
        assert again is not None and again.job.config.value == document
        cluster = await store.get_cluster("setup")
        assert cluster is not None and cluster.setup_task_secrets == (("TASK_TOKEN", SETUP_SECRET),)
    finally:
        await store.aclose()


def _to_0005(conn: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, "0005")


async def test_plain_rows_of_an_older_version_are_sealed_at_the_first_start(url: str) -> None:
    document = json.dumps(spec())
    old = SqlStore(url)
    await old.migrate()
    await old.insert_cluster(make_cluster())
    await old.insert_job(make_job(spec_json="{}"))
    await old.aclose()
    # What a version before the sealing left: revision 0005, secrets in plain text.
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_0005)
            await conn.execute(text("UPDATE jobs SET spec_json = :s"), {"s": document})
            request = {"name": "nightly", "cluster": "c1", "may_read_paths": False}
            request["config"] = {"kind": "inline", "value": document}
            await conn.execute(
                text(
                    "INSERT INTO schedules (id, kind, expression, timezone, request, requester, "
                    "created_at, runs, active) VALUES ('s1', 'cron', '0 2 * * *', 'UTC', "
                    ":request, 'U1', :at, 0, true)"
                ),
                {"request": json.dumps(request), "at": NOW},
            )
            await conn.execute(
                text(
                    "INSERT INTO audit (at, actor, action, outcome, detail) "
                    "VALUES (:at, 'U1', 'job create', 'allowed', :detail)"
                ),
                {"at": NOW, "detail": f"job create -c {document}"},
            )
    finally:
        await engine.dispose()
    assert TOKEN in await raw_dump(url)

    box = SecretBox.from_keys(key())
    store = SqlStore(url, secrets=box)
    await store.migrate()
    try:
        dump = await raw_dump(url)
        assert not [s for s in SECRETS if s in dump]
        (job,) = await store.list_jobs()
        assert json.loads(store.open_spec(job.spec_json)) == spec()
        assert (await store.list_audit())[0].detail == f"job create -c {document}"
        again = await store.get_schedule("s1")
        assert again is not None and again.job.config.value == document
    finally:
        await store.aclose()


async def test_a_wrong_key_is_refused_and_a_previous_key_is_rotated_out(url: str) -> None:
    first, second = key(), key()
    store = SqlStore(url, secrets=SecretBox.from_keys(first))
    await store.migrate()
    await store.insert_cluster(make_cluster())
    await store.insert_cluster(setup_cluster())
    await store.insert_job(make_job(spec_json=json.dumps(spec())))
    await store.aclose()

    wrong = SqlStore(url, secrets=SecretBox.from_keys(second))
    with pytest.raises(SecretsKeyError, match="SECRETS_KEY") as refused:
        await wrong.migrate()
    await wrong.aclose()
    assert not [s for s in SECRETS if s in str(refused.value)]

    rotated = SqlStore(url, secrets=SecretBox.from_keys(second, previous=first))
    await rotated.migrate()
    await rotated.aclose()
    only_new = SqlStore(url, secrets=SecretBox.from_keys(second))
    await only_new.migrate()  # everything is sealed with the new key now
    try:
        (job,) = await only_new.list_jobs()
        assert json.loads(only_new.open_spec(job.spec_json)) == spec()
        cluster = await only_new.get_cluster("setup")
        assert cluster is not None and cluster.setup_task_secrets == (("TASK_TOKEN", SETUP_SECRET),)
    finally:
        await only_new.aclose()


def test_a_malformed_key_names_the_setting() -> None:
    with pytest.raises(SecretsKeyError, match="SECRETS_KEY_PREVIOUS is not a Fernet key"):
        SecretBox.from_keys(key(), previous="hunter2")


# --------------------------------------------------------------------------- the bot, on disk


def settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, batchai_data_dir=tmp_path / "data", port=0, price_refresh_hours=0, **extra
    )


@asynccontextmanager
async def started(tmp_path: Path, **extra: Any) -> AsyncIterator[Bot]:
    transport = ConsoleTransport(tmp_path / "files", out=io.StringIO())
    async with running(
        settings(tmp_path, **extra), transport=transport, clock=FakeClock(NOW), periodic=False
    ) as bot:
        yield bot


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_dir_is_0700_and_the_database_and_keys_0600(tmp_path: Path) -> None:
    async with started(tmp_path) as bot:
        data = tmp_path / "data"
        await bot.store.add_audit(AuditEntry(NOW, "U1", "job create", "allowed"))
        assert mode(data) == 0o700
        files = [data / n for n in ("batchai.db", "batchai.db-wal", "batchai.db-shm")]
        files += [data / "link-secret", data / "secrets-key"]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        # the kept link secret still signs links (it is read back from its file)
        link = bot.signer.sign(FileLocation("data", "out/model.bin"), NOW + timedelta(hours=1))
        token = link.rsplit("/", 2)[-2]
        assert bot.signer.verify(token, now=NOW) == FileLocation("data", "out/model.bin")


async def test_an_older_versions_loose_modes_are_tightened_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    for name in ("batchai.db", "link-secret"):
        (data / name).write_bytes(b"" if name.endswith("db") else b"0" * 64)
        (data / name).chmod(0o644)
    with caplog.at_level(logging.WARNING):
        async with started(tmp_path):
            assert mode(data) == 0o700
            assert mode(data / "batchai.db") == mode(data / "link-secret") == 0o600
    tightened = [r.getMessage() for r in caplog.records if "tightened" in r.getMessage()]
    assert len(tightened) == 3 and all("0600" in m or "0700" in m for m in tightened)


async def test_a_launched_job_gets_its_secret_which_the_database_never_holds(
    tmp_path: Path,
) -> None:
    job_spec = spec("printenv API_TOKEN > $AZ_BATCHAI_OUTPUT_OUT/token.txt")
    props = job_spec["properties"]
    del props["containerSettings"], props["mountVolumes"]  # the local backend runs it as is
    async with started(tmp_path, secrets_key=key()) as bot:
        bot.share.create_share("data")
        caller = Caller("U1", "C1")  # no ADMIN_USERS: everyone is an admin
        for line in (
            "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data "
            "--afs-mount-path afs",
            f"job create -n j1 -r c1 -c {json.dumps(job_spec)}",
        ):
            reply = await bot.commands.handle(line, caller=caller, source="console")
            assert not reply.failed, reply.message.text
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while (job := await bot.store.find_job("j1")) is None or not job.state.finished:
            assert loop.time() < deadline, f"j1 still {job and job.state}"
            await bot.runner.tick()
            await asyncio.sleep(0.05)  # a real process runs the job
        assert job.state is JobState.SUCCEEDED, job.error
        (written,) = (tmp_path / "data").rglob("token.txt")
        assert written.read_text().strip() == TOKEN
        assert TOKEN not in await raw_dump(bot.store.url)


def test_a_wrong_key_stops_the_start_in_one_line_naming_secrets_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BATCHAI_"))}
    env.update(BATCHAI_DATA_DIR=str(tmp_path / "data"), PORT="0", PRICE_REFRESH_HOURS="0")
    env.pop("DATABASE_URL", None)
    run = [sys.executable, "-m", "bot", "console"]
    first = subprocess.run(run, input="", env=env, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    env["SECRETS_KEY"] = key()  # not the key file the first start made
    second = subprocess.run(run, input="", env=env, cwd=ROOT, capture_output=True, text=True)
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    assert "SECRETS_KEY does not open the secrets in the database" in second.stderr
