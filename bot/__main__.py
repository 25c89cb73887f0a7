"""`batchai-bot`: run (Slack when tokens are set, else the console), console, validate, check,
manifest."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bot.check import check_azure, check_settings, format_results
from bot.config import Settings
from bot.console import LIVE_STATES, Console, ConsoleTransport, console_caller
from bot.lifecycle import running
from bot.logs import configure as configure_logging
from bot.manifest import render_manifest
from services.core.errors import SpecError
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
    check = sub.add_parser("check", help="verify the Slack tokens, scopes and channel membership")
    check.add_argument("--channel", action="append", default=[], help="also check this channel")
    manifest = sub.add_parser("manifest", help="print the Slack app manifest to paste into Slack")
    manifest.add_argument("--request-url", help="HTTP mode: https://host/slack/events")
    manifest.add_argument(
        "--command", dest="slash_command", help="slash command (default: SLACK_COMMAND)"
    )
    manifest.add_argument("--name", help="app name shown in Slack")
    args = parser.parse_args(argv)

    if args.command == "validate":
        return validate_files(args.files)
    try:
        settings = Settings()
    except ValidationError as err:  # name each setting, no traceback (never its value)
        raise SystemExit("; ".join(_setting_error(e) for e in err.errors())) from None
    if args.command == "manifest":
        return print_manifest(settings, args)
    if args.command == "check":
        return asyncio.run(run_check(settings, args.channel))
    configure_logging(settings)
    wait = getattr(args, "wait_timeout", 900.0)
    try:
        if args.command in (None, "run") and settings.slack_configured:
            return asyncio.run(run_slack(settings))
        return asyncio.run(run_console(settings, wait_timeout=wait))
    except KeyboardInterrupt:
        return 130


def _setting_error(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(str(part) for part in error["loc"]).upper()
    return f"{where}: {message}" if where else message


async def run_slack(settings: Settings) -> int:
    """Serve Slack until SIGINT / SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        logging.getLogger(__name__).info("batchai-bot is serving %s", settings.slack_command)
        await stop.wait()
    return 0


async def run_console(settings: Settings, *, wait_timeout: float) -> int:
    interactive = sys.stdin.isatty()
    transport = ConsoleTransport(settings.batchai_data_dir / "console-files")
    async with running(settings, transport=transport) as bot:

        async def busy() -> bool:
            live = await bot.store.list_jobs(states=LIVE_STATES, include_deleted=True)
            return bool(live) or bool(await bot.store.pending_events(1))

        console = Console(
            commands=bot.commands,
            actions=bot.actions,
            transport=transport,
            caller=console_caller(settings.console_channel, settings.console_user),
            live_jobs=busy,
            interactive=interactive,
        )
        if interactive:
            print(
                "batchai-bot console — type `help`, a command (with or without /batchai), "
                "a [number] to press a button, or `exit`."
            )
        return await console.run(sys.stdin, wait_timeout=wait_timeout)


def print_manifest(settings: Settings, args: argparse.Namespace) -> int:
    url = args.request_url
    if url is None and settings.slack_mode == "http" and settings.public_url:
        url = f"{settings.public_url.rstrip('/')}/slack/events"
    try:
        text = render_manifest(
            command=args.slash_command or settings.slack_command,
            request_url=url,
            app_name=args.name,
        )
    except ValueError as err:
        print(f"batchai-bot manifest: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


async def run_check(settings: Settings, channels: list[str]) -> int:
    azure = await check_azure(settings) if settings.batchai_backend == "azure" else []
    if not settings.slack_configured:
        if azure:
            print(format_results(azure))
        print("FAIL token   SLACK_BOT_TOKEN is not set (the bot runs as a console without it)")
        return 1
    results = await check_settings(
        settings, channels=[*sorted(settings.allowed_channels), *channels]
    )
    print(format_results([*azure, *results]))
    return 0 if all(r.ok for r in [*azure, *results]) else 1


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
