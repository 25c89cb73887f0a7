"""The fake Slack server, driven by the real slack_sdk / slack_bolt clients."""

from __future__ import annotations

import json
import time

import pytest
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.fakes.slack import (
    APP_TOKEN,
    BOT_TOKEN,
    DEFAULT_SCOPES,
    VALIDATED,
    Channel,
    FakeClock,
    FakeSlack,
    app_home_opened_event,
    block_actions_payload,
    check_blocks,
    check_view,
    decode_json_arg,
    fake_slack_server,
    form_body,
    interactive_body,
    signed_headers,
    slash_command_form,
    socket_mode_client,
    view_submission_payload,
)

SECRET = "signing-secret-for-tests"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

MODAL = {
    "type": "modal",
    "callback_id": "job_create",
    "title": {"type": "plain_text", "text": "New job"},
    "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}],
}
HOME = {"type": "home", "blocks": [{"type": "divider"}]}


async def _error_of(coro: object) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        await coro  # type: ignore[misc]
    return info.value


async def test_auth_test_identity_scopes_header_and_bad_tokens() -> None:
    async with FakeSlack() as fake:
        client = fake.client()
        assert client.base_url == f"http://127.0.0.1:{fake.port}/api/"
        resp = await client.auth_test()
        assert (resp["team_id"], resp["user_id"], resp["bot_id"]) == ("T0001", "U0BOT", "B0001")
        assert resp.headers["x-oauth-scopes"].split(",") == list(DEFAULT_SCOPES)
        call = fake.last_call("auth.test")
        assert call.token == BOT_TOKEN and call.ok

        err = await _error_of(
            AsyncWebClient(token="xoxb-wrong", base_url=fake.base_url).auth_test()
        )
        assert err.response.status_code == 200
        assert err.response["error"] == "invalid_auth"
        err = await _error_of(fake.client(APP_TOKEN).chat_postMessage(channel="C1", text="x"))
        assert err.response["error"] == "not_allowed_token_type"
        assert [c.ok for c in fake.calls] == [True, False, False]
        assert fake.messages == {}


async def test_post_update_ephemeral_and_permalink_are_stateful() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        client = fake.client()
        first = await client.chat_postMessage(
            channel="C0001",
            text="job queued",
            blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*queued*"}}],
            unfurl_links=False,
            unfurl_media=False,
        )
        second = await client.chat_postMessage(channel="C0001", text="other")
        assert first["channel"] == "C0001"
        assert float(second["ts"]) > float(first["ts"])
        assert len(first["ts"].split(".")[1]) == 6

        msg = fake.message("C0001", first["ts"])
        assert (msg.text, msg.unfurl_links, msg.unfurl_media) == ("job queued", False, False)
        assert msg.block_text() == "job queued\n*queued*"

        up = await client.chat_update(channel="C0001", ts=first["ts"], text="job running")
        assert up["message"]["text"] == "job running"
        assert [v["text"] for v in msg.versions] == ["job queued", "job running"]
        assert msg.blocks == [{"type": "section", "text": {"type": "mrkdwn", "text": "*queued*"}}]

        err = await _error_of(client.chat_update(channel="C0001", ts="1.000000", text="x"))
        assert err.response["error"] == "message_not_found"

        eph = await client.chat_postEphemeral(channel="C0001", user="U0042", text="only you")
        assert eph["message_ts"]
        assert [e.text for e in fake.ephemerals_for("U0042")] == ["only you"]
        assert fake.ephemerals_for("U0001") == []

        link = await client.chat_getPermalink(channel="C0001", message_ts=first["ts"])
        assert link["permalink"].endswith(f"/archives/C0001/p{first['ts'].replace('.', '')}")

        with pytest.warns(UserWarning):  # the SDK itself warns about a missing `text`
            err = await _error_of(client.chat_postMessage(channel="C0001"))
        assert err.response["error"] == "no_text"
        too_many = [{"type": "divider"}] * 51
        err = await _error_of(client.chat_postMessage(channel="C0001", text="x", blocks=too_many))
        assert err.response["error"] == "invalid_blocks"


