"""String values of a spec: the safe $VAR expander, <PLACEHOLDER> substitution, masked dumps."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from pydantic import ValidationError

from services.core.errors import SpecError
from services.jobspec.load import format_validation_error
from services.jobspec.schema import ClusterSpec, FileServerSpec, JobSpec

MASK: Final = "****"

# `$$` is matched first so that it is consumed whole and kept: `DemoPa$$w0rd` stays intact.
_VAR_RE = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """Replace `$NAME` / `${NAME}` with env values; nothing else.

    Unknown names stay as written, `$$` stays `$$`, and replaced text is not scanned again, so a
    value can never expand into more expansion. No command substitution, globbing or splitting.
    """

    def replace(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        if name is None:
            return match.group()
        return env.get(name, match.group())

    return _VAR_RE.sub(replace, value)


def referenced_vars(value: str) -> set[str]:
    """Names referenced as `$NAME` / `${NAME}` (a `$$` is not a reference)."""
    return {m["braced"] or m["bare"] for m in _VAR_RE.finditer(value) if m["braced"] or m["bare"]}


_PLACEHOLDER_RE = re.compile(r"<[A-Z][A-Z0-9_]{2,}>")

_Spec = TypeVar("_Spec", JobSpec, ClusterSpec, FileServerSpec)


def _walk_strings(value: Any, visit: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return visit(value)
    if isinstance(value, dict):
        return {key: _walk_strings(item, visit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_walk_strings(item, visit) for item in value]
    return value


def _raw(spec: JobSpec | ClusterSpec | FileServerSpec) -> dict[str, Any]:
    # exclude_unset keeps the document as written; secrets are included on purpose.
    return spec.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


def placeholders(spec: JobSpec | ClusterSpec | FileServerSpec) -> set[str]:
    """Every `<AZURE_BATCHAI_STORAGE_ACCOUNT>`-style placeholder in the spec's string values."""
    found: set[str] = set()

    def collect(text: str) -> str:
        found.update(_PLACEHOLDER_RE.findall(text))
        return text

    _walk_strings(_raw(spec), collect)
    return found


def substitute(spec: _Spec, values: Mapping[str, str]) -> _Spec:
    """A copy with placeholders replaced; keys may be given as `<NAME>` or `NAME`.

    Placeholders without a value are left as they are; nothing else is expanded.
    """
    table = {(k if k.startswith("<") else f"<{k}>"): v for k, v in values.items()}

    def replace(text: str) -> str:
        return _PLACEHOLDER_RE.sub(lambda m: table.get(m.group(), m.group()), text)

    data = _walk_strings(_raw(spec), replace)
    model = type(spec)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, model, "<substituted>")) from None


# JSON keys whose string values are secrets wherever they appear.
_SECRET_KEYS: Final = frozenset(
    {"password", "accountKey", "adminUserPassword", "instrumentationKey"}
)


def map_secrets(value: Any, change: Callable[[str], str], *, parent: str = "") -> Any:
    """A copy of parsed spec JSON with every secret string (secrets[].value, passwords, keys)
    replaced by `change(secret)`."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, str) and (
                key in _SECRET_KEYS or (parent == "secrets" and key == "value")
            ):
                out[key] = change(item)
            else:
                out[key] = map_secrets(item, change, parent=key)
        return out
    if isinstance(value, list):
        return [map_secrets(item, change, parent=parent) for item in value]
    return value


def dump(
    spec: JobSpec | ClusterSpec | FileServerSpec, *, mask_secrets: bool = True
) -> dict[str, Any]:
    """The camelCase JSON form; secret values (secrets, passwords, keys) become "****"."""
    data = _raw(spec)
    if not mask_secrets:
        return data
    masked: dict[str, Any] = map_secrets(data, lambda _: MASK)
    return masked
