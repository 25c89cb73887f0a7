"""The project's error tree: every failure a user or operator can see is one of these."""

from __future__ import annotations


class BatchAIError(Exception):
    """Root of the tree. `str(err)` is a one-line message safe to show a user."""


class UserError(BatchAIError):
    """The request was wrong: bad flags, a bad job.json, a name that does not fit the rules.

    `usage` optionally carries the usage text of the command that was misused.
    """

    def __init__(self, message: str, *, usage: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class SpecError(UserError):
    """A job.json or cluster.json that cannot be loaded; says line:column or the JSON path."""


class NotAllowed(BatchAIError):
    """The caller may not do this (not an admin, not the owner, not an approver)."""


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
