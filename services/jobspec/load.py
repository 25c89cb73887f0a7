"""Text to spec: strict JSON with limits; one-line errors naming line:column or a JSON path."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from services.core.errors import SpecError
from services.jobspec.schema import (
    TOOLKITS,
    AnySpec,
    ClusterSpec,
    FileServerSpec,
    JobSpec,
    parse_schema_url,
)

MAX_SPEC_BYTES: Final = 1 << 20
MAX_DEPTH: Final = 64
_MAX_MESSAGE: Final = 400

SpecKind = Literal["job", "cluster", "file_server"]
_S = TypeVar("_S", JobSpec, ClusterSpec, FileServerSpec)


class _JsonProblem(ValueError):
    """Raised from json.loads hooks; carries a message without a position."""


# ----------------------------------------------------------------------------- JSON


def _decode(text: str | bytes, source: str) -> str:
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError(f"{source}: too large ({len(text)} bytes; the limit is 1 MiB)")
        try:
            return text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SpecError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    # Characters never outnumber UTF-8 bytes, so the cheap check comes first.
    if len(text) > MAX_SPEC_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: too large (the limit is 1 MiB)")
    return text.removeprefix("\ufeff")


def nesting_depth(text: str) -> int:
    """Deepest [ / { nesting outside strings (json.loads would recurse that deep), stopping once
    past MAX_DEPTH.

    One pass over the characters with string and escape state: linear in the text whatever it
    holds. (A regex that first blanked out the strings backtracked over an unterminated one at
    every quote: quadratic, a minute of CPU for 96 KB of `{"\\"\\"…`.)"""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        elif char in "]}":
            depth -= 1
    return deepest


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _JsonProblem(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _JsonProblem(f"{name} is not valid JSON")


def parse_json(text: str | bytes, *, source: str = "<inline>") -> dict[str, Any]:
    """Strict JSON object from text: size and depth limits, no NaN, no duplicate keys."""
    decoded = _decode(text, source)
    if nesting_depth(decoded) > MAX_DEPTH:
        raise SpecError(f"{source}: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(decoded, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except _JsonProblem as exc:
        raise SpecError(one_line(f"{source}: invalid JSON: {exc}")) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer with too many digits
        raise SpecError(one_line(f"{source}: invalid JSON: {exc}")) from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: expected a JSON object at the top level, found {_json_type(data)}"
        )
    if (where := _unstorable_string(data, ())) is not None:
        # Arguments, paths and variables are C strings on the node: NUL ends them early, and an
        # unpaired surrogate cannot be encoded at all.
        at = json_path(where) or "a key"
        raise SpecError(
            one_line(f"{source}: {at}: contains a NUL (\\u0000) or an unpaired surrogate")
        )
    return data


_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")


def _unstorable_string(value: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """Where the first string (key or value) holding NUL or a lone surrogate is, else None."""
    if isinstance(value, str):
        return loc if _UNSTORABLE_RE.search(value) else None
    if not isinstance(value, dict | list):
        return None
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str) and _UNSTORABLE_RE.search(key):
            return (*loc, key)
        if (found := _unstorable_string(item, (*loc, key))) is not None:
            return found
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


# ----------------------------------------------------------------------------- errors


def one_line(message: str) -> str:
    """Collapse to one printable line of bounded length."""
    flat = message.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    flat = "".join(ch if ch.isprintable() else "?" for ch in flat)
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 1] + "…"


_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_$]+")


def json_path(loc: tuple[int | str, ...]) -> str:
    """('properties', 'inputDirectories', 0, 'id') -> properties.inputDirectories[0].id"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY_RE.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside Optional[...], tuple[...], Annotated[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return None
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _keys_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The JSON keys the model at `loc` accepts (empty when the path cannot be followed)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        fields = model.model_fields
        info = next(
            (f for name, f in fields.items() if part in (name, f.alias)),
            None,
        )
        model = _model_in(info.annotation) if info is not None else None
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _unknown_key_message(root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    key = loc[-1]
    known = _keys_at(root, loc[:-1])
    if isinstance(key, str) and known:
        folded = {k.lower(): k for k in known}
        guess = folded.get(key.lower()) or next(
            iter(difflib.get_close_matches(key, known, n=1, cutoff=0.7)), None
        )
        if guess is not None:
            return f"unknown key (did you mean {guess!r}?)"
    return "unknown key"


_FRIENDLY: Final = {
    "model_type": "should be a JSON object",
    "model_attributes_type": "should be a JSON object",
    "dict_type": "should be a JSON object",
    "tuple_type": "should be a JSON array",
    "list_type": "should be a JSON array",
}


def format_validation_error(exc: ValidationError, root: type[BaseModel], source: str) -> str:
    """One line: the first error (unknown keys first: they explain the rest) plus a count."""
    lines = validation_lines(exc, root, source)
    text = lines[0]
    if len(lines) > 1:
        text += f" (and {len(lines) - 1} more)"
    return one_line(text)


def validation_lines(exc: ValidationError, root: type[BaseModel], source: str) -> list[str]:
    """Every error, one line each with its JSON path (unknown keys first: they explain the
    rest), for `batchai-bot validate`."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    lines = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message = _unknown_key_message(root, loc)
        else:
            message = _FRIENDLY.get(error["type"], error["msg"]).removeprefix("Value error, ")
        path = json_path(loc)
        line = one_line(f"{source}: {path}: {message}" if path else f"{source}: {message}")
        if line not in lines:
            lines.append(line)
    return lines


# ----------------------------------------------------------------------------- loading


def validate_spec(model: type[_S], data: dict[str, Any], *, source: str = "<inline>") -> _S:
    """Validate parsed JSON as `model`, turning every failure into a one-line SpecError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, model, source)) from None


def load_job_spec(text: str | bytes, *, source: str = "<inline>") -> JobSpec:
    """A job.json as a JobSpec, or SpecError naming line:column or the JSON path."""
    return validate_spec(JobSpec, parse_json(text, source=source), source=source)


def load_cluster_spec(text: str | bytes, *, source: str = "<inline>") -> ClusterSpec:
    """A cluster.json (ClusterCreateParameters) as a ClusterSpec, or SpecError."""
    return validate_spec(ClusterSpec, parse_json(text, source=source), source=source)


def load_file_server_spec(text: str | bytes, *, source: str = "<inline>") -> FileServerSpec:
    """A file-server JSON (FileServerCreateParameters) as a FileServerSpec, or SpecError."""
    return validate_spec(FileServerSpec, parse_json(text, source=source), source=source)


_JOB_KEYS: Final = frozenset(TOOLKITS) | {
    "nodeCount",
    "jobPreparation",
    "stdOutErrPathPrefix",
    "containerSettings",
    "inputDirectories",
    "outputDirectories",
}
_FILE_SERVER_KEYS: Final = frozenset({"dataDisks", "sshConfiguration"})
_CLUSTER_KEYS: Final = frozenset(
    {
        "vmSize",
        "vmPriority",
        "scaleSettings",
        "virtualMachineConfiguration",
        "nodeSetup",
        "userAccountSettings",
    }
)


def spec_kind(data: dict[str, Any]) -> SpecKind:
    """Which document this is, by `$schema` file name, else by the keys under "properties"."""
    schema = data.get("$schema")
    if isinstance(schema, str):
        try:
            file = parse_schema_url(schema)[1]
        except ValueError:
            file = ""
        if file == "cluster.json":
            return "cluster"
        if file == "nfs.json":
            return "file_server"
    props = data.get("properties")
    keys = set(props) if isinstance(props, dict) else set()
    if keys & _JOB_KEYS:
        return "job"
    if keys & _FILE_SERVER_KEYS:
        return "file_server"
    if keys & _CLUSTER_KEYS:
        return "cluster"
    return "job"  # so that the errors speak about the most common document


def check_any(text: str | bytes, source: str = "<inline>") -> tuple[AnySpec | None, list[str]]:
    """`load_any` for `batchai-bot validate`: the spec, or None and every problem of the file,
    one line each with its JSON path (a JSON syntax error is one line with line:column)."""
    data = parse_json(text, source=source)
    kind = spec_kind(data)
    model: type[JobSpec] | type[ClusterSpec] | type[FileServerSpec] = JobSpec
    if kind == "cluster":
        model = ClusterSpec
    elif kind == "file_server":
        model = FileServerSpec
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, validation_lines(exc, model, source)


def load_any(text: str | bytes, source: str = "<inline>") -> AnySpec:
    """A job, cluster or file-server JSON, picked by shape (for the `validate` command)."""
    data = parse_json(text, source=source)
    kind = spec_kind(data)
    if kind == "cluster":
        return validate_spec(ClusterSpec, data, source=source)
    if kind == "file_server":
        return validate_spec(FileServerSpec, data, source=source)
    return validate_spec(JobSpec, data, source=source)
