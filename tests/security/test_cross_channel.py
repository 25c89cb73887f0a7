"""The attacker's view of who may see what: another channel's job logs, links and cards, the App
Home of someone not allowed, requests from another Slack workspace, the console outside the
allow-lists, and probes on the public port."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import Settings
from bot.console import Console, ConsoleTransport, console_caller
from bot.lifecycle import running
from handlers import home, modals, views
from tests.fakes.slack import (
    FakeSlack,
    app_home_opened_event,
    block_actions_payload,
    form_body,
    interactive_body,
    slash_command_form,
    view_submission_payload,
)
from tests.slack.conftest import JOB_SCRIPT, SlackRig, job_json, rig_settings

ADMIN, ALICE, BOB, CAROL, OUTSIDER = "U0ADMIN", "U0ALICE", "U0BOB", "U0CAROL", "U0OUT"
PUBLIC, PRIVATE = "C0JOBS", "G0PRIV"
FOREIGN_TEAM = "T0OTHER"
CREATE = "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data --afs-mount-path afs"


@pytest.fixture
async def team(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[SlackRig]:
    """A team with admins and a user list; ALICE and CAROL share a private channel, BOB is not
    in it."""
    fake.add_channel(PRIVATE, "secret-project", is_private=True)
    fake.set_members(PRIVATE, [ALICE, CAROL])
    fake.set_members(PUBLIC, [ALICE, BOB, CAROL, ADMIN])
    settings = rig_settings(
        tmp_path, fake, admin_users=ADMIN, allowed_users=f"{ADMIN},{ALICE},{BOB},{CAROL}"
    )
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        yield SlackRig(fake, bot, http, settings)


async def _private_job(rig: SlackRig) -> str:
    await rig.answer(CREATE, user=ADMIN)
    created = await rig.answer(
        f"job create -n secret -r c1 -c {job_json(2)}", user=ALICE, channel=PRIVATE
    )
    assert "submitted" in created["text"], created["text"]

    async def finished() -> bool:
        job = await rig.bot.store.find_job("secret")
        return job is not None and job.state.finished and not await rig.bot.store.pending_events(1)

    await rig.until(finished, "the private job to finish")
    job = await rig.bot.store.find_job("secret")
    assert job is not None
    return job.id


async def test_a_job_of_a_private_channel_is_not_readable_from_another(team: SlackRig) -> None:
    rig = team
    job_id = await _private_job(rig)
    refused = "belongs to a channel you are not in"
    for command in (
        "job show -n secret",
        "job show -n secret -o json",
        "job list-files -n secret -d MODEL",
        "job list-files -n secret",
        "job stream-file -j secret -d stdouterr -n stdout.txt",
        "job wait -n secret",
    ):
        answer = await rig.answer(command, user=BOB)
        text = json.dumps(answer["blocks"]) + answer["text"]
        assert refused in text, command
        assert "/files/" not in text and "Epoch" not in text and "model.bin" not in text, command
    listed = await rig.answer("job list -o json", user=BOB)
    assert "secret" not in listed["text"] + json.dumps(listed["blocks"])
    # the Logs and Refresh buttons name the job by id: the same rule
    for action in (views.ACTION_LOGS, views.ACTION_REFRESH):
        _, url = await rig.click(action, job_id, user=BOB)
        await rig.fake.wait_for(lambda u=url: bool(rig.fake.responses_to(u)))  # type: ignore[misc]
        shown = json.dumps(rig.fake.responses_to(url)[-1].blocks)
        assert refused in shown and "Epoch" not in shown, action


async def test_members_requester_and_admins_read_it_from_anywhere(team: SlackRig) -> None:
    rig = team
    await _private_job(rig)
    for user in (CAROL, ALICE, ADMIN):  # a member (asked of Slack), the requester, an admin
        files = await rig.answer("job list-files -n secret -d MODEL", user=user)
        assert "model.bin" in json.dumps(files["blocks"]), user
        stream = await rig.answer("job stream-file -j secret -d stdouterr -n stdout.txt", user=user)
        assert "Epoch 2/2" in json.dumps(stream["blocks"]), user
    asked = rig.fake.calls_to("conversations.members", ok=True)
    assert asked and all(c.args["channel"] == PRIVATE for c in asked)
    listed = await rig.answer("job list", user=CAROL)
    assert "secret" in listed["text"] + json.dumps(listed["blocks"])


async def test_app_home_shows_a_non_member_nothing_of_other_channels(team: SlackRig) -> None:
    rig = team
    await rig.answer(CREATE, user=ADMIN)
    await rig.answer(
        f"job create -n hidden -r c1 -c {job_json(1, gate='never')}", user=ALICE, channel=PRIVATE
    )
    for user in (BOB, CAROL, OUTSIDER):
        status, _ = await rig.post(json.dumps(app_home_opened_event(user)).encode())
        assert status == 200
        await rig.fake.wait_for(lambda u=user: rig.fake.home_view(u) is not None)  # type: ignore[misc]
    bob = rig.fake.home_view(BOB).block_text()  # type: ignore[union-attr]
    assert "c1" in bob and "hidden" not in bob and "Spend this month*: not available" in bob
    assert "hidden" in rig.fake.home_view(CAROL).block_text()  # type: ignore[union-attr]
    outsider = rig.fake.home_view(OUTSIDER).block_text()  # type: ignore[union-attr]
    assert "list of users" in outsider and "c1" not in outsider and "hidden" not in outsider
    # refresh goes through the same check
    before = len(rig.fake.calls_to("views.publish"))
    await rig.click(home.ACTION_HOME_REFRESH, "", user=OUTSIDER, home=True)
    await rig.fake.wait_for(lambda: len(rig.fake.calls_to("views.publish")) > before)
    assert "c1" not in rig.fake.home_view(OUTSIDER).block_text()  # type: ignore[union-attr]
    denied = [a for a in await rig.bot.store.list_audit() if a.actor == OUTSIDER]
    assert {a.action for a in denied} >= {"app_home"} and {a.outcome for a in denied} == {"denied"}
    await rig.answer("job terminate -n hidden", user=ALICE, channel=PRIVATE)


async def test_approvals_of_a_private_channel_job_are_not_listed_to_outsiders(
    tmp_path: Path, fake: FakeSlack
) -> None:
    fake.add_channel(PRIVATE, "secret-project", is_private=True)
    fake.set_members(PRIVATE, [ALICE, CAROL])
    fake.set_members(PUBLIC, [ALICE, BOB, CAROL, ADMIN])
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps({"default_limit_usd": 0.01, "approvers": [ADMIN]}))
    settings = rig_settings(tmp_path, fake, admin_users=ADMIN, approvals_file=policy)
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        rig = SlackRig(fake, bot, http, settings)
        bot.share.create_share("data")
        await rig.answer(CREATE, user=ADMIN)
        asked = await rig.answer(
            f"job create -n moonshot -r c1 -c {job_json(1)}", user=ALICE, channel=PRIVATE
        )
        assert "approval" in asked["text"], asked["text"]
        (approval,) = await bot.store.list_approvals()
        for user, sees in ((BOB, False), (CAROL, True), (ALICE, True), (ADMIN, True)):
            for command in ("approvals list", "approvals list --all", "approvals list -o json"):
                listed = await rig.answer(command, user=user)
                shown = listed["text"] + json.dumps(listed["blocks"])
                assert (approval.id in shown) is sees, (user, command)
        status, _ = await rig.post(json.dumps(app_home_opened_event(BOB)).encode())
        assert status == 200
        await rig.fake.wait_for(lambda: rig.fake.home_view(BOB) is not None)
        assert approval.id not in rig.fake.home_view(BOB).block_text()  # type: ignore[union-attr]


async def test_requests_from_another_workspace_are_refused_on_every_surface(rig: SlackRig) -> None:
    await rig.answer(CREATE)
    # a slash command typed in another workspace
    form = slash_command_form(
        "cluster list",
        user_id="U0GUEST",
        channel_id="C0JOBS",
        response_url=rig.fake.response_url(),
        trigger_id=rig.fake.issue_trigger(),
        team_id=FOREIGN_TEAM,
    )
    status, ack = await rig.post(form_body(form))
    assert status == 200 and ack["response_type"] == "ephemeral"
    assert "only its own Slack workspace" in ack["text"] and "c1" not in json.dumps(ack)
    # a Slack Connect guest in a shared channel: the team is ours, the user's is not
    response_url = rig.fake.response_url()
    click = block_actions_payload(
        views.ACTION_REFRESH,
        "whatever",
        user_id="U0GUEST",
        trigger_id=rig.fake.issue_trigger(),
        channel_id="C0JOBS",
        message_ts="1.000001",
        response_url=response_url,
    )
    click["user"]["team_id"] = FOREIGN_TEAM
    status, _ = await rig.post(interactive_body(click))
    assert status == 200
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(response_url)))
    assert "only its own Slack workspace" in (rig.fake.responses_to(response_url)[-1].text or "")
    # a form submitted from another workspace
    submission: dict[str, Any] = view_submission_payload(
        modals.CALLBACK_JOB_CREATE, {}, user_id="U0GUEST", team_id=FOREIGN_TEAM
    )
    submission["view"]["blocks"] = [
        {
            "type": "input",
            "block_id": modals.BLOCK_NAME,
            "label": {"type": "plain_text", "text": "Name"},
        }
    ]
    status, body = await rig.post(interactive_body(submission))
    assert status == 200 and body["response_action"] == "errors"
    assert "only its own Slack workspace" in body["errors"][modals.BLOCK_NAME]
    # the App Home of a user of another workspace
    status, _ = await rig.post(
        json.dumps(app_home_opened_event("U0GUEST", team_id=FOREIGN_TEAM)).encode()
    )
    assert status == 200
    await rig.fake.wait_for(lambda: rig.fake.home_view("U0GUEST") is not None)
    shown = rig.fake.home_view("U0GUEST").block_text()  # type: ignore[union-attr]
    assert "only its own Slack workspace" in shown and "c1" not in shown
    denied = [a for a in await rig.bot.store.list_audit() if a.actor == "U0GUEST"]
    assert len(denied) == 4 and all(a.outcome == "denied" for a in denied)
    assert all(FOREIGN_TEAM in (a.detail or "") for a in denied)
    # the home workspace (from auth.test) is still served
    assert "c1" in (await rig.answer("cluster list"))["text"]


async def test_allowed_teams_admit_a_grid_org(tmp_path: Path, fake: FakeSlack) -> None:
    settings = rig_settings(tmp_path, fake, allowed_teams="E0GRID")
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        rig = SlackRig(fake, bot, http, settings)
        for team, served in (("T0SISTER", True), ("T0001", False)):
            form = slash_command_form(
                "cluster list",
                user_id="U0GRID",
                channel_id="C0JOBS",
                response_url=fake.response_url(),
                trigger_id=fake.issue_trigger(),
                team_id=team,
            )
            if served:
                form["enterprise_id"] = "E0GRID"
            _, ack = await rig.post(form_body(form))
            refused = isinstance(ack, dict) and "only its own" in str(ack.get("text"))
            assert refused is not served, team


async def test_the_console_goes_through_the_same_guard(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        batchai_data_dir=tmp_path / "data",
        port=0,
        price_refresh_hours=0,
        allowed_users="U0LEAD",
        admin_users="U0LEAD",
    )
    out = io.StringIO()
    transport = ConsoleTransport(tmp_path / "files", out)
    async with running(settings, transport=transport, periodic=False) as bot:

        async def idle() -> bool:
            return False

        console = Console(
            commands=bot.commands,
            actions=bot.actions,
            transport=transport,
            caller=console_caller(settings.console_channel, settings.console_user),
            live_jobs=idle,
            interactive=False,
            out=out,
        )
        await console.execute("cluster list")
        await console.execute(CREATE)
        audit = await bot.store.list_audit()
    assert "list of users" in out.getvalue() and "is ready" not in out.getvalue()
    assert [(a.actor, a.action, a.outcome) for a in reversed(audit)] == [
        (settings.console_user, "ClusterList", "denied"),
        (settings.console_user, "ClusterCreate", "denied"),
    ]


async def test_probes_and_metrics_are_not_on_the_public_port(rig: SlackRig) -> None:
    assert rig.bot.probe_url is not None and rig.bot.probe_url != rig.bot.web_url
    for path in ("/readyz", "/metrics"):
        async with rig.http.get(f"{rig.bot.web_url}{path}") as public:
            assert public.status == 404, path
        async with rig.http.get(f"{rig.bot.probe_url}{path}") as probe:
            assert probe.status == 200, path
    assert rig.bot.probe_url.startswith("http://127.0.0.1:")