async def test_channels_membership_users_and_groups() -> None:
    channels = [
        Channel("C0PUB", "general"),
        Channel("C0OUT", "elsewhere", is_member=False),
        Channel("G0PRIV", "secret", is_private=True, is_member=False),
    ]
    async with FakeSlack(
        rate_limits=False,
        channels=channels,
        users={"U0001": {"real_name": "Ada Lovelace"}},
        usergroups={"S0APPROVERS": ["U0001", "U0002"]},
    ) as fake:
        client = fake.client()
        assert (await client.chat_postMessage(channel="C0PUB", text="a"))["ok"]
        # public channel the bot has not joined: allowed through chat:write.public
        assert (await client.chat_postMessage(channel="C0OUT", text="b"))["ok"]
        err = await _error_of(client.chat_postMessage(channel="G0PRIV", text="c"))
        assert err.response["error"] == "not_in_channel"
        err = await _error_of(client.chat_postMessage(channel="C0NOPE", text="d"))
        assert err.response["error"] == "channel_not_found"

        info = await client.conversations_info(channel="C0OUT")
        assert info["channel"]["is_member"] is False and info["channel"]["name"] == "elsewhere"
        assert info["channel"]["is_private"] is False

        user = await client.users_info(user="U0001")
        assert user["user"]["real_name"] == "Ada Lovelace"
        err = await _error_of(client.users_info(user="U0404"))
        assert err.response["error"] == "user_not_found"
        members = await client.usergroups_users_list(usergroup="S0APPROVERS")
        assert members["users"] == ["U0001", "U0002"]
        err = await _error_of(client.usergroups_users_list(usergroup="S0NONE"))
        assert err.response["error"] == "no_such_subteam"

        dm = await client.chat_postMessage(channel="U0001", text="hello you")
        assert dm["channel"] == fake.dm_channel("U0001") and dm["channel"].startswith("D")

    async with FakeSlack(rate_limits=False, channels=["C0OUT"], scopes=["chat:write"]) as fake:
        fake.channels["C0OUT"].is_member = False
        err = await _error_of(fake.client().chat_postMessage(channel="C0OUT", text="b"))
        assert err.response["error"] == "not_in_channel"
        err = await _error_of(fake.client().users_info(user="U0001"))
        assert err.response["error"] == "missing_scope"
        assert err.response["needed"] == "users:read"


async def test_threads_replies_and_human_messages() -> None:
    scopes = [*DEFAULT_SCOPES, "channels:history"]
    async with FakeSlack(rate_limits=False, scopes=scopes) as fake:
        client = fake.client()
        parent = (await client.chat_postMessage(channel="C0001", text="job card"))["ts"]
        r1 = await client.chat_postMessage(channel="C0001", text="queued", thread_ts=parent)
        human = fake.add_user_message("C0001", "thanks bot", user="U0007", thread_ts=parent)
        r3 = await client.chat_postMessage(
            channel="C0001", text="done", thread_ts=parent, reply_broadcast=True
        )

        thread = fake.thread("C0001", parent)
        assert [m.text for m in thread] == ["job card", "queued", "thanks bot", "done"]
        assert [m.ts for m in fake.replies("C0001", parent)] == [r1["ts"], human.ts, r3["ts"]]
        assert fake.message("C0001", r3["ts"]).reply_broadcast is True

        replies = await client.conversations_replies(channel="C0001", ts=parent)
        assert [m["text"] for m in replies["messages"]] == [m.text for m in thread]
        assert replies["messages"][0]["reply_count"] == 3
        assert fake.last_call("conversations.replies").http_method == "GET"

        err = await _error_of(client.chat_update(channel="C0001", ts=human.ts, text="edited"))
        assert err.response["error"] == "cant_update_message"
        err = await _error_of(client.conversations_replies(channel="C0001", ts="9.000000"))
        assert err.response["error"] == "thread_not_found"

    async with FakeSlack(rate_limits=False, scopes=["chat:write"]) as fake:  # no channels:history
        err = await _error_of(fake.client().conversations_replies(channel="C0001", ts="1.1"))
        assert err.response["error"] == "missing_scope"


