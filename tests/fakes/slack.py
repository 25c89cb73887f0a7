"""Fake Slack (Web API, uploads, response_url, Socket Mode) that the real slack_sdk talks to."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode

from aiohttp import WSMsgType, web
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

TEAM_ID = "T0001"
TEAM_NAME = "Fake Team"
TEAM_DOMAIN = "fake"
TEAM_URL = "https://fake.slack.com/"
BOT_USER_ID = "U0BOT"
BOT_USER_NAME = "batchai"
BOT_ID = "B0001"
APP_ID = "A0001"
BOT_TOKEN = "xoxb-test"
APP_TOKEN = "xapp-test"
DEFAULT_SCOPES: tuple[str, ...] = (
    "commands",
    "chat:write",
    "chat:write.public",
    "files:write",
    "users:read",
    "usergroups:read",
    "im:write",
    "channels:read",
    "groups:read",
    "channels:history",
    "groups:history",
    "im:history",
    "im:read",
    "mpim:read",
    "mpim:history",
    "metadata.message:read",
)
MAX_TEXT = 40_000
MESSAGE_MAX_BLOCKS = 50
VIEW_MAX_BLOCKS = 100

# Scopes Slack demands per method (channel-type dependent ones are checked in the handlers).
_METHOD_SCOPES: dict[str, str] = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.delete": "chat:write",
    "chat.postEphemeral": "chat:write",
    "conversations.open": "im:write",
    "conversations.join": "channels:join",
    "users.info": "users:read",
    "usergroups.list": "usergroups:read",
    "usergroups.users.list": "usergroups:read",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
}


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request to `/api/{method}` as the fake received it, plus what it answered."""

    method: str
    args: dict[str, Any]
    token: str | None
    raw_body: bytes
    headers: dict[str, str]
    at: float
    http_method: str = "POST"
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)
    connection: str = ""  # the client's address and port: one per TCP connection

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))

    @property
    def error(self) -> str | None:
        err = self.response.get("error")
        return str(err) if err is not None else None

    def json_arg(self, name: str, default: Any = None) -> Any:
        """`args[name]`, decoded if it is a JSON string (form/query encoded `blocks`, `files`)."""
        return decode_json_arg(self.args.get(name, default))


@dataclass
class Channel:
    """A conversation known to the fake workspace."""

    id: str
    name: str = ""
    is_private: bool = False
    is_member: bool = True
    is_im: bool = False
    user: str | None = None  # the other party of an IM
    is_archived: bool = False

    def to_api(self) -> dict[str, Any]:
        if self.is_im:
            return {
                "id": self.id,
                "is_im": True,
                "is_org_shared": False,
                "user": self.user,
                "is_open": True,
                "created": 1_700_000_000,
            }
        return {
            "id": self.id,
            "name": self.name or self.id.lower(),
            "is_channel": not self.is_private,
            "is_group": self.is_private,
            "is_im": False,
            "is_mpim": False,
            "is_private": self.is_private,
            "is_member": self.is_member,
            "is_archived": self.is_archived,
            "is_general": False,
            "created": 1_700_000_000,
            "creator": "U0001",
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
        }


@dataclass
class Message:
    """A message stored in a channel (posted by the bot, a file share, or seeded by a test)."""

    channel: str
    ts: str
    text: str = ""
    blocks: list[dict[str, Any]] | None = None
    attachments: list[dict[str, Any]] | None = None
    thread_ts: str | None = None
    reply_broadcast: bool = False
    unfurl_links: bool | None = None
    unfurl_media: bool | None = None
    user: str = BOT_USER_ID
    bot_id: str | None = BOT_ID
    metadata: dict[str, Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)  # the arguments of the posting call
    versions: list[dict[str, Any]] = field(default_factory=list)  # oldest first; [-1] is current
    deleted: bool = False

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    @property
    def edits(self) -> int:
        return max(0, len(self.versions) - 1)

    def snapshot(self, at: float) -> None:
        self.versions.append(
            {"text": self.text, "blocks": self.blocks, "attachments": self.attachments, "at": at}
        )

    def block_text(self) -> str:
        """All text found anywhere in `blocks` (and `text`), joined by newlines, for assertions."""
        parts = [self.text]
        _collect_text(self.blocks or [], parts)
        _collect_text(self.attachments or [], parts)
        return "\n".join(p for p in parts if p)

    def to_api(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text, "user": self.user}
        if self.bot_id:
            d["bot_id"] = self.bot_id
            d["app_id"] = APP_ID
            d["team"] = TEAM_ID
        if self.blocks is not None:
            d["blocks"] = self.blocks
        if self.attachments:
            d["attachments"] = self.attachments
        if self.thread_ts is not None:
            d["thread_ts"] = self.thread_ts
        if self.reply_broadcast:
            d["subtype"] = "thread_broadcast"
        if self.files:
            d["files"] = self.files
            d["upload"] = False
        if self.metadata:
            d["metadata"] = self.metadata
        if self.edits:
            d["edited"] = {"user": self.user, "ts": self.ts}
        return d


@dataclass
class Ephemeral:
    """A `chat.postEphemeral` message (or an ephemeral response_url answer)."""

    channel: str
    user: str
    ts: str
    text: str = ""
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None
    at: float = 0.0


@dataclass
class StoredView:
    """A modal (views.open/push) or Home tab (views.publish) as the fake holds it."""

    id: str
    view: dict[str, Any]
    kind: str  # "open" | "push" | "publish"
    user_id: str | None = None
    trigger_id: str | None = None
    hash: str = ""
    versions: list[dict[str, Any]] = field(default_factory=list)  # each view sent, oldest first
    root_view_id: str | None = None
    previous_view_id: str | None = None

    @property
    def callback_id(self) -> str:
        return str(self.view.get("callback_id") or "")

    @property
    def private_metadata(self) -> str:
        return str(self.view.get("private_metadata") or "")

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return list(self.view.get("blocks") or [])

    def block_text(self) -> str:
        parts: list[str] = []
        _collect_text([self.view.get("title") or {}], parts)
        _collect_text(self.blocks, parts)
        return "\n".join(p for p in parts if p)

    def to_api(self) -> dict[str, Any]:
        d = dict(self.view)
        d.update(
            {
                "id": self.id,
                "team_id": TEAM_ID,
                "app_id": APP_ID,
                "bot_id": BOT_ID,
                "hash": self.hash,
                "state": {"values": {}},
                "root_view_id": self.root_view_id or self.id,
                "previous_view_id": self.previous_view_id,
                "app_installed_team_id": TEAM_ID,
            }
        )
        d.setdefault("callback_id", "")
        d.setdefault("private_metadata", "")
        d.setdefault("external_id", "")
        return d


@dataclass
class UploadedFile:
    """A file announced by files.getUploadURLExternal, its bytes and where it was shared."""

    id: str
    filename: str
    length: int
    alt_txt: str | None = None
    snippet_type: str | None = None
    data: bytes | None = None
    uploads: int = 0
    title: str | None = None
    completed: bool = False
    channels: list[str] = field(default_factory=list)
    thread_ts: str | None = None
    initial_comment: str | None = None
    shares: list[tuple[str, str | None, str]] = field(default_factory=list)  # (ch, thread, ts)

    def to_api(self, root: str) -> dict[str, Any]:
        ext = self.filename.rsplit(".", 1)[-1].lower() if "." in self.filename else ""
        size = len(self.data) if self.data is not None else self.length
        return {
            "id": self.id,
            "created": 1_700_000_000,
            "timestamp": 1_700_000_000,
            "name": self.filename,
            "title": self.title or self.filename,
            "mimetype": _MIMETYPES.get(ext, "application/octet-stream"),
            "filetype": ext or "binary",
            "pretty_type": ext.upper() or "Binary",
            "user": BOT_USER_ID,
            "user_team": TEAM_ID,
            "size": size,
            "is_public": any(c.startswith("C") for c in self.channels),
            "url_private": f"{root}/files/{self.id}/{self.filename}",
            "url_private_download": f"{root}/files/{self.id}/download/{self.filename}",
            "permalink": f"{TEAM_URL}files/{BOT_USER_ID}/{self.id}/{self.filename}",
            "channels": [c for c in self.channels if c.startswith("C")],
            "groups": [c for c in self.channels if c.startswith("G")],
            "ims": [c for c in self.channels if c.startswith("D")],
            "alt_txt": self.alt_txt,
        }


_MIMETYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "txt": "text/plain",
    "log": "text/plain",
    "json": "application/json",
    "csv": "text/csv",
    "zip": "application/zip",
    "gz": "application/gzip",
}


@dataclass
class ResponsePost:
    """One POST to a minted response_url (recorded even when answered 404)."""

    id: str
    url: str
    body: dict[str, Any] | None
    raw_body: bytes
    status: int
    at: float
    connection: str = ""  # the client's address and port: one per TCP connection

    @property
    def ok(self) -> bool:
        return self.status == 200

    def _get(self, key: str) -> Any:
        return (self.body or {}).get(key)

    @property
    def response_type(self) -> str | None:
        return self._get("response_type")

    @property
    def replace_original(self) -> bool:
        return _flag(self._get("replace_original")) is True

    @property
    def delete_original(self) -> bool:
        return _flag(self._get("delete_original")) is True

    @property
    def text(self) -> str | None:
        return self._get("text")

    @property
    def blocks(self) -> list[dict[str, Any]] | None:
        return self._get("blocks")


def _connection(request: web.Request) -> str:
    """The client end of the request's TCP connection: a client that keeps its connections
    alive sends many requests from one address and port."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""


@dataclass
class _ResponseUrl:
    id: str
    minted_at: float
    channel: str | None = None
    message_ts: str | None = None
    user_id: str | None = None
    thread_ts: str | None = None
    uses: int = 0


@dataclass
class _Fault:
    status: int
    retry_after: int
    delay: float
    error: str | None
    landed: bool = False  # the call takes effect first; only its answer fails


class SlackError(Exception):
    """Raised by the fake's method handlers; becomes `{"ok": false, "error": ...}` (HTTP 200)."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


# --------------------------------------------------------------------------------------------
# Clock and rate limiting
# --------------------------------------------------------------------------------------------


