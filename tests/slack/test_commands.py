"""Every /batchai path through the real Bolt app, signed like Slack signs it, in HTTP mode."""

from __future__ import annotations

from tests.fakes.slack import form_body, signed_headers, slash_command_form
from tests.slack.conftest import CHANNEL, SECRET, USER, SlackRig, job_json

CREATE = "cluster create -n c1 -s STANDARD_NC6 -t 2 --afs-name data --afs-mount-path afs"


async def test_help_is_answered_in_the_ack(rig: SlackRig) -> None:
    status, ack, url = await rig.command("help")
    # help is quick: its answer is the ack itself, only to the typist
    assert status == 200 and ack["response_type"] == "ephemeral" and ack["blocks"]
    reply = await rig.answer("help job")
    assert reply["in"] == "ack"
    assert "job create" in reply["text"] or "job create" in str(reply["blocks"])
    assert rig.fake.responses_to(url) == []


async def test_a_typo_is_answered_at_once_privately_with_usage(rig: SlackRig) -> None:
    status, ack, url = await rig.command("job fly -n x")
    assert status == 200
    assert ack["response_type"] == "ephemeral"
    text = str(ack["blocks"])
    assert "unknown command" in text and "usage" in text.lower()
    assert rig.fake.responses_to(url) == []  # nothing else was sent, nothing changed
    assert await rig.bot.store.list_clusters() == []


async def test_slow_commands_ack_working_then_answer(rig: SlackRig) -> None:
    reply = await rig.answer(CREATE)
    assert "working on it" in reply["ack"]["text"] and reply["in"] == "response_url"
    assert "cluster *c1* is ready" in reply["text"] or "c1" in str(reply["blocks"])
    assert reply["response_type"] == "in_channel"


async def test_cluster_commands(rig: SlackRig) -> None:
    await rig.answer(CREATE)
    table = await rig.answer("cluster list -o table")
    assert "c1" in str(table["blocks"]) and "STANDARD_NC6" in str(table["blocks"])
    shown = await rig.answer("cluster show -n c1 -o json")
    assert '"vmSize": "STANDARD_NC6"' in str(shown["blocks"])
    resized = await rig.answer("cluster resize -n c1 -t 3")
    assert "3 nodes" in resized["text"]
    scaled = await rig.answer("cluster auto-scale -n c1 --min 0 --max 4")
    assert "between 0 and 4" in scaled["text"]
    nodes = await rig.answer("cluster node list -c c1 -o table")
    assert "c1-node-0" in str(nodes["blocks"])
    deleted = await rig.answer("cluster delete -n c1 -y")
    assert "deleted" in deleted["text"]
    assert await rig.bot.store.list_clusters() == []


async def test_password_is_never_echoed_and_the_reply_stays_private(rig: SlackRig) -> None:
    reply = await rig.answer(CREATE + " -u me -p Sup3r$ecret")
    assert reply["response_type"] == "ephemeral"
    assert "--ssh-key" in str(reply["blocks"])
    assert "Sup3r$ecret" not in rig.fake.received_text()


async def test_job_commands(rig: SlackRig) -> None:
    await rig.answer(CREATE)
    created = await rig.answer(f"job create -n j1 -r c1 -c {job_json(2)}")
    assert "submitted" in created["text"]
    await rig.until(lambda: _state(rig, "j1", "succeeded"), "j1 to finish")
    listed = await rig.answer("job list -o table")
    assert "j1" in str(listed["blocks"]) and "succeeded" in str(listed["blocks"])
    shown = await rig.answer("job show -n j1 -o json")
    assert '"exitCode": 0' in str(shown["blocks"])
    files = await rig.answer("job list-files -n j1 -d MODEL")
    assert "model.bin" in str(files["blocks"]) and "/files/" in str(files["blocks"])
    stream = await rig.answer("job stream-file -j j1 -d stdouterr -n stdout.txt")
    assert "Epoch 2/2" in str(stream["blocks"])
    waited = await rig.answer("job wait -n j1")
    assert "succeeded" in str(waited["blocks"])
    nodes = await rig.answer("job node list -j j1")
    assert "c1-node-0" in str(nodes["blocks"])
    gone = await rig.answer("job delete -n j1")
    assert "deleted" in gone["text"]


async def test_terminate_from_the_command(rig: SlackRig) -> None:
    await rig.answer(CREATE)
    await rig.answer(f"job create -n long -r c1 -c {job_json(1, gate='never')}")
    await rig.until(lambda: _state(rig, "long", "running"), "long to run")
    reply = await rig.answer("job terminate -n long -y")
    assert reply["response_type"] == "in_channel" and "terminating" in reply["text"]
    again = await rig.answer("job terminate -n long -y")
    assert "already" in again["text"]
    await rig.until(lambda: _state(rig, "long", "terminated"), "long to stop")


async def test_forged_stale_and_replayed_requests_are_refused(rig: SlackRig) -> None:
    form = slash_command_form(
        "cluster list",
        user_id=USER,
        channel_id=CHANNEL,
        response_url=rig.fake.response_url(),
        trigger_id="t",
    )
    body = form_body(form)
    forged = signed_headers(body, "not-the-secret")
    assert (await rig.post(body, headers=forged))[0] == 401
    stale = signed_headers(body, SECRET, timestamp=int(__import__("time").time()) - 600)
    assert (await rig.post(body, headers=stale))[0] == 401
    headers = signed_headers(body, SECRET)
    assert (await rig.post(body, headers=headers))[0] == 200
    assert (await rig.post(body, headers=headers))[0] == 401  # the same request again


async def test_text_with_the_word_payload_is_still_a_command(rig: SlackRig) -> None:
    reply = await rig.answer("job show -n payload")
    assert "job payload not found" in reply["text"]


async def _state(rig: SlackRig, name: str, state: str) -> bool:
    job = await rig.bot.store.find_job(name)
    return (
        job is not None and job.state.value == state and not await rig.bot.store.pending_events(1)
    )
