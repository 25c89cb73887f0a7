"""Generated hostile input for the two parsers users feed: the /batchai grammar and job.json.

12,500 examples in all, derandomized so CI sees the same ones. Each input either parses or is
refused with one of the project's errors, whose message is one non-empty line; grammar errors
carry the usage. Inputs are built from the real command table and the real job.json corpus, then
mutated: one flag value made hostile, tokens dropped or doubled, values of the wrong type, deep
nesting, cut text.
"""

from __future__ import annotations

import copy
import json
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers import modals
from handlers.commands import CommandHandler, Reply, Services
from handlers.commandspec import COMMANDS, Command, CommandSpec, Help
from services.backends.links import LinkSigner
from services.core.errors import NotAllowed, SpecError
from services.jobspec import JobSpec, LaunchContext, NodeInfo, load_any, load_job_spec, plan_launch
from services.jobspec.load import MAX_DEPTH, spec_kind
from services.models import FileLocation
from tests.test_hostile_input import HOSTILE
from tests.test_modals import input_blocks, modal
from tests.test_modals import parse as form_parse

ROOT = Path(__file__).parent.parent
SOURCES = ("slack", "console")


def _settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- the grammar

# parse() is pure and never touches the services.
HANDLER = CommandHandler(cast(Services, None))

SPELLINGS = [(spec, path) for spec in COMMANDS for path in (spec.path, *spec.aliases)]
FLAG_NAMES = sorted({name for spec in COMMANDS for flag in spec.flags for name in flag.names})
# Values a flag could plausibly get, valid for some kinds and wrong for others.
PLAUSIBLE = [
    "mycluster",
    "Standard_NC6",
    "UbuntuLTS",
    "0",
    "1",
    "4",
    "-1",
    "101",
    "99999999999",
    "table",
    "json",
    "tsv",
    "afs",
    "stdouterr",
    "stderr.txt",
    "out/model",
    "../etc",
    "/etc/passwd",
    "~",
    "mnist",
    "manifests/jobs/mnist.json",
    '{"properties": {"nodeCount": 1}}',
    "{",
    "2026-05",
    "2026-13",
    "$2,500.00",
    "3f9c2a7e",
    "#ml-team",
    "<#C0123ABCD|ml-team>",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA user@host",
    "dedicated",
    "lowpriority",
    "user",
    "eastus",
]
SHORT_HOSTILE = [h for h in HOSTILE if len(h) < 200]

values = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.sampled_from(SHORT_HOSTILE),
    st.text(max_size=24),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
)


def _quoted(value: str, raw: bool) -> str:
    return value if raw else shlex.quote(value)


def _check_reply(text: str, source: str) -> Command | Reply:
    result = HANDLER.parse(text, source=source)  # type: ignore[arg-type]
    if isinstance(result, Reply):
        assert result.failed
        message = result.message.text
        assert message.strip() and "\n" not in message and "\r" not in message, message
        assert len(result.message.blocks) == 2, "a refusal shows its usage"
        assert "usage:" in json.dumps(result.message.blocks[1])
    else:
        assert isinstance(result, Command)
    return result


def _examples() -> list[tuple[CommandSpec, list[str]]]:
    """Every example of the table as tokens (the inline-JSON examples do not split this way)."""
    found = []
    for spec in COMMANDS:
        for example in spec.examples:
            if "{" not in example:
                found.append((spec, shlex.split(example)))
    return found


EXAMPLES = _examples()


def test_every_example_parses_to_its_command() -> None:
    for spec, tokens in EXAMPLES:
        result = _check_reply(shlex.join(tokens), "slack")
        assert isinstance(result, spec.cls), (tokens, result)


