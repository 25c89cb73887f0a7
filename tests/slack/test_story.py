"""A job's story in Slack: one status card edited in place, one thread, buttons, form, App Home."""

from __future__ import annotations

import json

from handlers import home, modals, views
from tests.fakes.slack import (
    app_home_opened_event,
    interactive_body,
    view_submission_payload,
)
from tests.slack.conftest import (
    CHANNEL,
    USER,
    SlackRig,
    job_finished,
    job_json,
    job_running_with_card,
)

CREATE = "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data --afs-mount-path afs"


async def _run_job(rig: SlackRig, name: str, config: str) -> None:
    await rig.answer(CREATE)
    await rig.answer(f"job create -n {name} -r c1 -c {config}")


def _top_level(rig: SlackRig) -> list:  # type: ignore[type-arg]
    return [m for m in rig.fake.messages_in(CHANNEL) if not m.is_reply]


async def test_card_is_edited_in_place_and_the_thread_tells_the_story(rig: SlackRig) -> None:
    await _run_job(rig, "story", job_json(3))
    job = await rig.bot.store.find_job("story")
    assert job is not None
    await rig.until(lambda: job_finished(rig, "story"), "story to finish")
    (card,) = _top_level(rig)  # exactly one message in the channel itself: the status card
    assert card.edits >= 2  # queued -> running -> succeeded, edited in place
    assert "succeeded" in card.block_text() and "cost so far $" in card.block_text()
    thread = rig.fake.replies(CHANNEL, card.ts)
    texts = [m.block_text() for m in thread]
    assert "queued on" in texts[0]
    assert any("preparing" in t for t in texts) and any("running" in t for t in texts)
    assert any("Epoch 3/3" in t for t in texts)  # the log snippet
    receipt = thread[-1]
    assert receipt.reply_broadcast and f"<@{USER}>" in receipt.block_text()
    assert "model.bin" in receipt.block_text() and "/files/" in receipt.block_text()
    assert sum("succeeded" in t and "exit code 0" in t for t in texts) == 1  # one receipt
    (upload,) = rig.fake.files.values()  # the loss curve, in the thread
    assert upload.data[:4] == b"\x89PNG" and upload.thread_ts == card.ts
    # more rounds repeat nothing
    before = len(rig.fake.calls_to("chat.postMessage"))
    await rig.bot.runner.tick()
    await rig.bot.relay.drain()
    assert len(rig.fake.calls_to("chat.postMessage")) == before


async def test_card_buttons_logs_refresh_and_double_terminate(rig: SlackRig) -> None:
    await _run_job(rig, "btn", job_json(2, gate="never"))
    await rig.until(lambda: job_running_with_card(rig, "btn"), "btn to run")
    await rig.until(
        lambda: any("Epoch 2/2" in m.block_text() for m in rig.fake.messages_in(CHANNEL)),
        "btn's log lines",
    )
    job = await rig.bot.store.find_job("btn")
    assert job is not None and job.conversation is not None
    (card,) = _top_level(rig)
    terminate = [
        e
        for b in card.blocks or []
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == views.ACTION_TERMINATE
    ][0]
    assert terminate["confirm"]["confirm"]["text"] == "Terminate"  # a confirm dialog first
    assert terminate["value"] == job.id

    status, url = await rig.click(views.ACTION_LOGS, job.id, message_ts=card.ts)
    assert status == 200
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    assert "Epoch" in str(rig.fake.responses_to(url)[-1].blocks)

    first_status, first = await rig.click(views.ACTION_TERMINATE, job.id, message_ts=card.ts)
    second_status, second = await rig.click(views.ACTION_TERMINATE, job.id, message_ts=card.ts)
    assert first_status == second_status == 200
    await rig.fake.wait_for(
        lambda: bool(rig.fake.responses_to(first) and rig.fake.responses_to(second))
    )
    answers = [rig.fake.responses_to(u)[-1].text or "" for u in (first, second)]
    assert sum("is terminating" in a for a in answers) == 1
    assert sum("already terminating" in a for a in answers) == 1
    await rig.until(lambda: job_finished(rig, "btn"), "btn to stop")
    stored = await rig.bot.store.find_job("btn")
    assert stored is not None and stored.state.value == "terminated"


