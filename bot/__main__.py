"""`batchai-bot`: run (Slack when tokens are set, else the console), console, validate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bot.config import Settings
from bot.console import LIVE_STATES, Console, ConsoleTransport, console_actor
from bot.lifecycle import running
from handlers.actions import ActionHandler
from services.errors import SpecError
from services.jobspec import load_any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchai-bot", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="start the bot: Slack when tokens are configured, else the console")
    console = sub.add_parser("console", help="the /batchai commands on this terminal or a pipe")
    console.add_argument(
        "--wait-timeout",
        type=float,
        default=900.0,
        help="with piped input: seconds to wait for started jobs (default 900)",
    )
    validate = sub.add_parser("validate", help="check Batch AI job/cluster JSON files")
    validate.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "validate":
        return validate_files(args.files)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("apscheduler", "alembic", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command in (None, "run") and settings.slack_configured:
        print(
            "SLACK_BOT_TOKEN is set, but this build has no Slack transport yet; "
            "starting the console instead.",
            file=sys.stderr,
        )
    wait = getattr(args, "wait_timeout", 900.0)
    try:
        return asyncio.run(run_console(settings, wait_timeout=wait))
    except KeyboardInterrupt:
        return 130


async def run_console(settings: Settings, *, wait_timeout: float) -> int:
    interactive = sys.stdin.isatty()
    transport = ConsoleTransport()
    async with running(settings, transport) as bot:
        actor = console_actor(settings.console_channel, settings.console_user)

        async def busy() -> bool:
            live = await bot.store.list_jobs(states=LIVE_STATES, include_deleted=True)
            return bool(live) or bool(await bot.store.pending_events(1))

        console = Console(
            commands=bot.commands,
            actions=ActionHandler(bot.jobs, bot.clock.now),
            transport=transport,
            actor=actor,
            live_jobs=busy,
            interactive=interactive,
        )
        if interactive:
            print(
                "batchai-bot console — type `help`, a command (with or without /batchai), "
                "a [number] to press a button, or `exit`."
            )
        return await console.run(sys.stdin, wait_timeout=wait_timeout)


def validate_files(files: list[Path]) -> int:
    """One line per file: OK with what it is, or the error; non-zero if any failed."""
    failed = 0
    for path in files:
        try:
            spec = load_any(path.read_bytes(), source=str(path))
        except SpecError as err:
            print(f"FAIL {err}")
            failed += 1
        except OSError as err:
            print(f"FAIL {path}: {err.strerror}")
            failed += 1
        else:
            print(f"OK   {path}: {describe(spec)}")
    return 1 if failed else 0


def describe(spec: object) -> str:
    kind = type(spec).__name__
    version = getattr(spec, "api_version", None)
    return f"{kind}" + (f" ({version})" if version else "")


if __name__ == "__main__":
    raise SystemExit(main())
