"""A length of time as people write it: `45 s`, `10 min`, `2 h 30 min`, `7 days` (not `0.17 h`)."""

from __future__ import annotations

from datetime import timedelta


def say_span(delta: timedelta) -> str:
    """Seconds under a minute, else whole minutes grouped into days and hours."""
    seconds = max(0, round(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} day" + ("s" if days > 1 else "")] if days else []
    parts += [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes else []
    return " ".join(parts)
