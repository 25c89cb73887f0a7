"""The job form: opened from the App Home (its job told in the DM Slack puts it in, through a
restart) or by `job create` without a config or name (filled in), and submissions it refuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from bot.lifecycle import running
from bot.outbox import SlackOutbox
from handlers import home, modals
from handlers.presenter import MessageRef
from handlers.views import Message, section
from services.core.clock import utcnow
from services.store import SqlStore
from tests.fakes.slack import FakeSlack, interactive_body, view_submission_payload
from tests.slack.conftest import (
    CHANNEL,
    JOB_SCRIPT,
    USER,
    SlackRig,
    job_finished,
    job_json,
    job_running_with_card,
    rig_settings,
)

CREATE = "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data --afs-mount-path afs"
GATE = "home-gate"


def _form_values(name: str, pasted: str) -> dict[str, dict[str, dict[str, object]]]:
    return {
        modals.BLOCK_NAME: {modals.BLOCK_NAME: {"type": "plain_text_input", "value": name}},
        modals.BLOCK_CLUSTER: {
            modals.BLOCK_CLUSTER: {"type": "static_select", "selected_option": {"value": "c1"}}
        },
        modals.BLOCK_NODES: {modals.BLOCK_NODES: {"type": "number_input", "value": "1"}},
        modals.BLOCK_HOURS: {modals.BLOCK_HOURS: {"type": "number_input", "value": "1"}},
        modals.BLOCK_JSON: {modals.BLOCK_JSON: {"type": "plain_text_input", "value": pasted}},
    }


async def test_a_job_from_the_home_form_is_told_in_the_dm_thread_through_a_restart(
    tmp_path: Path, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    settings = rig_settings(tmp_path, fake)
    dm = fake.dm_channel(USER)
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        rig = SlackRig(fake, bot, http, settings)
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        await rig.answer(CREATE)
        status, _ = await rig.click(home.ACTION_OPEN_SUBMIT, "", home=True)
        assert status == 200
        form = (await fake.wait_for_call("views.open")).json_arg("view")
        submission = view_submission_payload(
            modals.CALLBACK_JOB_CREATE,
            _form_values("fromhome", job_json(3, gate=GATE)),
            user_id=USER,
            private_metadata=form["private_metadata"],
        )
        status, ack = await rig.post(interactive_body(submission))
        assert status == 200 and not ack  # the form closes
        try:
            await rig.until(lambda: job_running_with_card(rig, "fromhome"), "the job to run")
        except BaseException:
            rig.open_gate(GATE)  # let the job end rather than leave it waiting
            raise
        job = await bot.store.find_job("fromhome")
        assert job is not None and job.conversation is not None
        # The form named the user (U…); Slack answered with the DM (D…): that is where it lives.
        assert job.conversation.channel == dm
        (card,) = [m for m in fake.messages_in(dm) if not m.is_reply]
        assert card.ts == job.conversation.thread and "running" in card.block_text()

    # A new bot on the same store, mid-job: it edits the same card, replies in the same thread.
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        rig = SlackRig(fake, bot, http, settings)
        rig.open_gate(GATE)
        await rig.until(lambda: job_finished(rig, "fromhome"), "the job to finish")
        assert "succeeded" in fake.message(dm, card.ts).block_text()
        assert [m.ts for m in fake.messages_in(dm) if not m.is_reply] == [card.ts]
        thread = fake.replies(dm, card.ts)
        receipts = [m for m in thread if "exit code 0" in m.block_text()]
        assert len(receipts) == 1 and receipts[0].reply_broadcast
        assert f"<@{USER}>" in receipts[0].block_text()
        (upload,) = fake.files.values()  # the loss curve, in the DM thread
        assert upload.shares == [(dm, card.ts, upload.shares[0][2])]
    assert fake.calls_to("chat.update", ok=False) == []
    assert fake.calls_to("files.completeUploadExternal", ok=False) == []


async def test_a_dm_message_sent_just_before_a_crash_is_found_in_the_dm(store: SqlStore) -> None:
    async with FakeSlack(rate_limits=False) as fake:
        fake.fail_next("chat.postMessage", 200, delay=1.0)  # Slack takes it, answers late
        before = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        with pytest.raises(TimeoutError):  # the bot dies while waiting for the answer
            await asyncio.wait_for(before.post(USER, _note("card"), keys=["event-1-card"]), 0.2)
        dm = fake.dm_channel(USER)
        await fake.wait_for(lambda: len(fake.messages_in(dm)) == 1)

        after = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        assert await after.recover() == 1  # looked up in the DM, not in the user id
        (sent,) = fake.messages_in(dm)
        assert await after.post(USER, _note("card"), keys=["event-1-card"]) == MessageRef(
            dm, sent.ts
        )
        assert len(fake.messages_in(dm)) == 1


def _note(text: str) -> Message:
    return Message(text, [section(text)])


async def test_job_create_with_no_flags_opens_the_form(rig: SlackRig) -> None:
    await rig.answer(CREATE)
    status, ack, _ = await rig.command("job create")
    assert status == 200 and not ack  # no "missing required flag": the form asks
    view = (await rig.fake.wait_for_call("views.open")).json_arg("view")
    assert view["callback_id"] == modals.CALLBACK_JOB_CREATE
    assert json.loads(view["private_metadata"]) == {"channel_id": CHANNEL}


async def test_job_create_without_a_config_opens_the_form_filled_in(rig: SlackRig) -> None:
    await rig.answer(CREATE)
    status, _, _ = await rig.command("job create -r c1 -c mnist")
    assert status == 200
    view = (await rig.fake.wait_for_call("views.open")).json_arg("view")
    inputs = {b["block_id"]: b["element"] for b in view["blocks"] if b["type"] == "input"}
    assert inputs[modals.BLOCK_CLUSTER]["initial_option"]["value"] == "c1"
    assert inputs[modals.BLOCK_MANIFEST]["initial_option"]["value"] == "mnist"
    assert "initial_value" not in inputs[modals.BLOCK_NAME]
    status, _, _ = await rig.command("job create -n named -r c1")
    view = (await rig.fake.wait_for_call("views.open", count=2)).json_arg("view")
    inputs = {b["block_id"]: b["element"] for b in view["blocks"] if b["type"] == "input"}
    assert inputs[modals.BLOCK_NAME]["initial_value"] == "named"
    assert await rig.bot.store.list_jobs() == []  # nothing was submitted


@pytest.mark.parametrize("metadata", ["", "not json", '{"channel_id": "<!here>"}'])
async def test_a_submission_whose_metadata_is_not_ours_gets_an_error_not_a_500(
    rig: SlackRig, metadata: str
) -> None:
    await rig.answer(CREATE)
    submission = view_submission_payload(
        modals.CALLBACK_JOB_CREATE,
        _form_values("stale", job_json(1)),
        user_id=USER,
        private_metadata=metadata,
    )
    status, body = await rig.post(interactive_body(submission))
    assert status == 200
    assert body == {"response_action": "errors", "errors": {modals.BLOCK_NAME: modals.STALE_FORM}}
    assert await rig.bot.store.find_job("stale") is None


async def test_a_conversation_stored_with_the_user_id_still_reaches_the_dm(
    store: SqlStore,
) -> None:
    # Jobs submitted from the form before the channel was kept name the user: edits, replies
    # and uploads for them go to the DM, found once with conversations.open.
    async with FakeSlack(rate_limits=False) as fake:
        outbox = SlackOutbox(fake.client(), store, now=utcnow, post_interval=0.0)
        card = await outbox.post(USER, _note("card"), keys=["event-1-card"])
        dm = fake.dm_channel(USER)
        assert card.channel == dm
        await outbox.update(USER, card.ts, _note("card, edited"))
        reply = await outbox.post(USER, _note("reply"), thread=card.ts, keys=["event-2"])
        await outbox.upload(USER, thread=card.ts, filename="loss.png", content=b"png", title="loss")
        assert fake.message(dm, card.ts).text == "card, edited"
        assert reply.channel == dm
        assert [m.text for m in fake.replies(dm, card.ts)] == ["reply", ""]
        assert len(fake.calls_to("conversations.open")) == 1
        assert fake.calls_to("chat.update", ok=False) == []


async def test_a_node_count_the_cluster_cannot_hold_marks_the_node_field(rig: SlackRig) -> None:
    """The service refuses 4 nodes on a 1-node cluster with a UserError whose `field` is the
    node count; the form shows the refusal beside that input, and nothing is submitted."""
    await rig.answer(CREATE)
    values = _form_values("toobig", "")
    del values[modals.BLOCK_JSON]
    values[modals.BLOCK_NODES] = {modals.BLOCK_NODES: {"type": "number_input", "value": "4"}}
    values[modals.BLOCK_COMMAND] = {
        modals.BLOCK_COMMAND: {"type": "plain_text_input", "value": "python job.py"}
    }
    submission = view_submission_payload(
        modals.CALLBACK_JOB_CREATE,
        values,
        user_id=USER,
        private_metadata=json.dumps({"channel_id": CHANNEL}),
    )
    status, body = await rig.post(interactive_body(submission))
    assert status == 200
    assert body["response_action"] == "errors"
    assert list(body["errors"]) == [modals.BLOCK_NODES]
    assert "the job needs 4 nodes" in body["errors"][modals.BLOCK_NODES]
    assert await rig.bot.store.find_job("toobig") is None
