"""The project's error tree: every failure a user or operator can see is one of these."""

from __future__ import annotations


class BatchAIError(Exception):
    """Root of the tree. `str(err)` is a one-line message safe to show a user."""


class UserError(BatchAIError):
    """The request was wrong: bad flags, a bad job.json, a name that does not fit the rules.

    `usage` optionally carries the usage text of the command that was misused; `field` names
    the request's field that was wrong ("node_count", "cluster", ...), so a form marks that
    input without reading the message.
    """

    def __init__(self, message: str, *, usage: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage
        self.field = field


class SpecError(UserError):
    """A job.json or cluster.json that cannot be loaded; says line:column or the JSON path."""


class NotAllowed(BatchAIError):
    """The caller may not do this (not an admin, not the owner, not an approver)."""


class NotOwner(NotAllowed):
    """Only `owner` (a user id) or an admin may do `action` ("stop job train1"); the handler
    names the owner as a mention, the message here stays plain text."""

    def __init__(self, owner: str, action: str) -> None:
        super().__init__(f"only {owner} or an admin may {action}")
        self.owner = owner
        self.action = action


class NotFound(BatchAIError):
    """The named cluster, job, file or directory does not exist."""


class Conflict(BatchAIError):
    """The thing exists already or is in a state that forbids the request."""


class BackendError(BatchAIError):
    """The compute backend or the file share failed."""


class TransientError(BackendError):
    """Worth retrying later: throttled, timed out, 5xx. `retry_after` is in seconds when known."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaError(BackendError):
    """Not enough quota or capacity for the requested size."""