async def test_post_message_rate_limit_per_channel_on_the_fake_clock() -> None:
    clock = FakeClock()
    async with FakeSlack(clock=clock) as fake:
        client = fake.client()
        for i in range(3):  # burst allowance
            await client.chat_postMessage(channel="C0001", text=f"m{i}")
        err = await _error_of(client.chat_postMessage(channel="C0001", text="too fast"))
        assert err.response.status_code == 429
        assert err.response["error"] == "ratelimited"
        assert err.response.headers["Retry-After"] == "1"
        assert fake.ratelimited["chat.postMessage"] == 1
        assert (await client.chat_postMessage(channel="C0002", text="other channel"))["ok"]

        clock.advance(0.5)
        err = await _error_of(client.chat_postMessage(channel="C0001", text="still too fast"))
        assert err.response.status_code == 429
        clock.advance(0.5)
        assert (await client.chat_postMessage(channel="C0001", text="allowed again"))["ok"]
        assert fake.ratelimited["chat.postMessage"] == 2
        assert len(fake.messages_in("C0001")) == 4
        assert len(fake.calls_to("chat.postMessage", ok=False)) == 2


async def test_chat_update_budget_is_workspace_wide() -> None:
    clock = FakeClock()
    async with FakeSlack(clock=clock, updates_per_minute=50, update_burst=5) as fake:
        client = fake.client()
        a = (await client.chat_postMessage(channel="C0001", text="a"))["ts"]
        b = (await client.chat_postMessage(channel="C0002", text="b"))["ts"]
        for i in range(5):
            channel, ts = ("C0001", a) if i % 2 else ("C0002", b)
            await client.chat_update(channel=channel, ts=ts, text=f"v{i}")
        err = await _error_of(client.chat_update(channel="C0001", ts=a, text="over"))
        assert err.response.status_code == 429
        assert err.response.headers["Retry-After"] == "2"  # 1 token at 50/min takes 1.2 s
        clock.advance(1.2)
        assert (await client.chat_update(channel="C0001", ts=a, text="ok now"))["ok"]
        assert fake.ratelimited == {"chat.update": 1}
        assert fake.message("C0001", a).text == "ok now"

    async with FakeSlack(clock=FakeClock(), rate_limits=False) as fake:
        client = fake.client()
        ts = (await client.chat_postMessage(channel="C0001", text="a"))["ts"]
        for i in range(60):
            await client.chat_update(channel="C0001", ts=ts, text=f"v{i}")
        assert fake.message("C0001", ts).edits == 60
        assert not fake.ratelimited


async def test_retry_handler_recovers_from_one_injected_429() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        client = fake.client()
        ts = (await client.chat_postMessage(channel="C0001", text="a"))["ts"]
        fake.fail_next("chat.update", status=429, retry_after=1)

        err = await _error_of(client.chat_update(channel="C0001", ts=ts, text="no retry"))
        assert err.response.status_code == 429

        fake.fail_next("chat.update", status=429, retry_after=1)
        client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
        resp = await client.chat_update(channel="C0001", ts=ts, text="retried")  # sleeps ~1-2 s
        assert resp["ok"]
        assert [c.status for c in fake.calls_to("chat.update")] == [429, 429, 200]
        assert fake.faults_served["chat.update"] == 2
        assert fake.message("C0001", ts).text == "retried"


async def test_injected_server_error_api_error_and_timeout() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        fake.fail_next("chat.postMessage", status=503)
        err = await _error_of(fake.client().chat_postMessage(channel="C0001", text="x"))
        assert err.response.status_code == 503
        fake.fail_next("chat.postMessage", status=200, error="msg_too_long")
        err = await _error_of(fake.client().chat_postMessage(channel="C0001", text="x"))
        assert err.response["error"] == "msg_too_long"

        fake.fail_next("auth.test", status=200, delay=5.0)
        with pytest.raises(TimeoutError):
            await fake.client(timeout=0.2).auth_test()  # type: ignore[arg-type]
        assert (await fake.client().auth_test())["ok"]
        assert fake.messages == {}


