"""The approvals repository: spend requests, their votes (one per approver), guarded decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from services.models import Approval, Vote
from services.spend.approvals.lifecycle import ApprovalState, ApprovalTransition
from services.store.schema import approvals, votes


class SqlApprovalRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, approval: Approval) -> None:
        await self._conn.execute(insert(approvals).values(_approval_row(approval)))

    async def get(self, approval_id: str) -> Approval | None:
        stmt = select(approvals).where(approvals.c.id == approval_id)
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else _approval_from(row._mapping, await self._votes(row.id))

    async def list(
        self,
        *,
        state: ApprovalState | str | None = None,
        job_id: str | None = None,
        kind: str | None = None,
    ) -> list[Approval]:
        """Oldest first."""
        stmt = select(approvals).order_by(approvals.c.created_at)
        if state is not None:
            stmt = stmt.where(approvals.c.state == str(state))
        if job_id is not None:
            stmt = stmt.where(approvals.c.job_id == job_id)
        if kind is not None:
            stmt = stmt.where(approvals.c.kind == kind)
        rows = (await self._conn.execute(stmt)).all()
        return [_approval_from(r._mapping, await self._votes(r.id)) for r in rows]

    async def add_vote(self, approval_id: str, vote: Vote) -> bool:
        """Record one approver's vote; False when this approver had voted already. The insert
        skips a duplicate instead of failing, so the unit's transaction stays usable."""
        dialect = postgresql if self._conn.dialect.name == "postgresql" else sqlite
        row = {
            "approval_id": approval_id,
            "approver": vote.approver,
            "decision": vote.decision,
            "at": vote.at,
            "reason": vote.reason,
        }
        stmt = dialect.insert(votes).values(row).on_conflict_do_nothing()
        return bool((await self._conn.execute(stmt)).rowcount)

    async def decide(self, approval_id: str, decision: ApprovalTransition, at: datetime) -> bool:
        """Decide an approval by a `decision` from its lifecycle, only while it still is
        `decision.old` (False: decided already)."""
        if not isinstance(decision, ApprovalTransition):
            raise TypeError("deciding an approval takes an ApprovalTransition from the lifecycle")
        closed = await self._conn.execute(
            update(approvals)
            .where(approvals.c.id == approval_id, approvals.c.state == decision.old.value)
            .values(state=decision.new.value, decided_at=at)
        )
        return bool(closed.rowcount)

    async def _votes(self, approval_id: str) -> tuple[Vote, ...]:
        stmt = select(votes).where(votes.c.approval_id == approval_id).order_by(votes.c.at)
        return tuple(
            Vote(approver=r.approver, decision=r.decision, at=r.at, reason=r.reason)
            for r in await self._conn.execute(stmt)
        )


def _approval_row(a: Approval) -> dict[str, Any]:
    return {
        "id": a.id,
        "job_id": a.job_id,
        "kind": a.kind,
        "requester": a.requester,
        "channel": a.channel,
        "estimate": a.estimate,
        "formula": a.formula,
        "reasons": list(a.reasons),
        "required": a.required,
        "state": str(a.state),
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "decided_at": a.decided_at,
        "extra_hours": a.extra_hours,
        "month_spend": a.month_spend,
        "budget": a.budget,
    }


def _approval_from(r: Any, votes: tuple[Vote, ...]) -> Approval:
    return Approval(
        id=r["id"],
        job_id=r["job_id"],
        kind=r["kind"],
        requester=r["requester"],
        channel=r["channel"],
        estimate=r["estimate"],
        formula=r["formula"],
        reasons=tuple(r["reasons"]),
        required=r["required"],
        state=ApprovalState(r["state"]),
        created_at=r["created_at"],
        expires_at=r["expires_at"],
        decided_at=r["decided_at"],
        extra_hours=r["extra_hours"],
        votes=votes,
        month_spend=r["month_spend"],
        budget=r["budget"],
    )
