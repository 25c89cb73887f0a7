"""The job-create modal: the view (a pure dict) and its submission parsed into a typed request.

`job_create_modal()` is what `views.open` gets; `parse_job_create()` turns the submitted view into
a `JobForm` or into `FieldErrors` keyed by block id, which is exactly what
`ack(response_action="errors", errors=...)` needs. A form is submitted as the `JobCreate` the slash
command would have parsed (`JobForm.command`), and `error_block()` puts the service's refusal
beside the input its typed `field` names. Every input's action id equals its block id, so
a value is read as `view["state"]["values"][BLOCK_X][BLOCK_X]`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from handlers.commandspec import ConfigRef, JobCreate
from services.core.errors import BatchAIError, Conflict, SpecError, UserError
from services.jobspec import sweep
from services.jobspec.load import MAX_DEPTH, nesting_depth
from services.models import NAME_RE, ClusterView
from services.spend.pricing import sku_key

Block = dict[str, Any]
FieldErrors = dict[str, str]

CALLBACK_JOB_CREATE: Final = "job_create"

BLOCK_CLUSTER: Final = "job_cluster"
BLOCK_NAME: Final = "job_name"
BLOCK_COMMAND: Final = "job_command"
BLOCK_IMAGE: Final = "job_image"
BLOCK_NODES: Final = "job_nodes"
BLOCK_HOURS: Final = "job_max_hours"
BLOCK_INPUT_DIR: Final = "job_input_dir"
BLOCK_OUTPUT_DIR: Final = "job_output_dir"
BLOCK_MANIFEST: Final = "job_manifest"
BLOCK_JSON: Final = "job_json"
BLOCK_SWEEP: Final = "job_sweep"
BLOCK_SWEEP_METRIC: Final = "job_sweep_metric"

SCHEMA_URL: Final = (
    "https://raw.githubusercontent.com/Azure/BatchAI/master/schemas/2018-05-01/job.json"
)
MAX_NODES: Final = 100  # Batch AI's per-cluster limit, as services.jobspec has it
MAX_HOURS: Final = Decimal(168)  # Batch AI's job lifetime limit: 7 days
MAX_OPTIONS: Final = 100  # static_select options
OPTION_TEXT: Final = 75
OPTION_VALUE: Final = 150
TEXT_INPUT_MAX: Final = 3000  # Slack's plain_text_input max_length

_CHANNEL_RE = re.compile(r"[CGDUW][A-Z0-9]{2,31}", re.ASCII)  # where the job's story is told
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")
_OUTPUT_ROOT_RE = re.compile(r"\$\{?AZ_BATCHAI_(?:MOUNT_ROOT|JOB_MOUNT_ROOT|JOB_TEMP)\}?(?:/|$)")
_ONE_SOURCE = "give only one of: a command line, a manifest, or a pasted job.json"
STALE_FORM: Final = (
    "This form is not one the bot can submit (it lost track of its channel): close it and "
    "open a new one with /batchai job create."
)


@dataclass(frozen=True)
class JobPrefill:
    """What `/batchai job create` was given before the form opened: the form starts from it."""

    name: str | None = None
    cluster: str | None = None
    manifest: str | None = None  # a manifest name (mnist or manifests/jobs/mnist.json)
    pasted: str | None = None  # inline job.json
    sweep: tuple[str, ...] = ()  # --sweep NAME=V1,V2 flags, one line each in the form
    sweep_metric: str | None = None


def prefill_of(command: JobCreate) -> JobPrefill:
    """The form's starting values from a `job create` that gave no config or no name."""
    config = command.config
    return JobPrefill(
        name=command.name,
        cluster=command.cluster,
        manifest=config.value if config is not None and config.kind == "manifest" else None,
        pasted=config.value if config is not None and config.kind == "inline" else None,
        sweep=command.sweep,
        sweep_metric=command.sweep_metric,
    )


