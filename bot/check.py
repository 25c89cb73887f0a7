"""`batchai-bot check`: is the Slack app installed and configured the way the bot needs it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.manifest import bot_scopes

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from bot.config import Settings

REQUIRED_SCOPES: tuple[str, ...] = bot_scopes()
"""The bot scopes the shipped manifest requests: what the installed token must have been granted."""

SCOPES_HEADER = "x-oauth-scopes"
CHECK_TIMEOUT_SECONDS = 10
MAX_DETAIL = 300
_LIST_PAGES = 20  # conversations.list pages (1,000 channels each) searched for a channel name
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")  # names are lower case, IDs upper case
# Anything shaped like a Slack or app-level token; our hints ("xoxb-…") do not match.
_TOKEN_LIKE = re.compile(r"\b(?:xox[a-z]|xapp)[A-Za-z0-9.]*-[A-Za-z0-9-]+")
_REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report: what was checked, whether it passed, and why (one line)."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class _Reply:
    """The outcome of one Web API call: a response, a Slack error code, or no connection."""

    response: AsyncSlackResponse | None = None
    error: str | None = None
    needed: str | None = None  # the scope Slack names with a missing_scope error
    unreachable: str | None = None


@dataclass(slots=True)
class _Context:
    """What the later checks learn from the earlier ones."""

    bot_name: str = "batchai"
    auth_ok: bool = False
    unreachable: bool = False
    skip_reason: str = "not checked: needs a working bot token"
    granted_header: str | None = None
    channel_index: dict[str, dict[str, Any]] | None = None
    secrets: list[str] = field(default_factory=list)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 1] + "…"


def _scrub(text: str, secrets: Sequence[str] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return _TOKEN_LIKE.sub(_REDACTED, text)


def _reason(err: BaseException) -> str:
    text = _one_line(str(err))
    if isinstance(err, TimeoutError):
        return f"timed out after {CHECK_TIMEOUT_SECONDS} s" if not text else f"timed out: {text}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


async def _api(call: Awaitable[AsyncSlackResponse]) -> _Reply:
    """Await one Web API call and classify its outcome; never raises."""
    try:
        return _Reply(response=await call)
    except SlackApiError as err:
        data = err.response.data if isinstance(err.response.data, dict) else {}
        code = data.get("error")
        if not code:  # not a Slack API answer: wrong SLACK_API_URL, a proxy page, an outage
            return _Reply(unreachable=f"HTTP {err.response.status_code} without a Slack API answer")
        needed = data.get("needed")
        return _Reply(error=str(code), needed=str(needed) if needed else None)
    except (aiohttp.ClientError, OSError) as err:  # refused, reset, DNS, TLS, TimeoutError
        return _Reply(unreachable=_reason(err))
    except Exception as err:  # no Slack answer for another reason: a failed check, no traceback
        return _Reply(unreachable=_reason(err))


def _header(response: AsyncSlackResponse, name: str) -> str | None:
    headers: Any = response.headers or {}
    for key, value in headers.items():
        if str(key).lower() == name:
            return str(value)
    return None


def _public_url(url: str) -> str:
    """`url` without any user name or password in it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "the configured Slack API URL"
    if parts.username is None and parts.password is None:
        return url
    netloc = f"{host}:{port}" if port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _scope_list(scopes: Sequence[str]) -> str:
    return ", ".join(scopes)


