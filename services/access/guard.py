"""The one gate every transport passes (Slack's listeners and the console): checks who may do
what where, and writes the audit record of each refusal and of each audited action."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from services.access.audit import AuditLog
from services.access.policy import AccessPolicy, Decision, Origin
from services.models import Actor, AuditEntry, Conversation

DETAIL_LIMIT = 500


@dataclass(frozen=True)
class Caller:
    """Who is talking and where: a Slack user in a channel (None: a modal or the Home tab), or
    the console's user. Only the console may name files of the bot's machine."""

    user: str
    channel: str | None
    may_read_paths: bool = False


class AccessGuard:
    def __init__(self, *, policy: AccessPolicy, audit: AuditLog, now: Callable[[], datetime]):
        self._policy, self._audit, self._now = policy, audit, now

    @property
    def policy(self) -> AccessPolicy:
        return self._policy

    def serve_teams(self, teams: frozenset[str], *, orgs: frozenset[str] = frozenset()) -> None:
        """Set the workspaces served and the bot's own Grid org, found at start-up (auth.test)."""
        self._policy = replace(self._policy, teams=teams, orgs=orgs)

    def actor(self, caller: Caller) -> Actor:
        conversation = Conversation(caller.channel, None, caller.user) if caller.channel else None
        return Actor(
            user=caller.user,
            conversation=conversation,
            may_read_paths=caller.may_read_paths,
            is_admin=self._policy.is_admin(caller.user),
        )

    async def admit(self, caller: Caller, *, action: str, destructive: bool = False) -> Decision:
        """May `caller` do `action` here? A refusal is audited."""
        decision = self._policy.check(
            user=caller.user, channel=caller.channel, destructive=destructive
        )
        if not decision.allowed:
            await self.record(caller, action=action, outcome="denied", detail=decision.reason)
        return decision

    async def admit_origin(self, caller: Caller, origin: Origin, *, action: str) -> Decision:
        """Is the request from an allowed workspace? A refusal is audited, with the teams."""
        decision = self._policy.check_origin(origin)
        if not decision.allowed:
            named = ",".join(sorted(origin.teams | origin.enterprises))
            detail = f"{decision.reason} (request from {named})"
            await self.record(caller, action=action, outcome="denied", detail=detail)
        return decision

    async def record(
        self,
        caller: Caller,
        *,
        action: str,
        outcome: str,
        detail: str | None = None,
        target: str | None = None,
    ) -> None:
        await self._audit.record(
            AuditEntry(
                at=self._now(),
                actor=caller.user,
                action=action,
                outcome=outcome,
                channel=caller.channel,
                target=target,
                detail=None if detail is None else detail[:DETAIL_LIMIT],
            )
        )
