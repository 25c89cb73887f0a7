"""/batchai text -> typed command, plus usage, help and the README reference, all from one table."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import io
import re
import shlex
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from handlers.commandspec import (
    COMMANDS,
    COMMON_FLAGS,
    HELP_FLAG,
    NOT_STORED,
    UNSUPPORTED,
    ApprovalsApprove,
    ApprovalsDeny,
    ApprovalsList,
    Audit,
    BudgetSet,
    BudgetShow,
    ClusterAutoScale,
    ClusterCreate,
    ClusterDelete,
    ClusterList,
    ClusterNodeExec,
    ClusterNodeList,
    ClusterResize,
    ClusterShow,
    Command,
    CommandSpec,
    ConfigRef,
    Flag,
    Help,
    JobCommand,
    JobCreate,
    JobDelete,
    JobList,
    JobListFiles,
    JobNodeExec,
    JobNodeList,
    JobShow,
    JobStreamFile,
    JobTerminate,
    JobWait,
    ListUsages,
    ScheduleDelete,
    ScheduleList,
    ScheduleShow,
    Source,
    Spend,
    show,
)
from handlers.outputs import OutputFormat
from services.core.errors import UserError

__all__ = [
    "MAX_INPUT_BYTES",
    "ApprovalsApprove",
    "ApprovalsDeny",
    "ApprovalsList",
    "Audit",
    "BudgetSet",
    "BudgetShow",
    "ClusterAutoScale",
    "ClusterCreate",
    "ClusterDelete",
    "ClusterList",
    "ClusterNodeExec",
    "ClusterNodeList",
    "ClusterResize",
    "ClusterShow",
    "Command",
    "ConfigRef",
    "Help",
    "ListUsages",
    "JobCommand",
    "JobCreate",
    "JobDelete",
    "JobList",
    "JobListFiles",
    "JobNodeExec",
    "JobNodeList",
    "JobShow",
    "JobStreamFile",
    "JobTerminate",
    "JobWait",
    "OutputFormat",
    "ScheduleDelete",
    "ScheduleList",
    "ScheduleShow",
    "Source",
    "Spend",
    "help_text",
    "parse",
    "reference_markdown",
    "usage",
]

MAX_INPUT_BYTES = 16 * 1024
WIDTH = 100
PROG = "/batchai"

# Every spelling (canonical, alias, legacy) -> its spec; groups are all proper prefixes.
# A command may be one word (spend, audit): then it is a top word without being a group.
_BY_PATH: dict[tuple[str, ...], CommandSpec] = {}
for _spec in COMMANDS:
    for _path in (_spec.path, *_spec.aliases):
        _BY_PATH[_path] = _spec
_GROUPS: dict[tuple[str, ...], list[str]] = {}
for _path in _BY_PATH:
    for _depth in range(1, len(_path)):
        _children = _GROUPS.setdefault(_path[:_depth], [])
        if _path[_depth] not in _children:
            _children.append(_path[_depth])
_TOP_WORDS = tuple(dict.fromkeys(path[0] for path in _BY_PATH))
_SECTIONS = tuple(dict.fromkeys(spec.section for spec in COMMANDS))
_HELP_WORDS = frozenset({"help", *HELP_FLAG.names})


# --------------------------------------------------------------------------- lexing

# Slack's client "smartens" quotes and escapes &, <, > in slash-command text.
_SMART_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "‚": "'"})
_SLACK_ESCAPES = {"lt": "<", "gt": ">", "amp": "&"}
_SLACK_ESCAPE = re.compile(r"&(lt|gt|amp);")
_FLAG_START = re.compile(r"--?[A-Za-z]")
_SHELL_SPACE = " \t\r\n"
_FLAG_EQUALS_BRACE = re.compile(r"([-—–][-\w]*)=\{")
_NOT_PLAIN = re.compile(r"['\"\\{]")  # what shlex unquotes, and JSON objects
_WORD = re.compile(r"[^ \t\r\n]+")  # a word between _SHELL_SPACE


def _normalize(text: str) -> str:
    if "&" in text:
        text = _SLACK_ESCAPE.sub(lambda m: _SLACK_ESCAPES[m.group(1)], text)
    # Slack sends non-breaking spaces from some keyboards; shlex only splits on ASCII space.
    return text.translate(_SMART_QUOTES).replace("\u00a0", " ")


def _dashes(word: str) -> str:
    """Undo autocorrect that turns a typed `--` into an em or en dash."""
    if word[:1] in ("—", "–"):
        return "--" + word[1:]
    return word


def _looks_like_flag(word: str) -> bool:
    word = _dashes(word)
    return _FLAG_START.match(word) is not None or word == "--"


@dataclass(frozen=True)
class _Token:
    text: str
    value: str | None = None  # inline JSON attached by the lexer to a `--config={...}` token
    json: bool = False  # the token is an inline JSON object cut verbatim from the text


def _json_end(text: str, start: int) -> int:
    """Index after the JSON object starting at `start`, found by a brace- and string-aware scan."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                if index + 1 < len(text) and text[index + 1] not in _SHELL_SPACE:
                    raise UserError(
                        "inline JSON must be followed by a space or the end of the line"
                    )
                return index + 1
    raise UserError('inline JSON is not closed: a "}" or a closing quote is missing')


