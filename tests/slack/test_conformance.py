"""Stress through the real bot and the fake Slack, whose SDK models validate every payload:
long lists are split between rows and counted, JSON stays JSON, snippets fit once escaped."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

from services.core.events import LogSnippet
from services.jobs.lifecycle import JobState
from services.models import Approval, Conversation
from tests.conftest import make_job
from tests.fakes.slack import VALIDATED, app_home_opened_event
from tests.slack.conftest import CHANNEL, USER, SlackRig

LONG = "x" * 50  # names are at most 64 characters
GRAD = "tensor(2.3026, grad_fn=<NllLossBackward0>) & <class 'torch.Tensor'> loss at step {i:05d}"


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _code_bodies(blocks: list[dict[str, Any]]) -> list[str]:
    bodies = []
    for block in blocks:
        text = block.get("text", {}).get("text", "") if block["type"] == "section" else ""
        if text.startswith("```"):
            assert text.endswith("```") and text.count("```") == 2, text[-40:]
            bodies.append(_unescape(text[3:-3]))
    return bodies


def _notes(blocks: list[dict[str, Any]]) -> str:
    return " ".join(e["text"] for b in blocks if b["type"] == "context" for e in b["elements"])


def _more(blocks: list[dict[str, Any]]) -> int:
    return sum(int(n) for n in re.findall(r"…and (\d+) more", _notes(blocks)))


def _inert(blocks: list[dict[str, Any]]) -> None:
    text = json.dumps(blocks)
    assert not re.search(r"&(?!(amp|lt|gt);)", text.replace("\\u0026", "&"))


async def _seed_jobs(rig: SlackRig, count: int, *, pending: bool = False) -> list[str]:
    now = rig.bot.clock.now()
    names = []
    for i in range(count):
        name = f"job-{i:03d}-{LONG}"
        job = make_job(
            name,
            id=f"{i:032x}",
            requester=USER,
            created_at=now,
            conversation=Conversation(CHANNEL, None, USER),
            state=JobState.PENDING_APPROVAL if pending else JobState.FAILED,
            error="<NllLossBackward0> & more " * 8,
            resource_group="rg-" + "r" * 40,
        )
        approval = (
            Approval(
                id=f"ap{i:03d}",
                job_id=job.id,
                kind="job",
                requester=USER,
                channel=CHANNEL,
                estimate=Decimal("117.54"),
                formula="4 × Standard_NC24ads_A100_v4 × $3.673/h × 8 h max = $117.54",
                reasons=("above the $50.00 limit",),
                required=1,
                state="pending",
                created_at=now,
                expires_at=now + timedelta(hours=24),
            )
            if pending
            else None
        )
        async with rig.bot.store.unit() as uow:
            await uow.jobs.add(job)
            if approval is not None:
                await uow.approvals.add(approval)
            await uow.commit()
        names.append(name)
    return names


async def test_sixty_jobs_list_as_a_table_and_as_json_within_slacks_limits(rig: SlackRig) -> None:
    names = await _seed_jobs(rig, 60)
    table = await rig.answer("job list -o table")
    bodies = _code_bodies(table["blocks"])
    assert len(bodies) > 1 and len(table["blocks"]) <= 50
    rows = [line.split()[0] for body in bodies for line in body.split("\n")[2:]]
    assert all(body.startswith("Name") for body in bodies)  # the header atop each part
    assert len(rows) + _more(table["blocks"]) == 60 and set(rows) <= set(names)

    listed = await rig.answer("job list -o json")
    shown = json.loads("\n".join(_code_bodies(listed["blocks"])))
    assert len(shown) + _more(listed["blocks"]) == 60
    assert "job show -n NAME" in _notes(listed["blocks"])
    _inert(listed["blocks"])


async def test_a_hundred_approvals_in_the_list_and_on_the_app_home(rig: SlackRig) -> None:
    await _seed_jobs(rig, 100, pending=True)
    listed = await rig.answer("approvals list -o table")
    rows = [line for body in _code_bodies(listed["blocks"]) for line in body.split("\n")[2:]]
    assert len(rows) + _more(listed["blocks"]) == 100
    status, _ = await rig.post(json.dumps(app_home_opened_event(USER)).encode())
    assert status == 200
    await rig.fake.wait_for(lambda: rig.fake.home_view(USER) is not None)
    view = rig.fake.home_view(USER)
    assert view is not None and len(view.blocks) <= 100
    text = view.block_text()
    listed_on_home = text.count("approvals approve --id ap")
    more = re.search(r"\*Pending approvals\* \(100\)[\s\S]*?…and (\d+) more", text)
    assert listed_on_home > 0 and more and listed_on_home + int(more.group(1)) == 100


async def test_forty_long_escaped_log_lines_merged_for_a_slow_channel_fit_and_are_counted(
    rig: SlackRig,
) -> None:
    (name,) = await _seed_jobs(rig, 1)
    job = await rig.bot.store.find_job(name)
    assert job is not None
    lines = [GRAD.format(i=i) for i in range(1, 121)]
    # three contiguous snippets waiting together: the relay merges them into one message
    await rig.bot.store.add_events(
        [
            LogSnippet(
                job_id=job.id, cluster="c1", file="stdout.txt", first_line=n, lines=tuple(part)
            )
            for n, part in ((1, lines[:40]), (41, lines[40:80]), (81, lines[80:]))
        ]
    )
    before = VALIDATED["chat.postMessage"]
    await rig.bot.relay.drain()
    (posted,) = [m for m in rig.fake.messages_in(CHANNEL) if "stdout.txt" in m.block_text()]
    assert VALIDATED["chat.postMessage"] > before
    (body,) = _code_bodies(posted.blocks or [])
    shown = body.split("\n")
    assert shown == lines[-len(shown) :]  # the newest lines, each whole
    skipped = re.search(r"(\d+) lines skipped", _notes(posted.blocks or []))
    assert skipped and int(skipped.group(1)) + len(shown) == 120
    assert "lines 1-120" in _notes(posted.blocks or [])
