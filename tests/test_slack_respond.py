"""The response_url answer the bot posts itself (bot/slack.py SharedRespond), against a loopback
server: the JSON Slack gets, and one more try when the connection drops."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.slack import SharedRespond


class Answers:
    """A response_url endpoint: records each answer; drops the first `drops` connections."""

    def __init__(self, drops: int = 0) -> None:
        self.drops = drops
        self.bodies: list[dict[str, Any]] = []
        self.content_types: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.drops:
            self.drops -= 1
            assert request.transport is not None
            request.transport.close()  # no answer: the client sees the server disconnect
            return web.Response(text="never read")
        self.bodies.append(json.loads(body))
        self.content_types.append(request.headers["Content-Type"])
        return web.Response(text="ok")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(answers: Answers) -> TestServer:
    app = web.Application()
    app.router.add_post("/answer", answers.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_an_answer_is_the_message_without_empty_fields(http: aiohttp.ClientSession) -> None:
    answers = Answers()
    server = await serve(answers)
    try:
        respond = SharedRespond(response_url=str(server.make_url("/answer")), session=http)
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*c1* <ok>"}}]
        sent = await respond(
            text="c1 ✓", blocks=blocks, response_type="ephemeral", replace_original=False
        )
        whole = await respond({"text": "done", "thread_ts": None})
    finally:
        await server.close()
    assert (sent.status_code, sent.body, whole.body) == (200, "ok", "ok")
    assert answers.bodies == [
        {"text": "c1 ✓", "blocks": blocks, "response_type": "ephemeral", "replace_original": False},
        {"text": "done"},
    ]
    assert answers.content_types == ["application/json;charset=utf-8"] * 2


async def test_a_dropped_connection_is_tried_once_more(http: aiohttp.ClientSession) -> None:
    answers = Answers(drops=1)
    server = await serve(answers)
    try:
        respond = SharedRespond(response_url=str(server.make_url("/answer")), session=http)
        sent = await respond(text="again", response_type="in_channel")
    finally:
        await server.close()
    assert sent.status_code == 200
    assert answers.bodies == [{"text": "again", "response_type": "in_channel"}]


async def test_a_second_drop_is_raised(http: aiohttp.ClientSession) -> None:
    answers = Answers(drops=2)
    server = await serve(answers)
    try:
        respond = SharedRespond(response_url=str(server.make_url("/answer")), session=http)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await respond(text="lost")
    finally:
        await server.close()
    assert answers.bodies == []
