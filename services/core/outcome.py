"""What every lifecycle's transition() answers: applied, already in that state, or invalid."""

from __future__ import annotations

from enum import Enum


class Outcome(Enum):
    APPLIED = "applied"
    ALREADY = "already"
    INVALID = "invalid"