class _Lexer:
    """shlex (POSIX) tokens, except that a JSON object after a config flag is cut out verbatim.

    shlex would strip the quotes inside `{"a": "b c"}` and split it at spaces, so the lexer reads
    the raw text itself at those points and then moves shlex's stream past the object.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        # Nothing to unquote and no JSON object: shlex would only split at its spaces (and costs
        # some 40 calls a word).
        self._words = None if _NOT_PLAIN.search(text) else iter(_WORD.findall(text))
        # An in-memory stream of our own, so the lexer can read shlex's position and move it.
        self._stream = io.StringIO(text, newline="")
        self._shlex = shlex.shlex(self._stream, posix=True)
        self._shlex.whitespace_split = True
        self._shlex.commenters = ""  # '#' is an ordinary character in names and setup tasks
        self._buffer: list[_Token] = []
        self._previous = ""
        self.json_flags: frozenset[str] = frozenset()

    def peek(self, ahead: int = 0) -> _Token | None:
        while len(self._buffer) <= ahead:
            token = self._read()
            if token is None:
                return None
            self._buffer.append(token)
        return self._buffer[ahead]

    def pop(self) -> _Token | None:
        token = self.peek()
        if token is not None:
            self._buffer.pop(0)
        return token

    def rest(self) -> list[_Token]:
        tokens: list[_Token] = []
        while (token := self.pop()) is not None:
            tokens.append(token)
        return tokens

    def _read(self) -> _Token | None:
        if self._words is not None:
            word = next(self._words, None)
            return None if word is None else _Token(word)
        text, stream = self._text, self._stream
        start = stream.tell()
        while start < len(text) and text[start] in _SHELL_SPACE:
            start += 1
        if start >= len(text):
            return None
        match = _FLAG_EQUALS_BRACE.match(text, start)
        if text[start] == "{" and self._previous in self.json_flags:
            end = _json_end(text, start)
            token = _Token(text[start:end], json=True)
        elif match and _dashes(match.group(1)) in self.json_flags:
            end = _json_end(text, match.end() - 1)
            token = _Token(match.group(1), value=text[match.end() - 1 : end])
        else:
            try:
                raw = self._shlex.get_token()
            except ValueError:
                raise UserError(
                    "unbalanced quote: close the quote you opened, or put \\ before a lone ' or \""
                ) from None
            if raw is None:
                return None
            self._previous = _dashes(raw)
            return _Token(raw)
        stream.seek(end)
        self._previous = ""
        return token


# --------------------------------------------------------------------------- parsing


def parse(text: str, *, source: Source = "slack") -> Command:
    """Turn the text of a /batchai command into a typed Command; raise UserError when it is wrong.

    Every UserError has a one-line message and carries the usage of the command it concerns.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_INPUT_BYTES:
        raise UserError(
            f"command too long ({size} bytes, the limit is 16 KiB): put a large job.json in a "
            "manifest and pass its name",
            usage=usage(),
        )
    lexer = _Lexer(_normalize(text))
    try:
        resolved = _resolve(lexer)
    except UserError as err:
        raise UserError(str(err), usage=err.usage or usage()) from None
    if isinstance(resolved, Help):
        return resolved
    spec, typed = resolved
    try:
        lexer.json_flags = spec.json_flags
        tokens = lexer.rest()
        if any(
            not t.json and t.value is None and _dashes(t.text) in HELP_FLAG.names for t in tokens
        ):
            return Help(topic=typed)
        return _build(spec, typed, tokens, source)
    except UserError as err:
        raise UserError(str(err), usage=usage(*typed)) from None


