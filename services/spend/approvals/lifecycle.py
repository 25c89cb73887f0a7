"""The approval lifecycle: ApprovalState, its table, the pure approval_transition() and
`decide`, the one way an approval changes state."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from services.core.errors import Conflict
from services.core.outcome import Outcome, Transition, by_table, seal

if TYPE_CHECKING:
    from services.models import Approval


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


_APPROVAL_TRANSITIONS: dict[ApprovalState, frozenset[ApprovalState]] = {
    ApprovalState.PENDING: frozenset(
        {ApprovalState.APPROVED, ApprovalState.DENIED, ApprovalState.EXPIRED}
    ),
}


def approval_transition(current: ApprovalState, target: ApprovalState) -> Outcome:
    """Whether `current -> target` is allowed; a repeat of the current state is harmless."""
    return by_table(_APPROVAL_TRANSITIONS, current, target)


@dataclass(frozen=True)
class ApprovalTransition(Transition[ApprovalState]):
    """A guarded state change of an approval, built only here."""


_TOKEN = seal(ApprovalTransition)


def decide(approval: Approval, target: ApprovalState) -> ApprovalTransition:
    """The guarded decision of `approval`; Conflict when the table forbids it."""
    current = ApprovalState(approval.state)
    if approval_transition(current, target) is not Outcome.APPLIED:
        raise Conflict(f"approval {approval.id} is {current.value}; it cannot become {target}")
    return ApprovalTransition(current, target, _TOKEN)
