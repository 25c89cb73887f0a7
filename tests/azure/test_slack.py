"""The whole bot with BATCHAI_BACKEND=azure, driven through Slack (real Bolt app, fake Slack Web
API) against the fake ARM and Files servers: answers make sense and carry no secret."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.lifecycle import running
from tests.azure.rig import BOT_SHARE, AzureRig, bot_azure_settings
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import SlackRig, rig_settings

PASSWORD = "Typed-In-Slack-0nly!"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as server:
        yield server


@pytest.fixture
async def slack(
    tmp_path: Path, fake: FakeSlack, rig: AzureRig, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SlackRig]:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    cfg = rig.config
    settings = rig_settings(
        tmp_path,
        fake,
        **bot_azure_settings(rig),
        azure_mount_root=cfg.mount_root,
        azure_control_mount=cfg.control_mount,
        azure_job_temp_root=cfg.job_temp_root,
        azure_admin_password=PASSWORD,
    )
    async with (
        running(settings, periodic=False, credential=rig.credential) as bot,
        aiohttp.ClientSession() as http,
    ):
        yield SlackRig(fake, bot, http, settings)
    assert rig.credential.closed  # the one credential is closed with the bot


async def test_cluster_commands_on_azure_answer_without_secrets(
    slack: SlackRig, rig: AzureRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig.arm.set_quota("standardNCADSA100v4Family", 24)
    refused = await slack.answer(
        "cluster create -n big -s Standard_NC24ads_A100_v4 -t 2 --afs-name data"
    )
    assert "standardNCADSA100v4Family" in refused["text"] and "1 node fit" in refused["text"]
    assert "big" not in rig.arm.scale_sets

    made = await slack.answer(
        f"cluster create -n small -s Standard_NC4as_T4_v3 -t 1 --afs-name data -p {PASSWORD}"
    )
    assert "small" in made["text"]
    assert len(rig.arm.scale_sets["small"].instances) == 1
    listed = await slack.answer("cluster list")
    assert "small" in listed["text"]

    key = rig.config.storage_key
    everything = slack.fake.received_text() + caplog.text
    for secret in (key, base64.b64encode(key.encode()).decode()):
        assert secret not in everything
    assert PASSWORD not in everything  # typed with -p: never echoed, never logged
    # The examples were uploaded at start-up to SHARE_NAME, the share jobs mount (created if
    # missing), as the local backend copies them; never to the control share.
    examples = rig.files.share_dir(slack.settings.share_name) / "examples" / "mnist"
    assert (examples / "train.py").is_file()
    assert not (rig.files.share_dir(BOT_SHARE) / "examples").exists()