def _resolve(lexer: _Lexer) -> Help | tuple[CommandSpec, tuple[str, ...]]:
    """Skip the optional `/batchai` / `az batchai` prefix and find the command's words."""
    first = lexer.peek()
    if first is not None and first.text.lower() in ("/batchai", "batchai"):
        lexer.pop()
    first, second = lexer.peek(), lexer.peek(1)
    if first and second and (first.text.lower(), second.text.lower()) == ("az", "batchai"):
        lexer.pop()
        lexer.pop()
    token = lexer.pop()
    if token is None:
        return Help()
    word = token.text.lower()
    if word in _HELP_WORDS:
        return _help_topic(lexer.rest())
    if _looks_like_flag(token.text):
        # Never echo a stray flag: what follows it may be a password.
        raise UserError(
            f"start with a command group ({', '.join(_TOP_WORDS)} or help), then the flags"
        )
    if (word,) in UNSUPPORTED:
        raise UserError(UNSUPPORTED[(word,)])
    if (word,) in _BY_PATH:
        return _BY_PATH[(word,)], (word,)
    if (word,) not in _GROUPS:
        raise UserError(
            f"unknown command group {show(token.text)}: use {', '.join(_TOP_WORDS)} or help"
            + _did_you_mean(word, _TOP_WORDS)
        )
    path: tuple[str, ...] = (word,)
    while True:
        token = lexer.peek()
        if token is None:
            return Help(topic=path)
        if _looks_like_flag(token.text):
            if _dashes(token.text) in HELP_FLAG.names:
                return Help(topic=path)
            raise UserError(
                f'"{" ".join(path)}" needs a command: {", ".join(_GROUPS[path])}',
                usage=usage(*path),
            )
        lexer.pop()
        candidate = (*path, token.text.lower())
        if candidate in _BY_PATH:
            return _BY_PATH[candidate], candidate
        if candidate in _GROUPS:
            path = candidate
            continue
        for unsupported, message in UNSUPPORTED.items():
            if unsupported[: len(candidate)] == candidate:
                raise UserError(message, usage=usage(*path))
        raise UserError(
            f"unknown command {show(' '.join((*path, token.text)))}"
            + _did_you_mean(candidate[-1], _GROUPS[path], prefix=" ".join(path) + " "),
            usage=usage(*path),
        )


def _help_topic(tokens: list[_Token]) -> Help:
    words = tuple(t.text.lower() for t in tokens if _dashes(t.text) not in HELP_FLAG.names)
    if any(_looks_like_flag(word) for word in words):
        # Words after a flag may be a value (even a password); name none of them.
        raise UserError('help takes command words, not flags: e.g. "help job create"')
    if words in ((), ("help",)):
        return Help()
    if words in _BY_PATH or words in _GROUPS:
        return Help(topic=words)
    topics = [" ".join(path) for path in (*_GROUPS, *_BY_PATH)]
    raise UserError(
        f"unknown help topic {show(' '.join(words))}" + _did_you_mean(" ".join(words), topics)
    )


def _did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f'; did you mean "{prefix}{close[0]}"?' if close else ""


def _build(
    spec: CommandSpec, typed: tuple[str, ...], tokens: list[_Token], source: Source
) -> Command:
    given = _collect(spec, typed, tokens)
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for flag, name, raw in given.values():
        if isinstance(raw, bool):
            value: Any = raw
        elif isinstance(raw, list):  # a repeatable flag: each value, in the order given
            if "" in raw:
                raise UserError(f"{name} needs a value")
            value = tuple(flag.kind.convert(one, name, source) for one in raw)
        elif raw == "":
            raise UserError(f"{name} needs a value")
        else:
            value = flag.kind.convert(raw, name, source)
        if flag.dest is not None:
            values[flag.dest] = value
        if flag.warning and flag.warning not in warnings:
            warnings.append(flag.warning)
    missing = [spec.label(dest) for dest in spec.missing(values, source)]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise UserError(f"missing required flag{plural} {', '.join(missing)} for {_quoted(typed)}")
    for check in spec.checks:
        check(values, source)
    fields = {f.name for f in dataclasses.fields(spec.cls)} - NOT_STORED
    kwargs = {key: value for key, value in values.items() if key in fields}
    return spec.cls(**kwargs, warnings=tuple(warnings))


def _collect(
    spec: CommandSpec, typed: tuple[str, ...], tokens: list[_Token]
) -> dict[str, tuple[Flag, str, str | bool | list[str]]]:
    """Pair flags with their raw values, left to right; values are converted afterwards."""
    given: dict[str, tuple[Flag, str, str | bool | list[str]]] = {}
    last: Flag | None = None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token.json or not _looks_like_flag(token.text):
            raise _unexpected(token, last, typed)
        name, value = _dashes(token.text), token.value
        if value is None and "=" in name:
            name, _, value = name.partition("=")
        flag = spec.lookup(name)
        if flag is None:
            raise _unknown_flag(name, spec, typed)
        if flag.kind.takes_value and value is None:
            following = tokens[index] if index < len(tokens) else None
            if following is None or (not following.json and _looks_like_flag(following.text)):
                raise UserError(f"{name} needs a value")
            value = following.text
            index += 1
        elif not flag.kind.takes_value and value is not None:
            raise UserError(f"{name} takes no value")
        if flag.repeatable:
            held = given.get(flag.key)
            values = held[2] if held is not None and isinstance(held[2], list) else []
            given[flag.key] = (flag, name, [*values, value or ""])
            last = flag
            continue
        if flag.key in given:
            first = given[flag.key][1]
            also = f" (first as {first})" if first != name else ""
            raise UserError(f"{name} given twice{also}: give each flag once")
        given[flag.key] = (flag, name, True if value is None else value)
        last = flag
    return given


