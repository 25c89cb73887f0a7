"""Two replicas on one PostgreSQL: the leader runs the periodic work, the standby answers Slack;
SIGKILL the leader mid-stream and the standby takes over with nothing twice and nothing lost.
And SQLite: a second process on the same database file is refused in one line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
from sqlalchemy.engine import make_url

from handlers import views
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.pg import PostgresServer
from tests.test_restart_sigkill import (
    ALICE,
    ALL_LINES,
    POLICY,
    ROOT,
    RUNNING,
    SECRET,
    TIMEOUT,
    BotProcess,
    Rig,
    _terminate_runners,
    approval_id,
    assert_every_job_told_once,
    stream_every_job,
)


class Replica(BotProcess):
    """A bot process whose whole log is kept (BotProcess forgets what came before its port)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        super().__init__(env, cwd)
        self.full = ""

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace")
            self.log += text
            self.full += text

    @property
    def probe_url(self) -> str:
        found = re.search(r"probes \(/healthz, /readyz, /metrics\) on (http://[\d.:]+)", self.full)
        assert found, self.full[-3000:]
        return found.group(1)

    def leads(self) -> bool:
        return "leader: this replica runs the periodic work now" in self.full


def bot_env(fake: FakeSlack, data: Path, policy: Path, db_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "BATCHAI_", "DATABASE", "APPROVAL", "LEADER"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_MODE="http",
        SLACK_API_URL=fake.base_url,
        SLACK_POST_INTERVAL="0",
        SLACK_UPDATES_PER_MINUTE="1000",
        BATCHAI_DATA_DIR=str(data),
        DATABASE_URL=db_url,
        APPROVALS_FILE=str(policy),
        ADMIN_USERS=ALICE,
        LINK_SECRET="ha-link-secret",
        PORT="0",
        POLL_SECONDS="0.3",
        LEADER_RETRY_SECONDS="0.3",
        PRICE_REFRESH_HOURS="0",
        LOG_LEVEL="INFO",
    )
    return env


async def pending_events(db_url: str) -> int:
    url = make_url(db_url)
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE delivered_at IS NULL"))
    finally:
        await conn.close()


async def role_of(http: aiohttp.ClientSession, bot: Replica) -> tuple[str, str]:
    async with http.get(f"{bot.probe_url}/readyz") as r:
        role = (await r.json())["role"]
    async with http.get(f"{bot.probe_url}/metrics") as r:
        gauge = re.search(r"^batchai_leader (\S+)$", await r.text(), re.M)
    assert gauge, "no batchai_leader gauge"
    return role, gauge.group(1)


async def test_the_standby_takes_over_when_the_leader_is_killed_mid_stream(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    db_url = await postgres.create_database()
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps(POLICY))
    data = tmp_path / "data"
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as fake:
        env = bot_env(fake, data, policy, db_url)
        first, second = Replica(env, tmp_path), Replica(env, tmp_path)
        async with aiohttp.ClientSession() as http:
            try:
                await first.start()
                await second.start()
                assert first.leads() and not second.leads(), first.full[-2000:]
                assert await role_of(http, first) == ("leader", "1.0")
                assert await role_of(http, second) == ("standby", "0.0")
                # Every command and click goes to the standby: any replica answers Slack.
                rig = Rig(fake, second, http, data / "unused.db")
                await run_and_kill(rig, first, db_url)
            finally:
                await first.stop()
                await second.stop()
                _terminate_runners(data)


async def run_and_kill(rig: Rig, leader: Replica, db_url: str) -> None:
    fake, standby = rig.fake, rig.bot
    assert isinstance(standby, Replica)
    await stream_every_job(rig, Path(standby.env["BATCHAI_DATA_DIR"]) / "shares" / "data")
    assert not standby.leads(), "the standby ran the periodic work while the leader lived"

    posted = len(fake.calls_to("chat.postMessage"))
    killed = time.monotonic()
    await leader.kill()
    killed_at = {n: max(rig.lines_seen(n)) for n in RUNNING}
    await rig.until(standby.leads, "the standby taking the lead")
    await rig.until(lambda: len(fake.calls_to("chat.postMessage")) > posted, "a new delivery")
    handover = time.monotonic() - killed
    print(f"handover: {handover:.2f} s from SIGKILL to the new leader's first delivery")

    requests = rig.approval_messages()
    for name in ("a0", "a1"):
        answer = await rig.click(views.ACTION_APPROVE, approval_id(requests[name]), requests[name])
        assert "approved" in answer, answer
    denied = await rig.deny(approval_id(requests["a2"]), requests["a2"], "not this month")
    assert "errors" not in denied, denied
    again = await rig.click(views.ACTION_APPROVE, approval_id(requests["a0"]), requests["a0"])
    assert "already approved" in again, again

    pending = [1]

    async def refresh() -> None:
        pending[0] = await pending_events(db_url)

    deadline = time.monotonic() + TIMEOUT
    while not (all(rig.cards().get(n) and rig.receipts(n) for n in (*ALL_LINES, "a2"))):
        assert time.monotonic() < deadline, standby.full[-3000:]
        await asyncio.sleep(0.1)
    while pending[0]:
        assert time.monotonic() < deadline, "events left undelivered"
        await refresh()
        await asyncio.sleep(0.1)

    cards = rig.cards()
    assert sorted(cards) == sorted([*ALL_LINES, "a2"]), sorted(cards)
    for name, found in cards.items():
        assert len(found) == 1, f"{name} has {len(found)} status cards"
    assert_every_job_told_once(rig, killed_at)
    requests = rig.approval_messages()
    for name, word in (("a0", "approved"), ("a1", "approved"), ("a2", "denied")):
        text = requests[name].block_text()
        assert text.count(f"by <@{BOSS_ID}>") == 1, text
        assert f"*{word}*" in text, text


BOSS_ID = POLICY["approvers"][0]  # type: ignore[index]


def test_a_second_process_on_the_same_sqlite_file_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHAI_", "DATABASE"))}
    env.update(PYTHONPATH=str(ROOT), BATCHAI_DATA_DIR=str(tmp_path / "data"), PORT="0")
    (tmp_path / "data").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "data" / "batchai.db.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        second = subprocess.run(
            [sys.executable, "-m", "bot", "console"],
            env=env,
            cwd=tmp_path,
            input="",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert lines[-1].startswith("batchai-bot: another bot process is using batchai.db"), lines
    assert "Traceback" not in second.stderr, second.stderr


# What a first bot holds for its life: the lock file, exclusively (the same flock as the bot's).
HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "ab")
fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(600)
"""