async def test_files_upload_v2_end_to_end_into_a_thread() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        client = fake.client()
        parent = (await client.chat_postMessage(channel="C0001", text="job card"))["ts"]
        resp = await client.files_upload_v2(
            channel="C0001",
            thread_ts=parent,
            content=PNG,
            filename="loss.png",
            title="Loss curve",
            initial_comment="training finished",
        )
        file_id = resp["file"]["id"]
        assert resp["file"]["title"] == "Loss curve" and resp["file"]["name"] == "loss.png"

        step1 = fake.last_call("files.getUploadURLExternal")
        assert step1.args["filename"] == "loss.png" and step1.args["length"] == str(len(PNG))
        upload = fake.last_call("upload")
        assert upload.raw_body == PNG and upload.args == {"file_id": file_id} and upload.ok
        assert upload.headers["Content-Type"] == "application/octet-stream"
        step3 = fake.last_call("files.completeUploadExternal")
        assert step3.json_arg("files")[0]["id"] == file_id
        assert [c.method for c in fake.calls][-3:] == [
            "files.getUploadURLExternal",
            "upload",
            "files.completeUploadExternal",
        ]

        stored = fake.files[file_id]
        assert stored.data == PNG and stored.completed
        assert stored.channels == ["C0001"] and stored.thread_ts == parent
        share = fake.replies("C0001", parent)[-1]
        assert share.files[0]["id"] == file_id and share.text == "training finished"
        assert stored.shares == [("C0001", parent, share.ts)]

    async with FakeSlack(rate_limits=False, channels=[Channel("C0OUT", is_member=False)]) as fake:
        err = await _error_of(
            fake.client().files_upload_v2(channel="C0OUT", content=b"x", filename="a.txt")
        )
        assert err.response["error"] == "not_in_channel"  # files need membership


async def test_views_trigger_is_single_use_and_expires() -> None:
    clock = FakeClock()
    async with FakeSlack(clock=clock) as fake:
        client = fake.client()
        trigger = fake.issue_trigger()
        opened = await client.views_open(trigger_id=trigger, view=MODAL)
        view_id = opened["view"]["id"]
        assert fake.views[view_id].callback_id == "job_create"

        err = await _error_of(client.views_open(trigger_id=trigger, view=MODAL))
        assert err.response["error"] == "invalid_trigger_id"
        err = await _error_of(client.views_open(trigger_id="123.456.never-issued", view=MODAL))
        assert err.response["error"] == "invalid_trigger_id"
        late = fake.issue_trigger()
        clock.advance(3.5)
        err = await _error_of(client.views_open(trigger_id=late, view=MODAL))
        assert err.response["error"] == "expired_trigger_id"

        new_view = {**MODAL, "title": {"type": "plain_text", "text": "Edited"}}
        up = await client.views_update(view_id=view_id, view=new_view, hash=opened["view"]["hash"])
        assert up["view"]["title"]["text"] == "Edited"
        err = await _error_of(client.views_update(view_id=view_id, view=MODAL, hash="stale"))
        assert err.response["error"] == "hash_conflict"
        assert len(fake.views[view_id].versions) == 2

        home = {
            "type": "home",
            "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "Clusters"}}],
        }
        await client.views_publish(user_id="U0001", view=home)
        await client.views_publish(
            user_id="U0002", view={"type": "home", "blocks": [{"type": "divider"}]}
        )
        stored = fake.home_view("U0001")
        assert stored is not None and stored.block_text() == "Clusters"
        assert fake.home_view("U0003") is None
        err = await _error_of(client.views_publish(user_id="U0001", view=MODAL))
        assert err.response["error"] == "invalid_arguments"


async def test_response_url_allows_five_uses_and_edits_the_bound_message() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        ts = (await fake.client().chat_postMessage(channel="C0001", text="[Cancel]"))["ts"]
        url = fake.response_url(channel="C0001", message_ts=ts, user_id="U0001")
        assert url.startswith(f"{fake.root_url}/response/")
        hook = AsyncWebhookClient(url)

        first = await hook.send(text="Cancelling…", replace_original=True)
        assert (first.status_code, first.body) == (200, "ok")
        assert fake.message("C0001", ts).text == "Cancelling…"
        await hook.send(text="only for you")
        assert [e.text for e in fake.ephemerals_for("U0001")] == ["only for you"]
        await hook.send(text="for everyone", response_type="in_channel")
        assert fake.messages_in("C0001")[-1].text == "for everyone"
        for _ in range(2):
            assert (await hook.send(text="again")).status_code == 200
        sixth = await hook.send(text="one too many")
        assert sixth.status_code == 404

        posts = fake.responses_to(url)
        assert [p.status for p in posts] == [200, 200, 200, 200, 200, 404]
        assert posts[0].replace_original and posts[2].response_type == "in_channel"
        other = await AsyncWebhookClient(fake.response_url()).send(text="fresh url")
        assert other.status_code == 200


