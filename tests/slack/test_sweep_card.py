"""A sweep in Slack, through the real Bolt app and the fake Slack Web API: one sweep card edited in
place, every job's snippets and receipt in its one thread, the buttons under the rules of
`job terminate` (and audited), Stop losing half stopping the worse half, one summary receipt."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.lifecycle import running
from handlers import modals, sweepviews
from services.jobs.lifecycle import JobState
from tests.fakes.slack import FakeSlack, interactive_body, view_submission_payload
from tests.slack.conftest import CHANNEL, USER, SlackRig, rig_settings

ADMIN, MALLORY = "U0ADMIN", "U0MALLORY"
CLUSTER = "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 4 --afs-name data --afs-mount-path afs"
# val_acc falls as lr grows: the smaller the learning rate, the better the job.
SWEEP_SCRIPT = """
import os, sys, time
lr = float(os.environ["lr"])
for i in range(1, 4):
    print(f"Epoch {i}/3 - loss: {lr / i:.4f} - val_acc: {1 - lr / i:.4f}", flush=True)
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.02)
"""


def sweep_json(*, gate: str | None = None) -> str:
    env = [{"name": "GATE", "value": f"$AZ_BATCHAI_MOUNT_ROOT/afs/{gate}"}] if gate else []
    return json.dumps(
        {
            "properties": {
                "nodeCount": 1,
                "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
                "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}],
                "environmentVariables": env,
                "customToolkitSettings": {
                    "commandLine": f"{sys.executable} $AZ_BATCHAI_MOUNT_ROOT/afs/sweep.py --lr $lr"
                    " && echo weights-$lr > $AZ_BATCHAI_OUTPUT_MODEL/model.bin"
                },
            }
        }
    )


SUBMIT = '--sweep "lr=0.1,0.2,0.3,0.4"'


@pytest.fixture
async def rig(
    tmp_path: Path, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SlackRig]:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    settings = rig_settings(tmp_path, fake, admin_users=ADMIN)
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "sweep.py").write_text(SWEEP_SCRIPT)
        rig = SlackRig(fake, bot, http, settings)
        await rig.answer(CLUSTER, user=ADMIN)
        yield rig
        for job in await bot.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await bot.backend.terminate_job(job.id)


def _top_level(rig: SlackRig) -> list[Any]:
    return [m for m in rig.fake.messages_in(CHANNEL) if not m.is_reply]


def _buttons(message: Any) -> dict[str, dict[str, Any]]:
    return {
        e["action_id"]: e
        for b in message.blocks or []
        if b["type"] == "actions"
        for e in b["elements"]
    }


async def _all_done(rig: SlackRig) -> bool:
    jobs = await rig.bot.store.list_jobs()
    return (
        bool(jobs)
        and all(j.state.finished for j in jobs)
        and not await rig.bot.store.pending_events(1)
    )


async def test_one_card_one_thread_and_one_summary_receipt(rig: SlackRig) -> None:
    answer = await rig.answer(f"job create -n lr -r c1 -c {sweep_json()} {SUBMIT}")
    assert "sweep *lr* submitted" in answer["text"], answer
    await rig.until(lambda: _all_done(rig), "the sweep to finish")
    (card,) = _top_level(rig)  # one message in the channel: the sweep card (+ the summary below)
    text = card.block_text()
    assert "sweep *lr* on `c1` — 4 jobs: 4 succeeded" in text
    assert ":trophy: *lr-1*" in text and "val_acc 0.9667" in text  # the best, by val_acc up
    assert "ranked by val_acc (higher is better)" in text
    assert card.edits >= 2
    thread = rig.fake.replies(CHANNEL, card.ts)
    texts = [m.block_text() for m in thread]
    assert all(any(f"*lr-{i}*" in t and "Epoch 3/3" in t for t in texts) for i in range(1, 5))
    receipts = [t for t in texts if "exit code 0" in t]
    assert len(receipts) == 4  # each job's receipt, in the sweep's thread
    (summary,) = [m for m in thread if "finished —" in m.block_text()]
    assert summary.reply_broadcast and f"<@{USER}>" in summary.block_text()
    ranking = summary.block_text()
    assert ranking.index("lr-1") < ranking.index("lr-2") < ranking.index("lr-4")
    assert "Outputs of lr-1" in ranking and "model.bin" in ranking
    (chart,) = rig.fake.files.values()  # one chart of all the runs, no chart per job
    assert chart.data[:4] == b"\x89PNG" and chart.thread_ts == card.ts
    before = len(rig.fake.calls_to("chat.postMessage"))
    await rig.bot.runner.tick()
    await rig.bot.relay.drain()
    assert len(rig.fake.calls_to("chat.postMessage")) == before  # nothing repeated


async def test_buttons_obey_terminate_s_rule_and_stop_losing_half_stops_the_worse_half(
    rig: SlackRig,
) -> None:
    await rig.answer(f"job create -n lr -r c1 -c {sweep_json(gate='never')} {SUBMIT}")

    async def all_report() -> bool:
        jobs = await rig.bot.store.list_jobs()
        return (
            len(jobs) == 4
            and all(
                j.state is JobState.RUNNING
                and "val_acc" in j.last_metrics
                and j.progress
                and j.progress.current == 3
                for j in jobs
            )
            and not await rig.bot.store.pending_events(1)
        )

    await rig.until(all_report, "every job to report val_acc")
    (card,) = _top_level(rig)
    buttons = _buttons(card)
    assert set(buttons) == set(sweepviews.SWEEP_ACTIONS)
    sweep_id = buttons[sweepviews.ACTION_SWEEP_STOP]["value"]
    assert buttons[sweepviews.ACTION_SWEEP_STOP]["confirm"]["confirm"]["text"] == "Stop"

    _, url = await rig.click(sweepviews.ACTION_SWEEP_STOP, sweep_id, user=MALLORY)
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    refused = rig.fake.responses_to(url)[-1]
    assert "only <@U0ALICE> or an admin may stop sweep lr" in (refused.text or "")
    assert {j.state for j in await rig.bot.store.list_jobs()} == {JobState.RUNNING}
    audit = await rig.bot.store.list_audit(target="lr")
    assert [(a.actor, a.action, a.outcome) for a in audit] == [
        (MALLORY, sweepviews.ACTION_SWEEP_STOP, "denied")
    ]

    _, url = await rig.click(sweepviews.ACTION_SWEEP_BEST, sweep_id, message_ts=card.ts)
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    assert "val_acc: 0.9667" in str(rig.fake.responses_to(url)[-1].blocks)  # lr-1's log

    _, url = await rig.click(sweepviews.ACTION_SWEEP_HALF, sweep_id, message_ts=card.ts)
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    said = rig.fake.responses_to(url)[-1].text or ""
    assert "is stopping 2 of sweep *lr*: lr-3, lr-4 (the worse half by val_acc)" in said
    await rig.until(
        lambda: _states(rig, {"lr-3": JobState.TERMINATED, "lr-4": JobState.TERMINATED}),
        "the worse half to stop",
    )
    states = {j.name: j.state for j in await rig.bot.store.list_jobs()}
    assert states["lr-1"] is states["lr-2"] is JobState.RUNNING
    assert not any("finished —" in m.block_text() for m in rig.fake.messages_in(CHANNEL))

    _, url = await rig.click(sweepviews.ACTION_SWEEP_STOP, sweep_id, user=ADMIN)
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    assert "is stopping 2 of sweep *lr*: lr-1, lr-2" in (rig.fake.responses_to(url)[-1].text or "")
    await rig.until(lambda: _all_done(rig), "the sweep to stop")
    summaries = [m for m in rig.fake.messages_in(CHANNEL) if "finished —" in m.block_text()]
    assert len(summaries) == 1 and "4 terminated" in summaries[0].block_text()
    (card,) = _top_level(rig)
    assert sweepviews.ACTION_SWEEP_STOP not in _buttons(card)  # nothing left to stop
    outcomes = [(a.actor, a.outcome) for a in await rig.bot.store.list_audit(target="lr")]
    assert outcomes.count((ADMIN, "allowed")) == 1 and outcomes.count((USER, "allowed")) == 1


async def _states(rig: SlackRig, wanted: dict[str, JobState]) -> bool:
    jobs = {j.name: j.state for j in await rig.bot.store.list_jobs()}
    return all(jobs.get(n) is s for n, s in wanted.items())


async def test_the_job_form_s_sweep_field_submits_a_sweep_and_marks_its_errors(
    rig: SlackRig,
) -> None:
    status, _, _ = await rig.command('job create -n formlr --sweep "lr=0.1,0.2"')
    assert status == 200
    view = (await rig.fake.wait_for_call("views.open")).json_arg("view")
    field = next(b for b in view["blocks"] if b.get("block_id") == modals.BLOCK_SWEEP)
    assert field["element"]["initial_value"] == "lr=0.1,0.2"  # prefilled from the flag

    def submit(sweep: str, trigger: str) -> bytes:
        def text(value: str) -> dict[str, Any]:
            return {"type": "plain_text_input", "value": value}

        values = {
            modals.BLOCK_NAME: {modals.BLOCK_NAME: text("formlr")},
            modals.BLOCK_CLUSTER: {
                modals.BLOCK_CLUSTER: {"type": "static_select", "selected_option": {"value": "c1"}}
            },
            modals.BLOCK_NODES: {modals.BLOCK_NODES: {"type": "number_input", "value": "1"}},
            modals.BLOCK_HOURS: {modals.BLOCK_HOURS: {"type": "number_input", "value": "1"}},
            modals.BLOCK_COMMAND: {modals.BLOCK_COMMAND: text("echo lr is $lr")},
            modals.BLOCK_SWEEP: {modals.BLOCK_SWEEP: text(sweep)},
        }
        payload = view_submission_payload(
            modals.CALLBACK_JOB_CREATE,
            values,
            user_id=USER,
            private_metadata=view["private_metadata"],
            trigger_id=trigger,
        )
        return interactive_body(payload)

    status, body = await rig.post(submit("lr=0.1,0.2\nlr=0.3", "t1"))
    assert status == 200 and body["response_action"] == "errors"
    assert body["errors"] == {modals.BLOCK_SWEEP: "each sweep parameter is named once"}
    status, body = await rig.post(submit("lr=0.1,0.2\nseed=1,2", "t2"))
    assert status == 200 and not body, body
    jobs = await rig.bot.store.list_jobs()
    assert [j.name for j in jobs] == ["formlr-1", "formlr-2", "formlr-3", "formlr-4"]
    assert len({j.sweep_id for j in jobs}) == 1
    await rig.until(lambda: _all_done(rig), "the form's sweep to finish")
    assert len(_top_level(rig)) == 1
