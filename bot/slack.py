"""Slack wiring: Web API clients, the Bolt AsyncApp, Socket Mode, and the HTTP events route."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.webhook_response import WebhookResponse

from bot.config import Settings
from handlers.slack import SlackHandlers, register
from services.jobspec.load import MAX_DEPTH, nesting_depth

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
REPLAY_WINDOW = 300  # seconds: Slack's own freshness window for signed requests
# The largest request Slack sends us is an interaction carrying a whole view or message (100
# blocks of up to 3,000 characters, URL-encoded); anything bigger is refused unread.
MAX_EVENT_BYTES = 1024 * 1024


def web_client(
    settings: Settings, *, for_listeners: bool, session: aiohttp.ClientSession | None = None
) -> AsyncWebClient:
    """The outbox retries on its own budget; listener calls (views.*) retry one 429 here.

    With `session` every call reuses its kept-alive connections; without one slack-sdk opens
    (and closes) a session, so a TCP connection, per call: fine for `check`, not for a bot."""
    assert settings.slack_bot_token is not None
    handlers: list[Any] = [AsyncConnectionErrorRetryHandler()]
    if for_listeners:
        handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        retry_handlers=handlers,
        timeout=15,
        session=session,
    )


class SharedRespond(AsyncRespond):
    """Bolt's `respond` over the bot's one HTTP session. Bolt's own opens a session (a new TCP
    connection and TLS handshake to Slack) for every answer on a response_url: under load that
    was most of the bot's CPU per command (slack-bolt context/respond/async_respond.py).

    It posts the message itself: slack-sdk's webhook client builds a retry state, a request, a
    response and its headers' copies for every answer (a hundred calls of a command's ~2,400)."""

    def __init__(self, *, response_url: str, session: aiohttp.ClientSession) -> None:
        super().__init__(response_url=response_url)
        self._session = session

    async def __call__(
        self,
        text: str | dict[str, Any] = "",
        blocks: Sequence[Any] | None = None,
        attachments: Sequence[Any] | None = None,
        response_type: str | None = None,
        replace_original: bool | None = None,
        delete_original: bool | None = None,
        unfurl_links: bool | None = None,
        unfurl_media: bool | None = None,
        thread_ts: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> WebhookResponse:
        if isinstance(text, dict):  # a whole message, as Bolt's respond also takes
            fields = text
        else:
            fields = {
                "text": text,
                "blocks": blocks,
                "attachments": attachments,
                "response_type": response_type,
                "replace_original": replace_original,
                "delete_original": delete_original,
                "unfurl_links": unfurl_links,
                "unfurl_media": unfurl_media,
                "thread_ts": thread_ts,
                "metadata": metadata,
            }
        data = json.dumps({k: v for k, v in fields.items() if v is not None})
        try:
            return await self._post(data)
        except (aiohttp.ServerConnectionError, aiohttp.ClientOSError):
            # A kept-alive connection Slack closed meanwhile: sent once more, as slack-sdk's
            # connection-error retry handler did.
            return await self._post(data)

    async def _post(self, data: str) -> WebhookResponse:
        url = self.response_url
        assert url is not None
        async with self._session.post(
            url, data=data, headers=_JSON_HEADERS, timeout=_ANSWER_TIMEOUT
        ) as response:
            body = (await response.read()).decode("utf-8", "replace")
        return WebhookResponse(
            url=url,
            status_code=response.status,
            body=body,
            headers=response.headers,  # type: ignore[arg-type]  # slack_sdk: dict, read only
        )


_JSON_HEADERS = {"Content-Type": "application/json;charset=utf-8"}
_ANSWER_TIMEOUT = aiohttp.ClientTimeout(total=15)


def build_app(
    settings: Settings, handlers: SlackHandlers, *, session: aiohttp.ClientSession | None = None
) -> AsyncApp:
    """The Bolt app with every listener; with `session`, listeners' Web API calls and
    response_url answers go over it."""
    if os.environ.get("SLACK_CLIENT_ID") and os.environ.get("SLACK_CLIENT_SECRET"):
        # Bolt would silently switch to OAuth and drop the bot token (slack-bolt AsyncApp init).
        raise SystemExit(
            "unset SLACK_CLIENT_ID / SLACK_CLIENT_SECRET: batchai-bot uses one bot token"
        )
    secret = settings.slack_signing_secret
    if settings.slack_mode == "http" and secret is None:
        raise SystemExit("SLACK_SIGNING_SECRET is required when SLACK_MODE=http")
    app = AsyncApp(
        client=web_client(settings, for_listeners=True, session=session),
        signing_secret=secret.get_secret_value() if secret else "socket-mode-unused",
        name="batchai-bot",
        logger=logging.getLogger("slack_bolt"),
        # HTTP mode: the events route checks the signature, freshness and replays of every
        # request before anything of it is parsed (add_events_route); Bolt checks the signature
        # again, on the same raw body (some 30 calls: kept, so that no way of handing Bolt a
        # request skips it). Socket Mode requests are not signed (Bolt skips them).
        request_verification_enabled=True,
    )
    if session is not None and settings.slack_mode != "http":
        # HTTP mode gives each request its respond in the events route (one middleware less
        # per request: Bolt builds every middleware's arguments anew)
        app.middleware(_respond_over(session))
    register(
        app,
        handlers,
        command=settings.slack_command,
        answer_budget=settings.slack_ack_answer_seconds,
    )

    @app.error
    async def on_error(error: Exception, body: dict[str, Any]) -> None:
        log.exception("listener failed for a %s request", body.get("type", "slash"), exc_info=error)

    return app


def _respond_over(
    session: aiohttp.ClientSession,
) -> Callable[[AsyncBoltContext, Callable[[], Awaitable[Any]]], Awaitable[Any]]:
    """A middleware giving every request with a response_url a `respond` over `session`
    (Bolt builds its own only when the context has none)."""

    async def shared_respond(context: AsyncBoltContext, next_: Callable[[], Awaitable[Any]]) -> Any:
        if context.response_url:
            context["respond"] = SharedRespond(response_url=context.response_url, session=session)
        return await next_()

    return shared_respond


class SocketMode:
    """Socket Mode connection; must be created and started inside the running loop."""

    def __init__(self, app: AsyncApp, settings: Settings) -> None:
        if settings.slack_app_token is None:
            raise SystemExit("SLACK_APP_TOKEN (xapp-…) is required for Socket Mode")
        self._handler = AsyncSocketModeHandler(
            app,
            settings.slack_app_token.get_secret_value(),
            web_client=web_client(settings, for_listeners=False),
        )

    async def start(self) -> None:
        await self._handler.connect_async()  # type: ignore[no-untyped-call]  # slack_bolt: untyped
        log.info("connected to Slack over Socket Mode")

    async def close(self) -> None:
        await self._handler.close_async()  # type: ignore[no-untyped-call]  # slack_bolt: untyped


def add_events_route(
    web_app: web.Application,
    app: AsyncApp,
    signing_secret: str,
    *,
    session: aiohttp.ClientSession | None = None,
) -> None:
    """HTTP mode: POST /slack/events on the bot's own web app. Nothing of a request is parsed
    before its signature and timestamp are verified; then replays and deep nesting are refused.
    With `session`, the request's `respond` answers over it."""
    verifier = SignatureVerifier(signing_secret)
    seen: OrderedDict[str, float] = OrderedDict()

    async def events(request: web.Request) -> web.Response:
        body = await _read_body(request)
        if body is None:
            log.warning("refused a Slack request larger than %d bytes", MAX_EVENT_BYTES)
            return web.json_response({"error": "request too large"}, status=413)
        now = time.time()
        if not _signed(verifier, body, request.headers, now):
            log.warning("refused a Slack request without a valid, fresh signature")
            return web.json_response({"error": "invalid request"}, status=401)
        signature = request.headers["X-Slack-Signature"]
        while seen and next(iter(seen.values())) < now - REPLAY_WINDOW:
            seen.popitem(last=False)
        if signature in seen:
            log.warning("refused a replayed Slack request")
            return web.json_response({"error": "replayed request"}, status=401)
        if _too_deep(body):
            log.warning("refused a Slack request nested deeper than %d levels", MAX_DEPTH)
            return web.json_response({"error": "request nested too deeply"}, status=400)
        bolt_request = _bolt_request(body, request)
        if bolt_request is None:
            log.warning("refused a signed Slack request whose body is not a JSON object or form")
            return web.json_response({"error": "malformed request"}, status=400)
        url = bolt_request.context.response_url
        if session is not None and url:
            bolt_request.context["respond"] = SharedRespond(response_url=url, session=session)
        response = await app.async_dispatch(bolt_request)
        if response.status == 200:
            seen[signature] = now
        return await to_aiohttp_response(response)

    web_app.router.add_post(EVENTS_PATH, events)


