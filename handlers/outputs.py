"""The answer formats of az (`-o json|jsonc|table|tsv|yaml|none`) and `--query JMESPATH`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jmespath
import yaml
from jmespath.exceptions import JMESPathError

from services.core.errors import UserError

OutputFormat = Literal["text", "table", "json", "tsv", "yaml", "none"]
# What -o accepts, and what each spelling means here: jsonc is json (Slack shows no colour).
FORMATS: dict[str, OutputFormat] = {
    "json": "json",
    "jsonc": "json",
    "table": "table",
    "tsv": "tsv",
    "yaml": "yaml",
    "none": "none",
    "text": "text",
}


@dataclass(frozen=True)
class Query:
    """A compiled `--query` expression; it compares and prints as the text it was typed as."""

    text: str
    parsed: Any = field(repr=False, compare=False)

    @classmethod
    def compile(cls, text: str) -> Query:
        """The expression compiled; ValueError says in one line what is wrong with it."""
        try:
            return cls(text, jmespath.compile(text))
        except JMESPathError as err:
            where = getattr(err, "lex_position", getattr(err, "lexer_position", None))
            what = getattr(err, "msg", None) or getattr(err, "message", None) or type(err).__name__
            at = f" at column {where}" if isinstance(where, int) else ""
            raise ValueError(f"{what}{at}") from None

    def search(self, data: Any) -> Any:
        """What it selects from `data`; a UserError when it cannot apply (a function given the
        wrong type, say): only the answer knows the types."""
        try:
            return self.parsed.search(data)
        except JMESPathError as err:
            raise UserError(f"--query {self.text!r} does not apply to this answer: {err}") from None


@dataclass(frozen=True)
class Output:
    """How the user asked to see an answer: the -o format and the --query, if any."""

    format: OutputFormat = "text"
    query: Query | None = None

    @classmethod
    def of(cls, output: Output | str) -> Output:
        """An Output from either itself or a bare format name (`-o` without `--query`)."""
        return output if isinstance(output, Output) else cls(FORMATS[output])

    @property
    def structured(self) -> bool:
        """The answer is the JSON document (queried, then printed as -o says), not a view."""
        return self.format in ("json", "tsv", "yaml") or (
            self.query is not None and self.format != "none"
        )

    def apply(self, data: Any) -> Any:
        # A round trip through JSON first: --query sees exactly what -o json prints.
        plain = json.loads(json.dumps(data, default=str))
        return plain if self.query is None else self.query.search(plain)

    @property
    def dump(self) -> Callable[[Any], str]:
        """The serialiser of this format; text (the default) with --query prints JSON, as az."""
        return {"tsv": tsv, "yaml": to_yaml}.get(self.format, to_json)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2)


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def tsv(data: Any) -> str:
    """Like `az -o tsv`: one line per item of a list, an object's values tab-separated in the
    order of their keys, no header; a nested object is an empty column, a list its length."""
    rows = data if isinstance(data, list) else [data]
    return "".join(_tsv_row(row) + "\n" for row in rows)


def _tsv_row(row: Any) -> str:
    if isinstance(row, dict):
        return "\t".join(_tsv_cell(v) for _, v in sorted(row.items()))
    if isinstance(row, list):
        return "\t".join(_tsv_cell(v) for v in row)
    return "" if row is None else _tsv_cell(row)


def _tsv_cell(value: Any) -> str:
    if isinstance(value, list):
        return str(len(value))
    if isinstance(value, dict):
        return ""
    return str(value)


def query_rows(data: Any) -> tuple[list[str], list[list[Any]]]:
    """A queried answer as `-o table` lays it out: an object's keys head the columns (nested
    values left out), plain values go under `Result`."""
    rows = data if isinstance(data, list) else [data]
    if rows and all(isinstance(r, dict) for r in rows):
        keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if _scalar(v)))
        return [k[:1].upper() + k[1:] for k in keys], [[r.get(k) for k in keys] for r in rows]
    return ["Result"], [[r] for r in rows if _scalar(r)]


def _scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)