async def test_socket_mode_round_trip_with_the_sdk_client() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        client = SocketModeClient(
            app_token=APP_TOKEN,
            web_client=AsyncWebClient(base_url=fake.base_url),
            auto_reconnect_enabled=False,
        )
        seen: list[SocketModeRequest] = []

        async def listener(c: SocketModeClient, req: SocketModeRequest) -> None:
            seen.append(req)
            if req.payload.get("text") != "ignore me":
                answer = {"text": f"got {req.payload['text']}"}
                await c.send_socket_mode_response(SocketModeResponse(req.envelope_id, answer))

        client.socket_mode_request_listeners.append(listener)  # type: ignore[arg-type]
        try:
            await client.connect()
            await fake.socket_connected(timeout=5)
            form = slash_command_form(
                "job list",
                user_id="U0001",
                channel_id="C0001",
                response_url=fake.response_url(),
                trigger_id=fake.issue_trigger(),
            )
            ack = await fake.socket_send("slash_commands", form)
            assert ack == {"text": "got job list"}
            assert seen[0].type == "slash_commands" and seen[0].payload["command"] == "/batchai"
            with pytest.raises(TimeoutError):
                await fake.socket_send("slash_commands", {**form, "text": "ignore me"}, timeout=0.3)
        finally:
            await client.close()

        assert fake.last_call("apps.connections.open").token == APP_TOKEN
        assert fake.socket_sent[0]["type"] == "hello"
        assert fake.socket_acks[0]["envelope_id"] == fake.socket_sent[1]["envelope_id"]
        err = await _error_of(fake.client().apps_connections_open(app_token=BOT_TOKEN))
        assert err.response["error"] == "not_allowed_token_type"


async def test_bolt_socket_mode_handler_acks_and_posts_through_the_fake() -> None:
    async with fake_slack_server(rate_limits=False) as fake:
        app = AsyncApp(client=fake.client(), signing_secret=SECRET)

        @app.command("/batchai")
        async def command(ack, command, client) -> None:  # type: ignore[no-untyped-def]
            await ack(f"on it: {command['text']}")
            await client.chat_postMessage(channel=command["channel_id"], text="job list here")

        @app.event("app_home_opened")
        async def home(event, client) -> None:  # type: ignore[no-untyped-def]
            await client.views_publish(user_id=event["user"], view=HOME)

        handler = AsyncSocketModeHandler(app, APP_TOKEN)
        await handler.connect_async()
        try:
            await fake.socket_connected()
            form = slash_command_form(
                "job list",
                user_id="U0001",
                channel_id="C0001",
                response_url=fake.response_url(),
                trigger_id=fake.issue_trigger(),
            )
            ack = await fake.socket_send("slash_commands", form)
            assert ack == {"text": "on it: job list"}
            post = await fake.wait_for_call("chat.postMessage")
            assert post.args["channel"] == "C0001" and post.ok

            await fake.socket_send("events_api", app_home_opened_event("U0005"))
            await fake.wait_for(lambda: fake.home_view("U0005") is not None)
        finally:
            await handler.close_async()