@dataclass(frozen=True)
class JobForm:
    """A valid submission: exactly one of `config_json` (built or pasted) and `manifest` is set."""

    name: str
    cluster: str
    config_json: str | None
    manifest: str | None
    channel_id: str
    sweep: tuple[str, ...] = ()
    sweep_metric: str | None = None

    @property
    def command(self) -> JobCreate:
        """The `job create` this form stands for: the handlers submit it as they do a typed one."""
        if self.manifest:
            config = ConfigRef("manifest", self.manifest)
        else:
            config = ConfigRef("inline", self.config_json or "")
        return JobCreate(
            name=self.name,
            cluster=self.cluster,
            config=config,
            sweep=self.sweep,
            sweep_metric=self.sweep_metric,
        )


# The input a refusal's `UserError.field` is about (see services/jobs/service.py).
_FIELD_BLOCKS: Final = {
    "name": BLOCK_NAME,
    "cluster": BLOCK_CLUSTER,
    "node_count": BLOCK_NODES,
    "sweep": BLOCK_SWEEP,
}


def error_block(err: BatchAIError, form: JobForm, view: Mapping[str, Any]) -> str:
    """The form input a refused submission is about, so Slack shows the error beside it: the
    name for a conflict, the manifest or job.json it came from for a bad spec, else the input
    the error's `field` names (the cluster when it names none)."""
    if isinstance(err, Conflict):
        return BLOCK_NAME
    if isinstance(err, UserError) and err.field == "sweep":
        return BLOCK_SWEEP
    if form.manifest:
        return BLOCK_MANIFEST
    if isinstance(err, SpecError):
        pasted = _State(view).text(BLOCK_JSON)
        return BLOCK_JSON if pasted else BLOCK_COMMAND
    field = err.field if isinstance(err, UserError) else None
    return _FIELD_BLOCKS.get(field or "", BLOCK_CLUSTER)


# ----------------------------------------------------------------------------- the view