async def _check_token(client: AsyncWebClient, base_url: str, ctx: _Context) -> CheckResult:
    if not client.token:
        return CheckResult("token", False, "SLACK_BOT_TOKEN is not set")
    reply = await _api(client.auth_test())
    if reply.unreachable is not None:
        ctx.unreachable = True
        ctx.skip_reason = "not checked: Slack API unreachable"
        return CheckResult("token", False, f"cannot reach Slack at {base_url}: {reply.unreachable}")
    if reply.response is None:
        code = reply.error or "unknown error"
        if code in ("invalid_auth", "not_authed"):
            hint = "copy the Bot User OAuth Token (xoxb-…) from OAuth & Permissions"
        elif code in ("token_revoked", "token_expired", "account_inactive"):
            hint = "reinstall the app and use its new Bot User OAuth Token"
        elif code == "ratelimited":
            hint = "rate limited by Slack, try again in a minute"
        else:
            hint = "auth.test failed"
        return CheckResult("token", False, f"SLACK_BOT_TOKEN rejected ({code}): {hint}")
    data = reply.response.data if isinstance(reply.response.data, dict) else {}
    team = data.get("team") or data.get("team_id") or "?"
    user = data.get("user") or data.get("user_id") or "?"
    if not data.get("bot_id"):
        return CheckResult(
            "token",
            False,
            f"team {team}: token of user @{user}, not a bot: use the Bot User OAuth Token (xoxb-…)",
        )
    ctx.auth_ok = True
    ctx.bot_name = str(user) if user != "?" else ctx.bot_name
    ctx.granted_header = _header(reply.response, SCOPES_HEADER)
    return CheckResult("token", True, f"team {team}, bot @{user}")


def _check_scopes(required: Sequence[str], ctx: _Context) -> CheckResult:
    if not ctx.auth_ok:
        return CheckResult("scopes", False, ctx.skip_reason)
    if ctx.granted_header is None:
        return CheckResult(
            "scopes", False, f"Slack sent no {SCOPES_HEADER} header: cannot tell the granted scopes"
        )
    granted = [s.strip() for s in ctx.granted_header.split(",") if s.strip()]
    missing = [s for s in dict.fromkeys(required) if s not in granted]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        return CheckResult(
            "scopes",
            False,
            f"missing {_scope_list(missing)} — reinstall the app after adding {them}",
        )
    extra = [s for s in granted if s not in required]
    detail = f"all {len(set(required))} required scopes granted"
    if extra:
        detail += f" (also granted, not needed: {_scope_list(extra)})"
    return CheckResult("scopes", True, detail)


async def _check_transport(
    client: AsyncWebClient,
    *,
    mode: str,
    app_token: str | None,
    signing_secret_set: bool,
    ctx: _Context,
) -> CheckResult:
    if mode == "http":
        if signing_secret_set:
            return CheckResult("signing", True, "SLACK_SIGNING_SECRET is set (HTTP mode)")
        return CheckResult(
            "signing",
            False,
            "SLACK_SIGNING_SECRET is not set: HTTP mode needs it (Basic Information → "
            "App Credentials)",
        )
    if mode != "socket":
        return CheckResult("mode", False, f"unknown SLACK_MODE {mode!r}: use socket or http")
    if not app_token:
        return CheckResult(
            "socket",
            False,
            "SLACK_APP_TOKEN is not set: Socket Mode needs an app-level token with "
            "connections:write (Basic Information → App-Level Tokens)",
        )
    if ctx.unreachable:
        return CheckResult("socket", False, ctx.skip_reason)
    reply = await _api(client.apps_connections_open(app_token=app_token))
    if reply.unreachable is not None:
        return CheckResult("socket", False, f"cannot reach Slack: {reply.unreachable}")
    if reply.response is not None:
        # The URL holds a one-time ticket: it is discarded, never printed.
        return CheckResult("socket", True, "app token valid, Socket Mode connection URL issued")
    code = reply.error or "unknown error"
    hints = {
        "invalid_auth": "copy the app-level token (xapp-…) from Basic Information",
        "not_authed": "copy the app-level token (xapp-…) from Basic Information",
        "not_allowed_token_type": "SLACK_APP_TOKEN must be the app-level token (xapp-…), "
        "not the bot token",
        "missing_scope": "the app-level token needs the connections:write scope",
        "token_revoked": "the app-level token was revoked: generate a new one",
    }
    hint = hints.get(code, "apps.connections.open failed; is Socket Mode enabled for the app?")
    return CheckResult("socket", False, f"SLACK_APP_TOKEN rejected ({code}): {hint}")


