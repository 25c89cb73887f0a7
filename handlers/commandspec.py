"""The /batchai command table: typed commands, flag kinds and the one list of commands."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from handlers.outputs import FORMATS, Output, OutputFormat, Query
from services.core.errors import UserError
from services.jobspec import MAX_RETRIES, sweep
from services.models import Where

Source = Literal["slack", "console"]


# --------------------------------------------------------------------------- typed commands


@dataclass(frozen=True)
class ConfigRef:
    """Where a job.json or cluster.json comes from: manifest name, inline JSON, console path."""

    kind: Literal["manifest", "inline", "path"]
    value: str


@dataclass(frozen=True, kw_only=True)
class Command:
    """Base of every parsed command: the flags every command shares.

    The class says how it is guarded: `destructive` ones need an admin when admins are listed,
    `audited` ones leave an audit record whatever their outcome, `slow` ones are acked with a
    "working on it…" before they run (the others are answered in the ack when they finish in
    time: handlers/slack/slash.py)."""

    destructive: ClassVar[bool] = False
    audited: ClassVar[bool] = False
    slow: ClassVar[bool] = False

    output: OutputFormat = "text"
    query: Query | None = None
    resource_group: str | None = None
    workspace: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def answer(self) -> Output:
        """How the answer is shown: the -o format and the --query together."""
        return Output(self.output, self.query)

    @property
    def where(self) -> Where:
        """Where the command says its resource lives: -g, -w (and -e on job commands)."""
        return Where(self.resource_group, self.workspace, getattr(self, "experiment", None))


@dataclass(frozen=True, kw_only=True)
class JobCommand(Command):
    """Base of the job commands: in the 2018-05-01 model every job lives in an experiment."""

    experiment: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClusterCreate(Command):
    slow: ClassVar[bool] = True

    name: str
    vm_size: str | None = None  # required unless the cluster.json (-f/-c) holds vmSize
    image: str | None = None
    min_nodes: int | None = None
    max_nodes: int | None = None
    target_nodes: int | None = None
    vm_priority: Literal["dedicated", "lowpriority"] | None = None  # None: the file's, or dedicated
    afs_name: str | None = None
    afs_mount_path: str = "afs"
    bfs_name: str | None = None
    bfs_mount_path: str = "bfs"
    nfs: str | None = None
    nfs_mount_path: str = "nfs"
    use_auto_storage: bool = False
    user_name: str | None = None
    ssh_key: str | None = None
    password: SecretStr | None = None
    setup_task: str | None = None
    setup_task_output: str | None = None
    subnet: str | None = None
    storage_account_name: str | None = None
    storage_account_key: SecretStr | None = None
    config: ConfigRef | None = None
    location: str | None = None
    idle_timeout_minutes: int | None = None


@dataclass(frozen=True, kw_only=True)
class ClusterList(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class ClusterShow(Command):
    name: str


@dataclass(frozen=True, kw_only=True)
class ClusterResize(Command):
    destructive: ClassVar[bool] = True
    audited: ClassVar[bool] = True
    slow: ClassVar[bool] = True

    name: str
    target_nodes: int


@dataclass(frozen=True, kw_only=True)
class ClusterAutoScale(Command):
    destructive: ClassVar[bool] = True
    audited: ClassVar[bool] = True
    slow: ClassVar[bool] = True

    name: str
    min_nodes: int
    max_nodes: int
    idle_timeout_minutes: int | None = None


@dataclass(frozen=True, kw_only=True)
class ClusterUpdate(Command):
    destructive: ClassVar[bool] = True
    audited: ClassVar[bool] = True

    name: str
    idle_timeout_minutes: int


@dataclass(frozen=True, kw_only=True)
class ClusterDelete(Command):
    destructive: ClassVar[bool] = True
    audited: ClassVar[bool] = True
    slow: ClassVar[bool] = True

    name: str
    yes: bool = False


@dataclass(frozen=True, kw_only=True)
class ClusterNodeList(Command):
    cluster: str


@dataclass(frozen=True, kw_only=True)
class ClusterFileList(Command):
    slow: ClassVar[bool] = True

    cluster: str
    path: str = "."
    expiry_minutes: int = 60


@dataclass(frozen=True, kw_only=True)
class WorkspaceCreate(Command):
    audited: ClassVar[bool] = True

    workspace: str = dataclasses.field()  # -n/--workspace, as az named it
    location: str | None = None


@dataclass(frozen=True, kw_only=True)
class WorkspaceList(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class WorkspaceShow(Command):
    workspace: str = dataclasses.field()  # -n/--workspace, as az named it


@dataclass(frozen=True, kw_only=True)
class WorkspaceDelete(Command):
    destructive: ClassVar[bool] = True
    audited: ClassVar[bool] = True

    workspace: str = dataclasses.field()  # -n/--workspace, as az named it
    yes: bool = False


@dataclass(frozen=True, kw_only=True)
class ExperimentCreate(Command):
    audited: ClassVar[bool] = True

    # Required, as in az: an experiment lives in a named workspace. (A bare annotation would
    # inherit the base class's default; field() without one makes it required.)
    workspace: str = dataclasses.field()
    name: str


@dataclass(frozen=True, kw_only=True)
class ExperimentList(Command):
    workspace: str = dataclasses.field()


@dataclass(frozen=True, kw_only=True)
class ExperimentShow(Command):
    workspace: str = dataclasses.field()
    name: str


@dataclass(frozen=True, kw_only=True)
class ExperimentDelete(Command):
    destructive: ClassVar[bool] = True
    audited: ClassVar[bool] = True

    workspace: str = dataclasses.field()
    name: str
    yes: bool = False


@dataclass(frozen=True, kw_only=True)
class ClusterNodeExec(Command):
    audited: ClassVar[bool] = True
    slow: ClassVar[bool] = True

    cluster: str
    node_id: str | None = None  # None: the first node, as az did
    command: str


@dataclass(frozen=True, kw_only=True)
class JobCreate(JobCommand):
    slow: ClassVar[bool] = True

    name: str | None = None  # required, except in Slack, where the form asks for it
    cluster: str | None = None
    config: ConfigRef | None = None
    storage_account_name: str | None = None
    storage_account_key: SecretStr | None = None
    afs_name: str | None = None
    afs_mount_path: str = "afs"
    bfs_name: str | None = None
    bfs_mount_path: str = "bfs"
    nfs: str | None = None
    nfs_mount_path: str = "nfs"
    use_auto_storage: bool = False
    location: str | None = None
    at: str | None = None
    cron: str | None = None
    timezone: str | None = None
    max_retries: int | None = None
    sweep: tuple[str, ...] = ()  # --sweep NAME=V1,V2, repeated: the grid of a sweep
    sweep_metric: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobList(JobCommand):
    cluster: str | None = None
    sweep: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobShow(JobCommand):
    name: str


@dataclass(frozen=True, kw_only=True)
class JobTerminate(JobCommand):
    audited: ClassVar[bool] = True
    slow: ClassVar[bool] = True

    name: str
    yes: bool = False


@dataclass(frozen=True, kw_only=True)
class JobDelete(JobCommand):
    audited: ClassVar[bool] = True
    slow: ClassVar[bool] = True

    name: str
    yes: bool = False


@dataclass(frozen=True, kw_only=True)
class JobWait(JobCommand):
    name: str
    interval_seconds: int = 15


@dataclass(frozen=True, kw_only=True)
class JobStreamFile(JobCommand):
    slow: ClassVar[bool] = True

    job: str
    output_directory_id: str = "stdouterr"
    file_name: str
    path: str = "."


@dataclass(frozen=True, kw_only=True)
class JobListFiles(JobCommand):
    slow: ClassVar[bool] = True

    job: str
    output_directory_id: str = "stdouterr"
    path: str = "."
    expiry_minutes: int = 60


@dataclass(frozen=True, kw_only=True)
class JobNodeList(JobCommand):
    job: str


@dataclass(frozen=True, kw_only=True)
class JobNodeExec(JobCommand):
    audited: ClassVar[bool] = True
    slow: ClassVar[bool] = True

    job: str
    node_id: str | None = None  # None: the job's first node
    command: str


@dataclass(frozen=True, kw_only=True)
class FileServerCreate(Command):
    slow: ClassVar[bool] = True

    name: str
    vm_size: str | None = None  # these three are required unless the file-server JSON has them
    disk_count: int | None = None
    disk_size_gb: int | None = None
    user_name: str | None = None
    ssh_key: str | None = None
    password: SecretStr | None = None
    storage_sku: str | None = None  # None: the file's, else Premium_LRS
    caching_type: str | None = None
    subnet: str | None = None
    config: ConfigRef | None = None
    location: str | None = None


@dataclass(frozen=True, kw_only=True)
class FileServerList(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class FileServerShow(Command):
    name: str


@dataclass(frozen=True, kw_only=True)
class FileServerDelete(Command):
    destructive: ClassVar[bool] = True
    audited: ClassVar[bool] = True
    slow: ClassVar[bool] = True

    name: str
    yes: bool = False


@dataclass(frozen=True, kw_only=True)
class BudgetShow(Command):
    channel: str | None = None


@dataclass(frozen=True, kw_only=True)
class BudgetSet(Command):
    audited: ClassVar[bool] = True

    amount: Decimal  # USD per month, two decimal places
    channel: str | None = None


@dataclass(frozen=True, kw_only=True)
class ApprovalsList(Command):
    all: bool = False


@dataclass(frozen=True, kw_only=True)
class ApprovalsApprove(Command):
    id: str


@dataclass(frozen=True, kw_only=True)
class ApprovalsDeny(Command):
    id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Spend(Command):
    by: Literal["user", "channel", "cluster"] = "user"
    month: str | None = None


@dataclass(frozen=True, kw_only=True)
class Audit(Command):
    job: str | None = None
    limit: int = 50


@dataclass(frozen=True, kw_only=True)
class ScheduleList(Command):
    all: bool = False


@dataclass(frozen=True, kw_only=True)
class ScheduleShow(Command):
    id: str


@dataclass(frozen=True, kw_only=True)
class ScheduleDelete(Command):
    audited: ClassVar[bool] = True

    id: str


@dataclass(frozen=True, kw_only=True)
class ListUsages(Command):
    location: str | None = None


@dataclass(frozen=True, kw_only=True)
class Help(Command):
    topic: tuple[str, ...] = ()


# --------------------------------------------------------------------------- value kinds

Convert = Callable[[str, str, Source], Any]
"""(raw value, flag as typed, source) -> typed value; raises UserError with a one-line message."""


def show(value: str, limit: int = 40) -> str:
    """Quote a user value for a one-line message: truncated, control characters escaped."""
    cut = value if len(value) <= limit else value[:limit] + "…"
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut) + '"'


@dataclass(frozen=True)
class Kind:
    """How a flag's value is read: its placeholder in usage lines and its converter."""

    metavar: str
    convert: Convert
    hint: str = ""
    takes_value: bool = True
    # A secret's value is never shown: not in messages, not in reprs.
    secret: bool = False
    # Values of these flags may be a JSON object that the lexer cuts from the raw text.
    json_value: bool = False
    # Values are sentences: a stray word after one is most likely the rest of it, unquoted.
    prose: bool = False


