"""What every lifecycle's transition() answers: applied, already in that state, or invalid."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

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


_TOKENS: dict[type, object] = {}


@dataclass(frozen=True)
class Transition(Generic[S]):
    """A move a lifecycle table allowed: the store writes `new` only while the row is `old`.

    Only the module that sealed the subclass holds its token, so nothing else can build one."""

    old: S
    new: S
    token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self) not in _TOKENS or self.token is not _TOKENS[type(self)]:
            raise TypeError(f"a {type(self).__name__} is built only by its lifecycle module")


def seal(kind: type[Transition[Any]]) -> object:
    """The one token that builds `kind`, handed out once (to its lifecycle module)."""
    if kind in _TOKENS:
        raise TypeError(f"{kind.__name__} is sealed already")
    token = _TOKENS[kind] = object()
    return token