async def _channel_index(client: AsyncWebClient) -> tuple[dict[str, dict[str, Any]], _Reply | None]:
    """Channels the bot can see, by name (public ones, and private ones it is in)."""
    index: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    for _ in range(_LIST_PAGES):
        reply = await _api(
            client.conversations_list(
                types="public_channel,private_channel",
                exclude_archived=True,
                limit=1000,
                cursor=cursor,
            )
        )
        if reply.response is None:
            return index, reply
        data = reply.response.data if isinstance(reply.response.data, dict) else {}
        for channel in data.get("channels") or []:
            if isinstance(channel, dict) and channel.get("name"):
                index.setdefault(str(channel["name"]), channel)
        cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
        if not cursor:
            break
    return index, None


def _channel_error(label: str, reply: _Reply, bot: str) -> str:
    if reply.unreachable is not None:
        return f"{label}: cannot reach Slack: {reply.unreachable}"
    code = reply.error or "unknown error"
    target = label if label.startswith("#") else "it"
    if code == "channel_not_found":
        what = "name" if label.startswith("#") else "ID"
        return (
            f"{label}: not found (channel_not_found) — check the {what}; "
            f"if it is private, invite @{bot} to {target}"
        )
    if code == "not_in_channel":
        return f"{label}: the bot is not in it (not_in_channel) — invite @{bot} to {target}"
    if code == "missing_scope":
        needed = f" {reply.needed}" if reply.needed else ""
        return f"{label}: missing scope{needed} — reinstall the app after adding it"
    return f"{label}: cannot read the channel ({code})"


async def _check_channel(client: AsyncWebClient, configured: str, ctx: _Context) -> CheckResult:
    wanted = configured.strip()
    bare = wanted.lstrip("#")
    is_id = bool(_CHANNEL_ID.fullmatch(bare))
    label = bare if is_id else f"#{bare}"
    if not ctx.auth_ok:
        return CheckResult("channel", False, f"{label}: {ctx.skip_reason}")
    if not bare:
        return CheckResult("channel", False, f"{configured!r} is not a channel name or ID")
    channel: dict[str, Any] | None
    if is_id:
        reply = await _api(client.conversations_info(channel=bare))
        if reply.response is None:
            return CheckResult("channel", False, _channel_error(label, reply, ctx.bot_name))
        data = reply.response.data if isinstance(reply.response.data, dict) else {}
        channel = data.get("channel") if isinstance(data.get("channel"), dict) else None
    else:
        if ctx.channel_index is None:
            index, failed = await _channel_index(client)
            if failed is not None:
                return CheckResult("channel", False, _channel_error(label, failed, ctx.bot_name))
            ctx.channel_index = index
        channel = ctx.channel_index.get(bare)
        if channel is None:
            missing = _Reply(error="channel_not_found")
            return CheckResult("channel", False, _channel_error(label, missing, ctx.bot_name))
    if channel is None:
        return CheckResult("channel", False, f"{label}: Slack returned no channel")
    name = str(channel.get("name") or bare)
    cid = str(channel.get("id") or "")
    shown = f"#{name} ({cid})" if cid and cid != name else f"#{name}"
    if channel.get("is_archived"):
        return CheckResult("channel", False, f"{shown}: archived — configure another channel")
    if not channel.get("is_member"):
        return CheckResult(
            "channel",
            False,
            f"{shown}: the bot is not a member — invite @{ctx.bot_name} to #{name}",
        )
    return CheckResult("channel", True, f"{shown}: the bot is a member")