def _pattern(metavar: str, regex: str, rule: str, *, hint: str = "") -> Kind:
    compiled = re.compile(regex, re.ASCII)

    def convert(raw: str, label: str, source: Source) -> str:
        if compiled.fullmatch(raw):
            return raw
        raise UserError(f"{label} {show(raw)} is not valid: {rule}")

    return Kind(metavar, convert, hint=hint)


def _name(metavar: str) -> Kind:
    return _pattern(metavar, r"[-\w]{1,64}", "use 1-64 letters, digits, - or _")


def _int(lo: int, hi: int, metavar: str = "N") -> Kind:
    def convert(raw: str, label: str, source: Source) -> int:
        # The length cap keeps int() away from Python's huge-number guard.
        if re.fullmatch(r"[+-]?[0-9]{1,9}", raw) and lo <= int(raw) <= hi:
            return int(raw)
        raise UserError(f"{label} must be a whole number from {lo} to {hi}, not {show(raw)}")

    return Kind(metavar, convert, hint=f"{lo}-{hi}")


def _choice(*choices: str) -> Kind:
    def convert(raw: str, label: str, source: Source) -> str:
        if raw.lower() in choices:
            return raw.lower()
        raise UserError(f"{label} must be {' or '.join(choices)}, not {show(raw)}")

    return Kind("|".join(choices), convert)


def _flag_on(raw: str, label: str, source: Source) -> bool:
    return True


def _secret(raw: str, label: str, source: Source) -> SecretStr:
    return SecretStr(raw)


def _output(raw: str, label: str, source: Source) -> str:
    if raw.lower() in FORMATS:
        return FORMATS[raw.lower()]
    raise UserError(f"{label} must be json, jsonc, table, tsv, yaml or none, not {show(raw)}")


def _query(raw: str, label: str, source: Source) -> Query:
    if len(raw) > 1000 or not raw.isprintable():
        raise UserError(
            f"{label} must be a JMESPath expression of at most 1000 printable characters"
        )
    try:
        return Query.compile(raw)
    except ValueError as err:
        raise UserError(f"{label} {show(raw)} is not a valid JMESPath expression: {err}") from None


def _has_dotdot(raw: str) -> bool:
    return ".." in re.split(r"[\\/]", raw)


def _relative_path(raw: str, label: str, source: Source) -> str:
    # These name files inside a job's output directory; anything that could climb out is refused.
    if (
        raw.startswith(("/", "\\", "~"))
        or _has_dotdot(raw)
        or len(raw) > 1024
        or not raw.isprintable()
    ):
        raise UserError(
            f"{label} {show(raw)} must be a relative path inside the output directory, "
            "not starting with / and without .. parts"
        )
    return raw


def _mount_path(raw: str, label: str, source: Source) -> str:
    if re.fullmatch(r"[-\w.]{1,64}(/[-\w.]{1,64}){0,7}", raw, re.ASCII) and not _has_dotdot(raw):
        return raw
    raise UserError(
        f"{label} {show(raw)} must be a relative path under the mount root "
        "(letters, digits, - _ . and /, no .. parts)"
    )


def _text(max_len: int) -> Convert:
    def convert(raw: str, label: str, source: Source) -> str:
        if len(raw) > max_len:
            raise UserError(f"{label} is longer than {max_len} characters")
        return raw

    return convert


def _sweep_parameter(raw: str, label: str, source: Source) -> str:
    try:
        sweep.parse_parameter(raw)
    except ValueError as err:
        raise _labelled(label, err) from None
    return raw


def _sweep_metric(raw: str, label: str, source: Source) -> str:
    try:
        sweep.parse_metric(raw)
    except ValueError as err:
        raise _labelled(label, err) from None
    return raw


def _labelled(label: str, err: ValueError) -> UserError:
    text = str(err)
    return UserError(text if text.startswith(label) else f"{label}: {text}")


def _prose(max_len: int) -> Convert:
    def convert(raw: str, label: str, source: Source) -> str:
        text = raw.strip()
        if not text:
            raise UserError(f"{label} needs some text")
        if len(text) > max_len:
            raise UserError(f"{label} is longer than {max_len} characters")
        # Newlines and tabs are text; other control characters and lone surrogates are not.
        if any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t" for c in text):
            raise UserError(f"{label} contains a control character: type plain text")
        return text

    return convert