@st.composite
def mutated_examples(draw: st.DrawFn) -> tuple[str, str]:
    spec, tokens = draw(st.sampled_from(EXAMPLES))
    tokens = list(tokens)
    raw = draw(st.booleans())
    start = 1 + len(spec.path)  # after "/batchai" and the command words
    index = draw(st.integers(min_value=1, max_value=max(1, len(tokens) - 1)))
    how = draw(st.sampled_from(["value", "drop", "double", "flag", "insert", "case"]))
    words = [shlex.quote(t) for t in tokens]
    if how == "value" and len(tokens) > start:
        index = draw(st.integers(min_value=start, max_value=len(tokens) - 1))
        words[index] = _quoted(draw(values), raw)
    elif how == "drop":
        del words[index]
    elif how == "double":
        words.insert(index, words[index])
    elif how == "flag":
        words[index] = draw(st.sampled_from(FLAG_NAMES + ["--", "-", "—name", "--nam", "-nn"]))
    elif how == "insert":
        words.insert(index, _quoted(draw(values), raw))
    else:
        words = [w.upper() if draw(st.booleans()) else w for w in words]
    return " ".join(words), draw(st.sampled_from(SOURCES))


@_settings(3000)
@given(case=mutated_examples())
def test_real_commands_with_one_thing_changed_parse_or_are_refused_in_one_line(
    case: tuple[str, str],
) -> None:
    _check_reply(*case)


@st.composite
def table_commands(draw: st.DrawFn) -> tuple[CommandSpec, str, str]:
    """A real command spelling with a random set of its own flags and generated values."""
    spec, path = draw(st.sampled_from(SPELLINGS))
    words = [w.upper() if draw(st.booleans()) else w for w in path]
    if draw(st.booleans()):
        words.insert(0, draw(st.sampled_from(["/batchai", "az batchai", "batchai"])))
    for flag in draw(st.lists(st.sampled_from(spec.flags), max_size=6)):
        name = draw(st.sampled_from(flag.names))
        if not flag.kind.takes_value:
            words.append(name)
            continue
        value = _quoted(draw(values), draw(st.booleans()))
        words.append(f"{name}={value}" if draw(st.booleans()) else f"{name} {value}")
    return spec, " ".join(words), draw(st.sampled_from(SOURCES))


@_settings(3000)
@given(case=table_commands())
def test_commands_built_from_the_table_parse_to_their_class_or_are_refused(
    case: tuple[CommandSpec, str, str],
) -> None:
    spec, text, source = case
    result = _check_reply(text, source)
    if isinstance(result, Command):
        assert isinstance(result, spec.cls | Help), (text, result)


@_settings(1000)
@given(
    spelling=st.sampled_from(SPELLINGS),
    tail=st.text(max_size=120),
    source=st.sampled_from(SOURCES),
)
def test_any_text_after_a_real_command_parses_or_is_refused_in_one_line(
    spelling: tuple[CommandSpec, tuple[str, ...]], tail: str, source: str
) -> None:
    _check_reply(" ".join(spelling[1]) + " " + tail, source)


# --------------------------------------------------------------------------- the submit form

FORM_TEXT_BLOCKS = [
    modals.BLOCK_NAME,
    modals.BLOCK_COMMAND,
    modals.BLOCK_IMAGE,
    modals.BLOCK_NODES,
    modals.BLOCK_HOURS,
    modals.BLOCK_INPUT_DIR,
    modals.BLOCK_OUTPUT_DIR,
    modals.BLOCK_JSON,
]
form_values = st.one_of(
    values,
    st.sampled_from(["1e99999999", "1e100000", "sNaN", "-Infinity", "9" * 5000, "0x10", "1_0"]),
    st.just(None),
)


@_settings(1000)
@given(answers=st.dictionaries(st.sampled_from(FORM_TEXT_BLOCKS), form_values, max_size=5))
def test_any_form_answers_give_a_job_or_one_line_errors_on_their_fields(
    answers: dict[str, str | None],
) -> None:
    result = form_parse(**answers)
    if isinstance(result, dict):
        assert result and set(result) <= set(input_blocks(modal()))
        for message in result.values():
            assert message.strip() and "\n" not in message, message
    else:
        assert result.config_json is None or isinstance(json.loads(result.config_json), dict)


