"""The Slack outbox: every Slack write goes through here — paced, coalesced, retried, recorded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.metrics import BotMetrics
from handlers.presenter import MessageRef
from handlers.views import Message
from services.core.errors import TransientError
from services.store import SqlStore

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Landed = Callable[[], Awaitable[dict[str, Any] | None]]  # a lost post, if Slack has it

METADATA_TYPE = "batchai_delivery"  # message metadata that names what a message delivered
MAX_LOOKUP_PAGES = 25  # of 200 messages: how far back a crash recovery looks
TRANSIENT_ERRORS = {
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
}


class _Pace:
    """At most one call per `interval` seconds. Waiters go in priority order (0 first), then in
    arrival order: receipts and state changes overtake log snippets in a busy channel.

    A task that holds the lane (a `SlackOutbox.turn`) makes its own calls in it without
    queueing again, still paced; a turn in which nothing was sent does not use up the interval."""

    def __init__(
        self, interval: float, monotonic: Callable[[], float], sleep: Sleep = asyncio.sleep
    ) -> None:
        self._interval = interval
        self._monotonic = monotonic
        self._sleep = sleep
        self._next = 0.0
        self._busy = False
        self._holder: asyncio.Task[Any] | None = None
        self._used = False  # a call was made in the current holder's turn
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        """A call's turn: paced after the lane's previous call."""
        if self._holder is not None and self._holder is asyncio.current_task():
            await self._paced()
            try:
                yield
            finally:
                self._used = True
                self._next = max(self._next, self._monotonic() + self._interval)
            return
        async with self.hold(priority):
            self._used = True
            yield

    @contextlib.asynccontextmanager
    async def hold(self, priority: int = 0) -> AsyncIterator[None]:
        """The lane, for the calling task's calls to come (`slot` inside it does not queue)."""
        await self._acquire(priority)
        self._holder, self._used = asyncio.current_task(), False
        try:
            await self._paced()
            yield
        finally:
            self._holder = None
            self._release()

    async def _paced(self) -> None:
        wait = self._next - self._monotonic()
        if wait > 0:
            await self._sleep(wait)

    async def _acquire(self, priority: int) -> None:
        if not self._busy and not self._waiters:
            self._busy = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed the lane while being cancelled: pass it on
            raise

    def _release(self) -> None:
        # max: a Retry-After pushed by the call just made outlives the lane's own pacing
        if self._used:
            self._next = max(self._next, self._monotonic() + self._interval)
        self._used = True
        while self._waiters:
            _, _, turn = heapq.heappop(self._waiters)
            if not turn.done():
                turn.set_result(None)  # the lane stays busy: it is theirs now
                return
        self._busy = False

    def push_back(self, seconds: float) -> None:
        """Slack said Retry-After: nobody in this lane calls before then."""
        self._next = max(self._next, self._monotonic() + seconds)


@dataclass
class _Edit:
    """An edit waiting for the workspace budget: the newest message for one Slack message."""

    message: Message
    priority: int
    order: int
    outcome: asyncio.Future[None]

    @property
    def rank(self) -> tuple[int, int]:
        return (self.priority, self.order)