_CENT = Decimal("0.01")
_MAX_USD = Decimal("10000000")
# Plain digits, or digits grouped by commas in threes; then at most two decimals.
_USD = re.compile(r"\$?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]{1,12})(?:\.[0-9]{1,2})?", re.ASCII)


def _usd(raw: str, label: str, source: Source) -> Decimal:
    negative = raw.startswith("-") and _USD.fullmatch(raw[1:]) is not None
    if not negative and _USD.fullmatch(raw) is None:
        raise UserError(
            f"{label} {show(raw)} is not an amount in USD: use e.g. 2500, 2500.50 or $2,500.00 "
            "(at most 2 decimals)"
        )
    amount = Decimal(raw.lstrip("-$").replace(",", "")).quantize(_CENT)
    if negative or not 0 < amount <= _MAX_USD:
        raise UserError(f"{label} must be more than $0 and at most $10,000,000, not {show(raw)}")
    return amount


_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{2,20}", re.ASCII)
_CHANNEL_NAME = re.compile(r"#[a-z0-9_-]{1,80}", re.ASCII)
# How Slack sends a channel picked from its autocomplete: <#C0123ABCD|name> (the name may be empty).
_CHANNEL_MENTION = re.compile(r"<#([^|>]*)(?:\|[^>]*)?>")


def _channel(raw: str, label: str, source: Source) -> str:
    if mention := _CHANNEL_MENTION.fullmatch(raw):
        if _CHANNEL_ID.fullmatch(mention.group(1)):
            return mention.group(1)
    elif _CHANNEL_ID.fullmatch(raw) or _CHANNEL_NAME.fullmatch(raw):
        return raw
    raise UserError(
        f"{label} {show(raw)} is not a channel: use its id (C0123ABCD), #name or a #channel mention"
    )


def _log_dir(raw: str, label: str, source: Source) -> str:
    if len(raw) > 1024 or not raw.isprintable() or _has_dotdot(raw):
        raise UserError(f"{label} {show(raw)} must be a directory path without .. parts")
    return raw