# --------------------------------------------------------------------------- download tokens

SIGNER = LinkSigner(b"k" * 32, "http://127.0.0.1/files")
GOOD_TOKEN = SIGNER.sign(FileLocation("data", "out/m.bin"), datetime(2099, 1, 1, tzinfo=UTC))
GOOD_TOKEN = GOOD_TOKEN.split("/")[-2]


@_settings(500)
@given(
    token=st.one_of(
        st.text(max_size=200),
        st.integers(min_value=0, max_value=len(GOOD_TOKEN)).map(lambda n: GOOD_TOKEN[:n]),
        st.tuples(st.integers(min_value=0, max_value=len(GOOD_TOKEN) - 1), st.characters()).map(
            lambda at: GOOD_TOKEN[: at[0]] + at[1] + GOOD_TOKEN[at[0] + 1 :]
        ),
    )
)
def test_a_token_that_was_not_signed_is_refused_as_not_allowed(token: str) -> None:
    if token == GOOD_TOKEN:
        return
    try:
        SIGNER.verify(token)
    except NotAllowed as err:
        assert str(err) in ("malformed link", "link signature does not match")
    else:
        raise AssertionError(f"accepted {token!r}")


# --------------------------------------------------------------------------- job.json


def _corpus() -> list[tuple[str, dict[str, Any]]]:
    """The project's own job.json files: the manifests and the recipe fixtures."""
    paths = sorted((ROOT / "manifests" / "jobs").glob("*.json"))
    paths += sorted(p for p in (ROOT / "tests" / "fixtures" / "jobs").rglob("*.json"))
    docs = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError:  # a few recipes are broken on purpose
            continue
        if isinstance(data, dict) and spec_kind(data) == "job" and "properties" in data:
            docs.append((str(path.relative_to(ROOT)), data))
    return docs


CORPUS = _corpus()
WRONG_TYPES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**31,
    10**400,
    1.5,
    -0.0,
    "",
    "x" * 5000,
    [],
    {},
    [None],
    {"": ""},
    {"nested": {"deeper": [1, {"a": None}]}},
]


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