def _signed(verifier: SignatureVerifier, body: str, headers: Mapping[str, str], now: float) -> bool:
    """Slack's v0 HMAC of the exact body, with a timestamp inside the replay window. The headers
    are checked for shape first: slack_sdk would raise on a non-numeric timestamp or a
    non-ASCII signature (hmac.compare_digest refuses those)."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return False
    if not (signature.isascii() and signature.startswith("v0=")):
        return False
    if abs(now - int(timestamp)) > REPLAY_WINDOW:
        return False
    return verifier.is_valid(body=body, timestamp=timestamp, signature=signature)


async def _read_body(request: web.Request) -> str | None:
    """The body as text, or None when it is over MAX_EVENT_BYTES: judged by Content-Length
    before reading anything, and counted while reading a body sent without one."""
    if (request.content_length or 0) > MAX_EVENT_BYTES:
        return None
    data = bytearray()
    while chunk := await request.content.read(64 * 1024):
        data += chunk
        if len(data) > MAX_EVENT_BYTES:
            return None
    # Not UTF-8: the replacement characters make the signature check fail, as it should.
    return data.decode("utf-8", errors="replace")


def _too_deep(body: str) -> bool:
    """json.loads recurses once per level: a [[[[… in a body (JSON, or the JSON in a form's
    payload field) must not reach Bolt's parser, even signed. nesting_depth is one linear pass."""
    if body.lstrip().startswith(("{", "[")):
        return nesting_depth(body) > MAX_DEPTH
    # A slash command's text is not parsed as JSON here (the grammar refuses deep JSON itself).
    if "payload=" not in body:  # no field of that name: a form encodes `=` inside values
        return False
    payloads = [value for key, value in parse_qsl(body) if key == "payload"]
    return any(nesting_depth(text) > MAX_DEPTH for text in payloads)


def _bolt_request(body: str, request: web.Request) -> AsyncBoltRequest | None:
    """Bolt's request, or None for a body Bolt cannot take: broken JSON raises ValueError in
    json.loads, and a JSON array or string breaks its context builder (AttributeError).

    A form without a `payload` field (a slash command) is parsed here: slack-bolt takes any
    form body containing the word "payload" for an interaction and drops it when there is no
    such field (e.g. `/batchai job show -n payload`), and parse_qsl costs four calls a field
    where most fields need none. Its context comes from Bolt's own public constructor (a
    request built from a dict, as Socket Mode does); it stays an HTTP request of the signed
    body."""
    headers: dict[str, str | Sequence[str]] = {k: v for k, v in request.headers.items()}
    query = request.query_string or None
    if not body.startswith("{") and request.content_type != "application/json":
        fields = _form_fields(body)
        if "payload" not in fields:
            bolt_request = AsyncBoltRequest(
                body=fields, query=query, headers=headers, mode="socket_mode"
            )
            bolt_request.raw_body, bolt_request.mode = body, "http"
            return bolt_request
    try:
        return AsyncBoltRequest(body=body, query=query, headers=headers)
    except (ValueError, AttributeError):
        return None


def _form_fields(body: str) -> dict[str, str]:
    """`dict(parse_qsl(body, keep_blank_values=True))`, as Bolt parses a form: the last value
    of a repeated name wins, a name without `=` has the value ""."""
    fields = {}
    for pair in body.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            fields[_unquote(name)] = _unquote(value)
    return fields


def _unquote(text: str) -> str:
    return unquote_plus(text) if "%" in text or "+" in text else text


@dataclass(frozen=True)
class HomeWorkspace:
    """The workspace the bot token belongs to and its Enterprise Grid org, from auth.test."""

    team: str
    org: str | None = None
    org_wide: bool = False  # installed on the whole org

    @property
    def teams(self) -> frozenset[str]:
        """The default ALLOWED_TEAMS: this workspace, or the whole org for an org-wide install."""
        return frozenset({self.org if self.org_wide and self.org else self.team})

    @property
    def orgs(self) -> frozenset[str]:
        return frozenset({self.org}) if self.org else frozenset()


async def home_workspace(client: AsyncWebClient) -> HomeWorkspace:
    """Ask auth.test whom the token serves. Without an answer the bot does not start: it would
    not know which workspace's requests to take."""
    try:
        response = await client.auth_test()
    except SlackApiError as err:
        reason = str(err.response.get("error"))
    except Exception as err:
        reason = type(err).__name__
    else:
        if team := response.get("team_id"):
            org = response.get("enterprise_id") or None
            return HomeWorkspace(str(team), org, bool(response.get("is_enterprise_install")))
        reason = "no team_id in the answer"
    raise SystemExit(
        f"cannot learn the bot token's workspace from Slack (auth.test: {reason}); "
        "check SLACK_BOT_TOKEN and SLACK_API_URL"
    )


class UserGroups:
    """Members of Slack user groups (approver groups), cached for 5 minutes: usergroups.users.list
    is a Tier 2 method (about 20 calls a minute)."""

    TTL = 300.0

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def members(self, group: str) -> frozenset[str]:
        cached = self._cache.get(group)
        if cached is not None and time.monotonic() - cached[0] < self.TTL:
            return cached[1]
        try:
            response = await self._client.usergroups_users_list(usergroup=group)
            users = frozenset(response.get("users") or ())
        except Exception as err:  # an unreachable Slack must not approve anyone
            log.warning("could not read members of user group %s: %s", group, err)
            return cached[1] if cached else frozenset()
        self._cache[group] = (time.monotonic(), users)
        return users
