"""The Slack rig: the real bot (Bolt app, outbox, runner) against the fake Slack Web API."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.bootstrap import Bot
from bot.check import REQUIRED_SCOPES
from bot.config import Settings
from bot.lifecycle import running
from handlers.slack.slash import WORKING
from tests.fakes.slack import (
    BOT_TOKEN,
    MESSAGE_MAX_BLOCKS,
    FakeSlack,
    block_actions_payload,
    check_blocks,
    check_view,
    form_body,
    interactive_body,
    signed_headers,
    slash_command_form,
)

SECRET = "test-signing-secret"
CHANNEL = "C0JOBS"
USER = "U0ALICE"
TIMEOUT = 60.0
JOB_SCRIPT = """
import os, sys, time
for i in range(1, int(sys.argv[1]) + 1):
    print(f"Epoch {i}/{sys.argv[1]} - loss: {1.0 / i:.4f} - acc: {1 - 0.5 / i:.4f}", flush=True)
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.02)
"""


def job_json(
    epochs: int = 3, *, gate: str | None = None, nodes: int = 1, hours: int | None = None
) -> str:
    env = [{"name": "GATE", "value": f"$AZ_BATCHAI_MOUNT_ROOT/afs/{gate}"}] if gate else []
    limit = {"constraints": {"maxWallClockTime": f"{hours}:00:00"}} if hours else {}
    return json.dumps(
        {
            "properties": {
                **limit,
                "nodeCount": nodes,
                "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
                "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}],
                "environmentVariables": env,
                "customToolkitSettings": {
                    "commandLine": f"{sys.executable} $AZ_BATCHAI_MOUNT_ROOT/afs/job.py {epochs}"
                    " && echo weights > $AZ_BATCHAI_OUTPUT_MODEL/model.bin"
                },
            }
        }
    )


@dataclass
class SlackRig:
    fake: FakeSlack
    bot: Bot
    http: aiohttp.ClientSession
    settings: Settings

    async def post(self, body: bytes, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = headers if headers is not None else signed_headers(body, SECRET)
        async with self.http.post(
            f"{self.bot.web_url}/slack/events", data=body, headers=headers
        ) as response:
            raw = await response.read()
            self.fake.record_ack(raw)  # what Slack receives, scanned with the rest
            text = raw.decode("utf-8", "replace")
            try:
                body = json.loads(text) if text else None
            except json.JSONDecodeError:
                return response.status, text
            if isinstance(body, dict) and "blocks" in body:  # an ack Slack would validate too
                problem = check_blocks(body["blocks"], MESSAGE_MAX_BLOCKS, method="ack")
                assert problem is None, problem
            if isinstance(body, dict) and isinstance(body.get("view"), dict):
                problem = check_view(body["view"], "modal", method="ack")
                assert problem is None, problem
            return response.status, body

    async def command(
        self, text: str, *, user: str = USER, channel: str = CHANNEL
    ) -> tuple[int, Any, str]:
        """Send a signed slash command; returns status, the ack body and the response_url."""
        response_url = self.fake.response_url()
        form = slash_command_form(
            text,
            user_id=user,
            channel_id=channel,
            response_url=response_url,
            trigger_id=self.fake.issue_trigger(),
        )
        status, body = await self.post(form_body(form))
        return status, body, response_url

    async def answer(self, text: str, **kw: Any) -> dict[str, Any]:
        """The command's answer, wherever Slack shows it (`answer_of`)."""
        status, ack, url = await self.command(text, **kw)
        assert status == 200, (status, ack)
        return await answer_of(self.fake, ack, url)

    async def click(
        self,
        action_id: str,
        value: str,
        *,
        user: str = USER,
        message_ts: str = "1.000001",
        home: bool = False,
    ) -> tuple[int, str]:
        """Press a button on a message (or on the App Home); returns status and response_url."""
        response_url = self.fake.response_url()
        payload = block_actions_payload(
            action_id,
            value,
            user_id=user,
            channel_id=None if home else CHANNEL,
            trigger_id=self.fake.issue_trigger(),
            message_ts=None if home else message_ts,
            response_url=None if home else response_url,
            view={"id": "VHOME", "type": "home"} if home else None,
        )
        status, _ = await self.post(interactive_body(payload))
        return status, response_url

    async def until(self, condition: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            await self.bot.runner.tick()
            await self.bot.relay.drain()
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    def open_gate(self, name: str) -> None:
        (self.bot.share.share_dir("data") / name).write_text("go")


def answered_in_ack(ack: Any) -> bool:
    """Whether a slash command's ack carries its answer: text or blocks, other than the bot's
    "working on it…" (an empty ack, or that one, leaves the answer to the response_url)."""
    if isinstance(ack, str):
        return bool(ack.strip())  # Slack shows a plain-text ack as the answer too
    return isinstance(ack, dict) and bool(
        ack.get("blocks") or ack.get("text") not in (None, "", WORKING)
    )


async def answer_of(
    fake: FakeSlack, ack: Any, response_url: str, *, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """A slash command's answer where Slack would show it: the ack when it carries one (a
    quick command answered within the bot's budget), else the last post to its response_url
    (waited for). `in` says which; `all` holds every post to the response_url."""
    if answered_in_ack(ack):
        body = ack if isinstance(ack, dict) else {"text": ack}
        return {
            "in": "ack",
            "ack": ack,
            "response_type": body.get("response_type") or "ephemeral",  # Slack's default
            "text": body.get("text") or "",
            "blocks": body.get("blocks") or [],
            "all": fake.responses_to(response_url),
        }
    await fake.wait_for(lambda: bool(fake.responses_to(response_url)), timeout=timeout)
    post = fake.responses_to(response_url)[-1]
    return {
        "in": "response_url",
        "ack": ack,
        "response_type": post.response_type,
        "text": post.text or "",
        "blocks": post.blocks or [],
        "all": fake.responses_to(response_url),
    }


def rig_settings(tmp_path: Path, fake: FakeSlack, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SECRET,
        slack_mode="http",
        slack_api_url=fake.base_url,
        slack_post_interval=0.0,
        slack_updates_per_minute=1000.0,
        batchai_data_dir=tmp_path / "data",
        port=0,
        link_secret="link-secret-for-tests",
        poll_seconds=0.2,
        price_refresh_hours=0,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    # Exactly the manifest's scopes: every Slack test also shows they are enough.
    async with FakeSlack(rate_limits=False, trigger_ttl=None, scopes=REQUIRED_SCOPES) as server:
        yield server


@pytest.fixture
async def rig(
    tmp_path: Path, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SlackRig]:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    settings = rig_settings(tmp_path, fake)
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        yield SlackRig(fake, bot, http, settings)
        for job in await bot.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await bot.backend.terminate_job(job.id)


async def job_finished(rig: SlackRig, name: str) -> bool:
    """The job has finished and every event of it has been delivered."""
    job = await rig.bot.store.find_job(name)
    return job is not None and job.state.finished and not await rig.bot.store.pending_events(1)


async def job_running_with_card(rig: SlackRig, name: str) -> bool:
    """The job runs, its status card is posted and nothing of it waits for delivery."""
    job = await rig.bot.store.find_job(name)
    return (
        job is not None
        and job.state.value == "running"
        and job.conversation is not None
        and job.conversation.thread is not None
        and not await rig.bot.store.pending_events(1)
    )