def job_create_modal(
    *,
    clusters: Sequence[ClusterView],
    manifests: Sequence[str],
    channel_id: str,
    prices: Mapping[str, str] | None = None,
    prefill: JobPrefill | None = None,
) -> dict[str, Any]:
    """The modal `/batchai job create` opens when it gets no config (or no name), filled in
    with what it got. `prices`: label by VM size."""
    given = prefill or JobPrefill()
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": CALLBACK_JOB_CREATE,
        "title": _plain("Submit a job"),
        "close": _plain("Cancel"),
        "private_metadata": json.dumps({"channel_id": channel_id}),
    }
    if not clusters:
        view["close"] = _plain("Close")
        view["blocks"] = [
            _section(
                "There are no clusters yet. Create one first, with a file share for the logs:\n"
                "`/batchai cluster create -n mycluster -s Standard_NC4as_T4_v3 --min 0 --max 2 "
                "--afs-name data --afs-mount-path afs`"
            )
        ]
        return view
    labels = {sku_key(size): label for size, label in (prices or {}).items()}
    cluster_options = [_cluster_option(v, labels.get(sku_key(v.cluster.vm_size))) for v in clusters]
    select: Block = {
        "type": "static_select",
        "action_id": BLOCK_CLUSTER,
        "placeholder": _plain("Choose a cluster"),
        "options": cluster_options[:MAX_OPTIONS],
    }
    chosen = [o for o in cluster_options[:MAX_OPTIONS] if o["value"] == given.cluster]
    if chosen or len(cluster_options) == 1:
        select["initial_option"] = (chosen or cluster_options)[0]
    cluster_hint = (
        f"Showing the first {MAX_OPTIONS} of {len(clusters)} clusters."
        if len(clusters) > MAX_OPTIONS
        else "Nodes shown as idle/total."
    )
    blocks: list[Block] = [
        _context(
            "Fill the form, or pick a manifest, or paste a job.json. "
            "Logs and outputs go to the cluster's file share."
        ),
        _input(BLOCK_CLUSTER, "Cluster", select, hint=cluster_hint),
        _input(
            BLOCK_NAME,
            "Job name",
            _text_input(BLOCK_NAME, placeholder="mnist-1", max_length=64, initial=given.name),
            hint="1-64 letters, digits, - or _",
        ),
        _section("*A command line*"),
        _input(
            BLOCK_COMMAND,
            "Command line",
            _text_input(
                BLOCK_COMMAND,
                placeholder="python $AZ_BATCHAI_INPUT_INPUT/train.py --epochs 10",
                multiline=True,
            ),
            optional=True,
            hint="Runs with bash on every node, with the Batch AI environment variables set.",
        ),
        _input(
            BLOCK_IMAGE,
            "Container image",
            _text_input(BLOCK_IMAGE, placeholder="pytorch/pytorch:latest", max_length=255),
            optional=True,
        ),
        _input(
            BLOCK_NODES,
            "Nodes",
            {
                "type": "number_input",
                "action_id": BLOCK_NODES,
                "is_decimal_allowed": False,
                "initial_value": "1",
                "min_value": "1",
                "max_value": str(MAX_NODES),
            },
            hint="The command runs on the first node; $AZ_BATCHAI_MPI_HOST_FILE lists them all.",
        ),
        _input(
            BLOCK_HOURS,
            "Max hours",
            {
                "type": "number_input",
                "action_id": BLOCK_HOURS,
                "is_decimal_allowed": True,
                "initial_value": "1",
                "min_value": "0.01",
                "max_value": str(MAX_HOURS),
            },
            hint="The job is stopped after this long; the cost estimate uses it.",
        ),
        _input(
            BLOCK_INPUT_DIR,
            "Input directory",
            _text_input(BLOCK_INPUT_DIR, placeholder="data/mnist", max_length=1000),
            optional=True,
            hint="On the cluster's share unless it starts with / or $; "
            "the job sees it as $AZ_BATCHAI_INPUT_INPUT.",
        ),
        _input(
            BLOCK_OUTPUT_DIR,
            "Output directory",
            _text_input(BLOCK_OUTPUT_DIR, placeholder="models", max_length=1000),
            optional=True,
            hint="On the cluster's share; the job writes to $AZ_BATCHAI_OUTPUT_MODEL.",
        ),
        _input(
            BLOCK_SWEEP,
            "Sweep",
            _text_input(
                BLOCK_SWEEP,
                placeholder="lr=0.1,0.03,0.01 (a line per parameter)",
                multiline=True,
                max_length=2000,
                initial="\n".join(given.sweep) or None,
            ),
            optional=True,
            hint="One parameter per line, NAME=V1,V2: every combination runs as one job "
            "(NAME-1, NAME-2 …) with $NAME set and in the command line; at most 100 jobs.",
        ),
        _input(
            BLOCK_SWEEP_METRIC,
            "Rank the sweep by",
            _text_input(
                BLOCK_SWEEP_METRIC,
                placeholder="val_acc (or loss:min)",
                max_length=72,
                initial=given.sweep_metric,
            ),
            optional=True,
            hint="A metric the logs print; by default val_acc up, loss down.",
        ),
        {"type": "divider"},
        _section("*…or a job.json*"),
    ]
    manifest_options = [_option(name, name) for name in manifests if 0 < len(name) <= OPTION_VALUE][
        :MAX_OPTIONS
    ]
    if manifest_options:
        manifest_select: Block = {
            "type": "static_select",
            "action_id": BLOCK_MANIFEST,
            "placeholder": _plain("Choose a job.json"),
            "options": manifest_options,
        }
        wanted = _manifest_name(given.manifest)
        for option in manifest_options:
            if option["value"] == wanted:
                manifest_select["initial_option"] = option
        blocks.append(_input(BLOCK_MANIFEST, "Manifest", manifest_select, optional=True))
    pasted = given.pasted if given.pasted and len(given.pasted) <= TEXT_INPUT_MAX else None
    blocks.append(
        _input(
            BLOCK_JSON,
            "Paste a job.json",
            _text_input(
                BLOCK_JSON,
                placeholder='{"properties": {...}}',
                multiline=True,
                initial=pasted,
            ),
            optional=True,
            hint="Batch AI job.json (API 2017-09-01-preview, 2018-03-01 or 2018-05-01).",
        )
    )
    view["submit"] = _plain("Submit")
    view["blocks"] = blocks
    return view


