"""The attacker at the bot's port and in its inputs: unsigned, forged, oversized, unterminated and
deeply nested bodies; hostile inline job.json and log lines. Outcomes only: the CPU figures are
in bench/hostile_body_bench.py (a regex that took quadratic time on `{"\\"\\"…` froze the bot)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import quote

import pytest
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.slack import MAX_EVENT_BYTES, build_app
from services.core.errors import SpecError
from services.jobs.tailer import LogParser, parse_progress
from services.jobspec import load_job_spec, parse_json
from tests.fakes.slack import form_body, signed_headers, slash_command_form
from tests.slack.conftest import SECRET, SlackRig, fake, rig  # noqa: F401  (the Slack rig)

# ruff: noqa: F811  (tests take the imported `rig` fixture as an argument)

MiB = 1 << 20


def unterminated(size: int, head: str = '{"') -> str:
    """`{"\\"\\"\\"…`: a string that never ends, made of escaped quotes, `size` characters."""
    return head + '\\"' * ((size - len(head)) // 2)


HOSTILE_JSON = [
    unterminated(MiB),
    unterminated(MiB, '{"type": "event_callback", "event": {"text": "'),
    '{"a": "' + "\\\\" * ((MiB - 7) // 2),  # escaped backslashes, never closed
    '["' + '\\"\\\\' * ((MiB - 2) // 4),
]


def one_line(message: str) -> None:
    assert message.strip() and "\n" not in message and "\r" not in message, message


async def post(rig: SlackRig, body: bytes, headers: dict[str, str]) -> tuple[int, object]:
    async with rig.http.post(
        f"{rig.bot.web_url}/slack/events", data=body, headers=headers
    ) as response:
        text = await response.text()
        return response.status, json.loads(text) if text.startswith("{") else text


def _bodies() -> list[bytes]:
    return [
        *(text.encode() for text in HOSTILE_JSON),
        b"payload=" + unterminated(MiB - 8).encode(),
        b"payload=" + quote(unterminated(MiB // 4)).encode(),
        b"payload=" + quote("[" * 100_000).encode(),
        ("[" * 100_000).encode(),
        b'{"type": "event_callback", "event": ' + ("[" * 100_000).encode() + b"}",
        b"text=\xff\xfe&command=/batchai",  # not UTF-8: the signature cannot match
    ]


async def test_unsigned_hostile_bodies_of_1_mib_are_refused_unread(rig: SlackRig) -> None:
    """The signature and its timestamp are checked before anything parses or scans the body."""
    body = unterminated(MiB).encode()
    assert len(body) <= MAX_EVENT_BYTES
    now = str(int(time.time()))
    good = signed_headers(body, SECRET)
    header_sets: list[dict[str, str]] = [
        {"Content-Type": "application/json"},
        {**good, "X-Slack-Signature": "v0=" + "0" * 64},  # forged
        signed_headers(body, SECRET, timestamp=int(time.time()) - 3600),  # stale
        {**good, "X-Slack-Request-Timestamp": "soon"},  # slack_sdk's int() would raise
        {**good, "X-Slack-Request-Timestamp": "9" * 5000},
        {**good, "X-Slack-Request-Timestamp": now, "X-Slack-Signature": "v0=" + "é" * 64},
        {**signed_headers(b"other", SECRET), "Content-Type": "application/json"},
    ]
    for headers in header_sets:
        assert await post(rig, body, headers) == (401, {"error": "invalid request"}), headers
    for hostile in _bodies():
        kind = "application/json" if hostile[:1] in b"{[" else "application/x-www-form-urlencoded"
        status, answer = await post(rig, hostile, {"Content-Type": kind})
        assert (status, answer) == (401, {"error": "invalid request"}), hostile[:40]
    assert rig.fake.responses == [] and await rig.bot.store.list_audit() == []


async def test_signed_hostile_bodies_are_refused_in_one_answer(rig: SlackRig) -> None:
    """Signed (a leaked secret, or Slack itself): 400s, not a frozen loop, not a 500."""
    for hostile in HOSTILE_JSON + ['["a list"]', '"a string"', "1"]:
        body = hostile.encode()
        status, answer = await post(
            rig, body, signed_headers(body, SECRET, content_type="application/json")
        )
        assert (status, answer) == (400, {"error": "malformed request"}), hostile[:40]
    for body in (
        b"payload=" + unterminated(MiB - 8).encode(),
        b"payload=" + quote(unterminated(MiB // 4)).encode(),
    ):
        status, answer = await post(rig, body, signed_headers(body, SECRET))
        assert (status, answer) == (400, {"error": "malformed request"})
    # the bot still answers
    reply = await rig.answer("cluster create -n c1 -s STANDARD_NC6 -t 1")
    assert "is ready" in reply["text"]


async def test_deeply_nested_or_undecodable_slack_requests_are_refused_before_bolt(
    rig: SlackRig,
) -> None:
    """Bolt parses a body before it checks the signature: json.loads must not recurse 100,000
    levels deep (it raised RecursionError: a 500 and a traceback). Unsigned, such a body is
    refused as unsigned before anything reads it; signed, as too deep before Bolt parses it.
    (Moved from tests/test_hostile_input.py; the 400 answers now need a signature.)"""
    deep = "[" * 100_000
    for body, kind in (
        (b"payload=" + quote(deep).encode(), "application/x-www-form-urlencoded"),
        (deep.encode(), "application/json"),
        (b'{"type": "event_callback", "event": ' + deep.encode() + b"}", "application/json"),
    ):
        unsigned = await post(rig, body, {"Content-Type": kind})
        assert unsigned == (401, {"error": "invalid request"})
        signed = await post(rig, body, signed_headers(body, SECRET, content_type=kind))
        assert signed == (400, {"error": "request nested too deeply"})
    body = b"text=\xff\xfe&command=/batchai"
    assert (await post(rig, body, {}))[0] == 401  # not UTF-8: the signature cannot match
    stamp = str(int(time.time()))
    mac = hmac.new(SECRET.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    raw_signed = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={mac}"}
    assert (await post(rig, body, raw_signed))[0] == 401  # signed as bytes, read as text
    assert rig.fake.responses == [] and await rig.bot.store.list_audit() == []


@pytest.mark.parametrize("index", range(len(HOSTILE_JSON)))
def test_a_hostile_1_mib_job_json_is_refused_in_one_line(index: int) -> None:
    """The same scan guards inline job.json, manifests and console paths (services.jobspec)."""
    text = HOSTILE_JSON[index][: MiB - 16]
    for document in (text, text.encode()):
        with pytest.raises(SpecError) as caught:
            load_job_spec(document, source="job.json")
        one_line(str(caught.value))
        assert str(caught.value).startswith("job.json: invalid JSON at line 1")
    with pytest.raises(SpecError, match="deeper than 64 levels"):
        parse_json('{"a": ' + "[" * (MiB - 8))


async def test_hostile_inline_job_json_typed_in_slack_is_refused_in_one_line(
    rig: SlackRig,
) -> None:
    await rig.answer("cluster create -n c1 -s STANDARD_NC6 -t 1")
    config = unterminated(15_000, '{"properties": {"nodeCount": "')
    status, ack, _ = await rig.command(f"job create -n hostile -r c1 -c {config}")
    assert status == 200 and ack.get("response_type", "ephemeral") == "ephemeral"
    one_line(ack["text"])
    assert "inline JSON is not closed" in ack["text"]
    config = unterminated(15_000, '{"properties": {"nodeCount": "') + '"}}'
    reply = await rig.answer(f"job create -n hostile -r c1 -c {config}")
    one_line(reply["text"])
    assert "nodeCount" in reply["text"]
    assert await rig.bot.store.find_job("hostile") is None


def test_a_1_mib_log_line_of_digits_is_not_progress() -> None:
    """tqdm's `\\d+%` backtracked through every suffix of a digit run: quadratic per line."""
    assert parse_progress("9" * MiB) is None
    assert parse_progress(" 45%|####      | 45/100 [00:01<00:02, 30.1it/s]") is not None
    parser = LogParser()
    assert parser.feed("9" * MiB + "% loss: 0.5") == [] or parser.progress is None


async def test_bolt_checks_the_signature_again(rig: SlackRig) -> None:
    """However a request reaches the Bolt app, not only through the events route, Bolt
    checks its signature itself."""
    app = build_app(rig.settings, rig.bot.slack)
    fields = slash_command_form(
        "no-such-group",
        user_id="U0TEST",
        channel_id="C0TEST",
        response_url="http://x/",
        trigger_id="1.test.trigger",
    )
    body = form_body(fields)
    for secret, status in (("not-the-signing-secret", 401), (SECRET, 200)):
        request = AsyncBoltRequest(body=body.decode(), headers=signed_headers(body, secret))
        assert (await app.async_dispatch(request)).status == status