hostile_values = st.one_of(
    st.sampled_from(WRONG_TYPES),
    st.sampled_from(SHORT_HOSTILE),
    st.text(max_size=40),
    st.integers(),
    st.floats(allow_nan=False),
    st.integers(min_value=1, max_value=MAX_DEPTH + 20).map(_deep),
)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a document, containers included."""
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*at, index))
    return found


def _get(doc: Any, at: tuple[Any, ...]) -> Any:
    for part in at:
        doc = doc[part]
    return doc


def _set(doc: Any, at: tuple[Any, ...], value: Any) -> Any:
    if not at:
        return value
    parent = doc
    for part in at[:-1]:
        parent = parent[part]
    parent[at[-1]] = value
    return doc


def _check_spec(text: str, source: str) -> JobSpec | None:
    try:
        spec = load_job_spec(text, source=source)
    except SpecError as err:
        message = str(err)
        assert message.strip() and "\n" not in message and "\r" not in message, message
        assert message.startswith(source), message  # says which document
        return None
    _check_plan(spec)
    return spec


PLAN_CTX = {
    "subscription": "sub",
    "resource_group": "rg",
    "workspace": "ws",
    "experiment": "exp",
    "cluster_name": "gpu",
    "job_name": "train",
    "job_uuid": "0f1e",
    "mount_root": "/mnt/node",
    "job_mount_root": "/mnt/job",
    "job_temp_root": "/tmp/jobs",
}


def _check_plan(spec: JobSpec) -> None:
    """A loaded spec plans, or is refused with a one-line SpecError; argv never holds a NUL."""
    count = spec.properties.node_count
    nodes = tuple(NodeInfo(i, f"10.0.{i // 250}.{i % 250 + 4}", 1) for i in range(count))
    try:
        plan = plan_launch(spec, LaunchContext(**PLAN_CTX, nodes=nodes))
    except SpecError as err:
        assert str(err).strip() and "\n" not in str(err)
        return
    for process in (*plan.processes, *plan.preparation):
        assert process.argv and all("\x00" not in arg for arg in process.argv)


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[str, str]:
    source, doc = draw(st.sampled_from(CORPUS))
    doc = copy.deepcopy(doc)
    paths = _paths(doc)
    at = draw(st.sampled_from(paths))
    how = draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap", "poison"]))
    strings = [p for p in paths if isinstance(_get(doc, p), str)]
    if how == "poison" and strings:  # a character no argv, path or variable can hold
        at = draw(st.sampled_from(strings))
        text, cut = _get(doc, at), draw(st.integers(min_value=0, max_value=len(_get(doc, at))))
        doc = _set(
            doc, at, text[:cut] + draw(st.sampled_from(["\x00", "\ud800", "\udfff"])) + text[cut:]
        )
    elif how == "replace":
        doc = _set(doc, at, draw(hostile_values))
    elif how == "delete" and at:
        parent = doc
        for part in at[:-1]:
            parent = parent[part]
        del parent[at[-1]]
    elif how == "add":
        target = doc
        for part in at:
            target = target[part]
        if isinstance(target, dict):
            target[draw(st.sampled_from(["", "nodecount", "x", "$schema", "\u202e"]))] = draw(
                hostile_values
            )
        elif isinstance(target, list):
            target.append(draw(hostile_values))
    else:
        doc = _set(doc, at, [draw(hostile_values)] if draw(st.booleans()) else {"v": 1})
    text = json.dumps(
        doc, indent=draw(st.sampled_from([None, 2])), ensure_ascii=draw(st.booleans())
    )
    return source, text


@_settings(2000)
@given(case=mutated_documents())
def test_corpus_documents_with_one_value_changed_load_or_are_refused_in_one_line(
    case: tuple[str, str],
) -> None:
    _check_spec(case[1], case[0])


@st.composite
def cut_documents(draw: st.DrawFn) -> tuple[str, str]:
    """The text of a real document cut, spliced or given stray characters."""
    source, doc = draw(st.sampled_from(CORPUS))
    text = json.dumps(doc, indent=2)
    at = draw(st.integers(min_value=0, max_value=len(text)))
    how = draw(st.sampled_from(["cut", "insert", "splice", "nest"]))
    if how == "cut":
        text = text[:at]
    elif how == "insert":
        text = (
            text[:at]
            + draw(st.sampled_from(list('{}[],:"\\\x00\ufeff') + SHORT_HOSTILE))
            + text[at:]
        )
    elif how == "splice":
        end = draw(st.integers(min_value=at, max_value=len(text)))
        text = text[:at] + text[end:]
    else:
        depth = draw(st.integers(min_value=MAX_DEPTH - 2, max_value=5000))
        text = '{"properties": ' + "[" * depth + "]" * depth + "}"
    return source, text


@_settings(1000)
@given(case=cut_documents())
def test_cut_and_spliced_documents_load_or_are_refused_in_one_line(case: tuple[str, str]) -> None:
    _check_spec(case[1], case[0])


@_settings(1000)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_any_text_or_bytes_loads_or_is_refused_in_one_line(text: str | bytes) -> None:
    try:
        load_any(text, source="<paste>")
    except SpecError as err:
        assert str(err).startswith("<paste>") and "\n" not in str(err)
    # A cluster or file-server document that loads is fine too: no other outcome exists.


def test_the_corpus_itself_loads_and_plans() -> None:
    """The unmutated documents the generators start from are valid ones."""
    assert len(CORPUS) >= 20
    for source, doc in CORPUS:
        assert _check_spec(json.dumps(doc), source) is not None, source
