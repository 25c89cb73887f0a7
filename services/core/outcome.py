"""What every lifecycle's transition() answers: applied, already in that state, or invalid."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

S = TypeVar("S")


class Outcome(Enum):
    APPLIED = "applied"
    ALREADY = "already"
    INVALID = "invalid"


def by_table(table: Mapping[S, frozenset[S]], current: S, target: S) -> Outcome:
    """Whether a lifecycle `table` allows `current -> target`; a repeat is harmless."""
    if current == target:
        return Outcome.ALREADY
    if target in table.get(current, frozenset()):
        return Outcome.APPLIED
    return Outcome.INVALID
