"""Who the current work is for — a command, a job — kept in contextvars for the log lines."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

FIELDS = ("correlation_id", "job_id", "user", "command")

_vars: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"batchai_{name}", default=None) for name in FIELDS
}


def new_id() -> str:
    """A short random correlation id, for work that brings none of its own."""
    return secrets.token_hex(6)


def current() -> dict[str, str]:
    """The fields known here (unknown ones are left out)."""
    return {name: value for name, var in _vars.items() if (value := var.get()) is not None}


def set_field(name: str, value: str | None) -> None:
    """Refine one field for the rest of this task (e.g. the command once it is parsed)."""
    _vars[name].set(value)


@contextmanager
def bound(**values: str | None) -> Iterator[None]:
    """Set some fields for the work inside the block (tasks started there inherit them)."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown context fields: {sorted(unknown)}")
    tokens: list[tuple[ContextVar[str | None], Token[str | None]]] = [
        (_vars[name], _vars[name].set(value)) for name, value in values.items()
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def for_job(job_id: str) -> dict[str, str]:
    """The fields of work done on one job: its id is its correlation id."""
    return {"correlation_id": f"job-{job_id}", "job_id": job_id}
