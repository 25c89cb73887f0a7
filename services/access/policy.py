"""Who may use the bot where: team, channel and user allow-lists and the admin list (pure)."""

from __future__ import annotations

from dataclasses import dataclass

FOREIGN_TEAM = "this bot serves only its own Slack workspace"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class Origin:
    """The Slack workspaces a request names: the one it came through and the user's own (a
    Slack Connect user carries theirs), and their Enterprise Grid orgs. Empty from the console."""

    teams: frozenset[str] = frozenset()
    enterprises: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AccessPolicy:
    """Empty allow-lists allow everyone; admins may always act, anywhere (in their workspace).

    Destructive commands (cluster delete, resize, auto-scale) need an admin when an admin list is
    configured; acting on another person's job is checked by the job service with `is_admin`.
    `teams` holds workspace ids (T…) and Grid org ids (E…, admitting each of its workspaces)."""

    channels: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()
    orgs: frozenset[str] = frozenset()  # the Grid org of the bot's own workspace (auth.test)

    def is_admin(self, user: str) -> bool:
        return user in self.admins if self.admins else True

    def check_origin(self, origin: Origin) -> Decision:
        """Every workspace the request names must be allowed, and every Grid org it names must be
        allowed or be the bot's own; or else the whole org is allowed. (No workspace named: the
        console.)"""
        if not self.teams or not (origin.teams or origin.enterprises):
            return Decision(True)
        if origin.enterprises and origin.enterprises <= self.teams:
            return Decision(True)
        known_orgs = self.teams | self.orgs
        if origin.teams and origin.teams <= self.teams and origin.enterprises <= known_orgs:
            return Decision(True)
        return Decision(False, FOREIGN_TEAM)

    def check(self, *, user: str, channel: str | None, destructive: bool) -> Decision:
        """`channel` None: a modal or the Home tab, where only the user list applies."""
        if user in self.admins:
            return Decision(True)
        if self.users and user not in self.users:
            return Decision(False, "you are not on this bot's list of users; ask an admin")
        if self.channels and channel is not None and channel not in self.channels:
            return Decision(False, "this bot takes commands only in its configured channels")
        if destructive and self.admins:
            return Decision(False, "only an admin may do this")
        return Decision(True)