def mount_paths_of(clusters: Sequence[ClusterView]) -> dict[str, str]:
    """Cluster name -> its first share's mount path, for `parse_job_create(mount_paths=...)`."""
    return {v.cluster.name: v.cluster.mounts[0].mount_path for v in clusters if v.cluster.mounts}


def _cluster_option(view: ClusterView, price: str | None) -> Block:
    c, n = view.cluster, view.counts
    parts = [c.name, c.vm_size, f"{n.idle}/{n.total} idle"]
    if price:
        parts.append(price)
    return _option(" · ".join(parts), c.name)


# ----------------------------------------------------------------------------- the submission


def parse_job_create(
    view: Mapping[str, Any], *, mount_paths: Mapping[str, str]
) -> JobForm | FieldErrors:
    """The submitted modal as a JobForm, or errors by block id (never raises for user input).

    `mount_paths` maps a cluster name to the mount path of its first file share; a form-built
    job writes its logs (and relative output directories) to `$AZ_BATCHAI_MOUNT_ROOT/<path>`.
    """
    channel_id = _channel_id(view)
    if channel_id is None:
        # Not a form this bot opened (or one from an older version): nothing else is worth
        # checking, and Slack shows the line under the first field.
        return {BLOCK_NAME: STALE_FORM}
    state = _State(view)
    errors: FieldErrors = {}

    name = state.text(BLOCK_NAME) or ""
    if not NAME_RE.fullmatch(name):
        errors[BLOCK_NAME] = "Use 1-64 letters, digits, - or _ (no spaces)."
    cluster = state.selected(BLOCK_CLUSTER)
    if cluster is None:
        errors[BLOCK_CLUSTER] = "Choose a cluster."
    nodes = _node_count(state.text(BLOCK_NODES), errors)
    seconds = _wall_clock_seconds(state.text(BLOCK_HOURS), errors)

    command = state.text(BLOCK_COMMAND)
    manifest = state.selected(BLOCK_MANIFEST)
    pasted = state.text(BLOCK_JSON)
    sources = {BLOCK_COMMAND: command, BLOCK_MANIFEST: manifest, BLOCK_JSON: pasted}
    given = [block for block, value in sources.items() if value]
    if not given:
        errors[BLOCK_COMMAND] = "Give a command line, pick a manifest, or paste a job.json."
    elif len(given) > 1:
        errors.update({block: _ONE_SOURCE + "." for block in given})

    form_only = {
        BLOCK_IMAGE: state.text(BLOCK_IMAGE),
        BLOCK_INPUT_DIR: state.text(BLOCK_INPUT_DIR),
        BLOCK_OUTPUT_DIR: state.text(BLOCK_OUTPUT_DIR),
    }
    if given and given[0] != BLOCK_COMMAND:
        for block, value in form_only.items():
            if value:
                errors[block] = "Used only with a command line; a job.json brings its own."

    config_json: str | None = None
    if given == [BLOCK_JSON] and pasted:
        problem = _json_problem(pasted)
        if problem:
            errors[BLOCK_JSON] = problem
        config_json = pasted
    elif given == [BLOCK_COMMAND] and command and cluster is not None:
        mount = mount_paths.get(cluster)
        if not mount:
            errors[BLOCK_CLUSTER] = (
                f"{cluster} has no file share for the job's logs: create it with --afs-name "
                "(and --afs-mount-path), or submit a job.json."
            )
        else:
            config_json = _build_job_json(
                command=command,
                nodes=nodes,
                seconds=seconds,
                mount=mount,
                fields=form_only,
                errors=errors,
            )

    flags, metric = _sweep_fields(state, errors)
    if errors:
        return errors
    assert cluster is not None  # for mypy: an unset cluster is an error above
    return JobForm(
        name=name,
        cluster=cluster,
        config_json=config_json,
        manifest=manifest if given == [BLOCK_MANIFEST] else None,
        channel_id=channel_id,
        sweep=flags,
        sweep_metric=metric,
    )


