"""Who may read a job (its card, logs, files and links): its channel's members, its requester
and admins."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from services.core.errors import NotAllowed
from services.models import Actor, Job


class ChannelMembers(Protocol):
    """Whether a user is a member of a conversation (Slack: conversations.members)."""

    async def is_member(self, channel: str, user: str) -> bool: ...


class JobReaders:
    """Without `members` only the job's own channel counts (nobody else is known to be in it)."""

    def __init__(self, members: ChannelMembers | None = None) -> None:
        self._members = members

    async def may_read(self, job: Job, actor: Actor) -> bool:
        if actor.is_admin or actor.user == job.requester:
            return True
        channel = job.conversation.channel if job.conversation is not None else None
        if channel is None:
            return False
        if actor.conversation is not None and actor.conversation.channel == channel:
            return True  # asking in the job's own channel: a member
        return self._members is not None and await self._members.is_member(channel, actor.user)

    async def check(self, job: Job, actor: Actor) -> None:
        if not await self.may_read(job, actor):
            raise NotAllowed(
                f"job {job.name} belongs to a channel you are not in; only its members, "
                "its requester and admins may read it"
            )

    async def visible(self, jobs: Iterable[Job], actor: Actor) -> list[Job]:
        return [job for job in jobs if await self.may_read(job, actor)]
