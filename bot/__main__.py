"""`batchai-bot`: run (Slack when tokens are set, else the console), console, validate, check,
manifest, completion; --version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only argparse at import: each subcommand imports what it needs when it runs, so `--help`,
# `--version`, `manifest` and `validate` never load SQLAlchemy, alembic, Bolt, aiohttp or the
# Azure SDKs (tests/test_startup.py checks it).
if TYPE_CHECKING:
    from bot.config import Settings
    from services.jobs.sources import ConfigLoader, Folder

MANIFEST_FOLDERS: tuple[Folder, ...] = ("jobs", "clusters")
SHELLS = ("bash", "zsh")
# shtab.FILE, spelled out so that building the parser needs no shtab (tests check they agree)
COMPLETE_FILES = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchai-bot", description=__doc__)
    parser.add_argument(
        "--version", action=PrintVersion, help="print the version and the git commit, then exit"
    )
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
    files = validate.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="a JSON file, or a bundled manifest's name (mnist, manifests/jobs/mnist.json)",
    )
    setattr(files, "complete", COMPLETE_FILES)  # noqa: B010 - shtab reads this attribute
    check = sub.add_parser("check", help="verify the Slack tokens, scopes and channel membership")
    check.add_argument("--channel", action="append", default=[], help="also check this channel")
    manifest = sub.add_parser("manifest", help="print the Slack app manifest to paste into Slack")
    manifest.add_argument("--request-url", help="HTTP mode: https://host/slack/events")
    manifest.add_argument(
        "--command", dest="slash_command", help="slash command (default: SLACK_COMMAND)"
    )
    manifest.add_argument("--name", help="app name shown in Slack")
    completion = sub.add_parser("completion", help="print the bash or zsh completion script")
    completion.add_argument("shell", choices=SHELLS)
    args = parser.parse_args(argv)

    if args.command == "completion":
        return print_completion(parser, args.shell)
    if args.command == "validate":
        return validate_files(args.files)
    settings = _settings()
    if args.command == "manifest":
        return print_manifest(settings, args)
    import asyncio

    if args.command == "check":
        return asyncio.run(run_check(settings, args.channel))
    from bot.logs import configure as configure_logging

    configure_logging(settings)
    wait = getattr(args, "wait_timeout", 900.0)
    try:
        if args.command in (None, "run") and settings.slack_configured:
            return asyncio.run(run_slack(settings))
        return asyncio.run(run_console(settings, wait_timeout=wait))
    except KeyboardInterrupt:
        return 130


class PrintVersion(argparse.Action):
    """`--version`, worked out only when asked for (it may run git)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from bot.version import version_line

        print(version_line())
        parser.exit(0)


def _settings() -> Settings:
    from pydantic import ValidationError

    from bot.config import Settings

    try:
        return Settings()
    except ValidationError as err:  # name each setting, no traceback (never its value)
        raise SystemExit("; ".join(_setting_error(e) for e in err.errors())) from None


def _setting_error(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(str(part) for part in error["loc"]).upper()
    return f"{where}: {message}" if where else message


async def run_slack(settings: Settings) -> int:
    """Serve Slack until SIGINT / SIGTERM."""
    import asyncio
    import logging
    import signal

    from bot.lifecycle import running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        logging.getLogger(__name__).info("batchai-bot is serving %s", settings.slack_command)
        await stop.wait()
    return 0


async def run_console(settings: Settings, *, wait_timeout: float) -> int:
    from bot.console import Console, ConsoleTransport, console_caller
    from bot.lifecycle import running
    from services.jobs.lifecycle import LIVE_STATES

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


def print_completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """The script that completes `batchai-bot`'s subcommands and options in `shell`; generated
    from the parser itself, so it cannot drift from it, and needing nothing at completion time."""
    import shtab  # only here: every other command starts without it

    print(shtab.complete(parser, shell=shell).rstrip("\n"))
    return 0


def print_manifest(settings: Settings, args: argparse.Namespace) -> int:
    from bot.manifest import render_manifest

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
    from bot.check import check_azure, check_settings, format_results

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


def validate_files(files: list[str]) -> int:
    """`OK` with what each file is, or one `FAIL` line per problem with its JSON path (the shape,
    then what `cluster create` / `file-server create` would refuse in it); non-zero if any
    failed."""
    from services.core.errors import SpecError
    from services.jobs.sources import ConfigLoader

    failed = 0
    names = [name for name in files if not Path(name).exists()]  # settings only if needed
    manifests = ConfigLoader(_settings().manifest_dir) if names else None
    for name in files:
        try:
            text, label = _spec_text(name, manifests)
            spec, problems = _problems(text, label)
        except SpecError as err:
            spec, problems = None, [str(err)]
        except OSError as err:
            spec, problems = None, [f"{name}: {err.strerror}"]
        if problems:
            failed += 1
            for line in problems:
                print(f"FAIL {line}")
        else:
            print(f"OK   {label}: {describe(spec)}")
    return 1 if failed else 0


def _problems(text: str | bytes, label: str) -> tuple[object, list[str]]:
    """The spec and every problem of it, each `<label>: <JSON path>: <what is wrong>`."""
    from services.clusters.files import cluster_file_problems, file_server_file_problems
    from services.jobspec import ClusterSpec, FileServerSpec, check_any

    spec, problems = check_any(text, source=label)
    if isinstance(spec, ClusterSpec):
        problems = [f"{label}: {p}" for p in cluster_file_problems(spec)]
    elif isinstance(spec, FileServerSpec):
        problems = [f"{label}: {p}" for p in file_server_file_problems(spec)]
    return spec, problems


def _spec_text(name: str, manifests: ConfigLoader | None) -> tuple[str | bytes, str]:
    """The file `name`; else the job or cluster manifest of that name in MANIFEST_DIR (the
    bundled ones by default), so that an installed bot validates them from anywhere."""
    from services.core.errors import NotFound, UserError
    from services.models import ConfigSource

    path = Path(name)
    if manifests is not None and not path.exists():
        for folder in MANIFEST_FOLDERS:
            try:
                return manifests.load(
                    ConfigSource("manifest", name), may_read_paths=False, folder=folder
                )
            except (NotFound, UserError):  # not there, or not a manifest name: a missing file
                continue
    return path.read_bytes(), name


def describe(spec: object) -> str:
    kind = type(spec).__name__
    version = getattr(spec, "api_version", None)
    return f"{kind}" + (f" ({version})" if version else "")


if __name__ == "__main__":
    raise SystemExit(main())