class SlackOutbox:
    """Implements the presenter's Transport on the Slack Web API.

    - pacing: ~1 message/s per channel (chat.postMessage), ~50 edits/min per workspace
      (chat.update); a 429 pushes the whole lane back by its Retry-After;
    - coalescing: edits of the same message that wait for their turn collapse into the newest
      one, and edits are spent by priority (log snippets are merged upstream, by the relay);
    - retries: 429 after Retry-After, 5xx / timeouts / connection errors with backoff, within a
      budget; then TransientError, and the relay tries again later;
    - records: every message is stored with its idempotency keys and the channel Slack put it
      in (a post to a user id lands in the DM, D…), and a key already recorded is never sent
      again — a restart repeats nothing that went out;
    - lost answers: a keyed post whose answer never came (a timeout, a dropped connection, a
      5xx: Slack may have taken it) is looked up in Slack by its metadata tag before it is
      sent again, in the same call or a later one; one that Slack took but whose record could
      not be stored is recorded on its next try instead of being sent again."""

    def __init__(
        self,
        client: AsyncWebClient,
        store: SqlStore,
        *,
        now: Callable[[], datetime],
        post_interval: float = 1.0,
        updates_per_minute: float = 50.0,
        max_attempts: int = 5,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        metrics: BotMetrics | None = None,
    ) -> None:
        self._client = client
        self._sleep = sleep  # injected: tests see the waits without waiting
        self._metrics = metrics or BotMetrics()
        self._store = store
        self._now = now
        self._monotonic = monotonic
        self._post_interval = post_interval
        self._channels: dict[str, _Pace] = {}
        self._updates = _Pace(60.0 / updates_per_minute, monotonic, sleep)
        self._edits: dict[tuple[str, str], _Edit] = {}  # (channel, ts) -> the newest edit
        self._edit_order = itertools.count()
        self._editor: asyncio.Task[None] | None = None
        self._max_attempts = max_attempts
        self._dms: dict[str, str] = {}  # user id -> the bot's DM with them (D…)
        # Tags of keyed posts whose answer was lost (Slack may have them), and posts Slack took
        # whose record failed: both are settled before the key is sent again.
        self._uncertain: set[str] = set()
        self._unrecorded: dict[str, MessageRef] = {}
        self.stats = {"calls": 0, "ratelimited": 0, "retries": 0, "coalesced_edits": 0, "fenced": 0}
        # Asked before every Web API call when set (a replica on PostgreSQL: the leader lease):
        # a leader that lost its lease mid-round sends nothing more, its events stay pending.
        self.fence: Callable[[], Awaitable[bool]] | None = None

    # -- Transport ---------------------------------------------------------------------------

    async def post(
        self,
        channel: str,
        message: Message,
        *,
        thread: str | None = None,
        broadcast: bool = False,
        keys: Sequence[str] = (),
        low_priority: bool = False,
    ) -> MessageRef:
        if keys and (sent := await self._store.get_delivery(keys)) is not None:
            return MessageRef(*sent)
        tag = _tag(keys[0]) if keys else None
        if tag is not None and (taken := self._unrecorded.get(tag)) is not None:
            await self._record(keys, taken)
            return taken
        if thread:  # a thread is in a conversation; only a top-level post may name a user
            channel = await self._conversation_of(channel)
        landed = None
        if tag is not None:
            landed = functools.partial(self._landed, channel, thread, tag)
            if tag in self._uncertain and (found := await landed()) is not None:
                await self._record(keys, MessageRef(found["channel"], found["ts"]))
                return MessageRef(found["channel"], found["ts"])
            await self._store.add_intent(keys, channel, f"{thread or ''}#{tag}", self._now())
            self._uncertain.add(tag)  # until Slack answers, it may or may not have it
        lane = self._lane(channel)
        try:
            response = await self._call(
                lane,
                1 if low_priority else 0,
                self._client.chat_postMessage,
                landed=landed,
                channel=channel,
                text=message.text[:3000],
                blocks=message.blocks,
                thread_ts=thread,
                reply_broadcast=broadcast if thread else None,
                unfurl_links=False,
                unfurl_media=False,
                metadata=(
                    {"event_type": METADATA_TYPE, "event_payload": {"key": tag}} if tag else None
                ),
            )
        except SlackApiError:
            self._uncertain.discard(tag or "")  # refused for good: Slack does not have it
            raise
        self._uncertain.discard(tag or "")
        # Slack's channel, not ours: later edits, replies and uploads must name the DM (D…).
        sent_ref = MessageRef(str(response.get("channel") or channel), str(response["ts"]))
        if keys:
            await self._record(keys, sent_ref)
        return sent_ref

    async def _record(self, keys: Sequence[str], ref: MessageRef) -> None:
        """Store what Slack took; if that fails, keep it here so that the next try of these
        keys records it instead of sending it again (after a restart, `recover` finds it)."""
        tag = _tag(keys[0])
        try:
            await self._store.record_delivery(keys, ref.channel, ref.ts, self._now())
        except BaseException:
            self._unrecorded[tag] = ref
            raise
        self._unrecorded.pop(tag, None)

    async def _landed(self, channel: str, thread: str | None, tag: str) -> dict[str, Any] | None:
        """The post tagged `tag`, if Slack has it (an earlier try's answer was lost). When
        Slack cannot say, TransientError: the post waits rather than risk a second copy;
        without the history scopes it is sent again (and may show twice)."""
        try:
            where = await self._conversation_of(channel)
            tags = await self._tagged_messages(where, thread, want=tag)
        except SlackApiError as err:
            status, error = err.response.status_code, str(err.response.get("error", ""))
            if status == 429 or status >= 500 or error in TRANSIENT_ERRORS:
                raise TransientError("cannot tell yet whether Slack took a message") from err
            log.warning("cannot look for a message Slack may have taken (%s): sending it", error)
            return None
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise TransientError("cannot tell yet whether Slack took a message") from err
        ts = tags.get(tag)
        return None if ts is None else {"channel": where, "ts": ts}

    @contextlib.asynccontextmanager
    async def turn(self, channel: str, *, low_priority: bool = False) -> AsyncIterator[None]:
        """The channel's next post slot, held for the calling task: the caller decides what to
        post once its turn came (a log snippet put together then carries every line written
        while it waited, instead of a stale one and a second post for the rest)."""
        channel = await self._conversation_of(channel)
        async with self._lane(channel).hold(1 if low_priority else 0):
            yield

    async def update(
        self, channel: str, message_id: str, message: Message, *, priority: int = 1
    ) -> None:
        """Edits wait for the workspace budget in a queue of their own, spent by priority (0
        first: a finished job's card before a running one's), then oldest first; while waiting,
        a newer edit of the same message replaces it and keeps the better priority. No post
        ever waits for an edit. Whoever's edit was merged learns how the sent one fared (so a
        failure is not hidden)."""
        channel = await self._conversation_of(channel)
        key = (channel, message_id)
        edit = self._edits.get(key)
        if edit is not None:
            self.stats["coalesced_edits"] += 1
            edit.message = message
            edit.priority = min(edit.priority, priority)
        else:
            outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            outcome.add_done_callback(_retrieve)
            edit = self._edits[key] = _Edit(message, priority, next(self._edit_order), outcome)
        if self._editor is None or self._editor.done():
            self._editor = asyncio.ensure_future(self._edit_loop())
        await asyncio.shield(edit.outcome)

    async def _edit_loop(self) -> None:
        """Sends the waiting edits one budget slot at a time, choosing when the slot is there."""
        try:
            while self._edits:
                async with self._updates.slot():
                    key = min(self._edits, key=lambda k: self._edits[k].rank)
                    edit = self._edits.pop(key)
                    try:
                        await self._send(
                            self._updates,
                            self._client.chat_update,
                            channel=key[0],
                            ts=key[1],
                            text=edit.message.text[:3000],
                            blocks=edit.message.blocks,
                        )
                    except Exception as err:
                        edit.outcome.set_exception(err)
                    else:
                        edit.outcome.set_result(None)
        finally:
            # Cancelled (the loop is closing): nobody waits in vain.
            for edit in self._edits.values():
                if not edit.outcome.done():
                    edit.outcome.set_exception(TransientError("edit interrupted"))
            self._edits.clear()

    async def lookup(self, key: str) -> MessageRef | None:
        sent = await self._store.get_delivery([key])
        return None if sent is None else MessageRef(*sent)

    async def recover(self) -> int:
        """After a crash: every message that was being sent when the bot died is looked up in
        Slack by the tag in its metadata. Found, it is recorded (never sent again); not found,
        its intent is dropped and the relay sends it. Returns how many were found."""
        groups: dict[tuple[str, str], list[str]] = {}
        for key, channel, marker in await self._store.list_intents():
            groups.setdefault((channel, marker), []).append(key)
        if not groups:
            return 0
        found = 0
        places = {(channel, marker.rpartition("#")[0]) for channel, marker in groups}
        sent: dict[tuple[str, str], tuple[str, str]] = {}
        for channel, thread in places:
            try:
                where = await self._conversation_of(channel)
                tags = await self._tagged_messages(where, thread or None)
            except (SlackApiError, TransientError, aiohttp.ClientError, TimeoutError) as err:
                # Without the history scopes (or Slack down) the message may go out twice.
                log.warning("cannot look for unrecorded messages in %s: %s", channel, err)
                continue
            sent.update(((channel, f"{thread}#{tag}"), (where, ts)) for tag, ts in tags.items())
        for (channel, marker), keys in groups.items():
            found_at = sent.get((channel, marker))
            if found_at is None:
                await self._store.drop_intents(keys)
            else:
                await self._store.record_delivery(keys, *found_at, self._now())
                found += 1
        log.info("recovered %d of %d messages sent just before a crash", found, len(groups))
        return found

    async def _conversation_of(self, channel: str) -> str:
        """The conversation a message to `channel` is in. A user id (U…/W…) is none: the bot's
        DM with that user is (conversations.open, im:write). Conversations are stored as Slack
        answered, so this serves crash recovery and jobs stored before that."""
        if channel[:1] not in ("U", "W"):
            return channel
        if (dm := self._dms.get(channel)) is None:
            response = await self._send(
                self._lane(channel), self._client.conversations_open, users=channel
            )
            dm = str((response.get("channel") or {}).get("id") or channel)
            self._dms[channel] = dm
        return dm

    async def _tagged_messages(
        self, channel: str, thread: str | None, *, want: str | None = None
    ) -> dict[str, str]:
        """tag -> ts of the bot's recent messages in a thread (all of it) or a channel, newest
        first; with `want`, up to the page that has that tag."""
        tags: dict[str, str] = {}
        cursor = None
        for _ in range(MAX_LOOKUP_PAGES):
            args: dict[str, Any] = {"channel": channel, "limit": 200, "include_all_metadata": True}
            if cursor:
                args["cursor"] = cursor
            if thread:
                page = await self._client.conversations_replies(ts=thread, **args)
            else:
                page = await self._client.conversations_history(**args)
            for message in page.get("messages") or []:
                meta = message.get("metadata") or {}
                tag = (meta.get("event_payload") or {}).get("key")
                if meta.get("event_type") == METADATA_TYPE and tag:
                    tags[str(tag)] = str(message["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor or (want is not None and want in tags):
                break
        return tags

    async def upload(
        self,
        channel: str,
        *,
        thread: str | None,
        filename: str,
        content: bytes,
        title: str,
        keys: Sequence[str] = (),
    ) -> None:
        if keys and await self._store.get_delivery(keys) is not None:
            return
        if keys and (taken := self._unrecorded.get(_tag(keys[0]))) is not None:
            await self._record(keys, taken)
            return
        channel = await self._conversation_of(channel)
        response = await self._call(
            self._lane(channel),
            0,
            self._client.files_upload_v2,
            channel=channel,
            thread_ts=thread,
            filename=filename,
            content=content,
            title=title,
        )
        file_id = str((response.get("file") or {}).get("id", "file"))
        if keys:
            await self._record(keys, MessageRef(channel, file_id))

    # -- calls -------------------------------------------------------------------------------

    def _lane(self, channel: str) -> _Pace:
        lane = self._channels.get(channel)
        if lane is None:
            lane = _Pace(self._post_interval, self._monotonic, self._sleep)
            self._channels[channel] = lane
        return lane

    async def _call(
        self,
        lane: _Pace,
        priority: int,
        method: Callable[..., Awaitable[AsyncSlackResponse]],
        *,
        landed: Landed | None = None,
        **kwargs: Any,
    ) -> AsyncSlackResponse | dict[str, Any]:
        async with lane.slot(priority):
            return await self._send(lane, method, landed=landed, **kwargs)

    async def _send(
        self,
        lane: _Pace,
        method: Callable[..., Awaitable[AsyncSlackResponse]],
        *,
        landed: Landed | None = None,
        **kwargs: Any,
    ) -> AsyncSlackResponse | dict[str, Any]:
        """One Web API call with the retry budget; the caller holds the lane. After a try
        whose answer was lost (Slack may have done it), `landed` is asked before the next:
        what it finds is the answer."""
        args = {k: v for k, v in kwargs.items() if v is not None}
        name = _api_name(method)
        lost = False
        for attempt in range(1, self._max_attempts + 1):
            if lost and landed is not None and (found := await landed()) is not None:
                return found
            if self.fence is not None and not await self.fence():
                self.stats["fenced"] += 1
                raise TransientError("this replica no longer leads: the new leader sends it")
            self.stats["calls"] += 1
            try:
                response = await method(**args)
            except SlackApiError as err:
                status = err.response.status_code
                error = str(err.response.get("error", ""))
                if status == 429 or error == "ratelimited":
                    self.stats["ratelimited"] += 1
                    self._metrics.slack_call(name, "ratelimited")
                    delay = _retry_after(err.response.headers)
                    lane.push_back(delay)
                elif status >= 500 or error in TRANSIENT_ERRORS:
                    self._metrics.slack_call(name, "server_error")
                    delay = _backoff(attempt)
                    lost = True
                else:
                    self._metrics.slack_call(name, "error")
                    raise  # permanent (not_in_channel, invalid_blocks…): the relay logs it
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                self._metrics.slack_call(name, "network")
                log.info("slack call failed (%s), attempt %d", type(err).__name__, attempt)
                delay = _backoff(attempt)
                # Refused at connect: Slack never saw it. Any later failure: it may have.
                lost = lost or not isinstance(err, aiohttp.ClientConnectorError)
            else:
                self._metrics.slack_call(name, "ok")
                return response
            if attempt == self._max_attempts:
                break
            self.stats["retries"] += 1
            self._metrics.slack_retries.labels(name).inc()
            await self._sleep(delay)
        raise TransientError("Slack is not taking messages right now", retry_after=delay)


def _tag(key: str) -> str:
    """A short, stable name of a message's first key, carried in its Slack metadata."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _retrieve(outcome: asyncio.Future[None]) -> None:
    """Mark a failed edit's outcome as seen even when no merged caller waited for it."""
    if not outcome.cancelled():
        outcome.exception()


def _api_name(method: Callable[..., Any]) -> str:
    """`chat_postMessage` -> `chat.postMessage` (the method's name in Slack's docs)."""
    return getattr(method, "__name__", "unknown").replace("_", ".", 1)


def _retry_after(headers: Any) -> float:
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
        return max(1.0, float(value))
    except (TypeError, ValueError, AttributeError):
        return 1.0


def _backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2.0 ** (attempt - 1)) * (0.5 + random.random() / 2)
