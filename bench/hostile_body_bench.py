"""CPU seconds for hostile bodies (`{"\\"\\"\\"…`, a string that never ends), before vs after.

Before: the pre-parse nesting scan main had (a regex blanking out strings, then one over the
brackets), which backtracks over an unterminated string from every quote: quadratic. It is timed
directly on small bodies and, past `--before-budget` seconds, extrapolated from them (c·n²).
After: the one-pass scanner (services.jobspec.load.nesting_depth), the job.json loader, and the
real bot's /slack/events route (in this process, with the fake Slack) answering the body unsigned
(401), signed (400; a body over 1 MiB gets 413 unread). CPU is this process's `process_time`.

    .venv/bin/python bench/hostile_body_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import Settings  # noqa: E402
from bot.lifecycle import running  # noqa: E402
from services.core.errors import SpecError  # noqa: E402
from services.jobspec.load import MAX_DEPTH, load_job_spec, nesting_depth  # noqa: E402
from tests.fakes.slack import BOT_TOKEN, FakeSlack, signed_headers  # noqa: E402

SECRET = "bench-signing-secret"
KiB = 1024
_OLD_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OLD_BRACKET_RE = re.compile(r"[\[\]{}]")


def old_nesting_depth(text: str) -> int:
    """The scan main ran before the signature check, verbatim."""
    depth = deepest = 0
    for match in _OLD_BRACKET_RE.finditer(_OLD_STRING_RE.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                break
        else:
            depth -= 1
    return deepest


def hostile(size: int) -> str:
    return '{"' + '\\"' * ((size - 2) // 2)


def cpu(work: Callable[[], object]) -> float:
    start = time.process_time()
    with contextlib.suppress(SpecError):  # the loader's one-line refusal is the expected end
        work()
    return time.process_time() - start


def before(sizes: list[int], budget: float) -> dict[int, str]:
    """Measured where it fits the budget, else extrapolated from the largest measured size."""
    measured: dict[int, float] = {}
    for size in (4 * KiB, 8 * KiB, 16 * KiB):
        measured[size] = cpu(lambda size=size: old_nesting_depth(hostile(size)))  # type: ignore[misc]
    coefficient = measured[16 * KiB] / (16 * KiB) ** 2
    shown = {size: f"{seconds:.3f} s (measured)" for size, seconds in measured.items()}
    for size in sizes:
        guess = coefficient * size**2
        if guess <= budget:
            shown[size] = (
                f"{cpu(lambda size=size: old_nesting_depth(hostile(size))):.1f} s (measured)"  # type: ignore[misc]
            )
        else:
            shown[size] = f"~{_duration(guess)} (extrapolated: {coefficient:.2e} s × n²)"
    return shown


def _duration(seconds: float) -> str:
    for unit, length in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:,.1f} {unit}"
    return f"{seconds:.1f} s"


async def http_cpu(sizes: list[int]) -> dict[int, tuple[str, str]]:
    """CPU and answer of the real bot for each body, unsigned and signed."""
    out: dict[int, tuple[str, str]] = {}
    async with FakeSlack(rate_limits=False, trigger_ttl=None) as fake:
        with tempfile.TemporaryDirectory(prefix="hostilebench-") as tmp:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                slack_bot_token=BOT_TOKEN,
                slack_signing_secret=SECRET,
                slack_mode="http",
                slack_api_url=fake.base_url,
                batchai_data_dir=Path(tmp) / "data",
                port=0,
                link_secret="bench-link-secret",
                log_level="ERROR",
                price_refresh_hours=0,  # no calls to the Azure Retail Prices API
            )
            async with running(settings, periodic=False) as bot, aiohttp.ClientSession() as http:
                url = f"{bot.web_url}/slack/events"
                for size in sizes:
                    body = hostile(size).encode()
                    answers = []
                    for headers in (
                        {"Content-Type": "application/json"},
                        signed_headers(body, SECRET, content_type="application/json"),
                    ):
                        start = time.process_time()
                        async with http.post(url, data=body, headers=headers) as response:
                            await response.read()
                            status = response.status
                        answers.append(f"{status} in {time.process_time() - start:.3f} s")
                    out[size] = (answers[0], answers[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-kib", default="96,1024,4096", help="body sizes in KiB")
    parser.add_argument(
        "--before-budget",
        type=float,
        default=60.0,
        help="time the old scan directly when it should take at most this many seconds",
    )
    args = parser.parse_args()
    sizes = [int(kib) * KiB for kib in args.sizes_kib.split(",")]
    logging.disable(logging.WARNING)  # the bot's one warning per refused request
    old = before(sizes, args.before_budget)
    served = asyncio.run(http_cpu(sizes))
    print("before: the old pre-parse scan, CPU seconds")
    for size, text in old.items():
        print(f"  {size // KiB:>5} KiB  {text}")
    print("after: CPU seconds  (scan = nesting_depth; loader = load_job_spec → one-line refusal;")
    print("        HTTP = the bot's /slack/events, client and server in this process)")
    print(f"  {'size':>9}  {'scan':>7}  {'loader':>7}  {'HTTP unsigned':>16}  {'HTTP signed':>16}")
    for size in sizes:
        body = hostile(size)
        scan = cpu(lambda body=body: nesting_depth(body))  # type: ignore[misc]
        loader = cpu(lambda body=body: load_job_spec(body, source="job.json"))  # type: ignore[misc]
        unsigned, signed = served[size]
        print(f"  {size // KiB:>5} KiB  {scan:7.3f}  {loader:7.3f}  {unsigned:>16}  {signed:>16}")


if __name__ == "__main__":
    main()
