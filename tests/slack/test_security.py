"""Who may do what, what is audited, and that no secret ever reaches Slack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.lifecycle import running
from bot.members import SlackChannelMembers
from handlers.slack.requests import origin_of
from services.access import AccessPolicy
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.slack.conftest import JOB_SCRIPT, SECRET, SlackRig, job_finished, job_json, rig_settings

ADMIN, MEMBER, OUTSIDER = "U0ADMIN", "U0MEMBER", "U0OUT"
CREATE = "cluster create -n c1 -s STANDARD_NC6 -t 1 --afs-name data --afs-mount-path afs"


@pytest.fixture
async def guarded(tmp_path: Path, fake: FakeSlack) -> SlackRig:  # type: ignore[misc]
    settings = rig_settings(
        tmp_path,
        fake,
        allowed_channels="C0JOBS",
        allowed_users=f"{ADMIN},{MEMBER}",
        admin_users=ADMIN,
    )
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        yield SlackRig(fake, bot, http, settings)
        for job in await bot.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await bot.backend.terminate_job(job.id)


async def test_allow_lists_and_admins(guarded: SlackRig) -> None:
    rig = guarded
    _, ack, _ = await rig.command("cluster list", user=OUTSIDER)
    assert ack["response_type"] == "ephemeral" and "list of users" in str(ack["blocks"])
    _, ack, _ = await rig.command("cluster list", user=MEMBER, channel="C0ELSEWHERE")
    assert "configured channels" in str(ack["blocks"])
    _, ack, _ = await rig.command(CREATE.replace("create", "delete").split(" -s")[0], user=MEMBER)
    assert "only an admin" in str(ack["blocks"])
    created = await rig.answer(CREATE, user=ADMIN)
    assert "ready" in created["text"]
    # the member runs a job; another member may not stop it, the admin may
    await rig.answer(f"job create -n theirs -r c1 -c {job_json(1, gate='never')}", user=MEMBER)
    other = await rig.answer("job terminate -n theirs", user=ADMIN)
    assert "terminating" in other["text"]
    audit = await rig.bot.store.list_audit()
    denied = [a for a in audit if a.outcome == "denied"]
    assert {a.actor for a in denied} == {OUTSIDER, MEMBER}
    assert any(a.action == "ClusterDelete" for a in denied)
    assert any(a.action == "JobTerminate" and a.outcome == "allowed" for a in audit)


async def test_member_cannot_stop_someone_elses_job(guarded: SlackRig) -> None:
    rig = guarded
    await rig.answer(CREATE, user=ADMIN)
    await rig.answer(f"job create -n adminjob -r c1 -c {job_json(1, gate='never')}", user=ADMIN)
    refused = await rig.answer("job terminate -n adminjob", user=MEMBER)
    assert "or an admin may stop" in refused["text"] and refused["response_type"] == "ephemeral"
    job = await rig.bot.store.find_job("adminjob")
    assert job is not None and job.state.value == "queued"
    await rig.answer("job terminate -n adminjob", user=ADMIN)


async def test_no_secret_reaches_slack(rig: SlackRig) -> None:
    password = "Pa55-word-typed-in-chat"
    await rig.answer(f"{CREATE} -u me -p {password}")
    secret_job = job_json(2).replace(
        '"environmentVariables": []',
        '"secrets": [{"name": "API_KEY", "value": "sk-live-do-not-leak"}]',
    )
    await rig.answer(f"job create -n s1 -r c1 -c {secret_job}")
    await rig.until(lambda: job_finished(rig, "s1"), "s1 to finish")
    await rig.answer("job show -n s1 -o json")
    received = rig.fake.received_text()
    link_secret = rig.settings.link_secret.get_secret_value()  # type: ignore[union-attr]
    for secret in (password, "sk-live-do-not-leak", SECRET, link_secret):
        assert secret not in received, secret
    # the bot token is only ever in the Authorization header, never in a message body
    assert all(BOT_TOKEN not in call.raw_body.decode(errors="replace") for call in rig.fake.calls)


# -- workspaces and channel members ----------------------------------------------------------

INSTALLED, ACTOR_TEAM = "T0INSTALLED", "T0ACTOR"


@pytest.mark.parametrize(
    ("body", "served"),
    [
        # a slash command (form fields) from the home workspace of a Grid org
        ({"team_id": INSTALLED, "enterprise_id": "E0ORG", "user_id": "U1"}, True),
        # an interaction by a Slack Connect guest: the team is ours, the user's is not
        ({"team": {"id": INSTALLED}, "user": {"id": "U2", "team_id": ACTOR_TEAM}}, False),
        # bolt-python's Slack Connect event: the top-level team is the actor's
        (
            {
                "team_id": ACTOR_TEAM,
                "context_team_id": INSTALLED,
                "event": {"type": "message", "user": "U3", "team": ACTOR_TEAM},
                "is_ext_shared_channel": True,
            },
            False,
        ),
        # an app_mention whose actor is known only by their Grid org
        (
            {
                "team_id": INSTALLED,
                "event": {"type": "app_mention", "team": INSTALLED, "user_team": "E0ACTOR"},
            },
            False,
        ),
        # a view submission of a modal opened in our workspace
        ({"team": {"id": INSTALLED}, "view": {"team_id": INSTALLED}, "user": {"id": "U4"}}, True),
    ],
)
def test_every_workspace_a_request_names_must_be_allowed(
    body: dict[str, Any], served: bool
) -> None:
    policy = AccessPolicy(teams=frozenset({INSTALLED}), orgs=frozenset({"E0ORG"}))
    assert policy.check_origin(origin_of(body)).allowed is served


async def test_channel_members_are_read_page_by_page_and_cached(fake: FakeSlack) -> None:
    crowd = [f"U{i:05d}" for i in range(2500)]
    fake.set_members("C0CROWD", crowd)
    fake.add_channel("G0CLOSED", is_private=True, is_member=False)
    now = [0.0]
    members = SlackChannelMembers(fake.client(), ttl=60.0, monotonic=lambda: now[0])
    assert await members.is_member("C0CROWD", "U02499")
    assert not await members.is_member("C0CROWD", "U0NOBODY")
    pages = fake.calls_to("conversations.members")
    assert len(pages) == 3  # 1,000 a page, then the cache
    assert [c.args.get("cursor") for c in pages] == [None, "off:1000", "off:2000"]
    now[0] = 61.0
    await members.is_member("C0CROWD", "U00001")
    assert len(fake.calls_to("conversations.members")) == 6  # asked again after the TTL
    # a private channel the bot is not in: Slack says channel_not_found, nobody is a member
    assert not await members.is_member("G0CLOSED", "U00001")
    assert fake.calls_to("conversations.members", ok=False)