def _unexpected(token: _Token, last: Flag | None, typed: tuple[str, ...]) -> UserError:
    if last is not None and (last.kind.secret or last.kind.prose):
        # The stray word is most likely the rest of a secret (or a sentence) typed unquoted.
        return UserError(
            f"unexpected argument after the value of {last.names[-1]} for {_quoted(typed)}: "
            "quote a value that contains spaces"
        )
    return UserError(
        f"unexpected argument {show(token.text)} for {_quoted(typed)}: "
        "values follow a flag, e.g. --name NAME"
    )


def _unknown_flag(name: str, spec: CommandSpec, typed: tuple[str, ...]) -> UserError:
    if not name.startswith("--") and len(name) > 2 and spec.lookup(name[:2]):
        # `-pSECRET`: name only the flag, never what was glued to it.
        return UserError(
            f"unknown flag {name[:2]}… for {_quoted(typed)}: put a space after {name[:2]}"
        )
    shown = show(name)[1:-1]
    return UserError(
        f"unknown flag {shown} for {_quoted(typed)}"
        + _did_you_mean(name, spec.flag_names).replace('"', "")
    )


def _quoted(path: tuple[str, ...]) -> str:
    return '"' + " ".join(path) + '"'


# --------------------------------------------------------------------------- help rendering


def _flag_line(flag: Flag, spec: CommandSpec) -> tuple[str, str]:
    left = ", ".join(flag.names)
    if flag.names[0].startswith("--"):
        left = "    " + left  # keep long names in one column under "-x, --long"
    if flag.kind.takes_value:
        left += " " + flag.placeholder
    desc = flag.help
    if flag.kind.hint:
        desc += f" [{flag.kind.hint}]"
    if flag.dest is not None:
        default = spec.default(flag.dest)
        instead = [spec.label(other) for dest, other in spec.given_by if dest == flag.dest]
        if instead:
            desc += f" (required without {instead[0]})"
        elif flag.dest in spec.required:
            desc += " (required)"
        elif default not in (None, False, ()):
            desc += f" (default:\u00a0{default})"  # kept on one line by the wrapper
    return left, desc


def _columns(rows: list[tuple[str, str]], indent: int = 2, width: int = 0) -> list[str]:
    width = width or min(max((len(left) for left, _ in rows), default=0), 34)
    lines: list[str] = []
    for left, desc in rows:
        pad = " " * indent
        wrapped = textwrap.wrap(desc, WIDTH - indent - width - 2) or [""]
        if len(left) > width:
            lines.append(pad + left)
            lines.extend(" " * (indent + width + 2) + part for part in wrapped)
            continue
        lines.append(pad + left.ljust(width) + "  " + wrapped[0])
        lines.extend(" " * (indent + width + 2) + part for part in wrapped[1:])
    return [line.replace("\u00a0", " ") for line in lines]


def _synopsis(spec: CommandSpec, typed: tuple[str, ...]) -> str:
    required = []
    for dest in spec.required:
        flag = next(f for f in spec.flags if f.dest == dest)
        required.append(f"{flag.names[0]} {flag.placeholder}")
    return " ".join([f"usage: {PROG}", *typed, *required, "[flags]"])


def _command_usage(spec: CommandSpec, typed: tuple[str, ...]) -> str:
    own = [flag for flag in spec.flags if flag not in COMMON_FLAGS]
    rows = [_flag_line(flag, spec) for flag in own]
    common = [_flag_line(flag, spec) for flag in COMMON_FLAGS if flag in spec.flags]
    width = min(max(len(left) for left, _ in rows + common), 34)
    lines = [_synopsis(spec, typed), ""]
    if rows:
        lines += ["flags:", *_columns(rows, width=width)]
    lines += ["common flags:", *_columns(common, width=width)]
    return "\n".join(lines)


