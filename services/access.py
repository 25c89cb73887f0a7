"""Who may use the bot where: channel and user allow-lists and the admin list (pure policy)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class AccessPolicy:
    """Empty allow-lists allow everyone; admins may always act, anywhere.

    Destructive commands (cluster delete, resize, auto-scale) need an admin when an admin list is
    configured; acting on another person's job is checked by the job service with `is_admin`."""

    channels: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()

    def is_admin(self, user: str) -> bool:
        return user in self.admins if self.admins else True

    def check(self, *, user: str, channel: str | None, destructive: bool) -> Decision:
        if user in self.admins:
            return Decision(True)
        if self.users and user not in self.users:
            return Decision(False, "you are not on this bot's list of users; ask an admin")
        if self.channels and channel not in self.channels:
            return Decision(False, "this bot takes commands only in its configured channels")
        if destructive and self.admins:
            return Decision(False, "only an admin may do this")
        return Decision(True)
