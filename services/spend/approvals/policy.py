"""Who may decide a spend approval: the users and user groups the approval policy names. Neither
the requester nor the job's owner may decide their own request (the service checks that, with
the audit); how the approvers are shown is the handlers' business (handlers/views.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.core.errors import NotAllowed

MembersOf = Callable[[str], Awaitable[frozenset[str]]]


@dataclass(frozen=True)
class Approvers:
    """The approvers of one policy: user ids, and user-group ids whose members approve too."""

    users: frozenset[str]
    groups: frozenset[str]
    members_of: MembersOf | None = None

    async def includes(self, user: str) -> bool:
        """Named, or a member of a named group (looked up in sorted order, first hit wins)."""
        if user in self.users:
            return True
        for group in sorted(self.groups):
            if self.members_of is not None and user in await self.members_of(group):
                return True
        return False


class NotApprover(NotAllowed):
    """Only `approvers` may decide on this request; the handler names them as mentions."""

    def __init__(self, approvers: Approvers) -> None:
        named = ", ".join([*sorted(approvers.users), *sorted(approvers.groups)]) or "an approver"
        super().__init__(f"only {named} may decide on this")
        self.approvers = approvers
