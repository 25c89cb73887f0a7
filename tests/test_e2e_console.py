"""End to end: `batchai-bot console` as a real process runs the seed flow with real training."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = [
    "/batchai cluster create --name mycluster --vm-size STANDARD_NC6 --image UbuntuLTS --min 1 "
    "--max 1 --afs-name batchaiquickstart --afs-mount-path azurefileshare --user-name "
    "mytestbatchai --password PP@@ddee5 --resource-group myBatchAIGroup",
    "/batchai cluster list -o table",
    "/batchai job create --name myjob --cluster-name mycluster --resource-group myBatchAIGroup "
    "--config manifests/jobs/mnist.json",
    "/batchai job stream-file --job-name myjob --output-directory-id stdouterr --name stderr.txt "
    "--resource-group myBatchAIGroup",
    "/batchai job list-files --resource-group myBatchAIGroup -n myjob -d model",
]
TIMEOUT = 120


class Console:
    """A running console process: feed lines, read output until a pattern shows up."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = ""

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, pattern: str, *, timeout: float = TIMEOUT) -> re.Match[str]:
        regex = re.compile(pattern, re.S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self.proc.stdout is not None
        while (match := regex.search(self.out)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not seen; output so far:\n{self.out}")
            try:
                chunk = await asyncio.wait_for(self.proc.stdout.read(65536), remaining)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"console exited before {pattern!r}:\n{self.out}")
            self.out += chunk.decode()
        return match

    async def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        rest, _ = await asyncio.wait_for(self.proc.communicate(), TIMEOUT)
        self.out += rest.decode()
        return self.proc.returncode or 0


@pytest.fixture
async def console(tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BATCHAI_", "DATABASE"))
    }
    env.update(
        BATCHAI_DATA_DIR=str(tmp_path / "data"),
        PORT="0",
        POLL_SECONDS="0.2",
        LOG_LEVEL="WARNING",
        PRICE_REFRESH_HOURS="0",  # no test reaches the internet
    )
    env.update(getattr(request, "param", {}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        "--wait-timeout",
        "60",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    c = Console(proc)
    yield c
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_seed_flow_trains_streams_and_links(console: Console) -> None:
    for line in SEED[:3]:
        await console.send(line)
    await console.expect(r"cluster mycluster is ready")
    await console.expect(r"Name\s+Resource Group.*mycluster\s+myBatchAIGroup")
    await console.expect(r"job myjob submitted")
    assert "PP@@ddee5" not in console.out
    assert "ssh-key" in console.out  # the password warning
    await console.send(SEED[3])
    # stream-file prints the training log as it is written, until the job ends
    await console.expect(r"Epoch 10/10 - loss: [\d.]+ - acc: [\d.]+")
    await console.expect(r"myjob succeeded.*exit code 0.*model\.npz", timeout=TIMEOUT)
    await console.send(SEED[4])
    listing = await console.expect(r"model\.npz <(http://127\.0\.0\.1:\d+/files/[^>]+)>.*?\n")
    url = listing.group(1)
    # the status card, the thread's snippets and exactly one receipt
    assert console.out.count("(also sent to channel)") == 1
    assert "stderr.txt` lines 1-" in console.out or "stderr.txt lines 1-" in console.out

    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 200
            body = await response.read()
            assert body[:2] == b"PK"  # an .npz is a zip archive
            assert "model.npz" in response.headers["Content-Disposition"]
        token = url.split("/files/")[1].split("/")[0]
        forged = url.replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
        async with http.get(forged) as response:
            assert response.status == 403
    assert await console.close() == 0


async def test_bad_commands_answer_one_line_and_change_nothing(console: Console) -> None:
    await console.send("/batchai job fly --name x")
    await console.expect(r"unknown command")
    await console.send("cluster create --name bad --vm-size STANDARD_NC6 --min 3 --max 1")
    await console.expect(r"--min \(3\) is greater than --max \(1\)|greater than")
    await console.send("cluster list -o json")
    await console.expect(r"\[\]")
    assert await console.close() == 0


@pytest.mark.parametrize(
    "line,secret",
    [
        ("cluster create -n x -s S -p S3cr3t -u me", "S3cr3t"),
        ("cluster create -n x -s S -pS3cr3t", "S3cr3t"),
        ("cluster create -n x -s S --password=S3cr3t", "S3cr3t"),
        ('cluster create -n x -s S -p "two S3cr3t words"', "S3cr3t"),
        ('cluster create -n x -s S --password "unbalanced S3cr3t', "S3cr3t"),
        ("cluster create -n x -s S --storage-account-key S3cr3t", "S3cr3t"),
    ],
)
def test_console_echo_never_shows_a_secret(line: str, secret: str) -> None:
    from bot.console import redact

    echoed = redact(line)
    assert secret not in echoed and "****" in echoed
    assert echoed.startswith("cluster create -n x -s S")


@pytest.mark.parametrize(
    "console", [{"ALLOWED_USERS": "U0ADMIN", "ADMIN_USERS": "U0ADMIN"}], indirect=True
)
async def test_a_console_user_not_allowed_is_refused_and_audited(console: Console) -> None:
    """The console goes through the same access guard and audit log as Slack."""
    await console.send("as U0STRANGER /batchai cluster delete -n mycluster")
    await console.expect(r"U0STRANGER|not allowed|may not")
    await console.send("as U0ADMIN /batchai audit -o tsv")
    await console.expect(r"U0STRANGER.*denied|denied.*U0STRANGER")
    assert await console.close() == 0