async def test_builders_make_signed_requests_bolt_accepts() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        app = AsyncApp(client=fake.client(), signing_secret=SECRET)
        clicked: list[dict] = []

        @app.command("/batchai")
        async def command(ack, respond, command) -> None:  # type: ignore[no-untyped-def]
            await ack()
            await respond(text=f"queued {command['text']}", response_type="in_channel")

        @app.action("job_cancel")
        async def cancel(ack, body) -> None:  # type: ignore[no-untyped-def]
            await ack()
            clicked.append(body)

        @app.view("job_create")
        async def submit(ack, view) -> None:  # type: ignore[no-untyped-def]
            name = view["state"]["values"]["name"]["name_input"]["value"]
            await ack(response_action="errors", errors={"name": f"{name} is taken"})

        url = fake.response_url(channel="C0001")
        form = slash_command_form(
            "job create -n mnist",
            user_id="U0001",
            channel_id="C0001",
            response_url=url,
            trigger_id=fake.issue_trigger(),
        )
        body = form_body(form)
        resp = await app.async_dispatch(
            AsyncBoltRequest(body=body.decode(), headers=signed_headers(body, SECRET))
        )
        assert resp.status == 200
        await fake.wait_for(lambda: len(fake.responses) == 1)
        assert fake.responses[0].text == "queued job create -n mnist"
        assert fake.messages_in("C0001")[-1].text == "queued job create -n mnist"

        bad = signed_headers(body, "not-the-secret")
        resp = await app.async_dispatch(AsyncBoltRequest(body=body.decode(), headers=bad))
        assert resp.status == 401

        payload = block_actions_payload(
            "job_cancel",
            "job-42",
            user_id="U0001",
            channel_id="C0001",
            message_ts="1700000000.000100",
            response_url=fake.response_url(),
            trigger_id=fake.issue_trigger(),
        )
        ibody = interactive_body(payload)
        resp = await app.async_dispatch(
            AsyncBoltRequest(body=ibody.decode(), headers=signed_headers(ibody, SECRET))
        )
        assert resp.status == 200 and clicked[0]["actions"][0]["value"] == "job-42"
        with pytest.raises(ValueError):
            block_actions_payload("a", "v", user_id="U1", trigger_id="t")

        values = {"name": {"name_input": {"type": "plain_text_input", "value": "mnist"}}}
        sub = view_submission_payload("job_create", values, user_id="U0001", private_metadata="m")
        sbody = interactive_body(sub)
        resp = await app.async_dispatch(
            AsyncBoltRequest(body=sbody.decode(), headers=signed_headers(sbody, SECRET))
        )
        assert resp.status == 200
        assert json.loads(resp.body)["errors"] == {"name": "mnist is taken"}

        event = json.dumps(app_home_opened_event("U0001")).encode()
        headers = signed_headers(event, SECRET, timestamp=1_700_000_000)
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Slack-Request-Timestamp"] == "1700000000"
        expected = SignatureVerifier(SECRET).generate_signature(timestamp="1700000000", body=event)
        assert headers["X-Slack-Signature"] == expected
        now = int(time.time())
        fresh = signed_headers(event, SECRET)
        assert abs(int(fresh["X-Slack-Request-Timestamp"]) - now) <= 1
        assert SignatureVerifier(SECRET).is_valid(
            body=event,
            timestamp=fresh["X-Slack-Request-Timestamp"],
            signature=fresh["X-Slack-Signature"],
        )
        assert form_body({"a": "b c"}) == b"a=b+c"
        assert signed_headers(b"a=b", SECRET)["Content-Type"] == "application/x-www-form-urlencoded"


async def test_received_text_unknown_methods_and_json_args() -> None:
    async with FakeSlack(rate_limits=False) as fake:
        client = fake.client()
        await client.chat_postMessage(channel="C0001", text="password=hunter2 & more")
        await client.api_call(
            "chat.postMessage",
            data={"channel": "C0001", "blocks": json.dumps([{"type": "divider"}]), "text": "f"},
        )
        resp = await client.api_call("reactions.add", params={"name": "tada", "timestamp": "1.2"})
        assert resp["ok"] and fake.last_call("reactions.add").args["name"] == "tada"

        form_call = fake.calls_to("chat.postMessage")[-1]
        assert isinstance(form_call.args["blocks"], str)
        assert form_call.json_arg("blocks") == [{"type": "divider"}]
        assert fake.messages_in("C0001")[-1].blocks == [{"type": "divider"}]
        assert decode_json_arg("1700000000.000100") == "1700000000.000100"

        text = fake.received_text()
        assert "hunter2" in text and f"Bearer {BOT_TOKEN}" in text
        assert '[{"type": "divider"}]' in text  # form-encoded on the wire, decoded copy kept
        assert "secret-that-was-never-sent" not in text
        fake.record_ack(b'{"text": "an answer in an ack"}')  # what the test read from the bot
        assert "an answer in an ack" in fake.received_text()
        fake.clear()
        assert fake.received_text() == "" and fake.calls == [] and fake.acks == []


