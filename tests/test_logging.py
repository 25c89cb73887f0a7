"""Logs: one JSON object per line with the correlation id of the command or job behind it,
and never a secret, not even at DEBUG through a whole Slack story."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.config import Settings
from bot.logs import NOISY, Redactor, configure
from services.core import context
from tests.fakes.slack import BOT_TOKEN, form_body, slash_command_form
from tests.slack.conftest import (  # the Slack rig's fixtures, used by the story test
    CHANNEL,
    SECRET,
    USER,
    SlackRig,
    fake,  # noqa: F401
    rig,  # noqa: F401
)

PASSWORD = "S3cr3t-Pa55word"
LINK_SECRET = "link-secret-for-tests"

Configure = Callable[..., io.StringIO]


@pytest.fixture
def logs() -> Iterator[Configure]:
    """configure() into a buffer; the root logger is put back as it was afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {name: logging.getLogger(name).level for name in (*NOISY, "apscheduler.scheduler")}

    def setup(**overrides: Any) -> io.StringIO:
        values: dict[str, Any] = {"log_format": "json", "log_level": "DEBUG", **overrides}
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        out = io.StringIO()
        configure(settings, stream=out)
        return out

    yield setup
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line]


def test_a_json_line_carries_the_context_and_the_traceback(logs: Configure) -> None:
    out = logs()
    log = logging.getLogger("batchai.test")
    with context.bound(correlation_id="abc123", user="U1", command="JobCreate"):
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.exception("it failed for %s", "j1")
    log.info("outside")
    first, second = lines(out)
    assert first["message"] == "it failed for j1" and first["level"] == "ERROR"
    assert first["logger"] == "batchai.test" and first["ts"].endswith("+00:00")
    assert (first["correlation_id"], first["user"], first["command"]) == (
        "abc123",
        "U1",
        "JobCreate",
    )
    assert "ValueError: bad" in first["exc"] and "job_id" not in first
    assert second["message"] == "outside" and "correlation_id" not in second


def test_text_lines_name_the_context(logs: Configure) -> None:
    out = logs(log_format="text")
    with context.bound(**context.for_job("j-42")):
        logging.getLogger("batchai.test").warning("slow")
    assert out.getvalue().rstrip().endswith("slow [correlation_id=job-j-42 job_id=j-42]")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"calling with token {BOT_TOKEN}", BOT_TOKEN),
        ("app token xapp-1-A0001-1234-abcdef", "xapp-1-A0001-1234-abcdef"),
        ("refresh xoxe.xoxp-1-Mi0yLTEyMzQ", "xoxe.xoxp-1-Mi0yLTEyMzQ"),
        ("headers {'Authorization': 'Bearer xoxb-123-456-abc'}", "xoxb-123-456-abc"),
        ("GET https://a.file.core.windows.net/s/f?sv=2024&sig=AbC%2Fd3%3D&se=x", "AbC%2Fd3%3D"),
        (
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9vYmFy==;Endpoint",
            "Zm9vYmFy==",
        ),
        (f"cluster create -n c1 -u admin -p {PASSWORD}", PASSWORD),
        (f"cluster create -n c1 --password '{PASSWORD}'", PASSWORD),
        (f"the signing secret is {SECRET}", SECRET),
    ],
)
def test_secrets_are_masked(logs: Configure, text: str, secret: str) -> None:
    out = logs(slack_signing_secret=SECRET)
    logging.getLogger("batchai.test").info("%s", text)
    (line,) = lines(out)
    assert secret not in line["message"] and "****" in line["message"]


def test_a_secret_in_a_traceback_is_masked(logs: Configure) -> None:
    out = logs(slack_bot_token="xoxb-live-token-1")
    try:
        raise RuntimeError("auth failed for xoxb-live-token-1")
    except RuntimeError:
        logging.getLogger("batchai.test").exception("boom")
    assert "xoxb-live-token-1" not in out.getvalue()


def test_plain_text_is_left_alone() -> None:
    redact = Redactor(["a-long-secret"])
    text = "job j1 on c1: 3 lines, exit code 0, signature ok, /api/chat.postMessage"
    assert redact(text) == text


async def test_a_slack_story_logs_its_correlation_ids_and_no_secret(
    rig: SlackRig,  # noqa: F811
    logs: Configure,
) -> None:
    out = logs(slack_bot_token=BOT_TOKEN, slack_signing_secret=SECRET, link_secret=LINK_SECRET)
    create = (
        "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data"
        f" -u trainer -p {PASSWORD}"
    )
    answer = await rig.answer(create)
    assert "c1" in answer["text"] and PASSWORD not in str(answer)
    # a job that removes its own output directory: the runner logs that, in the job's context
    spec = {
        "properties": {
            "nodeCount": 1,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}],
            "customToolkitSettings": {"commandLine": "echo hi && rm -rf $AZ_BATCHAI_OUTPUT_MODEL"},
        }
    }
    trigger = rig.fake.issue_trigger()
    form = slash_command_form(
        f"job create -n logged -r c1 -c {json.dumps(spec)}",
        user_id=USER,
        channel_id=CHANNEL,
        response_url=rig.fake.response_url(),
        trigger_id=trigger,
    )
    status, _ = await rig.post(form_body(form))
    assert status == 200

    async def finished() -> bool:
        job = await rig.bot.store.find_job("logged")
        return job is not None and job.state.finished and not await rig.bot.store.pending_events(1)

    await rig.until(finished, "the job's story")
    job = await rig.bot.store.find_job("logged")
    assert job is not None
    entries = lines(out)  # every line is one JSON object
    (command,) = [e for e in entries if e["message"].startswith("JobCreate by")]
    assert command.get("correlation_id") == trigger, command
    assert (command["user"], command["command"]) == (USER, "JobCreate")
    (outputs,) = [e for e in entries if "outputs of MODEL not listed" in e["message"]]
    assert outputs["job_id"] == job.id and outputs["correlation_id"] == f"job-{job.id}"

    text = out.getvalue()
    assert len(entries) > 50  # DEBUG: the SDKs' own request logs are in there too
    for secret in (BOT_TOKEN, SECRET, LINK_SECRET, PASSWORD):
        assert secret not in text, secret


def test_a_malformed_log_call_is_still_written_masked(logs: Configure) -> None:
    out = logs()
    logging.getLogger("batchai.test").info("two %s %s", f"{BOT_TOKEN}")
    (line,) = lines(out)
    assert line["message"].startswith("two %s %s") and BOT_TOKEN not in line["message"]
