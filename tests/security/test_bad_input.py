"""Bad input gets one line and changes nothing; the console ends quietly. A real `python -m bot
console` process runs a flow of mistakes next to a job that is still being followed at the end,
and the config loader is driven with what a file system refuses."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.errors import BatchAIError, NotFound, UserError
from services.jobs.sources import ConfigLoader
from services.models import ConfigSource
from services.schedules.timer import Scheduler
from services.spend.pricing import BUNDLED_PRICES, load_price_table

ROOT = Path(__file__).resolve().parents[2]
DEEP = "[" * 200 + "]" * 200  # a deep array that fits the console's path limit (1024)
LONG_NAME = "x" * 300 + ".json"  # one path component over NAME_MAX (255)
JOB = (
    '{"properties": {"nodeCount": 1, "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs", '
    '"customToolkitSettings": {"commandLine": '
    '"for i in 1 2 3 4 5; do echo Epoch $i/5 loss: 0.$i; sleep 0.2; done"}}}'
)
FLOW = {
    "cluster": "cluster create -n c1 -s STANDARD_NC6 -t 1 --afs-name data --afs-mount-path afs",
    "deep": f"job create -n deep -r c1 -c {DEEP}",
    "long": f"job create -n long -r c1 -c {LONG_NAME}",
    "cluster-long": f"cluster create -n c2 -s STANDARD_NC6 -t 1 -f {LONG_NAME}",
    "cluster-array": "cluster create -n c3 -s STANDARD_NC6 -t 1 -c [1,2]",
    "home": "job create -n home -r c1 -c ~no-such-user-here/job.json",
    "size": "cluster create -n c4 -s Standard_NOPE_v9 -t 1",
    "typo": f"job create -n typo -r c11 -c {JOB}",
    "job": f"job create -n j1 -r c1 -c {JOB}",
}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """`batchai-bot console < flow` with the production poll interval (the scheduler's rounds
    are under way when the flow ends: they died as CancelledError tracebacks)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BATCHAI_", "DATABASE"))
    }
    env.update(
        BATCHAI_DATA_DIR=str(tmp_path_factory.mktemp("console") / "data"),
        PORT="0",
        PRICE_REFRESH_HOURS="0",  # no test reaches the internet
    )
    return subprocess.run(
        [sys.executable, "-m", "bot", "console", "--wait-timeout", "120"],
        input="".join(f"{line}\n" for line in FLOW.values()),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )


def answer(run: subprocess.CompletedProcess[str], key: str) -> str:
    """The first line the console printed after echoing the flow's line `key`."""
    echoed = f"$ {FLOW[key]}\n"
    assert echoed in run.stdout, run.stdout[-3000:]
    return run.stdout.split(echoed, 1)[1].splitlines()[0]


def test_the_console_exits_quietly_after_its_jobs(
    console: subprocess.CompletedProcess[str],
) -> None:
    assert console.returncode == 0, console.stderr[-3000:]
    assert "Traceback" not in console.stderr, console.stderr[-3000:]
    assert "CancelledError" not in console.stderr and " ERROR " not in console.stderr
    assert re.search(r"j1 succeeded", console.stdout), console.stdout[-3000:]


def test_every_bad_config_gets_one_line(console: subprocess.CompletedProcess[str]) -> None:
    assert "went wrong" not in console.stdout
    assert answer(console, "deep") == "[!] inline JSON: JSON nested deeper than 64 levels"
    for key in ("long", "cluster-long"):
        assert answer(console, key).startswith("[!] cannot read 'xxxx")
        assert answer(console, key).endswith(": File name too long")
    assert answer(console, "cluster-array") == (
        "[!] inline JSON: expected a JSON object at the top level, found an array"
    )
    assert answer(console, "home") == (
        "[!] no such file: '~no-such-user-here/job.json' (no such home directory)"
    )
    assert "cluster c2" not in console.stdout and "cluster c3" not in console.stdout


def test_unknown_names_get_the_closest_known_ones(
    console: subprocess.CompletedProcess[str],
) -> None:
    size = answer(console, "size")
    assert size.startswith("[!] no price is known for VM size 'Standard_NOPE_v9'; the closest")
    assert "Standard_NC6s_v3" in size and "e.g." not in size
    assert answer(console, "typo") == '[!] cluster c11 not found; did you mean "c1"?'


def test_the_closest_vm_sizes_are_real_names() -> None:
    table = load_price_table(BUNDLED_PRICES)
    for typed in ("Standard_NOPE_v9", "xyz", "q"):
        with pytest.raises(UserError) as caught:
            table.get_price(typed)
        message = str(caught.value)
        named = re.findall(r"Standard_\w+", message.split(";", 1)[1])
        assert len(named) == 3 and set(named) <= set(table.skus()), message


@pytest.mark.parametrize(
    "value",
    [
        LONG_NAME,
        "a/" + "b" * 256 + "/job.json",
        "/" + "d/" * 2100 + "job.json",  # over PATH_MAX
        "~no-such-user-here/job.json",
        "/proc/self/mem",  # a file whose read fails (EIO)
        "/proc/self/cwd/" + "x" * 300,
    ],
)
def test_the_config_loader_is_total(tmp_path: Path, value: str) -> None:
    """What the OS refuses is a one-line user error, never an OSError (a 'went wrong')."""
    loader = ConfigLoader(tmp_path)
    with pytest.raises(BatchAIError) as caught:
        loader.load(ConfigSource("path", value), may_read_paths=True)
    assert isinstance(caught.value, UserError | NotFound)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200, message


async def test_shutdown_lets_a_round_under_way_finish_and_stops_a_stuck_one_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Scheduler.aclose: the round in flight ends (it is not cut off under the store's feet);
    one that outlives the grace is cancelled and ends without an error or a traceback."""
    scheduler = Scheduler()
    started, release, stuck = asyncio.Event(), asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def work() -> None:
        started.set()
        await release.wait()
        finished.append("round")

    async def never() -> None:
        stuck.set()
        await asyncio.Event().wait()

    scheduler.every("work", 3600, work, now=True)
    scheduler.every("never", 3600, never, now=True)
    scheduler.start()
    await started.wait()
    await stuck.wait()
    closing = asyncio.create_task(scheduler.aclose(grace=0.5))
    await asyncio.sleep(0)  # a yield, not a wait: aclose pauses the scheduler and waits
    assert finished == [] and not closing.done()
    release.set()
    await closing
    assert finished == ["round"]
    assert scheduler.failures == {}
    assert [r.levelname for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any(r.exc_info for r in caplog.records)
    await scheduler.aclose()  # twice is fine
