"""`check_slack` driven through the real AsyncWebClient against fake Slack servers on loopback."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

from bot.check import REQUIRED_SCOPES, CheckResult, check_settings, check_slack, format_results
from bot.config import Settings
from tests.fakes.slack import Channel, FakeSlack

BOT_TOKEN = "xoxb-1111-2222-Sekr1tB0tT0ken"
USER_TOKEN = "xoxp-1111-3333-Sekr1tUs3rT0ken"
APP_TOKEN = "xapp-1-A0001-4444-Sekr1tAppT0ken"
SECRETS = (BOT_TOKEN, USER_TOKEN, APP_TOKEN, "Sekr1t")
CHANNELS = [
    Channel("C0001MLJOBS", "ml-jobs"),
    Channel("C0002RANDOM", "random", is_member=False),
    Channel("G0003APPROVE", "gpu-approvers", is_private=True),
    Channel("G0004HIDDEN", "hidden", is_private=True, is_member=False),
    Channel("C0005OLD", "old-jobs", is_archived=True),
]


async def started(scopes: Iterable[str] = REQUIRED_SCOPES) -> FakeSlack:
    fake = FakeSlack(
        bot_tokens=[BOT_TOKEN],
        app_token=APP_TOKEN,
        scopes=scopes,
        channels=[Channel(**vars(c)) for c in CHANNELS],
    )
    return await fake.start()


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    """The shared fake Slack (tests/fakes/slack.py), holding exactly the required scopes."""
    fake = await started()
    yield fake
    await fake.close()


@dataclass
class NameDirectory:
    """What the shared fake lacks: conversations.list paging, and a user (not bot) token."""

    channels: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 2
    cursors: list[str] = field(default_factory=list)
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if method == "auth.test" and token == USER_TOKEN:
            body = {"ok": True, "team": "Acme", "user": "alice", "user_id": "U0ALICE"}
            return web.json_response(body)  # no bot_id: a user token
        if token != BOT_TOKEN:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method == "auth.test":
            body = {"ok": True, "team": "Acme", "user": "batchai", "bot_id": "B1"}
            scopes = ",".join(REQUIRED_SCOPES)
            return web.json_response(body, headers={"x-oauth-scopes": scopes})
        if method == "conversations.list":
            cursor = request.query.get("cursor", "")
            self.cursors.append(cursor)
            start = int(cursor or 0)
            page = self.channels[start : start + self.page_size]
            more = start + self.page_size < len(self.channels)
            next_cursor = str(start + self.page_size) if more else ""
            meta = {"next_cursor": next_cursor}
            return web.json_response({"ok": True, "channels": page, "response_metadata": meta})
        return web.json_response({"ok": False, "error": "unknown_method"})


@pytest.fixture
async def directory() -> AsyncIterator[NameDirectory]:
    names = NameDirectory(channels=[c.to_api() for c in CHANNELS if not c.is_archived])
    names.channels = [c for c in names.channels if not c["is_private"] or c["is_member"]]
    app = web.Application()
    app.router.add_route("*", "/api/{method}", names.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    names.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/"
    yield names
    await runner.cleanup()


async def run(
    base_url: str,
    *,
    token: str | None = BOT_TOKEN,
    app_token: str | None = APP_TOKEN,
    mode: str = "socket",
    channels: tuple[str, ...] = ("C0001MLJOBS",),
    signing_secret_set: bool = False,
    client: AsyncWebClient | None = None,
) -> list[CheckResult]:
    return await check_slack(
        client=client or AsyncWebClient(token=token, base_url=base_url, timeout=5),
        app_token=app_token,
        mode=mode,
        channels=channels,
        required_scopes=REQUIRED_SCOPES,
        signing_secret_set=signing_secret_set,
    )


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def assert_clean(results: list[CheckResult]) -> str:
    """The report has one line per check and nothing secret or token-shaped in it."""
    text = format_results(results)
    assert len(text.splitlines()) == len(results)
    for r in results:
        assert "\n" not in r.detail and r.detail
    for secret in SECRETS:
        assert secret not in text
    assert "/link" not in text  # the Socket Mode URL is discarded
    assert re.search(r"(xox[a-z]|xapp)-[A-Za-z0-9]", text) is None
    return text


async def test_all_ok_socket_mode(slack: FakeSlack) -> None:
    results = await run(slack.base_url, channels=("C0001MLJOBS", "G0003APPROVE"))
    text = assert_clean(results)
    assert [r.name for r in results] == ["token", "scopes", "socket", "channel", "channel"]
    assert all(r.ok for r in results), text
    checks = by_name(results)
    assert checks["token"].detail == "team Fake Team, bot @batchai"
    assert checks["scopes"].detail == "all 15 required scopes granted"
    assert results[3].detail == "#ml-jobs (C0001MLJOBS): the bot is a member"
    assert results[4].detail == "#gpu-approvers (G0003APPROVE): the bot is a member"
    assert text.splitlines()[0] == "ok   token    team Fake Team, bot @batchai"
    (opened,) = slack.calls_to("apps.connections.open")
    assert opened.token == APP_TOKEN and opened.ok
    assert "token" not in opened.args  # sent as a header, not in the query
    assert {c.token for c in slack.calls if c.method != "apps.connections.open"} == {BOT_TOKEN}


async def test_all_ok_http_mode(slack: FakeSlack) -> None:
    results = await run(slack.base_url, mode="http", app_token=None, signing_secret_set=True)
    assert_clean(results)
    assert all(r.ok for r in results)
    assert by_name(results)["signing"].detail == "SLACK_SIGNING_SECRET is set (HTTP mode)"
    assert not slack.calls_to("apps.connections.open")


async def test_http_mode_without_signing_secret(slack: FakeSlack) -> None:
    results = await run(slack.base_url, mode="http", app_token=None, signing_secret_set=False)
    signing = by_name(results)["signing"]
    assert not signing.ok
    assert "SLACK_SIGNING_SECRET is not set" in signing.detail


async def test_unknown_mode(slack: FakeSlack) -> None:
    mode = by_name(await run(slack.base_url, mode="webhook"))["mode"]
    assert not mode.ok and "use socket or http" in mode.detail


async def test_bad_bot_token(slack: FakeSlack) -> None:
    results = await run(slack.base_url, token="xoxb-9999-0000-Sekr1tWrong")
    text = assert_clean(results)
    checks = by_name(results)
    assert not checks["token"].ok
    assert "SLACK_BOT_TOKEN rejected (invalid_auth)" in checks["token"].detail
    assert checks["scopes"].detail == "not checked: needs a working bot token"
    assert results[-1] == CheckResult(
        "channel", False, "C0001MLJOBS: not checked: needs a working bot token"
    )
    assert checks["socket"].ok  # the app token is independent of the bot token
    assert "Sekr1tWrong" not in text
    assert [c.method for c in slack.calls] == ["auth.test", "apps.connections.open"]


async def test_missing_bot_token(slack: FakeSlack) -> None:
    results = await run(slack.base_url, token=None)
    assert by_name(results)["token"] == CheckResult("token", False, "SLACK_BOT_TOKEN is not set")
    assert not slack.calls_to("auth.test")


async def test_user_token_is_not_a_bot_token(directory: NameDirectory) -> None:
    results = await run(directory.base_url, token=USER_TOKEN)
    assert_clean(results)
    token = by_name(results)["token"]
    assert not token.ok
    assert "not a bot" in token.detail and "@alice" in token.detail


async def test_missing_scope() -> None:
    fake = await started(scopes=[s for s in REQUIRED_SCOPES if s != "files:write"])
    try:
        results = await run(fake.base_url)
    finally:
        await fake.close()
    text = assert_clean(results)
    assert by_name(results)["scopes"] == CheckResult(
        "scopes", False, "missing files:write — reinstall the app after adding it"
    )
    assert "FAIL scopes   missing files:write" in text
    assert by_name(results)["token"].ok


async def test_an_app_installed_from_the_old_manifest_is_told_what_to_add() -> None:
    old = [
        "commands", "chat:write", "chat:write.public", "files:write", "users:read",
        "usergroups:read", "channels:read", "groups:read", "channels:history", "groups:history",
        "im:history",
    ]  # fmt: skip
    fake = await started(scopes=old)
    try:
        scopes = by_name(await run(fake.base_url))["scopes"]
    finally:
        await fake.close()
    assert scopes == CheckResult(
        "scopes",
        False,
        "missing im:read, mpim:read, mpim:history, im:write, metadata.message:read"
        " — reinstall the app after adding them",
    )


async def test_missing_scopes_and_extra_ones() -> None:
    fake = await started(scopes=["commands", "chat:write", "im:history"])
    try:
        results = await run(fake.base_url)
    finally:
        await fake.close()
    checks = by_name(results)
    assert checks["scopes"].detail.startswith(
        "missing chat:write.public, files:write, usergroups:read"
    )
    assert checks["scopes"].detail.endswith("reinstall the app after adding them")
    # Without channels:read Slack refuses conversations.info, naming the scope.
    assert results[-1].detail == (
        "C0001MLJOBS: missing scope channels:read — reinstall the app after adding it"
    )
    fake = await started(scopes=[*REQUIRED_SCOPES, "reactions:read"])
    try:
        scopes = by_name(await run(fake.base_url))["scopes"]
    finally:
        await fake.close()
    assert scopes.ok and scopes.detail.endswith("(also granted, not needed: reactions:read)")


async def test_bot_not_in_channel(slack: FakeSlack, directory: NameDirectory) -> None:
    expected = "#random (C0002RANDOM): the bot is not a member — invite @batchai to #random"
    by_id = (await run(slack.base_url, channels=("C0002RANDOM",)))[-1]
    assert not by_id.ok and by_id.detail == expected
    by_channel_name = (await run(directory.base_url, channels=("#random",)))[-1]
    assert not by_channel_name.ok and by_channel_name.detail == expected


async def test_unknown_channel(slack: FakeSlack, directory: NameDirectory) -> None:
    results = await run(slack.base_url, channels=("C0404NOPE", "G0004HIDDEN"))
    assert_clean(results)
    unknown, private = results[-2:]
    assert unknown == CheckResult(
        "channel",
        False,
        "C0404NOPE: not found (channel_not_found) — check the ID; "
        "if it is private, invite @batchai to it",
    )
    assert not private.ok and "channel_not_found" in private.detail  # private, bot not in it
    named = (await run(directory.base_url, channels=("#no-such-channel",)))[-1]
    assert named == CheckResult(
        "channel",
        False,
        "#no-such-channel: not found (channel_not_found) — check the name; "
        "if it is private, invite @batchai to #no-such-channel",
    )


async def test_not_in_channel_error_is_explained(slack: FakeSlack) -> None:
    slack.fail_next("conversations.info", 200, error="not_in_channel")
    result = (await run(slack.base_url))[-1]
    assert result == CheckResult(
        "channel",
        False,
        "C0001MLJOBS: the bot is not in it (not_in_channel) — invite @batchai to it",
    )


async def test_archived_channel(slack: FakeSlack) -> None:
    old = (await run(slack.base_url, channels=("C0005OLD",)))[-1]
    assert old == CheckResult(
        "channel", False, "#old-jobs (C0005OLD): archived — configure another channel"
    )


async def test_channel_names_paginate_and_list_once(directory: NameDirectory) -> None:
    directory.channels += [
        Channel(f"C01{i:05d}X", f"team-{i}").to_api() for i in range(5)
    ]  # 3 visible + 5 = 8 channels, 2 per page
    channels = ("#team-4", "team-0", "#gpu-approvers", "#team-4")  # duplicates are checked once
    results = await run(directory.base_url, channels=channels)
    assert_clean(results)
    assert [r.detail for r in results[3:]] == [
        "#team-4 (C0100004X): the bot is a member",
        "#team-0 (C0100000X): the bot is a member",
        "#gpu-approvers (G0003APPROVE): the bot is a member",
    ]
    assert directory.cursors == ["", "2", "4", "6"]  # one pass over all pages


async def test_channel_list_refused(slack: FakeSlack) -> None:
    slack.fail_next("conversations.list", 200, error="missing_scope")
    result = (await run(slack.base_url, channels=("#ml-jobs",)))[-1]
    assert result == CheckResult(
        "channel", False, "#ml-jobs: missing scope — reinstall the app after adding it"
    )


async def test_app_token_problems(slack: FakeSlack) -> None:
    missing = by_name(await run(slack.base_url, app_token=None))["socket"]
    assert not missing.ok and "SLACK_APP_TOKEN is not set" in missing.detail
    wrong = await run(slack.base_url, app_token="xapp-1-A0001-5555-Sekr1tOld")
    assert_clean(wrong)
    assert "SLACK_APP_TOKEN rejected (invalid_auth)" in by_name(wrong)["socket"].detail
    swapped = await run(slack.base_url, app_token=BOT_TOKEN)
    assert_clean(swapped)
    socket_check = by_name(swapped)["socket"]
    assert "not_allowed_token_type" in socket_check.detail
    assert "not the bot token" in socket_check.detail


async def test_rate_limited_auth_test(slack: FakeSlack) -> None:
    slack.fail_next("auth.test", 429)
    token = by_name(await run(slack.base_url))["token"]
    assert not token.ok
    assert token.detail == (
        "SLACK_BOT_TOKEN rejected (ratelimited): rate limited by Slack, try again in a minute"
    )


async def test_token_echoed_by_slack_is_redacted(slack: FakeSlack) -> None:
    slack.fail_next("conversations.info", 200, error=f"weird {BOT_TOKEN} xoxe.xoxp-1-Sekr1tOther")
    results = await run(slack.base_url)
    text = assert_clean(results)
    assert "C0001MLJOBS: cannot read the channel (weird [redacted] [redacted])" in text


async def test_wrong_api_url_is_not_blamed_on_the_token(slack: FakeSlack) -> None:
    base_url = slack.base_url.replace("/api/", "/wrong/")  # aiohttp answers 404 text/plain
    results = await run(base_url)
    assert_clean(results)
    token = by_name(results)["token"]
    assert token.detail == f"cannot reach Slack at {base_url}: HTTP 404 without a Slack API answer"
    assert by_name(results)["socket"].detail == "not checked: Slack API unreachable"


def free_port() -> int:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_slack_unreachable() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/api/"
    client = AsyncWebClient(
        token=BOT_TOKEN,
        base_url=base_url,
        timeout=5,
        # The SDK's default connection retry, without its backoff sleep.
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(
                interval_calculator=FixedValueRetryIntervalCalculator(0.0)
            )
        ],
    )
    results = await run(base_url, client=client, channels=("C0001MLJOBS", "#ml-jobs"))
    text = assert_clean(results)
    token = by_name(results)["token"]
    assert not token.ok
    assert token.detail.startswith(f"cannot reach Slack at {base_url}: ClientConnectorError")
    assert [r.detail for r in results[1:]] == [
        "not checked: Slack API unreachable",
        "not checked: Slack API unreachable",
        "C0001MLJOBS: not checked: Slack API unreachable",
        "#ml-jobs: not checked: Slack API unreachable",
    ]
    assert all(not r.ok for r in results)
    assert "Traceback" not in text


async def test_api_url_credentials_are_not_printed() -> None:
    port = free_port()
    client = AsyncWebClient(
        token=BOT_TOKEN, base_url=f"http://proxyuser:Sekr1tPw@127.0.0.1:{port}/api/", timeout=5
    )
    client.retry_handlers = []
    text = assert_clean(await run("", client=client, channels=()))
    # aiohttp refuses credentials in the URL next to a bearer token: reported, not raised.
    assert f"cannot reach Slack at http://127.0.0.1:{port}/api/: ValueError" in text
    assert "proxyuser" not in text


async def test_check_settings(slack: FakeSlack) -> None:
    settings = Settings(
        _env_file=None,
        slack_bot_token=BOT_TOKEN,
        slack_app_token=APP_TOKEN,
        slack_api_url=slack.base_url,
    )
    results = await check_settings(settings, channels=["C0001MLJOBS"])
    assert_clean(results)
    assert [(r.name, r.ok) for r in results] == [
        ("token", True),
        ("scopes", True),
        ("socket", True),
        ("channel", True),
    ]
    http = Settings(
        _env_file=None,
        slack_bot_token=BOT_TOKEN,
        slack_mode="http",
        slack_signing_secret="",
        slack_api_url=slack.base_url,
    )
    signing = by_name(await check_settings(http))["signing"]
    assert not signing.ok  # an empty secret is no secret


def test_format_results_aligns_columns() -> None:
    results = [
        CheckResult("token", True, "team Acme, bot @batchai"),
        CheckResult("scopes", False, "missing files:write — reinstall the app after adding it"),
        CheckResult("channel", True, "#ml (C1): the bot is a member"),
    ]
    assert format_results(results).splitlines() == [
        "ok   token    team Acme, bot @batchai",
        "FAIL scopes   missing files:write — reinstall the app after adding it",
        "ok   channel  #ml (C1): the bot is a member",
    ]
    assert format_results([]) == ""
    leaked = format_results([CheckResult("x", False, f"oops {APP_TOKEN}\nsecond line")])
    assert APP_TOKEN not in leaked and "\n" not in leaked