async def test_socket_disconnect_makes_the_sdk_reconnect() -> None:
    async with FakeSlack(rate_limits=False) as fake, socket_mode_client(fake) as client:
        acked: list[str] = []

        async def listener(c: SocketModeClient, req: SocketModeRequest) -> None:
            acked.append(req.envelope_id)
            await c.send_socket_mode_response(SocketModeResponse(req.envelope_id))

        client.socket_mode_request_listeners.append(listener)  # type: ignore[arg-type]
        assert fake.socket_connections == 1
        await fake.socket_disconnect()
        await fake.socket_connected(connections=2)
        assert len(fake.calls_to("apps.connections.open", ok=True)) == 2
        payload = block_actions_payload(
            "job_logs",
            "job-1",
            user_id="U0001",
            channel_id="C0001",
            message_ts="1700000000.000100",
            response_url=fake.response_url(),
            trigger_id=fake.issue_trigger(),
        )
        assert await fake.socket_send("interactive", payload) == {}
        assert acked == [fake.socket_acks[-1]["envelope_id"]]


def _section(text: str) -> dict[str, object]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _buttons(**extra: object) -> dict[str, object]:
    button = {"type": "button", "text": {"type": "plain_text", "text": "Go"}, "action_id": "go"}
    return {"type": "actions", "elements": [{**button, **extra}]}


@pytest.mark.parametrize(
    ("blocks", "wording"),
    [
        ([_section("x")] * 51, "no more than 50 items"),
        ([_section("x" * 3001)], "3001"),
        ([_buttons(value="v" * 2001)], "2001"),
        ([_buttons(action_id="a" * 256)], "256"),
        ([{**_section("x"), "block_id": "b" * 256}], "256"),
        ([{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}], "10"),
        ([{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}], "10"),
        ([_buttons(style="loud")], "style"),  # the SDK's own check
        ([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}], "150"),
        ([{"type": "sektion", "text": {"type": "mrkdwn", "text": "x"}}], "unknown block"),
        ([{**_section("x"), "acessory": {}}], "unknown field /acessory"),
    ],
)
def test_the_validator_refuses_what_slack_refuses(blocks: list[object], wording: str) -> None:
    problem = check_blocks(blocks, 50)
    assert problem is not None and wording in problem


def test_views_are_validated_by_the_sdk_model_and_the_limits() -> None:
    assert check_view(MODAL, "modal") is None and check_view(HOME, "home") is None
    long_title = {**MODAL, "title": {"type": "plain_text", "text": "t" * 25}}
    assert "25" in (check_view(long_title, "modal") or "")
    assert "3001" in (check_view({**MODAL, "private_metadata": "m" * 3001}, "modal") or "")
    assert "100" in (check_view({"type": "home", "blocks": [_section("x")] * 101}, "home") or "")
    assert "blocks" in (check_view({"type": "home", "blocks": []}, "home") or "")


async def test_every_surface_validates_its_payload() -> None:
    bad = [_section("x" * 3001)]
    before = sum(VALIDATED.values())
    async with FakeSlack(rate_limits=False) as fake:
        fake.add_user("U0001")
        client = fake.client()
        for call in (
            client.chat_postMessage(channel="C0001", text="t", blocks=bad),
            client.chat_postEphemeral(channel="C0001", user="U0001", text="t", blocks=bad),
        ):
            assert (await _error_of(call)).response["error"] == "invalid_blocks"
        posted = await client.chat_postMessage(channel="C0001", text="t", blocks=[_section("ok")])
        update = client.chat_update(channel="C0001", ts=posted["ts"], text="t", blocks=bad)
        assert (await _error_of(update)).response["error"] == "invalid_blocks"
        big = {"type": "home", "blocks": bad}
        publish = client.views_publish(user_id="U0001", view=big)
        assert (await _error_of(publish)).response["error"] == "invalid_arguments"
        url = fake.response_url(channel="C0001", user_id="U0001")
        answer = await AsyncWebhookClient(url).send_dict({"text": "t", "blocks": bad})
        assert answer.status_code == 400 and answer.body == "invalid_blocks"
    assert sum(VALIDATED.values()) - before == 6
