"""Closest known names for a mistyped one: the "did you mean …?" of not-found answers."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(typed: str, known: Iterable[str], *, n: int = 3) -> str:
    """'; did you mean "a" or "b"?' for the known names close to `typed` (case-blind), else ''."""
    by_folded = {name.lower(): name for name in known}
    close = difflib.get_close_matches(typed.lower(), list(by_folded), n=n, cutoff=0.6)
    if not close:
        return ""
    quoted = [f'"{by_folded[name]}"' for name in close]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {listed}?"
