"""The unit of work: changes and their events are stored at commit, together, or not at all;
the same on SQLite, PostgreSQL and the in-memory fake, which services are then tested on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from services.access.audit import AuditLog
from services.core.clock import FakeClock
from services.core.errors import Conflict, NotAllowed
from services.core.events import ApprovalDecided, JobNote, JobSubmitted
from services.core.ports import Store
from services.jobs.lifecycle import JobState, advance
from services.models import Actor, Approval, AuditEntry, LedgerEntry, Vote
from services.spend.approvals.lifecycle import ApprovalState
from services.spend.approvals.service import ApprovalService
from services.spend.gate import ApprovalPolicy, SpendGate
from services.spend.ledger import PriceBook, SpendService
from services.spend.pricing import load_price_table
from services.store import SqlStore
from tests.conftest import NOW, make_job
from tests.fakes.memory_store import MemoryStore
from tests.pg import PostgresServer

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Every implementation of the port: what holds for one holds for all three."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        store = SqlStore(await server.create_database())
    else:
        store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'uow.db'}")
    await store.migrate()
    yield store
    await store.aclose()


def _note(text: str) -> JobNote:
    return JobNote(job_id="id-j1", cluster="c1", text=text)


async def _stored(store: Store) -> tuple[list[str], int]:
    """Names of the stored jobs and how many events there are, read in a unit of its own."""
    async with store.unit() as uow:
        return [j.name for j in await uow.jobs.list()], await uow.outbox.count()


async def test_a_commit_stores_the_change_and_its_events_together(any_store: Store) -> None:
    async with any_store.unit() as uow:
        await uow.jobs.add(make_job())
        uow.emit(JobSubmitted(job_id="id-j1", cluster="c1"), at=NOW)
        assert await uow.outbox.count() == 0  # collected, not yet written
        assert await _stored(any_store) == ([], 0)  # nobody else sees the change yet
        await uow.commit()
    assert await _stored(any_store) == (["j1"], 1)
    async with any_store.unit() as uow:
        ((_, event),) = await uow.outbox.pending()
    assert isinstance(event, JobSubmitted) and event.job_id == "id-j1"


async def test_leaving_without_commit_stores_nothing(any_store: Store) -> None:
    async with any_store.unit() as uow:
        await uow.jobs.add(make_job())
        uow.emit(_note("never told"))
    assert await _stored(any_store) == ([], 0)


async def test_an_exception_rolls_the_unit_back(any_store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with any_store.unit() as uow:
            await uow.jobs.add(make_job())
            uow.emit(_note("never told"))
            raise RuntimeError("the decision failed halfway")
    assert await _stored(any_store) == ([], 0)


async def test_rollback_drops_the_collected_events(any_store: Store) -> None:
    async with any_store.unit() as uow:
        await uow.jobs.add(make_job())
        uow.emit(_note("dropped"))
        await uow.rollback()
        uow.emit(_note("kept"))
        await uow.commit()
    assert await _stored(any_store) == ([], 1)
    async with any_store.unit() as uow:
        ((_, event),) = await uow.outbox.pending()
    assert isinstance(event, JobNote) and event.text == "kept"


async def test_a_conflict_undoes_the_whole_unit(any_store: Store) -> None:
    async with any_store.unit() as uow:
        await uow.jobs.add(make_job())
        await uow.commit()
    with pytest.raises(Conflict):
        async with any_store.unit() as uow:
            await uow.ledger.add(_entry())
            await uow.jobs.add(make_job(id="other"))  # the name is taken
            await uow.commit()
    async with any_store.unit() as uow:
        assert await uow.ledger.list() == []
        assert [j.id for j in await uow.jobs.list()] == ["id-j1"]


async def test_a_stale_move_is_refused_and_its_unit_stores_nothing(any_store: Store) -> None:
    async with any_store.unit() as uow:
        job = await uow.jobs.add(make_job())
        await uow.commit()
    preparing = advance(job, JobState.PREPARING)
    terminating = advance(job, JobState.TERMINATING)
    assert preparing is not None and terminating is not None
    async with any_store.unit() as uow:
        assert await uow.jobs.move(preparing.job, preparing.transition)
        uow.emit(*preparing.events)
        await uow.commit()
    async with any_store.unit() as uow:  # computed from the queued snapshot: stale now
        assert not await uow.jobs.move(terminating.job, terminating.transition)
    async with any_store.unit() as uow:
        stored = await uow.jobs.get(job.id)
    assert stored is not None and stored.state is JobState.PREPARING


async def test_a_vote_twice_is_refused_and_the_unit_goes_on(any_store: Store) -> None:
    """On PostgreSQL a failed INSERT would abort the transaction; the unit must stay usable."""
    approval = _approval()
    async with any_store.unit() as uow:
        await uow.jobs.add(make_job(state=JobState.PENDING_APPROVAL))
        await uow.approvals.add(approval)
        await uow.commit()
    vote = Vote("UA", "approve", NOW)
    async with any_store.unit() as uow:
        assert await uow.approvals.add_vote(approval.id, vote)
        assert not await uow.approvals.add_vote(approval.id, vote)
        uow.emit(_note("after the refused vote"))
        await uow.commit()
    async with any_store.unit() as uow:
        stored = await uow.approvals.get(approval.id)
        assert await uow.outbox.count() == 1
    assert stored is not None and stored.approvers == ("UA",)


# -- services on the in-memory port -------------------------------------------------------


async def test_the_audit_log_is_read_by_admins_only() -> None:
    store = MemoryStore()
    log = AuditLog(store)
    await log.record(AuditEntry(NOW, "U1", "job create", "allowed", target="id-j1"))
    with pytest.raises(NotAllowed):
        await log.list_entries(actor=Actor("U1"))
    (entry,) = await log.list_entries(actor=Actor("U9", is_admin=True), job_id="id-j1")
    assert entry.actor == "U1"


async def test_only_an_admin_sets_a_budget_and_a_refusal_stores_nothing() -> None:
    store = MemoryStore()
    spend = _spend(store)
    with pytest.raises(NotAllowed):
        await spend.set_budget("C1", Decimal("100"), actor=Actor("U1"))
    assert store.commits == 0
    await spend.set_budget("C1", Decimal("100"), actor=Actor("U9", is_admin=True))
    assert await spend.budget("C1") == Decimal("100.00")


async def test_an_approval_queues_its_job_once_with_its_events() -> None:
    store = MemoryStore()
    approval = _approval()
    async with store.unit() as uow:
        await uow.jobs.add(make_job(state=JobState.PENDING_APPROVAL))
        await uow.approvals.add(approval)
        await uow.commit()
    service = _approvals(store)
    outcome = await service.approve(approval.id, actor=Actor("UA"))
    assert outcome.applied and outcome.approval.state is ApprovalState.APPROVED
    again = await service.approve(approval.id, actor=Actor("UB"))
    assert not again.applied
    async with store.unit() as uow:
        job = await uow.jobs.get("id-j1")
        events = [e for _, e in await uow.outbox.pending()]
    assert job is not None and job.state is JobState.QUEUED
    decided = [e for e in events if isinstance(e, ApprovalDecided)]
    assert [e.state for e in decided] == ["approved"]


async def test_a_request_nobody_decided_expires_once_with_its_job() -> None:
    store = MemoryStore()
    approval = _approval()
    async with store.unit() as uow:
        await uow.jobs.add(make_job(state=JobState.PENDING_APPROVAL))
        await uow.approvals.add(approval)
        await uow.commit()
    clock = FakeClock(NOW)
    service = _approvals(store, clock)
    assert await service.expire_due() == 0
    clock.advance(timedelta(hours=2))
    assert await service.expire_due() == 1
    assert await service.expire_due() == 0  # decided already: nothing more
    async with store.unit() as uow:
        job = await uow.jobs.get("id-j1")
        stored = await uow.approvals.get(approval.id)
        decided = [e for _, e in await uow.outbox.pending() if isinstance(e, ApprovalDecided)]
    assert job is not None and job.state is JobState.EXPIRED
    assert stored is not None and stored.state is ApprovalState.EXPIRED
    assert [e.state for e in decided] == ["expired"]


def _spend(store: Store) -> SpendService:
    prices = PriceBook(load_price_table(PROJECT / "manifests" / "prices.json"))
    return SpendService(store=store, prices=prices, clock=FakeClock(NOW))


def _approvals(store: Store, clock: FakeClock | None = None) -> ApprovalService:
    gate = SpendGate(policy=ApprovalPolicy(approvers=frozenset({"UA", "UB"})), spend=_spend(store))
    return ApprovalService(store=store, gate=gate, clock=clock or FakeClock(NOW))


def _approval() -> Approval:
    return Approval(
        id="a1",
        job_id="id-j1",
        kind="job",
        requester="U1",
        channel=None,
        estimate=Decimal("1"),
        formula="1 x $1/h x 1 h max = $1",
        reasons=("over limit",),
        required=1,
        state=ApprovalState.PENDING,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def _entry() -> LedgerEntry:
    return LedgerEntry(NOW, "estimate", "id-j1", "U1", "C1", "c1", "NC6", 1, Decimal(1), Decimal(2))
