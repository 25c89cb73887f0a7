"""Channel membership from Slack (conversations.members), cached briefly: who may read a job."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

PAGE = 1000  # conversations.members' largest page (Slack recommends no more than 200 for speed)
MAX_PAGES = 50  # 50,000 members: beyond that the bot answers "not a member" (fails closed)


class SlackChannelMembers:
    """Members of a conversation, read page by page and kept `ttl` seconds: conversations.members
    is a Tier 4 method, and someone reading a job's logs asks for the same channel again and again.
    Needs channels:read, groups:read, im:read and mpim:read for the four kinds of conversation.
    Slack refusing (a private channel the bot is not in, a missing scope) means "not a member",
    and is not cached."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        ttl: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client, self._ttl, self._monotonic = client, ttl, monotonic
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def is_member(self, channel: str, user: str) -> bool:
        members = await self.members(channel)
        return user in members

    async def members(self, channel: str) -> frozenset[str]:
        cached = self._cache.get(channel)
        if cached is not None and self._monotonic() - cached[0] < self._ttl:
            return cached[1]
        found: set[str] = set()
        cursor: str | None = None
        try:
            for _ in range(MAX_PAGES):
                response = await self._client.conversations_members(
                    channel=channel, limit=PAGE, cursor=cursor
                )
                found.update(response.get("members") or ())
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if cursor is None:
                    break
            else:
                log.warning(
                    "channel %s has over %d members; read no more", channel, PAGE * MAX_PAGES
                )
        except Exception as err:  # an unreachable or refusing Slack must not let anyone read
            log.warning("could not read the members of %s: %s", channel, err)
            return frozenset()
        members = frozenset(found)
        self._cache[channel] = (self._monotonic(), members)
        return members
