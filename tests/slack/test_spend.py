"""GPU spend through the real Bolt app: estimates, who may approve, budgets, limits, prices."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.lifecycle import PriceRefresher, running
from handlers import views
from services.core.clock import FakeClock
from services.jobs.lifecycle import JobState
from services.spend.price_refresh import RetailPrices
from tests.fakes.retail_prices import FakeRetailPrices, default_items
from tests.fakes.slack import FakeSlack, interactive_body, view_submission_payload
from tests.slack.conftest import CHANNEL, JOB_SCRIPT, SlackRig, job_json, rig_settings

ALICE, BOSS, CFO, MALLORY = "U0ALICE", "U0BOSS", "U0CFO", "U0MALLORY"
APPROVALS = "C0APPROVE"
A100 = "cluster create -n big -s Standard_NC24ads_A100_v4 -t 4 --afs-name data --afs-mount-path afs"
T4 = "cluster create -n t4 -s Standard_NC4as_T4_v3 -t 2 --afs-name data --afs-mount-path afs"
POLICY = {
    "default_limit_usd": 50,
    "user_limits": {"U0RICH": 5000},
    "approvers": [BOSS, CFO],
    "two_approver_threshold_usd": 1000,
    "expiry_hours": 24,
    "approvals_channel": APPROVALS,
}


@pytest.fixture
async def spend(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[SlackRig]:
    policy = tmp_path / "approvals.json"
    policy.write_text(json.dumps(POLICY))
    clock = FakeClock()
    settings = rig_settings(tmp_path, fake, approvals_file=policy, admin_users=BOSS)
    async with (
        running(settings, periodic=False, clock=clock) as bot,
        aiohttp.ClientSession() as http,
    ):
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "job.py").write_text(JOB_SCRIPT)
        rig = SlackRig(fake, bot, http, settings)
        rig.clock = clock  # type: ignore[attr-defined]
        yield rig
        for job in await bot.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await bot.backend.terminate_job(job.id)


async def submit(
    rig: SlackRig,
    name: str,
    *,
    cluster: str = "big",
    hours: int = 8,
    nodes: int = 4,
    user: str = ALICE,
    gate: str | None = "never",
) -> dict[str, Any]:
    config = job_json(1, nodes=nodes, hours=hours, gate=gate)
    return await rig.answer(f"job create -n {name} -r {cluster} -c {config}", user=user)


async def approval_of(rig: SlackRig, name: str) -> Any:
    job = await rig.bot.store.find_job(name)
    assert job is not None
    (approval,) = await rig.bot.store.list_approvals(job_id=job.id)
    return approval


async def click(rig: SlackRig, action_id: str, value: str, user: str) -> str:
    status, url = await rig.click(action_id, value, user=user)
    assert status == 200
    await rig.fake.wait_for(lambda: bool(rig.fake.responses_to(url)))
    return rig.fake.responses_to(url)[-1].text or ""


async def state(rig: SlackRig, name: str) -> JobState:
    job = await rig.bot.store.find_job(name)
    assert job is not None
    return job.state


async def drain(rig: SlackRig) -> None:
    await rig.bot.runner.tick()
    await rig.bot.relay.drain()


async def test_estimate_is_shown_and_equals_the_ledger(spend: SlackRig) -> None:
    created = await spend.answer(A100, user=BOSS)
    assert "$3.673/h per node" in str(created["blocks"]) and "$14.69/h" in str(created["blocks"])
    reply = await submit(spend, "big1")
    assert "4 × $3.673/h × 8 h max = $117.54" in str(reply["blocks"])
    job = await spend.bot.store.find_job("big1")
    assert job is not None and job.estimate == Decimal("117.54")
    async with spend.bot.store.unit() as uow:
        (entry,) = await uow.ledger.list(kind="estimate")
    assert entry.usd == job.estimate


async def test_under_the_limit_starts_at_once(spend: SlackRig) -> None:
    await spend.answer(T4)
    await submit(spend, "small", cluster="t4", hours=1, nodes=1, gate=None)
    assert await state(spend, "small") is JobState.QUEUED
    assert await spend.bot.store.list_approvals() == []


async def test_above_the_limit_asks_the_approvers_and_an_approver_approves(
    spend: SlackRig,
) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "big1")
    assert await state(spend, "big1") is JobState.PENDING_APPROVAL
    await drain(spend)
    (request,) = spend.fake.messages_in(APPROVALS)
    text = request.block_text()
    assert "$117.54" in text and f"<@{ALICE}>" in text and "Approve" in str(request.blocks)
    assert f"<#{CHANNEL}> has spent $0.00 this month (no budget set)" in text
    card = [m for m in spend.fake.messages_in(CHANNEL) if not m.is_reply][0]
    assert any(
        "waiting for approval by" in m.block_text() for m in spend.fake.replies(CHANNEL, card.ts)
    )
    approval = await approval_of(spend, "big1")
    answer = await click(spend, views.ACTION_APPROVE, approval.id, BOSS)
    assert "approved" in answer
    assert await state(spend, "big1") is JobState.QUEUED
    await drain(spend)
    decided = spend.fake.message(APPROVALS, request.ts)
    assert "approved by <@U0BOSS>" in decided.block_text() and "Approve" not in str(decided.blocks)


async def test_non_approver_is_refused_privately_and_audited(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "big1")
    approval = await approval_of(spend, "big1")
    answer = await click(spend, views.ACTION_APPROVE, approval.id, MALLORY)
    assert "may decide" in answer
    assert await state(spend, "big1") is JobState.PENDING_APPROVAL
    audit = await spend.bot.store.list_audit()
    assert any(a.actor == MALLORY and a.outcome == "denied" for a in audit)


async def test_requester_cannot_approve_their_own_request(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "own", user=BOSS)
    approval = await approval_of(spend, "own")
    answer = await click(spend, views.ACTION_APPROVE, approval.id, BOSS)
    assert "your own request" in answer
    assert await state(spend, "own") is JobState.PENDING_APPROVAL


async def test_a_second_click_changes_nothing(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "big1")
    approval = await approval_of(spend, "big1")
    await click(spend, views.ACTION_APPROVE, approval.id, BOSS)
    again = await click(spend, views.ACTION_APPROVE, approval.id, BOSS)
    assert "already approved" in again
    late = await click(spend, views.ACTION_APPROVE, approval.id, CFO)
    assert "already approved by <@U0BOSS>" in late
    events = await spend.bot.store.count_events(kind="job_state_changed")
    assert events == 1  # pending_approval -> queued, once


async def test_two_approvers_clicking_at_once_decide_once(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "race")
    approval = await approval_of(spend, "race")
    answers = await asyncio.gather(
        click(spend, views.ACTION_APPROVE, approval.id, BOSS),
        click(spend, views.ACTION_APPROVE, approval.id, CFO),
    )
    assert sum("already" in a for a in answers) == 1
    assert await state(spend, "race") is JobState.QUEUED
    assert await spend.bot.store.count_events(kind="job_state_changed") == 1


async def test_above_the_threshold_two_different_approvers_are_needed(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "huge", hours=100)  # 4 × $3.673 × 100 h = $1,469.20
    approval = await approval_of(spend, "huge")
    assert approval.required == 2
    first = await click(spend, views.ACTION_APPROVE, approval.id, BOSS)
    assert "1 more needed" in first
    assert await state(spend, "huge") is JobState.PENDING_APPROVAL
    await click(spend, views.ACTION_APPROVE, approval.id, CFO)
    assert await state(spend, "huge") is JobState.QUEUED


async def test_unanswered_requests_expire_with_a_message(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "slow")
    approval = await approval_of(spend, "slow")
    spend.clock.advance(timedelta(hours=25))  # type: ignore[attr-defined]
    await drain(spend)
    assert await state(spend, "slow") is JobState.EXPIRED
    late = await click(spend, views.ACTION_APPROVE, approval.id, BOSS)
    assert "expired" in late
    await drain(spend)
    card = [m for m in spend.fake.messages_in(CHANNEL) if not m.is_reply][0]
    assert any("expired" in m.block_text() for m in spend.fake.replies(CHANNEL, card.ts))


async def test_deny_asks_for_a_reason_in_a_modal(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "nope")
    approval = await approval_of(spend, "nope")
    status, _ = await spend.click(views.ACTION_DENY, approval.id, user=BOSS)
    assert status == 200
    opened = await spend.fake.wait_for_call("views.open")
    assert opened.json_arg("view")["callback_id"] == views.CALLBACK_DENY
    values = {
        views.BLOCK_REASON: {
            views.BLOCK_REASON: {"type": "plain_text_input", "value": "use the T4s for this"}
        }
    }
    by_mallory = view_submission_payload(
        views.CALLBACK_DENY, values, user_id=MALLORY, private_metadata=approval.id, trigger_id="m1"
    )
    _, body = await spend.post(interactive_body(by_mallory))
    assert body["response_action"] == "errors"  # refused inside the modal
    by_boss = view_submission_payload(
        views.CALLBACK_DENY, values, user_id=BOSS, private_metadata=approval.id, trigger_id="b1"
    )
    status, body = await spend.post(interactive_body(by_boss))
    assert status == 200 and not body
    assert await state(spend, "nope") is JobState.DENIED
    await drain(spend)
    card = [m for m in spend.fake.messages_in(CHANNEL) if not m.is_reply][0]
    receipt = spend.fake.replies(CHANNEL, card.ts)[-1].block_text()
    assert "denied" in receipt and "use the T4s for this" in receipt


async def test_over_budget_needs_approval_even_for_small_spend(spend: SlackRig) -> None:
    await spend.answer(T4)
    budget = await spend.answer("budget set --amount 0.50", user=BOSS)
    assert "$0.50" in budget["text"]
    refused = await spend.answer("budget set --amount 999", user=ALICE)
    assert "only an admin" in refused["text"]
    await submit(spend, "tiny", cluster="t4", hours=1, nodes=2)  # 2 × 0.526 = $1.05 > budget
    approval = await approval_of(spend, "tiny")
    assert any("budget" in r for r in approval.reasons)
    shown = await spend.answer("budget show")
    assert "$0.50" in str(shown["blocks"])


async def test_text_commands_list_approve_and_deny(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "a1")
    await submit(spend, "a2")
    listed = await spend.answer("approvals list -o table", user=BOSS)
    assert str(listed["blocks"]).count("$117.54") == 2
    first, second = await approval_of(spend, "a1"), await approval_of(spend, "a2")
    await spend.answer(f"approvals approve --id {first.id}", user=CFO)
    await spend.answer(f"approvals deny --id {second.id} --reason 'one at a time'", user=CFO)
    assert await state(spend, "a1") is JobState.QUEUED
    assert await state(spend, "a2") is JobState.DENIED
    audit = await spend.answer("audit", user=BOSS)
    assert "approve job" in str(audit["blocks"]) and "deny job" in str(audit["blocks"])
    refused = await spend.answer("audit", user=ALICE)
    assert "only an admin" in refused["text"]


async def test_limit_warning_extend_and_stop(spend: SlackRig) -> None:
    await spend.answer(T4)
    await submit(spend, "run", cluster="t4", hours=1, nodes=1)
    await spend.until(lambda: _running(spend, "run"), "run to start")
    spend.clock.advance(timedelta(minutes=51))  # type: ignore[attr-defined]
    await drain(spend)
    job = await spend.bot.store.find_job("run")
    assert job is not None
    card = [m for m in spend.fake.messages_in(CHANNEL) if not m.is_reply][-1]
    warning = spend.fake.replies(CHANNEL, card.ts)[-1]
    assert "reaches its limit" in warning.block_text() and "Extend 2 h" in str(warning.blocks)
    answer = await click(spend, views.ACTION_EXTEND, job.id, ALICE)
    assert "extended by 2 h" in answer  # 1 × $0.526 × 2 h is under the limit
    extended = await spend.bot.store.find_job("run")
    assert extended is not None and extended.max_wall_clock == timedelta(hours=3)
    await drain(spend)  # the new deadline reaches the node runner
    answer = await click(spend, views.ACTION_STOP, job.id, ALICE)
    assert "terminating" in answer
    await spend.until(lambda: _ended(spend, "run"), "run to stop")
    assert await state(spend, "run") is JobState.TERMINATED


async def test_spot_priority_uses_the_spot_price(spend: SlackRig) -> None:
    spot = A100.replace("-n big", "-n spot") + " --vm-priority lowpriority"
    created = await spend.answer(spot, user=BOSS)
    assert "$0.7345/h spot" in str(created["blocks"])
    await submit(spend, "cheap", cluster="spot", hours=8, nodes=4)  # 4 × 0.7345 × 8 = $23.50
    job = await spend.bot.store.find_job("cheap")
    assert job is not None and job.estimate == Decimal("23.50") and job.state is JobState.QUEUED


async def test_unknown_vm_size_is_refused_with_close_matches(spend: SlackRig) -> None:
    reply = await spend.answer("cluster create -n x -s Standard_NC24ads_A10_v4 -t 1")
    assert "Standard_NC24ads_A100_v4" in reply["text"] and "$0" not in reply["text"]
    assert await spend.bot.store.list_clusters() == []


async def test_spend_report_and_receipt_show_actual_cost(spend: SlackRig) -> None:
    await spend.answer(T4)
    await submit(spend, "paid", cluster="t4", hours=1, nodes=1, gate=None)
    await spend.until(lambda: _ended(spend, "paid"), "paid to finish")
    report = await spend.answer("spend --by user -o json")
    rows = json.loads(report["blocks"][0]["text"]["text"].strip("`"))
    assert rows[0]["user"] == ALICE and rows[0]["jobs"] == 1
    card = [m for m in spend.fake.messages_in(CHANNEL) if not m.is_reply][0]
    receipt = spend.fake.replies(CHANNEL, card.ts)[-1].block_text()
    assert "cost $" in receipt and "estimate $0.53" in receipt


async def test_prices_refresh_from_the_retail_prices_api(spend: SlackRig) -> None:
    items = default_items({"Standard_NC4as_T4_v3": Decimal("0.600")})
    async with FakeRetailPrices(items, page_size=2) as api, aiohttp.ClientSession() as session:
        refresher = PriceRefresher(
            spend.bot, RetailPrices(session, base_url=api.base_url), "eastus"
        )
        await refresher.run()
        assert len(api.requests) >= 2  # paged
    created = await spend.answer(T4)
    assert "$0.60/h per node" in str(created["blocks"]) or "$0.600/h" in str(created["blocks"])


async def _running(rig: SlackRig, name: str) -> bool:
    job = await rig.bot.store.find_job(name)
    return (
        job is not None
        and job.state is JobState.RUNNING
        and not await rig.bot.store.pending_events(1)
    )


async def _ended(rig: SlackRig, name: str) -> bool:
    job = await rig.bot.store.find_job(name)
    return job is not None and job.state.finished and not await rig.bot.store.pending_events(1)


async def test_an_extension_over_the_budget_needs_approval_again(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "long", hours=1, nodes=4)  # 4 × $3.673 × 1 h = $14.69: starts at once
    await spend.until(lambda: _running(spend, "long"), "long to start")
    await spend.answer("budget set --amount 1.00", user=BOSS)
    spend.clock.advance(timedelta(minutes=51))  # type: ignore[attr-defined]
    await drain(spend)
    job = await spend.bot.store.find_job("long")
    assert job is not None
    answer = await click(spend, views.ACTION_EXTEND, job.id, ALICE)
    assert "waits for" in answer
    (approval,) = [a for a in await spend.bot.store.list_approvals() if a.kind == "extend"]
    again = await click(spend, views.ACTION_EXTEND, job.id, ALICE)
    assert "already waiting" in again
    await click(spend, views.ACTION_APPROVE, approval.id, CFO)
    extended = await spend.bot.store.find_job("long")
    assert extended is not None and extended.max_wall_clock == timedelta(hours=3)
    assert extended.state is JobState.RUNNING
    await spend.answer("job terminate -n long")


async def test_the_requester_may_withdraw_a_waiting_request(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "maybe")
    reply = await spend.answer("job terminate -n maybe")
    assert "terminating" in reply["text"] or "denied" in reply["text"]
    assert await state(spend, "maybe") is JobState.DENIED
    approval = await approval_of(spend, "maybe")
    assert approval.state == "denied"


async def test_whoever_asks_for_an_extension_may_not_approve_it(spend: SlackRig) -> None:
    await spend.answer(A100, user=BOSS)
    await submit(spend, "theirs", hours=1, nodes=4)
    await spend.until(lambda: _running(spend, "theirs"), "theirs to start")
    await spend.answer("budget set --amount 1.00", user=BOSS)
    spend.clock.advance(timedelta(minutes=51))  # type: ignore[attr-defined]
    await drain(spend)  # the limit warning: Extend counts from now
    job = await spend.bot.store.find_job("theirs")
    assert job is not None
    answer = await click(spend, views.ACTION_EXTEND, job.id, BOSS)  # an admin, for Alice's job
    assert "waits for" in answer
    (approval,) = [a for a in await spend.bot.store.list_approvals() if a.kind == "extend"]
    assert approval.requester == BOSS
    refused = await click(spend, views.ACTION_APPROVE, approval.id, BOSS)
    assert "your own request" in refused
    await spend.answer("job terminate -n theirs")