def _sweep_fields(state: _State, errors: FieldErrors) -> tuple[tuple[str, ...], str | None]:
    """The sweep's lines, read as `--sweep` flags are (the same parse), and its metric."""
    text = state.text(BLOCK_SWEEP) or ""
    flags = tuple(line.strip() for line in text.splitlines() if line.strip())
    metric = state.text(BLOCK_SWEEP_METRIC)
    try:
        metric_of = sweep.parse_metric(metric) if metric else None
    except ValueError as err:
        errors[BLOCK_SWEEP_METRIC] = str(err)
        return (), None
    if not flags:
        if metric_of is not None:
            errors[BLOCK_SWEEP_METRIC] = "Give the sweep's parameters too (or leave this empty)."
        return (), None
    try:
        sweep.sweep_of(flags, metric)
    except ValueError as err:
        errors[BLOCK_SWEEP] = str(err).removeprefix("--sweep: ")
    return flags, metric


class _State:
    """Reads `view.state.values[block][action]`; the action id equals the block id here."""

    def __init__(self, view: Mapping[str, Any]) -> None:
        state = view.get("state") or {}
        self._values: Mapping[str, Any] = state.get("values") or {}

    def _element(self, block: str) -> Mapping[str, Any]:
        element = (self._values.get(block) or {}).get(block)
        return element if isinstance(element, Mapping) else {}

    def text(self, block: str) -> str | None:
        """plain_text_input / number_input: the stripped value, None when empty."""
        value = self._element(block).get("value")
        return (value.strip() or None) if isinstance(value, str) else None

    def selected(self, block: str) -> str | None:
        """static_select: the chosen option's value."""
        option = self._element(block).get("selected_option")
        value = option.get("value") if isinstance(option, Mapping) else None
        return (value or None) if isinstance(value, str) else None


def _channel_id(view: Mapping[str, Any]) -> str | None:
    """The channel `job_create_modal` wrote into private_metadata; None when it is not there
    (a view with our callback id that this bot did not build, or tampered with)."""
    raw = view.get("private_metadata")
    try:
        meta = json.loads(raw) if isinstance(raw, str) and raw else None
    except (ValueError, RecursionError):
        meta = None
    channel = meta.get("channel_id") if isinstance(meta, dict) else None
    if isinstance(channel, str) and _CHANNEL_RE.fullmatch(channel):
        return channel
    return None


def _manifest_name(ref: str | None) -> str | None:
    """`manifests/jobs/mnist.json` -> `mnist`, the form's option value."""
    if ref is None:
        return None
    return ref.removeprefix("manifests/jobs/").removesuffix(".json")


def _node_count(raw: str | None, errors: FieldErrors) -> int:
    try:
        nodes = int(raw or "")
    except ValueError:
        errors[BLOCK_NODES] = "Give a whole number of nodes."
        return 0
    if not 1 <= nodes <= MAX_NODES:
        errors[BLOCK_NODES] = f"Give 1 to {MAX_NODES} nodes."
    return nodes


def _wall_clock_seconds(raw: str | None, errors: FieldErrors) -> int:
    try:
        hours = Decimal(raw or "")
    except InvalidOperation:
        errors[BLOCK_HOURS] = "Give the maximum run time in hours, e.g. 1.5."
        return 0
    # Range first: 1e99999999 hours would overflow the multiplication below.
    in_range = hours.is_finite() and 0 < hours <= MAX_HOURS
    seconds = int((hours * 3600).to_integral_value()) if in_range else 0
    if seconds < 1:
        errors[BLOCK_HOURS] = f"Give more than 0 and at most {MAX_HOURS} hours (7 days)."
    return seconds


