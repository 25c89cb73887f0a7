"""Hostile input end to end: argument strings reach the job's argv literally and never a shell;
what cannot be honoured is refused in one line; oversized payloads are refused before parsing.

The job is the contract kit's script in "argv" mode, which prints its argv as JSON. Batch AI's
customToolkitSettings.commandLine is by definition a bash program (README, Security) and is not
what these tests feed: the guarantee is for the toolkits' argument strings and for anything
typed in Slack.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.lifecycle import running
from bot.slack import MAX_EVENT_BYTES
from handlers import grammar, modals
from handlers.commandspec import ApprovalsDeny
from services.core.errors import SpecError, UserError
from services.jobs.lifecycle import JobState
from services.jobs.tailer import LogParser, parse_progress
from services.jobspec import (
    MAX_DEPTH,
    MAX_SPEC_BYTES,
    load_cluster_spec,
    load_job_spec,
    parse_json,
)
from tests.contract import JOB_SCRIPT
from tests.fakes.slack import FakeSlack
from tests.slack.conftest import SlackRig, rig_settings
from tests.test_modals import errors_of

PROJECT = Path(__file__).parent.parent
SMART_QUOTES = "“smart” ‘quotes’"


def hostile_strings(marker: Path) -> list[str]:
    """At least 30 strings a shell would act on; `marker` is the file they would create."""
    m = str(marker)
    return [
        f"; touch {m}",
        f"| touch {m}",
        f"& touch {m}",
        f"&& touch {m}",
        f"|| touch {m}",
        f"> {m}",
        f"< {m}",
        f">> {m}",
        f"$(touch {m})",
        f"`touch {m}`",
        f"${{IFS}}touch${{IFS}}{m}",
        f"$(touch${{IFS}}{m})",
        "a\nb",
        f"line\n$(touch {m})",
        "carriage\rreturn",
        "tab\tinside",
        "'single'",
        '"double"',
        "it's",
        'say "hi"',
        SMART_QUOTES,
        "`",
        "back\\slash",
        "\\",
        "trailing\\",
        "*",
        "?",
        "[a-z]*",
        "{a,b}",
        "~",
        "--help",
        "--config=/etc/passwd",
        "-rf",
        "—name em dash",
        "–en dash",
        "\u2212minus sign",
        "\u202eRTL override",
        "zero\u200bwidth\u200d",
        "emoji 🚀🔥👩‍💻",
        "ｆｕｌｌｗｉｄｔｈ",
        "$NOT_A_DEFINED_VARIABLE",
        "$$",
        "%s%n%x",
        "&amp; &lt; &gt;",
        "<script>alert(1)</script>",
        "",
        " ",
        "#not a comment",
        "x" * 100_000,
        "[" * 5000 + "]" * 5000,
        json.dumps(_nested(200)),
    ]


def _nested(levels: int) -> Any:
    value: Any = {}
    for _ in range(levels):
        value = {"a": [value]}
    return value


# The short ones, for the property tests (tests/test_properties.py).
HOSTILE = [s for s in hostile_strings(Path("/tmp/batchai-marker")) if len(s) < 20_000]


def one_line(message: str) -> None:
    assert message.strip() and "\n" not in message and "\r" not in message, message


# --------------------------------------------------------------------------- the rig


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as server:
        yield server


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "marker" / "pwned"
    path.parent.mkdir()
    yield path
    assert not path.exists(), "a hostile string ran a command"
    assert list(path.parent.iterdir()) == [], "a hostile string created a file"


@pytest.fixture
async def rig(
    tmp_path: Path, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SlackRig]:
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    manifests = tmp_path / "manifests"
    shutil.copytree(PROJECT / "manifests", manifests)
    settings = rig_settings(tmp_path, fake, manifest_dir=manifests)
    async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
        bot.share.create_share("data")
        (bot.share.share_dir("data") / "argv.py").write_text(JOB_SCRIPT)
        yield SlackRig(fake, bot, http, settings)
        for job in await bot.store.list_jobs(include_deleted=True):
            if not job.state.finished and job.layout is not None:
                await bot.backend.terminate_job(job.id)


def argv_job(args: list[str], *, mode: str = "argv", env: bool = False) -> dict[str, Any]:
    """A job.json whose process is `python argv.py <mode> <args...>`, each arg one element;
    with `env`, each arg is also the value of a variable HOSTILE_<index>."""
    variables = [{"name": f"HOSTILE_{i}", "value": a} for i, a in enumerate(args)] if env else []
    return {
        "properties": {
            "nodeCount": 1,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            "environmentVariables": variables,
            "pyTorchSettings": {
                "pythonScriptFilePath": "$AZ_BATCHAI_MOUNT_ROOT/afs/argv.py",
                "commandLineArgs": f"{mode} " + " ".join(shlex.quote(a) for a in args),
            },
        }
    }


def slack_escape(text: str) -> str:
    """What Slack's client does to typed text before sending it to the bot."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def refusal(rig: SlackRig, text: str) -> str:
    """A command the grammar refuses: the answer is the ack itself, one line plus the usage."""
    status, ack, _ = await rig.command(text)
    assert status == 200 and isinstance(ack, dict), (status, ack)
    assert ack.get("response_type", "ephemeral") == "ephemeral"
    assert len(ack["blocks"]) == 2 and "usage:" in json.dumps(ack["blocks"][1])
    message: str = ack["text"]
    one_line(message)
    return message


