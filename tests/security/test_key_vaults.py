"""Key Vault references are read with the bot's own identity, so a job may name only a vault
the bot was told jobs may read (KEY_VAULTS), and of those only one its channel may: otherwise
any member could have the bot read any secret its identity can. Through the command handler
every transport shares; a refusal is one line and stores nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.access.vaults import ANY_CHANNEL, parse_vaults
from services.core.clock import FakeClock
from tests.test_schedules import ADMIN, ALICE, CHANNEL, OTHER, START, Rig, started

VAULT_ID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{}"


def ref(vault: str, secret: str = "token") -> dict[str, Any]:
    return {
        "sourceVault": {"id": VAULT_ID.format(vault)},
        "secretUrl": f"https://{vault}.vault.azure.net/secrets/{secret}",
    }


def job(**props: Any) -> str:
    spec = {
        "properties": {
            "nodeCount": 1,
            "customToolkitSettings": {"commandLine": "echo hi"},
            **props,
        }
    }
    return json.dumps(spec, separators=(",", ":"))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    vaults = f"teamvault:{CHANNEL},opsvault:{OTHER}|C0OPS,shared"
    async with started(tmp_path, FakeClock(START), first=True, key_vaults=vaults) as r:
        yield r


def test_the_setting_names_vaults_and_their_channels() -> None:
    assert parse_vaults(" teamvault:C1|C2 , Shared ,") == {
        "teamvault": frozenset({"C1", "C2"}),
        "shared": frozenset({ANY_CHANNEL}),
    }
    assert parse_vaults("") == {}


@pytest.mark.parametrize(
    ("props", "why"),
    [
        (
            {"secrets": [{"name": "T", "valueSecretReference": ref("othervault")}]},
            "othervault is not one",
        ),
        (
            {"secrets": [{"name": "T", "valueSecretReference": ref("opsvault")}]},
            "not readable by jobs of this channel",
        ),
        (
            {
                "containerSettings": {
                    "imageSourceRegistry": {
                        "serverUrl": "r.azurecr.io",
                        "image": "r.azurecr.io/x:1",
                        "credentials": {"username": "u", "passwordSecretReference": ref("evil")},
                    }
                }
            },
            "the registry password: Key Vault evil is not one",
        ),
    ],
)
async def test_a_vault_not_granted_to_the_channel_is_refused_and_nothing_is_stored(
    rig: Rig, props: dict[str, Any], why: str
) -> None:
    reply = await rig.say(f"job create -n kv -r c1 -c '{job(**props)}'", user=ALICE)
    assert reply.failed and why in reply.message.text, reply.message.text
    assert "\n" not in reply.message.text.strip().splitlines()[0]
    assert await rig.bot.store.find_job("kv") is None


@pytest.mark.parametrize(
    ("vault", "user", "channel"),
    [
        ("teamvault", ALICE, CHANNEL),  # the channel's own vault
        ("shared", ALICE, CHANNEL),  # a vault for every channel
        ("opsvault", ADMIN, CHANNEL),  # an admin may use every configured vault
    ],
)
async def test_a_granted_vault_is_accepted(rig: Rig, vault: str, user: str, channel: str) -> None:
    props = {"secrets": [{"name": "T", "valueSecretReference": ref(vault)}]}
    reply = await rig.say(f"job create -n kv -r c1 -c '{job(**props)}'", user=user, channel=channel)
    assert not reply.failed, reply.message.text
    assert await rig.bot.store.find_job("kv") is not None


async def test_without_the_setting_no_job_may_name_a_vault(tmp_path: Path) -> None:
    async with started(tmp_path, FakeClock(START), first=True) as rig:
        props = {"secrets": [{"name": "T", "valueSecretReference": ref("teamvault")}]}
        reply = await rig.say(f"job create -n kv -r c1 -c '{job(**props)}'", user=ADMIN)
        assert reply.failed and "KEY_VAULTS" in reply.message.text
