"""Rows of the spend tables <-> domain values (approvals, votes, ledger entries)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.models import Approval, LedgerEntry, Vote
from services.spend.approvals.lifecycle import ApprovalState


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything in this project is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def approval_row(a: Approval) -> dict[str, Any]:
    return {
        "id": a.id,
        "job_id": a.job_id,
        "kind": a.kind,
        "requester": a.requester,
        "channel": a.channel,
        "estimate": str(a.estimate),
        "formula": a.formula,
        "reasons": list(a.reasons),
        "required": a.required,
        "state": a.state,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "decided_at": a.decided_at,
        "extra_hours": None if a.extra_hours is None else str(a.extra_hours),
        "month_spend": None if a.month_spend is None else str(a.month_spend),
        "budget": None if a.budget is None else str(a.budget),
    }


def approval_from(r: Any, votes: tuple[Vote, ...]) -> Approval:
    return Approval(
        id=r["id"],
        job_id=r["job_id"],
        kind=r["kind"],
        requester=r["requester"],
        channel=r["channel"],
        estimate=Decimal(r["estimate"]),
        formula=r["formula"],
        reasons=tuple(r["reasons"]),
        required=r["required"],
        state=ApprovalState(r["state"]),
        created_at=aware(r["created_at"]) or r["created_at"],
        expires_at=aware(r["expires_at"]) or r["expires_at"],
        decided_at=aware(r["decided_at"]),
        extra_hours=None if r["extra_hours"] is None else Decimal(r["extra_hours"]),
        votes=votes,
        month_spend=None if r["month_spend"] is None else Decimal(r["month_spend"]),
        budget=None if r["budget"] is None else Decimal(r["budget"]),
    )


def vote_from(r: Any) -> Vote:
    return Vote(
        approver=r["approver"],
        decision=r["decision"],
        at=aware(r["at"]) or r["at"],
        reason=r["reason"],
    )


def ledger_row(e: LedgerEntry) -> dict[str, Any]:
    return {
        "at": e.at,
        "kind": e.kind,
        "job_id": e.job_id,
        "user": e.user,
        "channel": e.channel,
        "cluster": e.cluster,
        "vm_size": e.vm_size,
        "nodes": e.nodes,
        "hours": str(e.hours),
        "usd": str(e.usd),
    }


def ledger_from(r: Any) -> LedgerEntry:
    return LedgerEntry(
        at=aware(r["at"]) or r["at"],
        kind=r["kind"],
        job_id=r["job_id"],
        user=r["user"],
        channel=r["channel"],
        cluster=r["cluster"],
        vm_size=r["vm_size"],
        nodes=r["nodes"],
        hours=Decimal(r["hours"]),
        usd=Decimal(r["usd"]),
    )