async def run_to_end(rig: SlackRig, name: str) -> Any:
    async def finished() -> bool:
        job = await rig.bot.store.find_job(name)
        return job is not None and job.state.finished

    await rig.until(finished, f"{name} to finish")
    job = await rig.bot.store.find_job(name)
    assert job is not None and job.state is JobState.SUCCEEDED, job
    assert job.layout is not None and job.layout.stdouterr is not None
    out = rig.bot.resolve_file(job.layout.stdouterr.child("stdout.txt"))
    return json.loads(out.read_text(encoding="utf-8"))


CLUSTER = "cluster create -n c1 -s Standard_NC4as_T4_v3 -t 1 --afs-name data"


# --------------------------------------------------------------------------- argv, end to end


async def test_typed_hostile_arguments_reach_argv_literally(rig: SlackRig, marker: Path) -> None:
    """Inline job.json typed in Slack (escaped as Slack escapes it), through the grammar, the
    loader, the launch plan and the local backend, to the process's argv."""
    # Slack's client turns typed "" into “”, so the grammar reads smart quotes as ASCII ones: a
    # literal “ can come in a manifest (next test), not typed.
    strings = [s for s in hostile_strings(marker) if len(s) < 1000 and s != SMART_QUOTES]
    assert len(strings) >= 30
    await rig.answer(CLUSTER)
    config = json.dumps(argv_job(strings, mode="ok", env=True), ensure_ascii=False)
    reply = await rig.answer(slack_escape(f"job create -n typed -r c1 -c {config}"))
    assert "typed" in reply["text"], reply
    seen = await run_to_end(rig, "typed")
    assert seen["argv"] == ["ok", *strings]
    assert [seen["env"][f"HOSTILE_{i}"] for i in range(len(strings))] == strings


async def test_huge_and_deeply_nested_arguments_reach_argv_literally(
    rig: SlackRig, marker: Path
) -> None:
    """Too big to type (16 KiB): a manifest carries a 100 KB argument and bracket soup."""
    strings = [s for s in hostile_strings(marker) if len(s) >= 1000 or s == SMART_QUOTES]
    assert max(map(len, strings)) == 100_000
    path = rig.settings.manifest_dir / "jobs" / "hostile.json"
    path.write_text(json.dumps(argv_job(strings)))
    await rig.answer(CLUSTER)
    await rig.answer("job create -n big -r c1 -c hostile")
    assert await run_to_end(rig, "big") == strings


async def test_a_nul_in_an_argument_is_refused_in_one_line(rig: SlackRig, marker: Path) -> None:
    await rig.answer(CLUSTER)
    for bad in ("a\\u0000b", "\\ud800"):
        config = json.dumps(argv_job(["x"])).replace('argv x"', f'argv {bad}"')
        assert bad in config
        reply = await rig.answer(f"job create -n nul -r c1 -c {config}")
        one_line(reply["text"])
        assert "commandLineArgs" in reply["text"] and "NUL" in reply["text"]
    assert await rig.bot.store.find_job("nul") is None


@pytest.mark.parametrize(
    "flags",
    [
        "-n {h} -r c1 -c mnist",
        "-n ok -r {h} -c mnist",
        "-n ok -r c1 -c {h}",
        "-n ok -r c1 -c mnist -e {h}",
        "-n ok -r c1 -c mnist -g {h}",
    ],
)
async def test_hostile_names_typed_in_slack_are_refused_in_one_line(
    rig: SlackRig, marker: Path, flags: str
) -> None:
    await rig.answer(CLUSTER)
    for value in hostile_strings(marker)[:20]:
        await refusal(rig, slack_escape("job create " + flags.format(h=shlex.quote(value))))
    assert await rig.bot.store.list_jobs(include_deleted=True) == []


@pytest.mark.parametrize("value", [h for h in HOSTILE if h != SMART_QUOTES])
def test_typed_prose_is_kept_literally_or_refused_in_one_line(value: str) -> None:
    """A free-text value (a deny reason) is text: kept as typed, never interpreted."""
    text = slack_escape(f"approvals deny --id 3f9c2a7e --reason={shlex.quote(value)}")
    try:
        command = grammar.parse(text)
    except UserError as err:
        one_line(str(err))
        assert err.usage
        control = any(ord(c) < 32 and c not in "\n\t" for c in value)
        assert not value.strip() or len(value.strip()) > 500 or control, str(err)
        return
    assert isinstance(command, ApprovalsDeny)
    assert command.reason == value.strip()


