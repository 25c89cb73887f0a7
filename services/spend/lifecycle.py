"""The approval lifecycle: ApprovalState, its table, the pure approval_transition() and
`decide`, the one way an approval changes state."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from services.core.errors import Conflict
from services.core.outcome import Outcome, by_table

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


_TOKEN = object()  # only this module holds it, so only this module builds an ApprovalTransition


@dataclass(frozen=True)
class ApprovalTransition:
    """A decision the table allowed: the store writes `new` only while the row still is `old`."""

    old: ApprovalState
    new: ApprovalState
    token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.token is not _TOKEN:
            raise TypeError("an ApprovalTransition is built only by services.spend.lifecycle")


def decide(approval: Approval, target: ApprovalState) -> ApprovalTransition:
    """The guarded decision of `approval`; Conflict when the table forbids it."""
    current = ApprovalState(approval.state)
    if approval_transition(current, target) is not Outcome.APPLIED:
        raise Conflict(f"approval {approval.id} is {current.value}; it cannot become {target}")
    return ApprovalTransition(current, target, _TOKEN)