async def test_someone_else_cannot_terminate_without_being_admin(rig: SlackRig) -> None:
    await _run_job(rig, "mine", job_json(1, gate="never"))
    job = await rig.bot.store.find_job("mine")
    assert job is not None
    _, url = await rig.click(views.ACTION_TERMINATE, job.id, user="U0MALLORY")  # open team
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    # with no admin list everyone is an admin (an open team); see test_authorization for lists
    assert "terminating" in (rig.fake.responses_to(url)[-1].text or "")


async def test_job_create_without_config_opens_the_form(rig: SlackRig) -> None:
    await rig.answer(CREATE)
    status, _, _ = await rig.command("job create -n viaform")
    assert status == 200
    call = await rig.fake.wait_for_call("views.open")
    view = call.json_arg("view")
    assert view["callback_id"] == modals.CALLBACK_JOB_CREATE
    meta = view["private_metadata"]

    bad = view_submission_payload(
        modals.CALLBACK_JOB_CREATE,
        {
            modals.BLOCK_NAME: {
                modals.BLOCK_NAME: {"type": "plain_text_input", "value": "bad name!"}
            }
        },
        user_id=USER,
        private_metadata=meta,
    )
    status, body = await rig.post(interactive_body(bad))
    assert status == 200 and body["response_action"] == "errors"
    assert modals.BLOCK_NAME in body["errors"] and modals.BLOCK_CLUSTER in body["errors"]
    assert await rig.bot.store.find_job("bad name!") is None

    values = {
        modals.BLOCK_NAME: {modals.BLOCK_NAME: {"type": "plain_text_input", "value": "viaform"}},
        modals.BLOCK_CLUSTER: {
            modals.BLOCK_CLUSTER: {"type": "static_select", "selected_option": {"value": "c1"}}
        },
        modals.BLOCK_NODES: {modals.BLOCK_NODES: {"type": "number_input", "value": "1"}},
        modals.BLOCK_HOURS: {modals.BLOCK_HOURS: {"type": "number_input", "value": "1"}},
        modals.BLOCK_COMMAND: {
            modals.BLOCK_COMMAND: {
                "type": "plain_text_input",
                "value": "echo hello from the form",
            }
        },
    }
    good = view_submission_payload(
        modals.CALLBACK_JOB_CREATE, values, user_id=USER, private_metadata=meta, trigger_id="t1"
    )
    status, body = await rig.post(interactive_body(good))
    assert status == 200 and not body  # an empty ack closes the modal
    await rig.until(lambda: job_finished(rig, "viaform"), "the form's job to finish")
    resubmit = view_submission_payload(
        modals.CALLBACK_JOB_CREATE, values, user_id=USER, private_metadata=meta, trigger_id="t2"
    )
    again = await rig.post(interactive_body(resubmit))
    assert again[1]["response_action"] == "errors"  # the name is taken now
    assert "already exists" in json.dumps(again[1]["errors"])


async def test_app_home_is_published_on_open_and_on_refresh(rig: SlackRig) -> None:
    await _run_job(rig, "homejob", job_json(1, gate="never"))
    await rig.until(lambda: job_running_with_card(rig, "homejob"), "homejob to run")
    status, _ = await rig.post(json.dumps(app_home_opened_event(USER)).encode())
    assert status == 200
    await rig.fake.wait_for(lambda: rig.fake.home_view(USER) is not None)
    text = rig.fake.home_view(USER).block_text()  # type: ignore[union-attr]
    assert "c1" in text and "homejob" in text and "$0.526" in text
    _, _ = await rig.click(home.ACTION_HOME_REFRESH, "", home=True)
    await rig.fake.wait_for(lambda: len(rig.fake.calls_to("views.publish")) >= 2)
    await rig.answer("job terminate -n homejob")