_KEY_TYPES = ("ssh-rsa", "ssh-ed25519", "ssh-dss", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")


def _ssh_key(raw: str, label: str, source: Source) -> str:
    if raw.startswith(_KEY_TYPES):
        if re.fullmatch(r"[-\w@.]+ [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?", raw.strip(), re.ASCII):
            return raw.strip()
        raise UserError(f"{label} does not look like an OpenSSH public key (type, base64, comment)")
    if source == "console" and raw.isprintable() and len(raw) <= 1024:
        return raw
    raise UserError(
        f"{label} from Slack takes the public key text (ssh-ed25519 AAAA...), "
        "not a path on the bot's machine"
    )


_RESERVED_USERS = frozenset({"admin", "administrator", "root"})


def _user_name(raw: str, label: str, source: Source) -> str:
    if not re.fullmatch(r"[A-Za-z_][-\w.]{0,31}", raw, re.ASCII):
        raise UserError(
            f"{label} {show(raw)} is not valid: start with a letter or _, then up to 31 "
            "letters, digits, - _ or ."
        )
    if raw.lower() in _RESERVED_USERS:
        raise UserError(f"{label} {show(raw)} is reserved on the nodes: pick another user name")
    return raw


def _config(manifest_dir: str) -> Kind:
    manifest_path = re.compile(rf"(?:\./)?manifests/{manifest_dir}/([-\w]{{1,64}})\.json", re.ASCII)

    def convert(raw: str, label: str, source: Source) -> ConfigRef:
        if raw.lstrip().startswith(("{", "[")):  # JSON (an array is refused as not an object)
            return ConfigRef("inline", raw.strip())
        if re.fullmatch(r"[-\w]{1,64}", raw, re.ASCII):
            return ConfigRef("manifest", raw)
        if match := manifest_path.fullmatch(raw):
            return ConfigRef("manifest", match.group(1))
        if source == "console" and raw.isprintable() and len(raw) <= 1024:
            return ConfigRef("path", raw)
        if source == "console":
            raise UserError(f"{label} {show(raw)} is not a usable file path")
        # A Slack user cannot see the bot's disk; a path there is a mistake or a probe.
        raise UserError(
            "--config from Slack takes a manifest name or inline JSON, "
            "not a path on the bot's machine"
        )

    return Kind("CONFIG", convert, json_value=True)


NAME = _name("NAME")
OUTPUT_DIR_ID = _name("ID")
RESOURCE_GROUP = _pattern("GROUP", r"[-\w._]{1,90}", "use 1-90 letters, digits, - _ or .")
NODES = _int(0, 100)
FLAG = Kind("", _flag_on, takes_value=False)
SECRET = Kind("SECRET", _secret, secret=True)
OUTPUT = Kind("FORMAT", _output, hint="json|jsonc|table|tsv|yaml|none")
QUERY = Kind("JMESPATH", _query)
LOCATION = _pattern("REGION", r"[A-Za-z0-9]{1,40}", "use an Azure region name such as eastus")
VM_SIZE = _pattern(
    "SIZE", r"[A-Za-z][A-Za-z0-9_]{1,63}", "use an Azure VM size such as Standard_NC6"
)
IMAGE = _pattern(
    "IMAGE",
    r"[-\w.]{1,64}|[-\w.]{1,64}:[-\w.]{1,64}:[-\w.]{1,64}:[-\w.]{1,64}",
    "use UbuntuLTS, UbuntuDSVM or publisher:offer:sku:version",
)
STORAGE_ACCOUNT = _pattern("ACCOUNT", r"[a-z0-9]{3,24}", "use 3-24 lowercase letters and digits")
ARM_ID = _pattern(
    "ARM_ID", r"/subscriptions/[^\s]{1,1000}", "use a full ARM id (/subscriptions/...)"
)
NAME_OR_ARM_ID = _pattern(
    "SERVER", r"[-\w]{1,64}|/subscriptions/[^\s]{1,1000}", "use a file server name or ARM id"
)
MOUNT_PATH = Kind("PATH", _mount_path)
RELATIVE_PATH = Kind("PATH", _relative_path)
FILE_NAME = Kind("FILE", _relative_path)
COMMAND_LINE = Kind("CMD", _text(4096))
EXEC_LINE = Kind("CMD", _prose(4096), hint="a bash command line, quoted", prose=True)
NODE_ID = _pattern("NODE_ID", r"[-\w.]{1,80}", "use a node id as node list shows it")
LOG_DIR = Kind("DIR", _log_dir)
SSH_KEY = Kind("KEY", _ssh_key)
USER_NAME = Kind("USER", _user_name)
JOB_CONFIG = _config("jobs")
CLUSTER_CONFIG = _config("clusters")
# The era-dependent job create -c: kept raw until all flags are known (see _resolve_dash_c).
CLUSTER_OR_CONFIG = Kind("CONFIG|CLUSTER", lambda raw, label, source: raw, json_value=True)
USD = Kind("USD", _usd, hint="$0.01-$10,000,000")
CHANNEL = Kind("CHANNEL", _channel)
APPROVAL_ID = _pattern("ID", r"[0-9a-f]{8,32}", "use the 8-32 lowercase hex characters of its id")
REASON = Kind("TEXT", _prose(500), hint="1-500 characters", prose=True)
WHEN = Kind("WHEN", _prose(40), hint='"YYYY-MM-DD HH:MM"', prose=True)
CRON = Kind("CRON", _prose(100), hint='"MIN HOUR DAY MONTH WEEKDAY"', prose=True)
ZONE = _pattern("ZONE", r"[A-Za-z][-\w+/]{0,63}", "use an IANA time zone such as Europe/Berlin")
SCHEDULE_ID = _pattern("ID", r"[0-9a-f]{8}", "use the 8 hex characters schedule list shows")
SWEEP_PARAMETER = Kind("NAME=V1,V2", _sweep_parameter, hint="e.g. lr=0.1,0.01")
SWEEP_METRIC = Kind("METRIC[:max|min]", _sweep_metric, hint="e.g. val_acc or loss:min")
MONTH = _pattern("YYYY-MM", r"[0-9]{4}-(?:0[1-9]|1[0-2])", "use a month as YYYY-MM, e.g. 2026-05")


# --------------------------------------------------------------------------- flags and commands


@dataclass(frozen=True)
class Flag:
    """One flag: its spellings, the field it fills (None: accepted, not stored), its kind."""

    names: tuple[str, ...]
    dest: str | None
    kind: Kind
    help: str
    metavar: str | None = None
    warning: str | None = None
    repeatable: bool = False  # given again, it adds a value (--sweep lr=… --sweep batch=…)

    @property
    def key(self) -> str:
        """What a repeat is detected on: two spellings of one field count as the same flag."""
        return self.dest or self.names[0]

    @property
    def placeholder(self) -> str:
        return self.metavar or self.kind.metavar


def _f(names: str, dest: str | None, kind: Kind, help: str, **extra: Any) -> Flag:
    return Flag(tuple(names.split()), dest, kind, help, **extra)


Check = Callable[[dict[str, Any], Source], None]
"""A rule across flags; may rewrite the values (job create -c) or raise UserError."""


@dataclass(frozen=True)
class CommandSpec:
    """One command spelling: its words, the dataclass it builds, its flags, its help."""

    path: tuple[str, ...]
    cls: type[Command]
    summary: str
    flags: tuple[Flag, ...]
    aliases: tuple[tuple[str, ...], ...] = ()
    legacy_of: tuple[str, ...] | None = None
    examples: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    # The overview section it is listed under: its first word unless the table says otherwise.
    section: str = ""
    # Required fields a Slack form asks for when they are missing (required in the console).
    asked_by_form: tuple[str, ...] = ()
    # (field, other): the field is required unless the other is given (-s, or a cluster.json).
    given_by: tuple[tuple[str, str], ...] = ()

    def lookup(self, name: str) -> Flag | None:
        for flag in self.flags:
            if name in flag.names:
                return flag
        return None

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(name for flag in self.flags for name in flag.names)

    @property
    def json_flags(self) -> frozenset[str]:
        return frozenset(n for flag in self.flags if flag.kind.json_value for n in flag.names)

    def default(self, dest: str) -> Any:
        """The dataclass default of a field (the one source of defaults), MISSING when required."""
        for fld in dataclasses.fields(self.cls):
            if fld.name == dest:
                return fld.default
        return None

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(
            fld.name
            for fld in dataclasses.fields(self.cls)
            if fld.name in self.asked_by_form
            or any(fld.name == dest for dest, _ in self.given_by)
            or (fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING)
        )

    def missing(self, given: Iterable[str], source: Source) -> list[str]:
        """The required fields not given; in Slack, those a form asks for are not missing."""
        asked = self.asked_by_form if source == "slack" else ()
        given = set(given)
        covered = {dest for dest, other in self.given_by if other in given}
        return [d for d in self.required if d not in given and d not in asked and d not in covered]

    def label(self, dest: str) -> str:
        """How a field is named in messages: the short and long name of its first flag."""
        for flag in self.flags:
            if flag.dest == dest:
                return "/".join(flag.names[:2])
        return dest


# -- shared flags: declared once, used by every command that takes them

HELP_FLAG = _f("-h --help", None, FLAG, "show this help")
COMMON_FLAGS = (
    _f("-g --resource-group", "resource_group", RESOURCE_GROUP, "resource group"),
    _f("-w --workspace", "workspace", NAME, "workspace"),
    _f("-o --output", "output", OUTPUT, "answer format"),
    _f("--query", "query", QUERY, "JMESPath query applied to the JSON answer"),
    HELP_FLAG,
)
_EXPERIMENT = _f("-e --experiment", "experiment", NAME, "experiment the job belongs to")
_YES = _f("-y --yes", "yes", FLAG, "skip the confirmation button")
_NO_WAIT = _f("--no-wait", None, FLAG, "accepted for az compatibility; the bot never blocks")
_LOCATION = _f("-l --location", "location", LOCATION, "Azure region (2017 CLI; later implied)")
_MIN = _f("--min", "min_nodes", NODES, "auto-scale lower bound (give with --max)")
_MAX = _f("--max", "max_nodes", NODES, "auto-scale upper bound (give with --min)")
_STORAGE_FLAGS = (
    _f("--storage-account-name", "storage_account_name", STORAGE_ACCOUNT, "storage account"),
    _f(
        "--storage-account-key",
        "storage_account_key",
        SECRET,
        "storage account key (omit it: the bot looks it up)",
        metavar="KEY",
        warning=(
            "A storage account key typed in a channel is visible to everyone in it: rotate it, "
            "and next time leave --storage-account-key out so the bot looks the key up itself."
        ),
    ),
    _f("--afs-name", "afs_name", NAME, "Azure File share to mount", metavar="SHARE"),
    _f("--afs-mount-path", "afs_mount_path", MOUNT_PATH, "where the share is mounted"),
    _f(
        "--bfs-name --container-name",
        "bfs_name",
        NAME,
        "blob container to mount",
        metavar="CONTAINER",
    ),
    _f(
        "--bfs-mount-path --container-mount-path",
        "bfs_mount_path",
        MOUNT_PATH,
        "where the container is mounted",
    ),
    _f("--nfs", "nfs", NAME_OR_ARM_ID, "file server to mount"),
    _f("--nfs-mount-path", "nfs_mount_path", MOUNT_PATH, "where the file server is mounted"),
    _f(
        "--use-auto-storage",
        "use_auto_storage",
        FLAG,
        "mount the bot's storage: share batchaishare at autoafs, container batchaicontainer "
        "at autobfs (created when missing)",
    ),
)
_PASSWORD_WARNING = (
    "A password typed in a channel is visible to everyone in it: change it, and use "
    "--ssh-key with your public key instead."
)


# -- cross-flag rules


def _check_scale(values: dict[str, Any], source: Source) -> None:
    low, high = values.get("min_nodes"), values.get("max_nodes")
    if (low is None) != (high is None):
        raise UserError("--min and --max go together: give both, or -t/--target for a fixed size")
    if low is not None and high is not None and low > high:
        raise UserError(f"--min ({low}) must not be greater than --max ({high})")
    target = values.get("target_nodes")
    if target is not None and low is not None and not low <= target <= high:
        raise UserError(f"-t/--target ({target}) must lie between --min ({low}) and --max ({high})")


def _check_setup_task(values: dict[str, Any], source: Source) -> None:
    if "setup_task" in values and "setup_task_output" not in values:
        raise UserError("--setup-task needs --setup-task-output (where its log is written)")
    if "setup_task_output" in values and "setup_task" not in values:
        raise UserError("--setup-task-output needs --setup-task")


def _resolve_dash_c(values: dict[str, Any], source: Source) -> None:
    """job create -c: the config (2017: `-c job.json -r C`) unless the config came another way.

    In the 2018-05-01 CLI `-f/--config-file` was required and `-c` named the cluster, so a config
    given by -f/--config-file/--config marks the final era and makes -c the cluster.
    """
    raw = values.pop("cluster_or_config", None)
    if raw is None:
        return
    if "config" not in values:
        values["config"] = JOB_CONFIG.convert(raw, "-c", source)
        return
    if "cluster" in values:
        raise UserError(
            "-c is the cluster when -f/--config-file gives the config, "
            "but -r/--cluster-name names a cluster too: give the cluster once"
        )
    values["cluster"] = NAME.convert(raw, "-c (the cluster, as -f gives the config)", source)


def _check_schedule(values: dict[str, Any], source: Source) -> None:
    if "at" in values and "cron" in values:
        raise UserError("--at and --cron do not go together: one run at a time, or a repeat")
    if "timezone" in values and "at" not in values and "cron" not in values:
        raise UserError("--tz says how to read --at or --cron: give one of them too")
    if ("at" in values or "cron" in values) and values.get("config") is None:
        raise UserError("a scheduled job needs its job.json: give -f/--config (no form)")
    if ("at" in values or "cron" in values) and "name" not in values:
        raise UserError("a scheduled job needs its name: give -n/--name (no form)")


def _refuse_ssh_only(values: dict[str, Any], source: Source) -> None:
    """node exec's SSH options: the bot runs the command itself, no session is held open."""
    if "ssh_address" in values:
        raise UserError(
            "-L/--address forwards ports over SSH, which a chat command cannot hold open: "
            "use --exec to run a command, or SSH to the address cluster node list shows"
        )
    if "ssh_password" in values or "ssh_private_key" in values:
        raise UserError(
            "the bot runs the command on the node itself: leave -p/--password and "
            "-k/--ssh-private-key out"
        )


def _check_sweep(values: dict[str, Any], source: Source) -> None:
    """The whole grid is checked at once (its size, a name given twice), before any job."""
    flags = values.get("sweep", ())
    if not flags:
        return
    if "at" in values or "cron" in values:
        raise UserError("a sweep is submitted now: --sweep does not go with --at or --cron")
    try:
        sweep.sweep_of(flags, values.get("sweep_metric"))
    except ValueError as err:
        raise _labelled("--sweep", err) from None


# -- the table


def _spec(
    path: str,
    cls: type[Command],
    summary: str,
    flags: tuple[Flag, ...],
    *,
    aliases: tuple[str, ...] = (),
    legacy_of: str | None = None,
    examples: tuple[str, ...] = (),
    notes: tuple[str, ...] = (),
    checks: tuple[Check, ...] = (),
    section: str | None = None,
    asked_by_form: tuple[str, ...] = (),
    given_by: tuple[tuple[str, str], ...] = (),
) -> CommandSpec:
    words = tuple(path.split())
    extra = (_EXPERIMENT,) if words[0] == "job" else ()
    common: tuple[Flag, ...] = COMMON_FLAGS
    if words[0] == "workspace":  # az's workspace group names its workspace -n/--workspace
        common = tuple(flag for flag in COMMON_FLAGS if flag.dest != "workspace")
    return CommandSpec(
        path=words,
        cls=cls,
        summary=summary,
        flags=flags + extra + common,
        aliases=tuple(tuple(alias.split()) for alias in aliases),
        legacy_of=tuple(legacy_of.split()) if legacy_of else None,
        examples=examples,
        notes=notes,
        checks=checks,
        section=section or words[0],
        asked_by_form=asked_by_form,
        given_by=given_by,
    )


_CLUSTER_NAME = _f("-n --name", "name", NAME, "cluster name")
_WORKSPACE_NAME = _f("-n --workspace --name", "workspace", NAME, "workspace name")
_EXPERIMENT_NAME = _f("-n --name", "name", NAME, "experiment name")
_JOB_NAME = _f("-n --name", "name", NAME, "job name")
_JOB_BY_J = _f("-j --job --job-name", "job", NAME, "job name")
_JOB_BY_N = _f("-n --name", "job", NAME, "job name (2018-03 spelling of -j)")
_OUTPUT_DIR = _f(
    "-d --output-directory-id",
    "output_directory_id",
    OUTPUT_DIR_ID,
    "stdouterr, or an outputDirectories id from the job.json",
)
_PATH = _f("-p --path", "path", RELATIVE_PATH, "folder inside the output directory")
_EXPIRY = _f("--expiry", "expiry_minutes", _int(5, 600, "MINUTES"), "download links last this long")
_IDLE_TIMEOUT = _f(
    "--idle-timeout --idle-timeout-minutes",
    "idle_timeout_minutes",
    _int(0, 10080, "MINUTES"),
    "minutes idle above --min before scaling down (0: never; default: the bot's, 15)",
)
_NODE_ID = _f("-n --node-id", "node_id", NODE_ID, "node to run on (default: the first)")
_EXEC = _f("--exec", "command", EXEC_LINE, 'command line to run on the node, e.g. "nvidia-smi"')
_SSH_ONLY = (
    _f("-L --address", "ssh_address", Kind("ADDRESS", _text(200)), "SSH port forwarding (refused)"),
    _f("-p --password", "ssh_password", SECRET, "SSH password (refused: not needed)"),
    _f("-k --ssh-private-key", "ssh_private_key", Kind("KEY", _text(4096)), "SSH key (not needed)"),
)
_EXEC_NOTES = (
    "The command runs in the node's bash, in $AZ_BATCHAI_MOUNT_ROOT, with a plain environment "
    "(none of the bot's variables), for at most 2 minutes; on Azure as a managed run command, "
    "as the job's user, never root. The answer shows its exit code and the end of its output "
    "(Azure keeps only the last 4 KB of a run command's output).",
    "Allowed to whoever may terminate the jobs running on that node; on a node no job holds, "
    "to admins. Every exec is in the audit log.",
)
_CHANNEL = _f("--channel", "channel", CHANNEL, "id, #name or mention (default: this channel)")
_SCHEDULE_ID = _f("-n --name --id", "id", SCHEDULE_ID, "schedule id, as schedule list shows it")
_APPROVAL_ID = _f("--id", "id", APPROVAL_ID, "approval id, as approvals list shows it")

COMMANDS: tuple[CommandSpec, ...] = (
    _spec(
        "cluster create",
        ClusterCreate,
        "Create a cluster of nodes, fixed-size or auto-scaling, with a share mounted",
        (
            _CLUSTER_NAME,
            _f(
                "-s --vm-size",
                "vm_size",
                VM_SIZE,
                "VM size of every node, e.g. Standard_NC6",
            ),
            _f(
                "-i --image", "image", IMAGE, "UbuntuLTS, UbuntuDSVM or publisher:offer:sku:version"
            ),
            _f("-t --target", "target_nodes", NODES, "initial (or fixed) node count"),
            _MIN,
            _MAX,
            _f(
                "--vm-priority",
                "vm_priority",
                _choice("dedicated", "lowpriority"),
                "VM priority (default: the cluster.json's, else dedicated)",
            ),
            _f("-u --user-name", "user_name", USER_NAME, "admin user on the nodes (not admin)"),
            _f(
                "-k --ssh-key",
                "ssh_key",
                SSH_KEY,
                "public key text (a key file path: console only)",
            ),
            _f(
                "-p --password",
                "password",
                SECRET,
                "admin password (the channel sees it: prefer -k)",
                metavar="PASSWORD",
                warning=_PASSWORD_WARNING,
            ),
            *_STORAGE_FLAGS,
            _f(
                "--setup-task",
                "setup_task",
                COMMAND_LINE,
                "bash command run as root on every node once it is up (admins only)",
            ),
            _f(
                "--setup-task-output",
                "setup_task_output",
                LOG_DIR,
                "where its logs go: $AZ_BATCHAI_MOUNT_ROOT/<afs mount path>[/dir]",
            ),
            _f("--subnet", "subnet", ARM_ID, "virtual network subnet to place the nodes in"),
            _f(
                "-f --config-file -c --config",
                "config",
                CLUSTER_CONFIG,
                "cluster.json: manifest name or inline JSON (a path: console only)",
            ),
            _IDLE_TIMEOUT,
            _LOCATION,
        ),
        examples=(
            "/batchai cluster create --name mycluster --vm-size STANDARD_NC6 --image UbuntuLTS "
            "--min 1 --max 1 --afs-name batchaiquickstart --afs-mount-path azurefileshare "
            "--user-name mytestbatchai --password PP@@ddee5 --resource-group myBatchAIGroup",
            "/batchai cluster create -n mycluster -s Standard_NC4as_T4_v3 --min 0 --max 4 "
            "--afs-name data --afs-mount-path afs",
            "/batchai cluster create -n mycluster -s Standard_NC6 -t 1 --bfs-name data "
            "--nfs nfs --use-auto-storage",
        ),
        notes=(
            "--min N --max N with equal values (or -t N) makes a fixed-size cluster; different "
            "values let it scale between them.",
            "A password typed in a channel is visible to everyone in it: prefer -k/--ssh-key.",
        ),
        checks=(_check_scale, _check_setup_task),
        given_by=(("vm_size", "config"),),
    ),
    _spec(
        "cluster list",
        ClusterList,
        "List clusters with VM size, node counts and state (of one workspace with -w)",
        (),
        examples=("/batchai cluster list -o table", "/batchai cluster list -w myworkspace"),
    ),
    _spec(
        "cluster show",
        ClusterShow,
        "Show one cluster",
        (_CLUSTER_NAME,),
        examples=("/batchai cluster show -n mycluster",),
    ),
    _spec(
        "cluster resize",
        ClusterResize,
        "Set a fixed node count (-t 0 stops paying for nodes)",
        (_CLUSTER_NAME, _f("-t --target", "target_nodes", NODES, "node count")),
        examples=("/batchai cluster resize -n mycluster -t 0",),
    ),
    _spec(
        "cluster auto-scale",
        ClusterAutoScale,
        "Let a cluster scale between --min and --max nodes with the job queue",
        (_CLUSTER_NAME, _MIN, _MAX, _IDLE_TIMEOUT),
        examples=(
            "/batchai cluster auto-scale -n mycluster --min 0 --max 4",
            "/batchai cluster auto-scale -n mycluster --min 0 --max 4 --idle-timeout 30",
        ),
        checks=(_check_scale,),
    ),
    _spec(
        "cluster update",
        ClusterUpdate,
        "Change how long a cluster may sit idle above --min before it scales down",
        (_CLUSTER_NAME, _IDLE_TIMEOUT),
        examples=(
            "/batchai cluster update -n mycluster --idle-timeout 60",
            "/batchai cluster update -n mycluster --idle-timeout 0",
        ),
        notes=(
            "An idle cluster gets a warning with Keep 1 h / Scale down now buttons first; "
            "--idle-timeout 0 turns idle scale-down off for the cluster.",
        ),
    ),
    _spec(
        "cluster delete",
        ClusterDelete,
        "Delete a cluster",
        (_CLUSTER_NAME, _YES, _NO_WAIT),
        examples=("/batchai cluster delete -n mycluster",),
    ),
    _spec(
        "cluster node list",
        ClusterNodeList,
        "List a cluster's nodes with their SSH address and port",
        (
            _f("-c --cluster --cluster-name", "cluster", NAME, "cluster name"),
            _f("-n --name", "cluster", NAME, "cluster name (2017 spelling of -c)"),
        ),
        examples=("/batchai cluster node list -c mycluster -o table",),
    ),
    _spec(
        "cluster node exec",
        ClusterNodeExec,
        "Run one command on a cluster's node and show its output",
        (
            _f("-c --cluster --cluster-name", "cluster", NAME, "cluster name"),
            _NODE_ID,
            _EXEC,
            *_SSH_ONLY,
        ),
        examples=(
            '/batchai cluster node exec -c mycluster -n mycluster-node-0 --exec "nvidia-smi"',
            '/batchai cluster node exec -g myrg -w ws -c mycluster --exec "nvidia-smi -L"',
        ),
        notes=_EXEC_NOTES,
        checks=(_refuse_ssh_only,),
    ),
    _spec(
        "cluster file list",
        ClusterFileList,
        "List a cluster's setup-task logs with expiring download links",
        (
            _f("-c --cluster --cluster-name", "cluster", NAME, "cluster name"),
            _f("-p --path", "path", RELATIVE_PATH, "folder inside the setup-task log directory"),
            _EXPIRY,
        ),
        examples=("/batchai cluster file list -c mycluster",),
        notes=(
            "The setup task's stdout-<node>.txt and stderr-<node>.txt, from "
            "<--setup-task-output>/<stdOutErrPathSuffix> on the cluster's share.",
        ),
    ),
    _spec(
        "cluster list-nodes",
        ClusterNodeList,
        "List a cluster's nodes (2017 name of cluster node list)",
        (_f("-n --name", "cluster", NAME, "cluster name"),),
        legacy_of="cluster node list",
        examples=("/batchai cluster list-nodes -n mycluster -o table",),
    ),
    _spec(
        "workspace create",
        WorkspaceCreate,
        "Create a workspace: the home of clusters and experiments (2018-05-01 on)",
        (_WORKSPACE_NAME, _f("-l --location", "location", LOCATION, "Azure region")),
        examples=(
            "/batchai workspace create -g myBatchAIGroup -n myworkspace -l eastus",
            "/batchai workspace create -n myworkspace",
        ),
        notes=(
            "Without -g the bot's resource group; without -l the bot's region. Creating a "
            "workspace that exists answers with it, as az did.",
            "Clusters and jobs created without -w live in the implicit workspace "
            "`default`, which workspace list shows once something uses it.",
        ),
    ),
    _spec(
        "workspace list",
        WorkspaceList,
        "List the workspaces of a resource group (every group's without -g)",
        (),
        examples=("/batchai workspace list -g myBatchAIGroup -o table",),
    ),
    _spec(
        "workspace show",
        WorkspaceShow,
        "Show one workspace with its clusters and experiments",
        (_WORKSPACE_NAME,),
        examples=("/batchai workspace show -n myworkspace",),
    ),
    _spec(
        "workspace delete",
        WorkspaceDelete,
        "Delete a workspace and its experiments (refused while it has clusters)",
        (_WORKSPACE_NAME, _YES, _NO_WAIT),
        examples=("/batchai workspace delete -g myBatchAIGroup -n myworkspace -y",),
        notes=(
            "A workspace that still has clusters, or jobs that have not finished, is not "
            "deleted: the answer names them. Finished jobs keep their records.",
        ),
    ),
    _spec(
        "experiment create",
        ExperimentCreate,
        "Create an experiment in a workspace: a named group of jobs",
        (_EXPERIMENT_NAME,),
        examples=("/batchai experiment create -g myBatchAIGroup -w myworkspace -n myexperiment",),
        notes=(
            "Jobs created without -e go to the implicit experiment `default` of their "
            "workspace, which experiment list shows once a job uses it.",
        ),
    ),
    _spec(
        "experiment list",
        ExperimentList,
        "List the experiments of a workspace",
        (),
        examples=("/batchai experiment list -w myworkspace -o table",),
    ),
    _spec(
        "experiment show",
        ExperimentShow,
        "Show one experiment with its job counts",
        (_EXPERIMENT_NAME,),
        examples=("/batchai experiment show -w myworkspace -n myexperiment",),
    ),
    _spec(
        "experiment delete",
        ExperimentDelete,
        "Delete an experiment (refused while it has jobs that have not finished)",
        (_EXPERIMENT_NAME, _YES, _NO_WAIT),
        examples=("/batchai experiment delete -w myworkspace -n myexperiment -y",),
    ),
    _spec(
        "job create",
        JobCreate,
        "Submit a job from a job.json: manifest name, inline JSON, or a form",
        (
            _JOB_NAME,
            _f(
                "-r --cluster-name --cluster",
                "cluster",
                NAME,
                "cluster to run on",
                metavar="CLUSTER",
            ),
            _f(
                "-f --config-file --config",
                "config",
                JOB_CONFIG,
                "job.json: manifest name or inline JSON (a path: console only)",
            ),
            _f(
                "-c",
                "cluster_or_config",
                CLUSTER_OR_CONFIG,
                "the config, or the cluster when -f/--config-file gives the config",
            ),
            *_STORAGE_FLAGS,
            _f("--at", "at", WHEN, "submit once at this time instead of now (quote it)"),
            _f("--cron", "cron", CRON, "submit on this crontab schedule (quote it)"),
            _f("--tz", "timezone", ZONE, "time zone of --at/--cron (default UTC)"),
            _f(
                "--max-retries",
                "max_retries",
                _int(0, MAX_RETRIES),
                "retries after lost nodes (default: 3 on Spot clusters, 0 on dedicated)",
            ),
            _f(
                "--sweep",
                "sweep",
                SWEEP_PARAMETER,
                "one parameter of a sweep and its values; repeat it for a grid",
                repeatable=True,
            ),
            _f(
                "--sweep-metric",
                "sweep_metric",
                SWEEP_METRIC,
                "the logged metric that ranks the sweep's jobs (default: val_acc up, loss down)",
            ),
            _LOCATION,
            _NO_WAIT,
        ),
        aliases=("job submit",),
        examples=(
            "/batchai job create --name myjob --cluster-name mycluster "
            "--resource-group myBatchAIGroup --config manifests/jobs/mnist.json",
            "/batchai job create -n mnist -r mycluster -c mnist",
            "/batchai job create -n mnist -c mycluster -f mnist",
            '/batchai job create -n hello -r mycluster --config {"properties": {"nodeCount": 1, '
            '"customToolkitSettings": {"commandLine": "nvidia-smi"}}}',
            "/batchai job create -n mnist -r mycluster",
            '/batchai job create -n nightly -r mycluster -c mnist --cron "0 2 * * *" '
            "--tz Europe/Berlin",
            '/batchai job create -n mnist -r mycluster -c mnist --at "2026-12-01 02:00"',
            "/batchai job create -n resnet -r spotcluster -c resnet --max-retries 5",
            '/batchai job create -n lr -r gpu -c mnist --sweep "lr=0.1,0.03,0.01" '
            '--sweep "batch=32,64" --sweep-metric val_acc',
        ),
        notes=(
            "-c is the config (2017 style: -r CLUSTER -c CONFIG) unless -f/--config-file or "
            "--config gives the config; then -c is the cluster (2018 style: -c CLUSTER -f CONFIG).",
            "CONFIG is a manifest name (mnist or manifests/jobs/mnist.json) or inline JSON "
            "({...}, spaces allowed); the console also takes a file path. "
            "In Slack, with no config or no -n the bot opens a form, filled in with what was "
            "given (-n, -r, -c/-f).",
            "--at or --cron schedules the submission (see schedule list); times are UTC unless "
            "--tz names a zone. --cron takes 5 crontab fields or @hourly, @daily, @weekly; "
            "each cron run's job is named NAME-YYYYMMDD-HHMM.",
            "A job whose node is lost (a Spot eviction, a deleted node) goes back to the queue "
            "up to --max-retries times (the job.json's constraints.maxTaskRetryCount otherwise), "
            "keeping its output directories, so a job that checkpoints there resumes.",
            "--sweep NAME=V1,V2 (repeated: the cartesian product, at most 100 jobs) submits a "
            "sweep of jobs NAME-1 … NAME-N under one approval and one sweep card; each job gets "
            "its values as environment variables and in its command line ($lr or ${lr}). A "
            'job.json can hold the grid instead: "sweep": {"parameters": {"lr": [0.1, 0.01]}}. '
            "job list/show/terminate take the sweep's name too.",
        ),
        checks=(_resolve_dash_c, _check_schedule, _check_sweep),
        asked_by_form=("name",),
    ),
    _spec(
        "job list",
        JobList,
        "List jobs, optionally of one cluster, workspace, experiment or sweep",
        (
            _f("-c --cluster --cluster-name -r", "cluster", NAME, "only jobs of this cluster"),
            _f("-n --name --sweep", "sweep", NAME, "only the jobs of this sweep"),
        ),
        examples=(
            "/batchai job list -o table",
            "/batchai job list -w myworkspace -e myexperiment",
            "/batchai job list --sweep lr",
        ),
    ),
    _spec(
        "job show",
        JobShow,
        "Show one job, or a sweep and its jobs ranked",
        (_JOB_NAME,),
        examples=("/batchai job show -n myjob", "/batchai job show -n lr"),
    ),
    _spec(
        "job terminate",
        JobTerminate,
        "Stop a running job, or every live job of a sweep",
        (_JOB_NAME, _YES, _NO_WAIT),
        examples=("/batchai job terminate -n myjob", "/batchai job terminate -n lr"),
    ),
    _spec(
        "job delete",
        JobDelete,
        "Delete a job, terminating it first",
        (_JOB_NAME, _YES, _NO_WAIT),
        examples=("/batchai job delete -n myjob -y",),
    ),
    _spec(
        "job wait",
        JobWait,
        "Report in the thread when a job finishes",
        (
            _JOB_NAME,
            _f("--interval", "interval_seconds", _int(1, 3600, "SECONDS"), "seconds between polls"),
        ),
        examples=("/batchai job wait -n myjob",),
    ),
    _spec(
        "job file stream",
        JobStreamFile,
        "Stream a job's output file (like tail -f) into its thread",
        (
            _JOB_BY_J,
            _JOB_BY_N,
            _f("-f --file-name", "file_name", FILE_NAME, "file to stream, e.g. stderr.txt"),
            _OUTPUT_DIR,
            _PATH,
        ),
        examples=(
            "/batchai job file stream -j myjob -f stderr.txt",
            "/batchai job file stream -n myjob -f stdout.txt",
        ),
    ),
    _spec(
        "job file list",
        JobListFiles,
        "List a job's output files with expiring download links",
        (_JOB_BY_J, _JOB_BY_N, _OUTPUT_DIR, _PATH, _EXPIRY),
        examples=("/batchai job file list -j mnist -d model",),
    ),
    _spec(
        "job node list",
        JobNodeList,
        "List the nodes that ran a job",
        (_JOB_BY_J, _JOB_BY_N),
        examples=("/batchai job node list -j myjob -o table",),
    ),
    _spec(
        "job node exec",
        JobNodeExec,
        "Run one command on a node of a running job and show its output",
        (_JOB_BY_J, _NODE_ID, _EXEC, *_SSH_ONLY),
        examples=(
            '/batchai job node exec -j mnist --exec "nvidia-smi"',
            '/batchai job node exec -w ws -e exp -j mnist -n mycluster-node-0 --exec "ps aux"',
        ),
        notes=_EXEC_NOTES,
        checks=(_refuse_ssh_only,),
    ),
    _spec(
        "job stream-file",
        JobStreamFile,
        "Stream a job's output file (2017 name of job file stream)",
        (
            _f("-j --job-name --job", "job", NAME, "job name"),
            _f("-n --name", "file_name", FILE_NAME, "file to stream, e.g. stderr.txt"),
            _OUTPUT_DIR,
            _PATH,
        ),
        legacy_of="job file stream",
        examples=(
            "/batchai job stream-file --job-name myjob --output-directory-id stdouterr "
            "--name stderr.txt --resource-group myBatchAIGroup",
            "/batchai job stream-file -j mnist -d stdouterr -n stderr.txt",
        ),
    ),
    _spec(
        "job list-files",
        JobListFiles,
        "List a job's output files (2017 name of job file list)",
        (
            _f("-n --name -j --job-name", "job", NAME, "job name"),
            _OUTPUT_DIR,
            _PATH,
            _EXPIRY,
        ),
        legacy_of="job file list",
        examples=(
            "/batchai job list-files --resource-group myBatchAIGroup -n myjob -d model",
            "/batchai job list-files -n mnist -d model",
        ),
    ),
    _spec(
        "job list-nodes",
        JobNodeList,
        "List the nodes that ran a job (2017 name of job node list)",
        (_f("-n --name", "job", NAME, "job name"),),
        legacy_of="job node list",
        examples=("/batchai job list-nodes -n myjob",),
    ),
    _spec(
        "budget show",
        BudgetShow,
        "Show a channel's monthly GPU budget and what it has spent this month",
        (_CHANNEL,),
        section="spend",
        examples=("/batchai budget show", "/batchai budget show --channel #ml-team -o json"),
    ),
    _spec(
        "budget set",
        BudgetSet,
        "Set a channel's monthly GPU budget in USD",
        (_f("--amount", "amount", USD, "monthly budget, e.g. 2500 or $2,500.00"), _CHANNEL),
        section="spend",
        examples=(
            "/batchai budget set --amount 2500",
            "/batchai budget set --amount $2,500.00 --channel #ml-team",
        ),
        notes=(
            "USD is a positive amount of US dollars with at most 2 decimals; a leading $ and "
            "commas between thousands are allowed.",
        ),
    ),
    _spec(
        "approvals list",
        ApprovalsList,
        "List GPU spend requests waiting for approval",
        (_f("--all", "all", FLAG, "include approved, denied and expired requests"),),
        section="spend",
        examples=("/batchai approvals list -o table", "/batchai approvals list --all"),
    ),
    _spec(
        "approvals approve",
        ApprovalsApprove,
        "Approve a pending GPU spend request",
        (_APPROVAL_ID,),
        section="spend",
        examples=("/batchai approvals approve --id 3f9c2a7e",),
    ),
    _spec(
        "approvals deny",
        ApprovalsDeny,
        "Deny a pending GPU spend request, with a reason for the requester",
        (_APPROVAL_ID, _f("--reason", "reason", REASON, "why, shown to the requester")),
        section="spend",
        examples=('/batchai approvals deny --id 3f9c2a7e --reason "use 1 node for a smoke test"',),
        notes=("Quote a reason that has spaces in it.",),
    ),
    _spec(
        "spend",
        Spend,
        "Show a month's GPU spend by user, channel or cluster",
        (
            _f("--by", "by", _choice("user", "channel", "cluster"), "what to total the spend by"),
            _f("--month", "month", MONTH, "month to show (default: this month)"),
        ),
        section="spend",
        examples=("/batchai spend -o table", "/batchai spend --by cluster --month 2026-05"),
    ),
    _spec(
        "audit",
        Audit,
        "Show the audit log, newest first: who did what, and what was refused",
        (
            _f("--job", "job", NAME, "only entries about this job"),
            _f("--limit", "limit", _int(1, 500), "how many entries to show"),
        ),
        section="spend",
        examples=("/batchai audit -o table", "/batchai audit --job mnist --limit 100"),
    ),
    _spec(
        "schedule list",
        ScheduleList,
        "List this channel's scheduled jobs: when they run next and how the last run went",
        (_f("--all", "all", FLAG, "every channel's schedules (admins)"),),
        examples=("/batchai schedule list", "/batchai schedule list --all -o json"),
    ),
    _spec(
        "schedule show",
        ScheduleShow,
        "Show one schedule with its next three runs",
        (_SCHEDULE_ID,),
        examples=("/batchai schedule show -n 3f9c2a7e",),
    ),
    _spec(
        "schedule delete",
        ScheduleDelete,
        "Delete a schedule (its owner or an admin); jobs it submitted stay",
        (_SCHEDULE_ID,),
        examples=("/batchai schedule delete -n 3f9c2a7e",),
    ),
    _spec(
        "list-usages",
        ListUsages,
        "Show clusters, nodes and the vCPU quota of a region: in use and limit",
        (_f("-l --location", "location", LOCATION, "Azure region (default: the bot's)"),),
        section="cluster",
        examples=("/batchai list-usages -l eastus -o table",),
        notes=(
            "On Azure the quota rows come from the compute usages API: regional vCPUs, Spot "
            "vCPUs, scale sets and each VM family in use or with quota; on the local backend, "
            "the node slots the clusters hold on its machine.",
        ),
    ),
    _spec(
        "file-server create",
        FileServerCreate,
        "Create an NFS file server: one VM with its data disks striped as RAID 0",
        (
            _f("-n --name", "name", NAME, "file server name"),
            _f("-s --vm-size", "vm_size", VM_SIZE, "VM size of the server, e.g. Standard_D4s_v5"),
            _f("--disk-count", "disk_count", _int(1, 63), "data disks (striped as RAID 0)"),
            _f("--disk-size", "disk_size_gb", _int(1, 32767, "GB"), "size of each data disk"),
            _f(
                "--storage-sku",
                "storage_sku",
                _pattern("SKU", r"Standard_LRS|Premium_LRS", "use Standard_LRS or Premium_LRS"),
                "data disk type (default Premium_LRS)",
            ),
            _f(
                "--caching-type",
                "caching_type",
                _choice("none", "readonly", "readwrite"),
                "data disk caching (default none)",
            ),
            _f("-u --user-name", "user_name", USER_NAME, "admin user on the server (not admin)"),
            _f(
                "-k --ssh-key",
                "ssh_key",
                SSH_KEY,
                "public key text (a key file path: console only)",
            ),
            _f(
                "-p --password",
                "password",
                SECRET,
                "admin password (the channel sees it: prefer -k)",
                metavar="PASSWORD",
                warning=_PASSWORD_WARNING,
            ),
            _f("--subnet", "subnet", ARM_ID, "virtual network subnet to place the server in"),
            _f(
                "-f --config-file -c --config",
                "config",
                _config("fileservers"),
                "file-server JSON (nfs.json): manifest name or inline JSON (a path: console only)",
            ),
            _LOCATION,
            _NO_WAIT,
        ),
        examples=(
            "/batchai file-server create -n nfs -s Standard_D4s_v5 --disk-count 2 "
            "--disk-size 128 -u demo",
        ),
        notes=(
            "Clusters and jobs mount it with --nfs NAME at "
            "$AZ_BATCHAI_MOUNT_ROOT/<--nfs-mount-path> (default nfs); the data disks are "
            "exported from /mnt/data.",
            "On the local backend a file server is a directory on the bot's machine.",
        ),
        given_by=(("vm_size", "config"), ("disk_count", "config"), ("disk_size_gb", "config")),
    ),
    _spec(
        "file-server list",
        FileServerList,
        "List NFS file servers with their size, disks and state",
        (),
        examples=("/batchai file-server list -o table",),
    ),
    _spec(
        "file-server show",
        FileServerShow,
        "Show one NFS file server",
        (_f("-n --name", "name", NAME, "file server name"),),
        examples=("/batchai file-server show -n nfs -o json",),
    ),
    _spec(
        "file-server delete",
        FileServerDelete,
        "Delete an NFS file server (refused while a cluster mounts it)",
        (_f("-n --name", "name", NAME, "file server name"), _YES, _NO_WAIT),
        examples=("/batchai file-server delete -n nfs -y",),
    ),
)

# az batchai commands a user may remember but the bot does not offer, with what to do instead.
UNSUPPORTED: dict[tuple[str, ...], str] = {}

# Ignored dests: accepted for compatibility, or consumed by a check before the dataclass is built.
# (The SSH-only flags of node exec are refused by its check; none reaches a dataclass.)
NOT_STORED = frozenset({"cluster_or_config", "ssh_address", "ssh_password", "ssh_private_key"})