async def check_slack(
    *,
    client: AsyncWebClient,
    app_token: str | None,
    mode: str,
    channels: Sequence[str],
    required_scopes: Sequence[str],
    signing_secret_set: bool,
) -> list[CheckResult]:
    """Check the bot token, its scopes, the transport credentials and channel membership.

    Never raises for Slack or network failures: each becomes a failed CheckResult with a
    one-line detail. No detail contains the bot token, the app token or anything token-shaped.
    """
    ctx = _Context(secrets=[s for s in (client.token, app_token) if s])
    results = [await _check_token(client, _public_url(str(client.base_url)), ctx)]
    results.append(_check_scopes(required_scopes, ctx))
    results.append(
        await _check_transport(
            client,
            mode=mode,
            app_token=app_token,
            signing_secret_set=signing_secret_set,
            ctx=ctx,
        )
    )
    for configured in dict.fromkeys(channels):
        results.append(await _check_channel(client, configured, ctx))
    return [CheckResult(r.name, r.ok, _one_line(_scrub(r.detail, ctx.secrets))) for r in results]


async def check_settings(settings: Settings, *, channels: Sequence[str] = ()) -> list[CheckResult]:
    """`check_slack` for the configured Settings (tokens, mode, Slack API URL)."""
    bot = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    app = settings.slack_app_token.get_secret_value() if settings.slack_app_token else None
    client = AsyncWebClient(
        token=bot, base_url=settings.slack_api_url, timeout=CHECK_TIMEOUT_SECONDS
    )
    return await check_slack(
        client=client,
        app_token=app,
        mode=settings.slack_mode,
        channels=channels,
        required_scopes=REQUIRED_SCOPES,
        signing_secret_set=bool(
            settings.slack_signing_secret and settings.slack_signing_secret.get_secret_value()
        ),
    )


async def sizes_in_use(settings: Settings) -> list[tuple[str, str]]:
    """(VM size, image) of every cluster the bot's database holds, then each size
    AZURE_CHECK_VM_SIZE names (comma-separated) with the default image; a database that does not
    exist yet holds none."""
    from services.clusters.service import DEFAULT_IMAGE
    from services.store.sql import SqlStore

    uses: list[tuple[str, str]] = []
    url = settings.db_url
    sqlite_file = url.split(":///", 1)[1] if url.startswith("sqlite") and ":///" in url else None
    if sqlite_file is None or Path(sqlite_file).is_file():  # never make an empty database
        store = SqlStore(url)  # reads cluster rows only: no secret is opened
        try:
            uses += [(c.vm_size, c.image) for c in await store.list_clusters()]
        except Exception:  # not migrated or not reachable: the configured sizes still count
            pass
        finally:
            await store.aclose()
    configured = [s.strip() for s in settings.azure_check_vm_size.split(",") if s.strip()]
    uses += [(size, DEFAULT_IMAGE) for size in configured]
    return list(dict.fromkeys(uses)) or [("Standard_NC4as_T4_v3", DEFAULT_IMAGE)]


async def check_azure(
    settings: Settings,
    *,
    credential: AsyncTokenCredential | None = None,
    uses: Sequence[tuple[str, str]] | None = None,
) -> list[CheckResult]:
    """The azure backend's prerequisites, one line each: credential, resource group, subnet,
    share, then for the sizes in use (the clusters' and AZURE_CHECK_VM_SIZE's): each size in the
    region, each quota family's vCPUs (the GPU families' quota is what runs out), and each image
    they boot by its driver route (offered in the region, marketplace terms). Never raises."""
    from bot.bootstrap import azure_parts

    pairs = list(uses) if uses is not None else await sizes_in_use(settings)
    backend, share, cred = azure_parts(settings, credential)
    key = settings.azure_storage_key.get_secret_value() if settings.azure_storage_key else ""
    try:
        rows = await backend.check_setup(pairs)
    finally:
        await backend.aclose()
        await share.aclose()
        if credential is None:
            await cred.close()
    return [
        CheckResult(f"azure {name}", ok, _one_line(_scrub(detail, [key])))
        for name, ok, detail in rows
    ]


def format_results(results: Sequence[CheckResult]) -> str:
    """One aligned line per check: `ok   token    team Acme, bot @batchai` / `FAIL scopes  …`."""
    width = max((len(r.name) for r in results), default=0)
    lines = [
        f"{'ok' if r.ok else 'FAIL':<4} {r.name:<{width}}  {_one_line(_scrub(r.detail))}"
        for r in results
    ]
    return "\n".join(lines)