def _json_problem(text: str) -> str | None:
    """A one-line complaint about pasted text that is not a JSON object, else None."""
    # Slack caps the input, but a request need not come from Slack's client: check before parsing.
    if len(text) > TEXT_INPUT_MAX:
        return f"Paste at most {TEXT_INPUT_MAX} characters; put a larger job.json in a manifest."
    if nesting_depth(text) > MAX_DEPTH:
        return f"The JSON is nested deeper than {MAX_DEPTH} levels."
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"Invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
    except (ValueError, RecursionError):  # e.g. an integer with too many digits
        return "Invalid JSON."
    if not isinstance(data, dict):
        return 'A job.json is a JSON object: {"properties": {...}}.'
    return None


def _build_job_json(
    *,
    command: str,
    nodes: int,
    seconds: int,
    mount: str,
    fields: Mapping[str, str | None],
    errors: FieldErrors,
) -> str | None:
    """A Batch AI 2018-05-01 job.json for the form; None (with errors added) when a field is bad."""
    share = f"$AZ_BATCHAI_MOUNT_ROOT/{mount.strip('/')}"
    props: dict[str, Any] = {"nodeCount": nodes}
    image = fields.get(BLOCK_IMAGE)
    if image:
        if _IMAGE_RE.fullmatch(image):
            props["containerSettings"] = {"imageSourceRegistry": {"image": image}}
        else:
            errors[BLOCK_IMAGE] = "Give an image reference such as pytorch/pytorch:latest."
    props["customToolkitSettings"] = {"commandLine": command}
    props["stdOutErrPathPrefix"] = share
    input_dir = fields.get(BLOCK_INPUT_DIR)
    if input_dir:
        path = _share_path(input_dir, share, BLOCK_INPUT_DIR, errors, output=False)
        props["inputDirectories"] = [{"id": "INPUT", "path": path}]
    output_dir = fields.get(BLOCK_OUTPUT_DIR)
    if output_dir:
        prefix = _share_path(output_dir, share, BLOCK_OUTPUT_DIR, errors, output=True)
        props["outputDirectories"] = [{"id": "MODEL", "pathPrefix": prefix, "pathSuffix": "model"}]
    props["constraints"] = {"maxWallClockTime": _hms(seconds)}
    if errors:
        return None
    return json.dumps({"$schema": SCHEMA_URL, "properties": props}, indent=2)


def _share_path(raw: str, share: str, block: str, errors: FieldErrors, *, output: bool) -> str:
    """A relative path lands on the share; `$AZ_BATCHAI_…` (and, for inputs, `/…`) as given."""
    path = raw.strip()
    if any(not ch.isprintable() for ch in path):
        errors[block] = "Give a path on one line."
    elif ".." in path.split("/"):
        errors[block] = "A path must not contain '..'."
    elif output and path.startswith(("/", "$")) and not _OUTPUT_ROOT_RE.match(path):
        errors[block] = "Give a path on the share (e.g. models) or under $AZ_BATCHAI_MOUNT_ROOT."
    elif path.startswith(("/", "$")):
        return path
    else:
        relative = path.strip("/")
        return share if relative in ("", ".") else f"{share}/{relative}"
    return path


def _hms(seconds: int) -> str:
    """Batch AI's maxWallClockTime as H:MM:SS (hours may exceed 24)."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


# ----------------------------------------------------------------------------- block helpers


def _plain(text: str) -> Block:
    return {"type": "plain_text", "text": text}


def _section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _option(text: str, value: str) -> Block:
    shown = text if len(text) <= OPTION_TEXT else text[: OPTION_TEXT - 1] + "…"
    return {"text": _plain(shown), "value": value}


def _text_input(
    action_id: str,
    *,
    placeholder: str,
    multiline: bool = False,
    max_length: int = TEXT_INPUT_MAX,
    initial: str | None = None,
) -> Block:
    element: Block = {
        "type": "plain_text_input",
        "action_id": action_id,
        "multiline": multiline,
        "max_length": max_length,
        "placeholder": _plain(placeholder),
    }
    if initial:
        element["initial_value"] = initial
    return element


def _input(
    block_id: str, label: str, element: Block, *, optional: bool = False, hint: str | None = None
) -> Block:
    block: Block = {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label),
        "element": element,
        "optional": optional,
    }
    if hint:
        block["hint"] = _plain(hint)
    return block