def _in_section(spec: CommandSpec, section: str) -> str:
    """A command as its section names it: `create` under cluster, `budget set` under spend."""
    inside = spec.path[0] == section and len(spec.path) > 1
    return " ".join(spec.path[1:] if inside else spec.path)


def _overview_usage() -> str:
    lines = [f"usage: {PROG} <group> <command> [flags]    ({PROG} help for the overview)"]
    for section in _SECTIONS:
        names = [
            _in_section(s, section) for s in COMMANDS if s.section == section and not s.legacy_of
        ]
        lines.append(f"  {section}: {', '.join(names)}")
    lines.append("Add -h to any command for its flags.")
    return "\n".join(lines)


def _group_listing(path: tuple[str, ...]) -> list[str]:
    return _listing([s for s in COMMANDS if s.path[: len(path)] == path])


def _listing(specs: list[CommandSpec]) -> list[str]:
    rows = [(" ".join(s.path), s.summary) for s in specs if not s.legacy_of]
    lines = _columns(rows)
    legacy = [(" ".join(s.path), "= " + " ".join(s.legacy_of)) for s in specs if s.legacy_of]
    legacy += [(" ".join(a), "= " + " ".join(s.path)) for s in specs for a in s.aliases]
    if legacy:
        lines += ["older names, accepted as typed:", *_columns(legacy)]
    return lines


def _lookup(path: tuple[str, ...]) -> CommandSpec | None:
    return _BY_PATH.get(tuple(word.lower() for word in path))


@functools.lru_cache(maxsize=512)
def usage(*path: str) -> str:
    """The usage block of a command (its flags), of a group (its commands), or of the whole bot.

    Cached: every refusal carries one, and the table does not change while the bot runs."""
    words = tuple(word.lower() for word in path)
    if not words or words == ("help",):
        return _overview_usage()
    spec = _lookup(words)
    if spec is not None:
        return _command_usage(spec, words)
    if words in _GROUPS:
        lines = [f"usage: {PROG} {' '.join(words)} <command> [flags]", *_group_listing(words)]
        return "\n".join(lines)
    raise KeyError(f"no such command: {' '.join(path)}")


@functools.lru_cache(maxsize=512)
def help_text(*topic: str) -> str:
    """The overview, or the help of one group or command: plain text laid out for monospace.

    Cached like `usage`: laying out the overview (textwrap over every command) cost more CPU
    than the rest of a `help` command."""
    words = tuple(word.lower() for word in topic)
    if not words or words == ("help",):
        return _overview()
    spec = _lookup(words)
    if spec is None:
        return usage(*words)
    title = f"{PROG} {' '.join(words)}: {spec.summary}"
    lines = [title]
    if spec.legacy_of:
        lines.append(f"(older name of {PROG} {' '.join(spec.legacy_of)}; both work)")
    also = [" ".join(a) for a in (spec.path, *spec.aliases) if a != words]
    if also and not spec.legacy_of:
        lines.append("(also: " + ", ".join(f"{PROG} {a}" for a in also) + ")")
    lines += ["", _command_usage(spec, words)]
    if spec.notes:
        lines += ["", "notes:"]
        for note in spec.notes:
            lines += textwrap.wrap(note, WIDTH, initial_indent="  - ", subsequent_indent="    ")
    if spec.examples:
        lines += ["", "examples:", *(f"  {example}" for example in spec.examples)]
    return "\n".join(lines)


def _overview() -> str:
    lines = [
        f"{PROG}: the az batchai commands of Azure Batch AI, as a chat bot.",
        "",
        f"usage: {PROG} <group> <command> [flags]",
        "",
    ]
    for section in _SECTIONS:
        specs = [s for s in COMMANDS if s.section == section]
        lines += [f"{section} commands:", *_listing(specs), ""]
    common = "  ".join(
        "/".join(flag.names)
        + (f" {flag.kind.hint or flag.placeholder}" if flag.kind.takes_value else "")
        for flag in COMMON_FLAGS
    )
    lines += [
        f"common flags: {common}",
        'A leading "az batchai" is optional; both --flag value and --flag=value work.',
        f"For the flags of one command: {PROG} help job create, or {PROG} job create -h.",
    ]
    return "\n".join(lines)


def reference_markdown() -> str:
    """The README's command reference: the text of `/batchai help`, command by command."""
    parts = [
        "# `/batchai` command reference",
        "",
        "<!-- generated from handlers/commandspec.py by handlers.grammar.reference_markdown() -->",
        "",
        "```text",
        help_text(),
        "```",
    ]
    for spec in COMMANDS:
        parts += ["", f"## `{PROG} {' '.join(spec.path)}`", "", "```text"]
        parts += [help_text(*spec.path), "```"]
    return "\n".join(parts) + "\n"