# --------------------------------------------------------------------------- oversized payloads


async def test_an_oversized_slack_request_is_refused_before_bolt_reads_it(rig: SlackRig) -> None:
    base = f"{rig.bot.web_url}/slack/events"
    body = b"text=" + b"x" * MAX_EVENT_BYTES  # one byte over, and unsigned
    async with rig.http.post(base, data=body) as response:
        assert response.status == 413
        assert await response.json() == {"error": "request too large"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(MAX_EVENT_BYTES // 65536 + 2):
            yield b"y" * 65536

    async with rig.http.post(base, data=chunks()) as response:
        assert response.status == 413
    async with rig.http.post(base, data=b"text=" + b"x" * 1000) as response:
        assert response.status == 401  # small: Bolt reads it and refuses the missing signature
    assert rig.fake.responses == [] and await rig.bot.store.list_audit() == []


# Deeply nested and undecodable HTTP bodies (signed and unsigned): tests/security/


async def test_a_command_over_16_kib_is_refused_in_one_line(rig: SlackRig) -> None:
    huge = json.dumps(argv_job(["x" * 20_000]))
    message = await refusal(rig, f"job create -n big -r c1 -c {huge}")
    assert "too long" in message and "16 KiB" in message


async def test_deeply_nested_inline_json_is_refused_in_one_line(rig: SlackRig) -> None:
    await rig.answer(CLUSTER)
    deep = '{"properties": ' + "[" * 5000 + "]" * 5000 + "}"
    reply = await rig.answer(f"job create -n deep -r c1 -c {deep}")
    one_line(reply["text"])
    assert f"deeper than {MAX_DEPTH} levels" in reply["text"]
    assert await rig.bot.store.find_job("deep") is None


def test_the_loader_refuses_huge_and_deep_documents_before_parsing() -> None:
    big = '{"properties": {"x": "' + "a" * MAX_SPEC_BYTES + '"}}'
    for text in (big, big.encode(), "[" * 1_000_000, "{" * 100_000, '{"a":' * 100_000):
        with pytest.raises(SpecError) as caught:
            load_job_spec(text, source="job.json")
        one_line(str(caught.value))
        assert str(caught.value).startswith("job.json: ")
    with pytest.raises(SpecError, match="deeper than 64 levels"):
        parse_json("[" * 1_000_000)


def test_an_oversized_or_deep_modal_paste_is_refused_in_one_line() -> None:
    for text, words in (
        ('{"properties": {"a": "' + "x" * 5000 + '"}}', "at most 3000 characters"),
        ("[" * 1500 + "]" * 1500, "deeper than 64 levels"),
    ):
        errors = errors_of(**{modals.BLOCK_COMMAND: None, modals.BLOCK_JSON: text})
        assert set(errors) == {modals.BLOCK_JSON} and words in errors[modals.BLOCK_JSON]


@pytest.mark.parametrize(
    "token",
    [
        "A" * 8000,
        "A" * 9000,
        "A" * 100_000,
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "a.b.c",
        ".",
        "%E2%80%AE",
        "eyJzIjoiZGF0YSJ9." + "A" * 43,
        "%F0%9F%9A%80.%F0%9F%9A%80",
    ],
)
async def test_absurd_download_tokens_are_refused(rig: SlackRig, token: str) -> None:
    async with rig.http.get(f"{rig.bot.web_url}/files/{token}/model.bin") as response:
        body = await response.text()
        assert response.status in (400, 403, 404, 414), (response.status, body[:200])
        assert "Traceback" not in body and len(body) < 1000


def test_progress_counts_too_long_for_a_column_are_not_progress() -> None:
    assert parse_progress("Epoch 3/10") is not None
    assert parse_progress("Epoch 3/12345678901") is None
    assert parse_progress("step 9" * 3000 + "/1") is None
    parser = LogParser()
    points = parser.feed("Epoch " + "9" * 5000 + "/" + "9" * 5000 + " loss: 0.5")
    assert [p.step for p in points] == [1] and parser.progress is None


def test_a_cluster_admin_name_longer_than_linux_allows_is_refused_in_one_line() -> None:
    """It would not fit the store's column on PostgreSQL (64), and no node could create it."""
    doc = {
        "properties": {
            "vmSize": "STANDARD_NC6",
            "scaleSettings": {"manual": {"targetNodeCount": 1}},
            "userAccountSettings": {"adminUserName": "a" * 33},
        }
    }
    with pytest.raises(SpecError) as caught:
        load_cluster_spec(json.dumps(doc), source="cluster.json")
    one_line(str(caught.value))
    assert "adminUserName" in str(caught.value) and "32 characters" in str(caught.value)
    doc["properties"]["userAccountSettings"] = {"adminUserName": "a" * 32}  # type: ignore[index]
    assert load_cluster_spec(json.dumps(doc)).properties.user_account_settings is not None
