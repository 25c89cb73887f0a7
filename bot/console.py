"""The console transport: Slack's messages as text, buttons as numbered choices, stdin commands."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from handlers import views
from handlers.actions import ActionHandler
from handlers.commands import CommandHandler, Reply
from handlers.presenter import MessageRef
from handlers.views import Block, Message, to_text
from services.access import Caller
from services.core.errors import BatchAIError

_SECRET = re.compile(
    r"""(?P<flag>(?<!\S)(?:--password|--storage-account-key|-p)(?:=|\s+)?)"""
    r"""(?P<value>"[^"]*"|'[^']*'|["'].*$|\S+)"""
)


_AS_USER = re.compile(r"^as\s+(?P<user>\S+)(?P<rest>.*)$", re.DOTALL)
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,20}$")


def redact(line: str) -> str:
    """The command as it may be echoed: values of secret flags replaced by ****, the rest as
    typed (a `-p` path of list-files is masked too, which costs nothing)."""
    return _SECRET.sub(lambda m: m.group("flag") + "****", line)


class ConsoleTransport:
    """Prints what Slack would show. Threads are indented under their status card."""

    def __init__(self, files_dir: Path, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._files_dir = files_dir
        self._ids = itertools.count(1)
        self._titles: dict[str, str] = {}
        self.buttons: dict[int, Block] = {}
        self._sent: dict[str, MessageRef] = {}

    async def post(
        self,
        channel: str,
        message: Message,
        *,
        thread: str | None = None,
        broadcast: bool = False,
        keys: Sequence[str] = (),
        low_priority: bool = False,
    ) -> MessageRef:
        for key in keys:
            if key in self._sent:
                return self._sent[key]
        message_id = f"m{next(self._ids)}"
        sent = MessageRef(channel, message_id)
        for key in keys:
            self._sent[key] = sent
        if thread is None:
            self._titles[message_id] = message.text.split(":")[0]
            self.show(message, header=f"#{channel}")
        else:
            title = self._titles.get(thread, thread)
            also = " (also sent to channel)" if broadcast else ""
            self.show(message, header=f"#{channel} › {title}{also}", indent="  ")
        return sent

    async def lookup(self, key: str) -> MessageRef | None:
        return self._sent.get(key)

    async def update(
        self, channel: str, message_id: str, message: Message, *, priority: int = 1
    ) -> None:
        self.show(message, header=f"#{channel} (status card updated)")

    async def upload(
        self,
        channel: str,
        *,
        thread: str | None,
        filename: str,
        content: bytes,
        title: str,
        keys: Sequence[str] = (),
    ) -> None:
        """Keeps the file next to the console's other output and says where it is."""
        if any(key in self._sent for key in keys):
            return
        path = self._files_dir / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        for key in keys:
            self._sent[key] = MessageRef(channel, str(path))
        title_of_thread = self._titles.get(thread or "", "")
        self.show(
            Message(f"{title}: {path}"),
            header=f"#{channel} › {title_of_thread} (file)",
            indent="  ",
        )

    def show(self, message: Message, *, header: str | None = None, indent: str = "") -> None:
        first = len(self.buttons) + 1
        text, buttons = to_text(message, first_button=first)
        for offset, button in enumerate(buttons):
            self.buttons[first + offset] = button
        lines = ([f"── {header}"] if header else []) + text.splitlines()
        self._out.write("".join(f"{indent}{line}\n" for line in lines))
        self._out.flush()


class Console:
    """Reads commands (with or without the leading /batchai) and button numbers from stdin."""

    def __init__(
        self,
        *,
        commands: CommandHandler,
        actions: ActionHandler,
        transport: ConsoleTransport,
        caller: Caller,
        live_jobs: Callable[[], object],
        interactive: bool,
        out: TextIO | None = None,
    ) -> None:
        self._commands = commands
        self._actions = actions
        self._transport = transport
        self._caller = caller
        self._live_jobs = live_jobs
        self._interactive = interactive
        self._out = out or sys.stdout

    async def run(self, stdin: TextIO, *, wait_timeout: float) -> int:
        """Process lines until EOF or `exit`; then wait for started jobs. Returns an exit code."""
        while True:
            if self._interactive:
                self._out.write("batchai> ")
                self._out.flush()
            line = await asyncio.to_thread(stdin.readline)
            if not line:
                break
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line in ("exit", "quit"):
                return 0
            if not self._interactive:
                self._out.write(f"\n$ {redact(line)}\n")
            await self.execute(line)
        return await self._wait_for_jobs(wait_timeout)

    async def execute(self, line: str) -> None:
        caller, line = self._speaker(line)
        if caller is None:
            self._transport.show(views.error(f"{line} (usage: as U0LEAD /batchai …)"))
            return
        if line.isdigit():
            button = self._transport.buttons.get(int(line))
            if button is None:
                self._transport.show(Message(f"no choice [{line}]"))
                return
            reply = await self._actions.handle(button["action_id"], button["value"], caller=caller)
        else:
            reply = await self._commands.handle(line, caller=caller, source="console")
        await self._show_reply(reply)

    def _speaker(self, line: str) -> tuple[Caller | None, str]:
        """`as U0LEAD <command or button number>` speaks as that Slack user (an admin only if
        ADMIN_USERS says so: the access guard decides, as for anyone), so the approval flow can
        be tried without Slack; else the console's own user. (None, why) when the prefix is
        malformed."""
        match = _AS_USER.match(line)
        if match is None:
            return self._caller, line
        user, rest = match.group("user"), match.group("rest").strip()
        if not _SLACK_ID.match(user) or not rest:
            return None, f"`as` needs a Slack user ID and a command, not {line[:80]!r}"
        return replace(self._caller, user=user), rest

    async def _show_reply(self, reply: Reply) -> None:
        self._transport.show(reply.message)
        if reply.stream is None:
            return
        try:
            async for text in reply.stream:
                self._out.write(text)
                self._out.flush()
        except BatchAIError as err:  # e.g. the job ended without writing the file
            self._transport.show(views.error(str(err)))

    async def _wait_for_jobs(self, timeout: float) -> int:
        """Piped input ends when its jobs have finished (or the timeout says otherwise)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self._live_jobs():  # type: ignore[misc]
            if loop.time() >= deadline:
                self._out.write(f"jobs still running after {timeout:.0f}s; leaving them running\n")
                return 1
            await asyncio.sleep(0.2)
        return 0


def console_caller(channel: str, user: str) -> Caller:
    """The console's user in its one channel; it goes through the same guard as Slack (the
    allow-lists and ADMIN_USERS apply), and only it may name files of the bot's machine."""
    return Caller(user, channel, may_read_paths=True)


class ConsoleMembers:
    """The console has one channel, and whoever types in it is a member."""

    def __init__(self, channel: str) -> None:
        self._channel = channel

    async def is_member(self, channel: str, user: str) -> bool:
        return channel == self._channel