class FakeClock:
    """A manual monotonic clock: `clock()` reads it, `clock.advance(s)` moves it forward."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self.now += seconds
        return self.now


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; `take(now)` → 0.0 or seconds to wait."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> float:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0 - 1e-9:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate


# --------------------------------------------------------------------------------------------
# The fake server
# --------------------------------------------------------------------------------------------


class FakeSlack:
    """Fake Slack Web API + upload + response_url + Socket Mode server on 127.0.0.1 (port 0).

    Use `async with FakeSlack(...) as fake:` (or `await fake.start()` / `await fake.close()`)
    inside the test's event loop and point the real `AsyncWebClient(base_url=fake.base_url)`
    at it.
    """

    def __init__(
        self,
        *,
        bot_tokens: Iterable[str] = (BOT_TOKEN,),
        app_token: str = APP_TOKEN,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        channels: Iterable[Channel | str] | None = None,
        users: Mapping[str, Mapping[str, Any]] | Iterable[str] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rate_limits: bool = True,
        post_per_channel_per_second: float = 1.0,
        post_burst: int = 3,
        updates_per_minute: float = 50.0,
        update_burst: int = 5,
        trigger_ttl: float | None = 3.0,
        response_url_max_uses: int = 5,
        response_url_ttl: float | None = 1800.0,
        enforce_scopes: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.bot_tokens: set[str] = set(bot_tokens)
        self.app_token = app_token
        self.scopes: list[str] = list(scopes)
        self.clock = clock
        self.rate_limits = rate_limits
        self.post_per_channel_per_second = post_per_channel_per_second
        self.post_burst = post_burst
        self.updates_per_minute = updates_per_minute
        self.update_burst = update_burst
        self.trigger_ttl = trigger_ttl
        self.response_url_max_uses = response_url_max_uses
        self.response_url_ttl = response_url_ttl
        self.enforce_scopes = enforce_scopes
        self.host = host

        # what was received
        self.calls: list[Call] = []
        self.raw_log: list[bytes] = []
        self.responses: list[ResponsePost] = []
        self.acks: list[bytes] = []  # HTTP-mode ack bodies, handed over by the test (record_ack)
        self.ratelimited: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()

        # workspace state
        self.channels_configured = channels is not None
        self.channels: dict[str, Channel] = {}
        for ch in channels or ():
            c = ch if isinstance(ch, Channel) else _channel_from_id(ch)
            self.channels[c.id] = c
        self.users_configured = users is not None
        self.users: dict[str, dict[str, Any]] = {}
        if isinstance(users, Mapping):
            for uid, extra in users.items():
                self.add_user(uid, **dict(extra))
        elif users is not None:
            for uid in users:
                self.add_user(uid)
        self.usergroups: dict[str, dict[str, Any]] = {}
        self.channel_members: dict[str, list[str]] = {}  # conversations.members, per channel
        for gid, members in (usergroups or {}).items():
            self.add_usergroup(gid, members)
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemerals: list[Ephemeral] = []
        self.views: dict[str, StoredView] = {}
        self.home_views: dict[str, StoredView] = {}
        self.files: dict[str, UploadedFile] = {}
        self.triggers: dict[str, float] = {}  # issued, unused trigger_id -> issued at
        self.used_triggers: set[str] = set()

        # socket mode
        self.socket_connections = 0
        self.socket_sent: list[dict[str, Any]] = []
        self.socket_received: list[dict[str, Any]] = []
        self.socket_acks: list[dict[str, Any]] = []
        self._sockets: list[web.WebSocketResponse] = []
        self._pending_acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._socket_event: asyncio.Event | None = None
        self._activity: asyncio.Event | None = None

        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
        self._post_buckets: dict[str, TokenBucket] = {}
        self._update_bucket: TokenBucket | None = None
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._ts_counter = itertools.count(1)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._port: int | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.info": self._conversations_info,
            "conversations.members": self._conversations_members,
            "conversations.replies": self._conversations_replies,
            "conversations.history": self._conversations_history,
            "conversations.open": self._conversations_open,
            "conversations.join": self._conversations_join,
            "users.info": self._users_info,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "apps.connections.open": self._apps_connections_open,
        }

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeSlack:
        if self._runner is not None:
            return self
        self._closing = asyncio.Event()
        self._socket_event = asyncio.Event()
        self._activity = asyncio.Event()
        app = web.Application(middlewares=[self._log_middleware], client_max_size=64 * 1024**2)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/response/{rid}", self._response)
        app.router.add_get("/link", self._link)
        app.router.add_get("/link/", self._link)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is None:
            return
        assert self._closing is not None
        self._closing.set()
        for fut in self._pending_acks.values():
            if not fut.done():
                fut.cancel()
        self._pending_acks.clear()
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"fake slack shutting down")
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> FakeSlack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeSlack is not started")
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/api/"

    @property
    def socket_url(self) -> str:
        return f"ws://{self.host}:{self.port}/link"

    def client(self, token: str | None = None, **kwargs: Any) -> AsyncWebClient:
        """A real AsyncWebClient pointed at this fake (default token: the first bot token)."""
        tok = token if token is not None else sorted(self.bot_tokens)[0]
        return AsyncWebClient(token=tok, base_url=self.base_url, **kwargs)

    # ---- workspace setup ---------------------------------------------------------------------

    def add_channel(
        self,
        channel_id: str,
        name: str | None = None,
        *,
        is_private: bool | None = None,
        is_member: bool = True,
    ) -> Channel:
        ch = _channel_from_id(channel_id)
        ch.name = name or ch.name
        if is_private is not None:
            ch.is_private = is_private
        ch.is_member = is_member
        self.channels[ch.id] = ch
        return ch

    def add_user(
        self,
        user_id: str,
        *,
        name: str | None = None,
        real_name: str | None = None,
        is_admin: bool = False,
        is_bot: bool = False,
        deleted: bool = False,
        tz: str = "UTC",
        **extra: Any,
    ) -> dict[str, Any]:
        uname = name or user_id.lower()
        rname = real_name or uname.title()
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": uname,
            "real_name": rname,
            "deleted": deleted,
            "is_admin": is_admin,
            "is_owner": False,
            "is_bot": is_bot,
            "is_app_user": False,
            "tz": tz,
            "tz_offset": 0,
            "profile": {"real_name": rname, "display_name": uname, "team": TEAM_ID},
        }
        user.update(extra)
        self.users[user_id] = user
        return user

    def add_usergroup(
        self, group_id: str, user_ids: Iterable[str], *, handle: str | None = None
    ) -> dict[str, Any]:
        group = {
            "id": group_id,
            "team_id": TEAM_ID,
            "handle": handle or group_id.lower(),
            "name": handle or group_id,
            "is_usergroup": True,
            "date_delete": 0,
            "users": list(user_ids),
        }
        self.usergroups[group_id] = group
        return group

    def set_members(self, channel_id: str, user_ids: Iterable[str]) -> Channel:
        """Who is in a channel, as conversations.members answers (the bot is added)."""
        ch = self.channels.get(channel_id) or self.add_channel(channel_id)
        self.channel_members[ch.id] = [*dict.fromkeys([*user_ids, BOT_USER_ID])]
        return ch

    def dm_channel(self, user_id: str) -> str:
        """The IM channel id (D…) of the bot with `user_id`; created on first use."""
        cid = "D" + user_id[1:] if user_id[:1] in "UW" else "D" + user_id
        if cid not in self.channels:
            self.channels[cid] = Channel(id=cid, is_im=True, user=user_id, is_private=True)
        return cid

    def add_user_message(
        self,
        channel: str,
        text: str,
        *,
        user: str = "U0001",
        thread_ts: str | None = None,
        blocks: list[dict[str, Any]] | None = None,
    ) -> Message:
        """Seed a message written by a human (the bot cannot chat.update it)."""
        ts = self._next_ts()
        msg = Message(
            channel=channel,
            ts=ts,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            user=user,
            bot_id=None,
        )
        msg.snapshot(self.clock())
        self.messages[(channel, ts)] = msg
        return msg

    def issue_trigger(self) -> str:
        """Mint a trigger_id as Slack puts in an interaction payload (single use, `trigger_ttl`)."""
        n = next(self._ids)
        trigger = f"{1_000_000 + n}.{n:09d}.{uuid.uuid4().hex[:24]}"
        self.triggers[trigger] = self.clock()
        return trigger

    def response_url(
        self,
        *,
        channel: str | None = None,
        message_ts: str | None = None,
        user_id: str | None = None,
        thread_ts: str | None = None,
    ) -> str:
        """Mint `<root>/response/<id>`; when bound to a stored message, `replace_original` edits it,
        `delete_original` deletes it, `in_channel` posts to `channel` and ephemeral answers are
        stored for `user_id`."""
        rid = uuid.uuid4().hex
        self._response_urls[rid] = _ResponseUrl(
            id=rid,
            minted_at=self.clock(),
            channel=channel,
            message_ts=message_ts,
            user_id=user_id,
            thread_ts=thread_ts,
        )
        return f"{self.root_url}/response/{rid}"

    def fail_next(
        self,
        method: str,
        status: int = 500,
        *,
        count: int = 1,
        retry_after: int = 1,
        delay: float = 0.0,
        error: str | None = None,
        landed: bool = False,
    ) -> None:
        """Make the next `count` calls of `method` fail.

        `method` is a Web API method, or "upload" (file bytes) or "response_url". Status 429 →
        `Retry-After: retry_after` + `ratelimited`; other statuses → that status with
        `{"ok": false, "error": error or "fatal_error"}`; status 200 with `error` → a Slack API
        error; status 200 without `error` → only the `delay`, then the normal answer. `delay`
        (real seconds, cut short by close()) is waited before answering, to provoke timeouts.
        With `landed` the call first does what it asks (the message is posted) and only its
        answer is the fault's: Slack took the post, the caller never learnt it did.
        """
        for _ in range(count):
            self._faults[method].append(_Fault(status, retry_after, delay, error, landed))

    # ---- inspection ---------------------------------------------------------------------------

    def calls_to(self, method: str, *, ok: bool | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and (ok is None or c.ok == ok)]

    def last_call(self, method: str) -> Call:
        calls = self.calls_to(method)
        if not calls:
            raise AssertionError(f"no call to {method}; got {[c.method for c in self.calls]}")
        return calls[-1]

    def clear(self) -> None:
        """Forget recorded calls, raw bytes, responses and counters (state is kept)."""
        self.calls.clear()
        self.raw_log.clear()
        self.responses.clear()
        self.acks.clear()
        self.ratelimited.clear()
        self.faults_served.clear()

    def record_ack(self, body: bytes) -> None:
        """An HTTP-mode ack's body, as Slack receives it: in HTTP mode the test posts Slack's
        requests to the bot and hands the answers over here, so that what the bot sent Slack in
        its acks (a quick command's answer) is in `received_text` too, as the Socket Mode acks
        (WebSocket frames) are."""
        self.acks.append(body)
        self.raw_log.append(body)

    def received_text(self) -> str:
        """Every byte received (request lines, headers, bodies, WebSocket frames) as text, each
        entry followed by its URL-decoded form, for secret scans."""
        out: list[str] = []
        for raw in self.raw_log:
            text = raw.decode("utf-8", "replace")
            out.append(text)
            out.append(unquote_plus(text))
        return "\n".join(out)

    def message(self, channel: str, ts: str) -> Message:
        return self.messages[(channel, ts)]

    def messages_in(self, channel: str, *, include_replies: bool = True) -> list[Message]:
        return [
            m
            for (c, _), m in sorted(self.messages.items())
            if c == channel and not m.deleted and (include_replies or not m.is_reply)
        ]

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The parent (if stored) followed by its replies, oldest first."""
        return [
            m
            for (c, ts), m in sorted(self.messages.items())
            if c == channel and not m.deleted and (ts == thread_ts or m.thread_ts == thread_ts)
        ]

    def replies(self, channel: str, thread_ts: str) -> list[Message]:
        return [m for m in self.thread(channel, thread_ts) if m.ts != thread_ts]

    def ephemerals_for(self, user_id: str, channel: str | None = None) -> list[Ephemeral]:
        return [
            e
            for e in self.ephemerals
            if e.user == user_id and (channel is None or e.channel == channel)
        ]

    def home_view(self, user_id: str) -> StoredView | None:
        return self.home_views.get(user_id)

    def responses_to(self, url: str) -> list[ResponsePost]:
        return [r for r in self.responses if r.url == url]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (event driven, no polling) until `predicate()` holds; re-checked after every
        API call, upload, response_url POST and Socket Mode message. Raises TimeoutError."""
        assert self._activity is not None, "FakeSlack is not started"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            self._activity.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("condition not met before the timeout")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._activity.wait(), remaining)

    async def wait_for_call(self, method: str, *, count: int = 1, timeout: float = 5.0) -> Call:
        """Wait until `method` was called `count` times; return the `count`-th call."""
        await self.wait_for(lambda: len(self.calls_to(method)) >= count, timeout)
        return self.calls_to(method)[count - 1]

    def _touch(self) -> None:
        if self._activity is not None:
            self._activity.set()

    # ---- socket mode ---------------------------------------------------------------------------

    async def socket_connected(self, timeout: float = 5.0, *, connections: int = 1) -> None:
        """Wait until a Socket Mode client is connected (and `connections` were accepted)."""
        assert self._socket_event is not None, "FakeSlack is not started"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self._sockets and self.socket_connections >= connections):
            self._socket_event.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no Socket Mode client connected to the fake")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._socket_event.wait(), remaining)

    async def socket_send_raw(self, message: dict[str, Any]) -> None:
        """Send any JSON message to the newest connected Socket Mode client."""
        if not self._sockets:
            raise RuntimeError("no Socket Mode client connected to the fake")
        ws = self._sockets[-1]
        self.socket_sent.append(message)
        await ws.send_str(json.dumps(message))

    async def socket_send(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = True,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        envelope_id: str | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Send an envelope (`slash_commands` | `interactive` | `events_api`) and return the
        payload of the client's ack (`{}` when the ack had none). Raises TimeoutError."""
        eid = envelope_id or str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "envelope_id": eid,
            "type": type_,
            "accepts_response_payload": accepts_response_payload,
            "payload": payload,
        }
        if retry_attempt is not None:
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason or ""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending_acks[eid] = fut
        try:
            await self.socket_send_raw(envelope)
            ack = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending_acks.pop(eid, None)
        payload_back = ack.get("payload")
        return dict(payload_back) if isinstance(payload_back, dict) else {}

    async def socket_disconnect(self, reason: str = "refresh_requested") -> None:
        """Send Slack's `{"type": "disconnect"}` message (the SDK then reconnects)."""
        await self.socket_send_raw(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}
        )

    # ---- HTTP plumbing -----------------------------------------------------------------------

    @web.middleware
    async def _log_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        line = f"{request.method} {request.raw_path} HTTP/{request.version.major}."
        line += f"{request.version.minor}\r\n"
        head = line.encode("utf-8", "replace")
        head += b"".join(k + b": " + v + b"\r\n" for k, v in request.raw_headers)
        self.raw_log.append(head + b"\r\n" + body)
        return await handler(request)

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.read()
        args = _parse_args(request, raw)
        auth = request.headers.get("Authorization", "")
        token: str | None = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token is None and isinstance(args.get("token"), str):
            token = args["token"]
        call = Call(
            method=method,
            args=args,
            token=token,
            raw_body=raw,
            headers=dict(request.headers),
            at=self.clock(),
            http_method=request.method,
            connection=_connection(request),
        )
        self.calls.append(call)
        status, body, headers = await self._dispatch(method, args, token)
        call.status, call.response = status, body
        self._touch()
        return web.json_response(body, status=status, headers=headers)

    async def _dispatch(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers: dict[str, str] = {}
        if method == "apps.connections.open":
            if token is None:
                return 200, {"ok": False, "error": "not_authed"}, headers
            if token in self.bot_tokens:
                return 200, {"ok": False, "error": "not_allowed_token_type"}, headers
            if token != self.app_token:
                return 200, {"ok": False, "error": "invalid_auth"}, headers
        else:
            if token is None:
                return 200, {"ok": False, "error": "not_authed"}, headers
            if token == self.app_token:
                return 200, {"ok": False, "error": "not_allowed_token_type"}, headers
            if token not in self.bot_tokens:
                return 200, {"ok": False, "error": "invalid_auth"}, headers
            headers["x-oauth-scopes"] = ",".join(self.scopes)

        queue = self._faults.get(method)
        if queue and queue[0].landed:
            answer = await self._answer(method, args, headers)
            failed = await self._fault(method)
            return answer if failed is None else (failed[0], failed[1], {**headers, **failed[2]})
        failed = await self._fault(method)
        if failed is not None:
            status, body, extra = failed
            return status, body, {**headers, **extra}
        return await self._answer(method, args, headers)

    async def _answer(
        self, method: str, args: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """A call past the faults: the rate limits, the scopes, the method's own answer."""
        if self.rate_limits:
            wait = self._rate_limit_wait(method, args)
            if wait > 0:
                self.ratelimited[method] += 1
                retry_after = str(max(1, math.ceil(wait - 1e-9)))
                return (
                    429,
                    {"ok": False, "error": "ratelimited"},
                    {**headers, "Retry-After": retry_after},
                )

        needed = _METHOD_SCOPES.get(method)
        try:
            if needed:
                self._require_scope(needed)
                headers["x-accepted-oauth-scopes"] = needed
            handler = self._handlers.get(method)
            body = handler(args) if handler is not None else {"ok": True}
        except SlackError as exc:
            body = {"ok": False, "error": exc.error, **exc.extra}
        return 200, body, headers

    async def _fault(self, key: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        queue = self._faults.get(key)
        if not queue:
            return None
        fault = queue.popleft()
        self.faults_served[key] += 1
        if fault.delay > 0:
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.delay)
        if fault.status == 429:
            self.ratelimited[key] += 1
            return (
                429,
                {"ok": False, "error": "ratelimited"},
                {"Retry-After": str(fault.retry_after)},
            )
        if fault.status == 200 and fault.error is None:
            return None
        return fault.status, {"ok": False, "error": fault.error or "fatal_error"}, {}

    def _rate_limit_wait(self, method: str, args: dict[str, Any]) -> float:
        now = self.clock()
        if method == "chat.postMessage":
            key = str(args.get("channel") or "")
            bucket = self._post_buckets.get(key)
            if bucket is None:
                bucket = TokenBucket(self.post_per_channel_per_second, self.post_burst, now)
                self._post_buckets[key] = bucket
            return bucket.take(now)
        if method == "chat.update":
            if self._update_bucket is None:
                self._update_bucket = TokenBucket(
                    self.updates_per_minute / 60.0, self.update_burst, now
                )
            return self._update_bucket.take(now)
        return 0.0

    def _require_scope(self, *any_of: str) -> None:
        if not self.enforce_scopes or any(s in self.scopes for s in any_of):
            return
        raise SlackError("missing_scope", needed=",".join(any_of), provided=",".join(self.scopes))

    # ---- ids ---------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        micros = 1_700_000_000_000_000 + next(self._ts_counter) * 100
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):010d}"

    # ---- channel resolution ------------------------------------------------------------------

    def _lookup_channel(self, channel_id: Any) -> Channel:
        """A conversation by id. A user id is none: only chat.postMessage (and postEphemeral)
        take one, and answer with the DM's id; chat.update, conversations.* refuse it."""
        cid = str(channel_id or "")
        if not cid or cid[:1] in ("U", "W"):
            raise SlackError("channel_not_found")
        ch = self.channels.get(cid)
        if ch is not None:
            return ch
        if self.channels_configured or not cid[:1].isalpha():
            raise SlackError("channel_not_found")
        ch = _channel_from_id(cid)
        self.channels[cid] = ch
        return ch

    def _post_target(self, channel_id: Any, *, public_ok: bool) -> Channel:
        """Where chat.postMessage/postEphemeral/file shares go; enforces bot membership."""
        cid = str(channel_id or "")
        if cid[:1] in ("U", "W"):
            if self.users_configured and cid not in self.users:
                raise SlackError("channel_not_found")
            return self.channels[self.dm_channel(cid)]
        ch = self._lookup_channel(cid)
        if ch.is_archived:
            raise SlackError("is_archived")
        may_post_unjoined = not ch.is_private and public_ok and "chat:write.public" in self.scopes
        if not ch.is_member and not ch.is_im and not may_post_unjoined:
            raise SlackError("not_in_channel")
        return ch

    def _user(self, user_id: Any) -> dict[str, Any]:
        uid = str(user_id or "")
        if uid in self.users:
            return self.users[uid]
        if uid == BOT_USER_ID:
            return {**self.add_user(BOT_USER_ID, name=BOT_USER_NAME, is_bot=True), "bot_id": BOT_ID}
        if self.users_configured or uid[:1] not in ("U", "W"):
            raise SlackError("user_not_found")
        return self.add_user(uid)

    # ---- method handlers ---------------------------------------------------------------------

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": TEAM_URL,
            "team": TEAM_NAME,
            "user": BOT_USER_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _message_content(
        self, args: dict[str, Any], *, method: str, required: bool = True
    ) -> tuple[str | None, Any, Any, list[str]]:
        text = args.get("text")
        text = None if text is None else str(text)
        blocks = decode_json_arg(args.get("blocks"))
        attachments = decode_json_arg(args.get("attachments"))
        if required and not text and not blocks and not attachments:
            raise SlackError("no_text")
        if blocks is not None:
            problem = check_blocks(blocks, MESSAGE_MAX_BLOCKS, method=method)
            if problem:
                raise SlackError("invalid_blocks", response_metadata={"messages": [problem]})
        if attachments is not None and not isinstance(attachments, list):
            raise SlackError("invalid_attachments")
        warnings: list[str] = []
        if text is not None and len(text) > MAX_TEXT:
            text = text[:MAX_TEXT]
            warnings.append("message_truncated")
        return text, blocks, attachments, warnings

    def _thread_root(self, channel: str, thread_ts: Any) -> str | None:
        if thread_ts in (None, ""):
            return None
        ts = str(thread_ts)
        parent = self.messages.get((channel, ts))
        if parent is not None and parent.is_reply:
            return parent.thread_ts
        return ts

    def _with_thread_info(self, msg: Message) -> dict[str, Any]:
        d = msg.to_api()
        if not msg.is_reply:
            replies = self.replies(msg.channel, msg.ts)
            if replies:
                d["thread_ts"] = msg.ts
                d["reply_count"] = len(replies)
                d["reply_users"] = sorted({r.user for r in replies})
                d["reply_users_count"] = len(d["reply_users"])
                d["latest_reply"] = replies[-1].ts
        return d

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._post_target(args.get("channel"), public_ok=True)
        text, blocks, attachments, warnings = self._message_content(args, method="chat.postMessage")
        metadata = decode_json_arg(args.get("metadata"))
        msg = Message(
            channel=ch.id,
            ts=self._next_ts(),
            text=text or "",
            blocks=blocks,
            attachments=attachments,
            thread_ts=self._thread_root(ch.id, args.get("thread_ts")),
            reply_broadcast=_flag(args.get("reply_broadcast")) is True,
            unfurl_links=_flag(args.get("unfurl_links")),
            unfurl_media=_flag(args.get("unfurl_media")),
            metadata=metadata if isinstance(metadata, dict) else None,
            args=dict(args),
        )
        msg.snapshot(self.clock())
        self.messages[(ch.id, msg.ts)] = msg
        out: dict[str, Any] = {"ok": True, "channel": ch.id, "ts": msg.ts, "message": msg.to_api()}
        if warnings:
            out["warning"] = ",".join(warnings)
            out["response_metadata"] = {"warnings": warnings}
        return out

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._lookup_channel(args.get("channel"))
        ts = str(args.get("ts") or "")
        msg = self.messages.get((ch.id, ts))
        if msg is None or msg.deleted:
            raise SlackError("message_not_found")
        if msg.bot_id != BOT_ID:
            raise SlackError("cant_update_message")
        text, blocks, attachments, warnings = self._message_content(args, method="chat.update")
        if text is not None:
            msg.text = text
        if blocks is not None:
            msg.blocks = blocks
        if attachments is not None:
            msg.attachments = attachments
        msg.snapshot(self.clock())
        out: dict[str, Any] = {
            "ok": True,
            "channel": ch.id,
            "ts": ts,
            "text": msg.text,
            "message": msg.to_api(),
        }
        if warnings:
            out["warning"] = ",".join(warnings)
            out["response_metadata"] = {"warnings": warnings}
        return out

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._lookup_channel(args.get("channel"))
        ts = str(args.get("ts") or "")
        msg = self.messages.get((ch.id, ts))
        if msg is None or msg.deleted:
            raise SlackError("message_not_found")
        if msg.bot_id != BOT_ID:
            raise SlackError("cant_delete_message")
        msg.deleted = True
        return {"ok": True, "channel": ch.id, "ts": ts}

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._post_target(args.get("channel"), public_ok=True)
        user = self._user(args.get("user"))
        text, blocks, _attachments, _warnings = self._message_content(
            args, method="chat.postEphemeral"
        )
        ts = self._next_ts()
        self.ephemerals.append(
            Ephemeral(
                channel=ch.id,
                user=user["id"],
                ts=ts,
                text=text or "",
                blocks=blocks,
                thread_ts=self._thread_root(ch.id, args.get("thread_ts")),
                at=self.clock(),
            )
        )
        return {"ok": True, "message_ts": ts}

    def _chat_get_permalink(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._lookup_channel(args.get("channel"))
        ts = str(args.get("message_ts") or "")
        msg = self.messages.get((ch.id, ts))
        if msg is None or msg.deleted:
            raise SlackError("message_not_found")
        link = f"{TEAM_URL}archives/{ch.id}/p{ts.replace('.', '')}"
        if msg.is_reply:
            link += f"?thread_ts={msg.thread_ts}&cid={ch.id}"
        return {"ok": True, "channel": ch.id, "permalink": link}

    def _read_scope_for(self, ch: Channel, kind: str) -> None:
        prefix = "im" if ch.is_im else "groups" if ch.is_private else "channels"
        self._require_scope(f"{prefix}:{kind}")

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._lookup_channel(args.get("channel"))
        self._read_scope_for(ch, "read")
        if ch.is_private and not ch.is_member and not ch.is_im:
            raise SlackError("channel_not_found")
        return {"ok": True, "channel": ch.to_api()}

    def _conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        """Like Slack: `members` (user ids) a page at a time (limit: default 100, at most 1000)
        and `response_metadata.next_cursor`, empty on the last page; the scope is the channel
        kind's `:read`; a private channel the bot is not in is `channel_not_found`."""
        ch = self._lookup_channel(args.get("channel"))
        self._read_scope_for(ch, "read")
        if ch.is_private and not ch.is_member and not ch.is_im:
            raise SlackError("channel_not_found")
        if ch.is_im:
            members = [ch.user or "", BOT_USER_ID]
        else:
            members = self.channel_members.get(ch.id, [BOT_USER_ID])
        limit = min(_int(args.get("limit"), 100) or 100, 1000)
        cursor = str(args.get("cursor") or "")
        if cursor and not cursor.startswith("off:"):
            raise SlackError("invalid_cursor")
        start = int(cursor[4:]) if cursor else 0
        more = start + limit < len(members)
        return {
            "ok": True,
            "members": members[start : start + limit],
            "response_metadata": {"next_cursor": f"off:{start + limit}" if more else ""},
        }

    def _paged(self, items: list[dict[str, Any]], args: dict[str, Any], key: str) -> dict[str, Any]:
        limit = _int(args.get("limit"), 100) or 100
        cursor = str(args.get("cursor") or "")
        start = int(cursor[4:]) if cursor.startswith("off:") else 0
        page = items[start : start + limit]
        more = start + limit < len(items)
        return {
            "ok": True,
            key: page,
            "has_more": more,
            "response_metadata": {"next_cursor": f"off:{start + limit}" if more else ""},
        }

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._lookup_channel(args.get("channel"))
        self._read_scope_for(ch, "history")
        root = self._thread_root(ch.id, args.get("ts"))
        if root is None or (ch.id, root) not in self.messages:
            raise SlackError("thread_not_found")
        items = [self._with_thread_info(m) for m in self.thread(ch.id, root)]
        return self._paged(self._readable_metadata(items), args, "messages")

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._lookup_channel(args.get("channel"))
        self._read_scope_for(ch, "history")
        if not ch.is_member and not ch.is_im:
            raise SlackError("not_in_channel")
        top = [m for m in self.messages_in(ch.id) if not m.is_reply or m.reply_broadcast]
        items = [self._with_thread_info(m) for m in reversed(top)]
        return self._paged(self._readable_metadata(items), args, "messages")

    def _readable_metadata(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Message metadata comes back to a token with metadata.message:read only (the scope
        Slack documents for reading it; the stricter reading of its docs)."""
        if not self.enforce_scopes or "metadata.message:read" in self.scopes:
            return items
        return [{k: v for k, v in item.items() if k != "metadata"} for item in items]

    def _conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        users = [u for u in str(args.get("users") or "").split(",") if u]
        if len(users) != 1:
            raise SlackError("users_list_not_supplied" if not users else "not_implemented")
        self._user(users[0])
        return {"ok": True, "channel": {"id": self.dm_channel(users[0])}}

    def _conversations_join(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = self._lookup_channel(args.get("channel"))
        if ch.is_private or ch.is_im:
            raise SlackError("method_not_supported_for_channel_type")
        ch.is_member = True
        return {"ok": True, "channel": ch.to_api()}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "user": self._user(args.get("user"))}

    def _usergroups_list(self, args: dict[str, Any]) -> dict[str, Any]:
        include_users = _flag(args.get("include_users")) is True
        groups = []
        for g in self.usergroups.values():
            d = dict(g)
            d["user_count"] = len(g["users"])
            if not include_users:
                d.pop("users")
            groups.append(d)
        return {"ok": True, "usergroups": groups}

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = self.usergroups.get(str(args.get("usergroup") or ""))
        if group is None:
            raise SlackError("no_such_subteam")
        return {"ok": True, "users": list(group["users"])}

    def _use_trigger(self, trigger_id: Any) -> str:
        trig = str(trigger_id or "")
        if not trig:
            raise SlackError("invalid_arguments", response_metadata={"messages": ["trigger_id"]})
        issued = self.triggers.get(trig)
        if issued is None:
            raise SlackError("invalid_trigger_id")
        if self.trigger_ttl is not None and self.clock() - issued > self.trigger_ttl:
            raise SlackError("expired_trigger_id")
        return trig

    def _consume_trigger(self, trig: str) -> None:
        self.triggers.pop(trig, None)
        self.used_triggers.add(trig)

    def _new_view(self, args: dict[str, Any], kind: str, *, expect: str) -> StoredView:
        view = decode_json_arg(args.get("view"))
        if not isinstance(view, dict):
            raise SlackError("invalid_arguments", response_metadata={"messages": ["view missing"]})
        problem = check_view(view, expect, method=f"views.{kind}")
        if problem:
            raise SlackError("invalid_arguments", response_metadata={"messages": [problem]})
        vid = self._next_id("V")
        return StoredView(id=vid, view=view, kind=kind, hash=_view_hash(), versions=[view])

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        trig = self._use_trigger(args.get("trigger_id"))
        stored = self._new_view(args, "open", expect="modal")
        stored.trigger_id = trig
        self._consume_trigger(trig)
        self.views[stored.id] = stored
        return {"ok": True, "view": stored.to_api()}

    def _views_push(self, args: dict[str, Any]) -> dict[str, Any]:
        trig = self._use_trigger(args.get("trigger_id"))
        stored = self._new_view(args, "push", expect="modal")
        stored.trigger_id = trig
        self._consume_trigger(trig)
        modals = [v for v in self.views.values() if v.kind != "publish"]
        if modals:
            stored.previous_view_id = modals[-1].id
            stored.root_view_id = modals[-1].root_view_id or modals[-1].id
        self.views[stored.id] = stored
        return {"ok": True, "view": stored.to_api()}

    def _views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        vid, ext = args.get("view_id"), args.get("external_id")
        stored: StoredView | None = None
        if vid:
            stored = self.views.get(str(vid))
        elif ext:
            stored = next(
                (v for v in self.views.values() if v.view.get("external_id") == ext), None
            )
        else:
            raise SlackError("invalid_arguments", response_metadata={"messages": ["view_id"]})
        if stored is None:
            raise SlackError("not_found")
        expected_hash = args.get("hash")
        if expected_hash and expected_hash != stored.hash:
            raise SlackError("hash_conflict")
        view = decode_json_arg(args.get("view"))
        if not isinstance(view, dict):
            raise SlackError("invalid_arguments", response_metadata={"messages": ["view missing"]})
        problem = check_view(view, str(stored.view.get("type") or "modal"), method="views.update")
        if problem:
            raise SlackError("invalid_arguments", response_metadata={"messages": [problem]})
        stored.view = view
        stored.versions.append(view)
        stored.hash = _view_hash()
        return {"ok": True, "view": stored.to_api()}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self._user(args.get("user_id"))
        existing = self.home_views.get(user["id"])
        expected_hash = args.get("hash")
        if expected_hash and (existing is None or expected_hash != existing.hash):
            raise SlackError("hash_conflict")
        if existing is None:
            stored = self._new_view(args, "publish", expect="home")
            stored.user_id = user["id"]
            self.home_views[user["id"]] = stored
            self.views[stored.id] = stored
        else:
            view = decode_json_arg(args.get("view"))
            problem = (
                check_view(view, "home", method="views.publish")
                if isinstance(view, dict)
                else "view must be an object"
            )
            if problem:
                raise SlackError("invalid_arguments", response_metadata={"messages": [problem]})
            assert isinstance(view, dict)
            existing.view = view
            existing.versions.append(view)
            existing.hash = _view_hash()
            stored = existing
        return {"ok": True, "view": stored.to_api()}

    def _files_get_upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        filename = args.get("filename")
        length = _int(args.get("length"), None)
        if not filename or length is None or length < 0:
            raise SlackError("invalid_arguments", response_metadata={"messages": ["length"]})
        fid = self._next_id("F")
        self.files[fid] = UploadedFile(
            id=fid,
            filename=str(filename),
            length=length,
            alt_txt=args.get("alt_txt"),
            snippet_type=args.get("snippet_type"),
        )
        return {"ok": True, "upload_url": f"{self.root_url}/upload/{fid}", "file_id": fid}

    def _files_complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        items = decode_json_arg(args.get("files"))
        if not isinstance(items, list) or not items:
            raise SlackError("invalid_arguments", response_metadata={"messages": ["files"]})
        files: list[UploadedFile] = []
        for item in items:
            f = self.files.get(str((item or {}).get("id") or ""))
            if f is None or f.data is None:
                raise SlackError("file_not_found")
            files.append(f)
        targets: list[str] = []
        if args.get("channel_id"):
            targets.append(str(args["channel_id"]))
        targets += [c for c in str(args.get("channels") or "").split(",") if c]
        channels: list[Channel] = []
        for cid in targets:
            if cid[:1] not in ("C", "G", "D", "Z"):
                raise SlackError(
                    "invalid_arguments",
                    response_metadata={"messages": ["input must match regex ^[CGDZ][A-Z0-9]{8,}$"]},
                )
            ch = self._lookup_channel(cid)
            if not ch.is_member and not ch.is_im:  # files need real membership
                raise SlackError("not_in_channel")
            channels.append(ch)
        thread_ts = args.get("thread_ts") or None
        if thread_ts and not channels:
            raise SlackError("invalid_arguments", response_metadata={"messages": ["channel_id"]})
        comment = args.get("initial_comment")
        for f, item in zip(files, items, strict=True):
            f.title = (item or {}).get("title") or f.title or f.filename
            f.completed = True
            f.initial_comment = comment
            f.thread_ts = str(thread_ts) if thread_ts else None
        for ch in channels:
            root = self._thread_root(ch.id, thread_ts)
            msg = Message(
                channel=ch.id,
                ts=self._next_ts(),
                text=str(comment or ""),
                thread_ts=root,
                files=[f.to_api(self.root_url) for f in files],
                args=dict(args),
            )
            msg.snapshot(self.clock())
            self.messages[(ch.id, msg.ts)] = msg
            for f in files:
                f.channels.append(ch.id)
                f.shares.append((ch.id, root, msg.ts))
        return {"ok": True, "files": [f.to_api(self.root_url) for f in files]}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.socket_url}

    # ---- other routes ------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        """Step 2 of files_upload_v2; recorded in `calls` as method "upload"."""
        data = await request.read()
        fid = request.match_info["file_id"]
        call = Call(
            method="upload",
            args={"file_id": fid},
            token=None,
            raw_body=data,
            headers=dict(request.headers),
            at=self.clock(),
            http_method=request.method,
        )
        self.calls.append(call)
        failed = await self._fault("upload")
        f = self.files.get(fid)
        if failed is not None:
            call.status, call.response, headers = failed
            text = json.dumps(call.response)
        elif f is None:
            call.status, call.response, headers = 404, {"ok": False, "error": "file_not_found"}, {}
            text = "file_not_found"
        else:
            f.data = data
            f.uploads += 1
            text = f"OK - {len(data)}"
            call.response, headers = {"ok": True, "text": text}, {}
        self._touch()
        return web.Response(
            status=call.status, text=text, content_type="text/plain", headers=headers
        )

    async def _response(self, request: web.Request) -> web.Response:
        raw = await request.read()
        rid = request.match_info["rid"]
        url = f"{self.root_url}/response/{rid}"
        body: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw) if raw else None
            body = parsed if isinstance(parsed, dict) else None
        record = ResponsePost(
            id=rid,
            url=url,
            body=body,
            raw_body=raw,
            status=200,
            at=self.clock(),
            connection=_connection(request),
        )
        self.responses.append(record)
        failed = await self._fault("response_url")
        if failed is not None:
            record.status, fbody, headers = failed
            return web.Response(status=record.status, text=json.dumps(fbody), headers=headers)
        state = self._response_urls.get(rid)
        answer = "ok"
        if state is None:
            record.status, answer = 404, "no_service"
        else:
            state.uses += 1
            ttl = self.response_url_ttl
            if state.uses > self.response_url_max_uses:
                record.status, answer = 404, "used_url"
            elif ttl is not None and self.clock() - state.minted_at > ttl:
                record.status, answer = 404, "expired_url"
            elif body is None:
                record.status, answer = 400, "invalid_payload"
            elif self._response_blocks_problem(body):
                record.status, answer = 400, "invalid_blocks"
            else:
                self._apply_response(state, body)
        self._touch()
        return web.Response(status=record.status, text=answer, content_type="text/plain")

    def _response_blocks_problem(self, body: dict[str, Any]) -> str | None:
        blocks = decode_json_arg(body.get("blocks"))
        if blocks is None:
            return None
        return check_blocks(blocks, MESSAGE_MAX_BLOCKS, method="response_url")

    def _apply_response(self, state: _ResponseUrl, body: dict[str, Any]) -> None:
        now = self.clock()
        original = (
            self.messages.get((state.channel, state.message_ts))
            if state.channel and state.message_ts
            else None
        )
        if _flag(body.get("delete_original")) is True:
            if original is not None:
                original.deleted = True
            return
        blocks = decode_json_arg(body.get("blocks"))
        text = body.get("text")
        if _flag(body.get("replace_original")) is True:
            if original is not None:
                if text is not None:
                    original.text = str(text)
                original.blocks = blocks if blocks is not None else original.blocks
                original.snapshot(now)
            return
        if state.channel is None:
            return
        thread = self._thread_root(state.channel, body.get("thread_ts") or state.thread_ts)
        if body.get("response_type") == "in_channel":
            msg = Message(
                channel=state.channel,
                ts=self._next_ts(),
                text=str(text or ""),
                blocks=blocks,
                thread_ts=thread,
                args=dict(body),
            )
            msg.snapshot(now)
            self.messages[(state.channel, msg.ts)] = msg
        elif state.user_id is not None:
            self.ephemerals.append(
                Ephemeral(
                    channel=state.channel,
                    user=state.user_id,
                    ts=self._next_ts(),
                    text=str(text or ""),
                    blocks=blocks,
                    thread_ts=thread,
                    at=now,
                )
            )

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.socket_connections += 1
        hello = {
            "type": "hello",
            "num_connections": len(self._sockets),
            "debug_info": {
                "host": "fake-slack",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": APP_ID},
        }
        try:
            self.socket_sent.append(hello)
            await ws.send_str(json.dumps(hello))
            assert self._socket_event is not None
            self._socket_event.set()
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.raw_log.append(str(msg.data).encode("utf-8"))
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        continue
                    if not isinstance(data, dict):
                        continue
                    self.socket_received.append(data)
                    self._touch()
                    fut = self._pending_acks.get(str(data.get("envelope_id")))
                    if fut is not None:
                        self.socket_acks.append(data)
                        if not fut.done():
                            fut.set_result(data)
                elif msg.type == WSMsgType.BINARY:
                    self.raw_log.append(bytes(msg.data))
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
        return ws


@contextlib.asynccontextmanager
async def fake_slack_server(**kwargs: Any) -> AsyncIterator[FakeSlack]:
    """`async with fake_slack_server(rate_limits=False) as fake:` — a started FakeSlack."""
    fake = FakeSlack(**kwargs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@contextlib.asynccontextmanager
async def socket_mode_client(
    fake: FakeSlack,
    *,
    app_token: str | None = None,
    ping_interval: float = 5.0,
    timeout: float = 5.0,
) -> AsyncIterator[SocketModeClient]:
    """A real `slack_sdk.socket_mode.aiohttp.SocketModeClient` connected to `fake` (via
    apps.connections.open); add `socket_mode_request_listeners` before sending envelopes."""
    client = SocketModeClient(
        app_token=app_token or fake.app_token,
        web_client=AsyncWebClient(base_url=fake.base_url),
        ping_interval=ping_interval,
        auto_reconnect_enabled=False,
    )
    before = fake.socket_connections
    try:
        await client.connect()
        await fake.socket_connected(timeout, connections=before + 1)
        yield client
    finally:
        await client.close()


# --------------------------------------------------------------------------------------------
# Pure helpers: argument decoding, validation
# --------------------------------------------------------------------------------------------


def decode_json_arg(value: Any) -> Any:
    """Decode a form/query value that carries JSON (`blocks`, `files`, `view`); else return it."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _parse_args(request: web.Request, raw: bytes) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for key in request.query:
        args.setdefault(key, request.query[key])
    ctype = request.content_type
    if raw and ctype == "application/x-www-form-urlencoded":
        args.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    elif raw and ctype == "application/json":
        with contextlib.suppress(ValueError):
            body = json.loads(raw)
            if isinstance(body, dict):
                args.update(body)
    return args


def _flag(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes")


def _int(value: Any, default: int | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _channel_from_id(channel_id: str) -> Channel:
    return Channel(
        id=channel_id,
        name=channel_id.lower(),
        is_private=channel_id.startswith("G"),
        is_im=channel_id.startswith("D"),
    )


def _view_hash() -> str:
    return f"{int(time.time())}.{uuid.uuid4().hex[:8]}"


def _collect_text(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                out.append(value)
            else:
                _collect_text(value, out)
    elif isinstance(node, list):
        for item in node:
            _collect_text(item, out)


def _text_len(obj: Any) -> int:
    if isinstance(obj, dict):
        return len(str(obj.get("text") or ""))
    return len(str(obj or ""))


# Published limits, checked here as well as by the SDK models (which miss the per-message
# block count and vary between SDK versions): docs.slack.dev/reference/block-kit/.
SECTION_TEXT_MAX = 3000
SECTION_FIELDS_MAX = 10
CONTEXT_ELEMENTS_MAX = 10
BUTTON_VALUE_MAX = 2000
ID_MAX = 255  # action_id, block_id, callback_id
MODAL_TEXT_MAX = 24  # title, submit, close
PRIVATE_METADATA_MAX = 3000

# Every payload the fake validated, by where it came in (chat.postMessage, views.publish,
# response_url ...): how many of the suite's payloads went through Slack's models.
VALIDATED: Counter[str] = Counter()


def check_blocks(blocks: Any, max_blocks: int, *, method: str = "blocks") -> str | None:
    """Blocks as Slack's SDK models parse and validate them, plus the published limits;
    a problem description (Slack's wording where it has one) or None."""
    VALIDATED[method] += 1
    return _check_each_block(blocks, max_blocks)


def _check_each_block(blocks: Any, max_blocks: int) -> str | None:
    if not isinstance(blocks, list):
        return "blocks must be an array"
    if len(blocks) > max_blocks:
        return f"no more than {max_blocks} items allowed [json-pointer:/blocks]"
    for i, block in enumerate(blocks):
        where = f"[json-pointer:/blocks/{i}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"missing required field: type {where}"
        problem = _check_limits(block, where) or _check_with_sdk(block, where)
        if problem:
            return problem
    return None


def _check_with_sdk(block: dict[str, Any], where: str) -> str | None:
    try:
        parsed = Block.parse(dict(block))
        if parsed is None:
            return f"unknown block type {block['type']!r} {where}"
        parsed.validate_json()
        rendered = parsed.to_dict()  # validates every nested element and text object
    except (SlackObjectFormationError, TypeError, KeyError, ValueError) as err:
        return f"{err} {where}"
    dropped = _dropped_keys(block, rendered)
    return f"unknown field {dropped} {where}" if dropped else None


def _dropped_keys(sent: Any, kept: Any, path: str = "") -> str | None:
    """The first key the SDK model did not keep (a typo Slack would refuse), or None."""
    if isinstance(sent, dict) and isinstance(kept, dict):
        for key, value in sent.items():
            if key not in kept:
                return f"{path}/{key}"
            found = _dropped_keys(value, kept[key], f"{path}/{key}")
            if found:
                return found
    elif isinstance(sent, list) and isinstance(kept, list):
        for n, (a, b) in enumerate(zip(sent, kept, strict=False)):
            found = _dropped_keys(a, b, f"{path}/{n}")
            if found:
                return found
    return None


def _check_limits(block: dict[str, Any], where: str) -> str | None:
    kind = block["type"]
    if len(str(block.get("block_id") or "")) > ID_MAX:
        return f"block_id must be less than {ID_MAX + 1} characters {where}"
    if kind == "section":
        if "text" not in block and "fields" not in block:
            return f"must provide text or fields {where}"
        if _text_len(block.get("text")) > SECTION_TEXT_MAX:
            return f"must be less than {SECTION_TEXT_MAX + 1} characters {where}/text"
        if len(block.get("fields") or []) > SECTION_FIELDS_MAX:
            return f"no more than {SECTION_FIELDS_MAX} items allowed {where}/fields"
    elif kind == "context" and len(block.get("elements") or []) > CONTEXT_ELEMENTS_MAX:
        return f"no more than {CONTEXT_ELEMENTS_MAX} items allowed {where}/elements"
    elements = list(block.get("elements") or []) if kind == "actions" else []
    for key in ("accessory", "element"):
        if isinstance(block.get(key), dict):
            elements.append(block[key])
    for j, el in enumerate(elements):
        if not isinstance(el, dict):
            return f"missing required field: type {where}/elements/{j}"
        if len(str(el.get("value") or "")) > BUTTON_VALUE_MAX:
            return f"must be less than {BUTTON_VALUE_MAX + 1} characters {where}/elements/{j}/value"
        if len(str(el.get("action_id") or "")) > ID_MAX:
            return f"must be less than {ID_MAX + 1} characters {where}/elements/{j}/action_id"
    return None


def check_view(view: Any, expected_type: str, *, method: str = "views") -> str | None:
    """A modal or Home view as `slack_sdk.models.views.View` validates it, plus the published
    limits; a problem or None."""
    VALIDATED[method] += 1
    if not isinstance(view, dict):
        return "view must be an object"
    if view.get("type") != expected_type:
        return f"view type must be {expected_type}"
    pointer = "[json-pointer:/view"
    if expected_type == "modal":
        if not isinstance(view.get("title"), dict):
            return "missing required field: title"
        for key in ("title", "submit", "close"):
            if _text_len(view.get(key)) > MODAL_TEXT_MAX:
                return f"must be less than {MODAL_TEXT_MAX + 1} characters {pointer}/{key}/text]"
    if len(str(view.get("private_metadata") or "")) > PRIVATE_METADATA_MAX:
        return (
            f"must be less than {PRIVATE_METADATA_MAX + 1} characters {pointer}/private_metadata]"
        )
    if len(str(view.get("callback_id") or "")) > ID_MAX:
        return f"must be less than {ID_MAX + 1} characters {pointer}/callback_id]"
    problem = _check_each_block(view.get("blocks") or [], VIEW_MAX_BLOCKS)
    if problem:
        return problem
    try:
        model = View(**dict(view))
        model.validate_json()
        rendered = model.to_dict()
    except (SlackObjectFormationError, TypeError, ValueError) as err:
        return f"{err} {pointer}]"
    dropped = _dropped_keys(view, rendered)
    return f"unknown field {dropped} {pointer}]" if dropped else None


# --------------------------------------------------------------------------------------------
# Pure helpers: request builders for tests
# --------------------------------------------------------------------------------------------


def _user_obj(user_id: str, team_id: str) -> dict[str, Any]:
    return {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": team_id}


def slash_command_form(
    text: str,
    *,
    user_id: str,
    channel_id: str,
    command: str = "/batchai",
    response_url: str,
    trigger_id: str,
    team_id: str = TEAM_ID,
    user_name: str | None = None,
    channel_name: str | None = None,
) -> dict[str, str]:
    """Form fields of a slash command request (also the Socket Mode `slash_commands` payload)."""
    return {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_name or channel_id.lower(),
        "user_id": user_id,
        "user_name": user_name or user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id,
    }


def block_actions_payload(
    action_id: str,
    value: str,
    *,
    user_id: str,
    trigger_id: str,
    channel_id: str | None = None,
    message_ts: str | None = None,
    response_url: str | None = None,
    view: dict[str, Any] | None = None,
    block_id: str = "actions",
    action_type: str = "button",
    message: dict[str, Any] | None = None,
    team_id: str = TEAM_ID,
) -> dict[str, Any]:
    """A `block_actions` interaction payload: from a message (channel_id, message_ts,
    response_url required) or, with `view`, from a modal / Home tab."""
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "type": action_type,
        "action_ts": f"{int(time.time())}.000001",
    }
    if action_type in ("static_select", "overflow", "radio_buttons", "external_select"):
        action["selected_option"] = {"text": {"type": "plain_text", "text": value}, "value": value}
    else:
        action["value"] = value
        action["text"] = {"type": "plain_text", "text": value, "emoji": True}
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user_obj(user_id, team_id),
        "api_app_id": APP_ID,
        "token": "legacy-verification-token",
        "trigger_id": trigger_id,
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "state": {"values": {}},
        "actions": [action],
    }
    if view is not None:
        payload["container"] = {"type": "view", "view_id": view.get("id", "")}
        payload["view"] = view
        payload["state"] = view.get("state") or {"values": {}}
        if channel_id is not None:
            payload["channel"] = {"id": channel_id, "name": channel_id.lower()}
        return payload
    if channel_id is None or message_ts is None or response_url is None:
        raise ValueError("a message action needs channel_id, message_ts and response_url")
    payload["container"] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel_id,
        "is_ephemeral": False,
    }
    payload["channel"] = {"id": channel_id, "name": channel_id.lower()}
    payload["message"] = message or {
        "type": "message",
        "user": BOT_USER_ID,
        "bot_id": BOT_ID,
        "ts": message_ts,
        "text": "",
        "blocks": [],
    }
    payload["response_url"] = response_url
    return payload


def view_submission_payload(
    callback_id: str,
    values: dict[str, dict[str, Any]],
    *,
    user_id: str,
    private_metadata: str = "",
    view_id: str = "V0000000001",
    trigger_id: str = "0.unissued.trigger",
    external_id: str = "",
    team_id: str = TEAM_ID,
) -> dict[str, Any]:
    """A `view_submission` payload; `values` is the state dict
    `{block_id: {action_id: {"type": ..., "value"/"selected_option"/...}}}`."""
    return {
        "type": "view_submission",
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": _user_obj(user_id, team_id),
        "api_app_id": APP_ID,
        "token": "legacy-verification-token",
        "trigger_id": trigger_id,
        "view": {
            "id": view_id,
            "team_id": team_id,
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": private_metadata,
            "external_id": external_id,
            "state": {"values": values},
            "hash": "1700000000.abcdef12",
            "title": {"type": "plain_text", "text": "Batch AI"},
            "blocks": [],
            "root_view_id": view_id,
            "previous_view_id": None,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def app_home_opened_event(
    user_id: str,
    *,
    tab: str = "home",
    view: dict[str, Any] | None = None,
    team_id: str = TEAM_ID,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Events API `event_callback` body for `app_home_opened` (HTTP body / Socket Mode payload)."""
    now = int(time.time())
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": user_id,
        "channel": "D" + user_id[1:],
        "tab": tab,
        "event_ts": f"{now}.000100",
    }
    if view is not None:
        event["view"] = view
    return {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": now,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }


def form_body(fields: Mapping[str, str]) -> bytes:
    """URL-encode form fields (a slash command request body)."""
    return urlencode(fields).encode("utf-8")


def interactive_body(payload: Mapping[str, Any]) -> bytes:
    """The form body Slack sends for interactivity: `payload=<url-encoded JSON>`."""
    return urlencode({"payload": json.dumps(payload)}).encode("utf-8")


def signed_headers(
    body: bytes,
    secret: str,
    *,
    timestamp: int | None = None,
    content_type: str | None = None,
) -> dict[str, str]:
    """Headers of a request signed like Slack signs it (timestamp defaults to now, real time)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    if content_type is None:
        is_json = body.lstrip()[:1] == b"{"
        content_type = "application/json" if is_json else "application/x-www-form-urlencoded"
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }
