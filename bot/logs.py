"""Logging, configured in one place: text or one JSON object per line, context fields added,
secrets masked on every handler."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from bot.config import Settings
from bot.console import redact as redact_flags
from services.core import context

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"
NOISY = ("apscheduler", "alembic", "aiohttp.access")
MASK = "****"

_PATTERNS = (
    # Slack tokens: bot, user, app-level, refresh, config (xoxb-, xoxp-, xapp-, xoxe.xoxp-…)
    re.compile(r"\b(?:xox[a-z]?|xapp)(?:\.[a-z]+)?-[A-Za-z0-9-]+"),
    re.compile(r"(?i)(?<=\bsig=)[^&\s\"'<>]+"),  # the signature of a SAS
    re.compile(r"(?i)(?<=AccountKey=)[^;\s\"'<>]+"),  # storage connection strings
    re.compile(r"(?i)(?<=\bBearer )[A-Za-z0-9._~+/=-]+"),  # Authorization headers
    re.compile(r"(?i)(?<=[\"']password[\"']: [\"'])[^\"']+"),  # a password in a dumped dict
)


class Redactor:
    """Masks secrets in text: the configured ones verbatim, and anything shaped like one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(MASK, text)
        return redact_flags(text)


class RedactFilter(logging.Filter):
    """Renders the message and its traceback once, masked, before any handler formats it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_batchai_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call must not raise in the code that logged
            message = f"{record.msg} {record.args!r}"
        record.msg = self._redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        record._batchai_redacted = True
        return True


class ContextFilter(logging.Filter):
    """Adds the correlation id, job, user and command of the work that logs (core.context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = context.current()
        for name in context.FIELDS:
            if not hasattr(record, name):
                setattr(record, name, fields.get(name))
        known = {n: getattr(record, n) for n in context.FIELDS if getattr(record, n) is not None}
        record.context = (
            (" [" + " ".join(f"{k}={v}" for k, v in known.items()) + "]") if known else ""
        )
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, exc, and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        for name in context.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold, to be masked wherever it turns up."""
    found = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            found.append(str(value.get_secret_value()))
    return found


def configure(settings: Settings, *, stream: TextIO | None = None) -> logging.Handler:
    """The bot's one logging set-up (LOG_LEVEL, LOG_FORMAT); returns the handler it installed."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter(Redactor(secrets_of(settings))))
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # A busy tick makes APScheduler skip the next one, with a warning each time: that is the
    # intended back-pressure, not news.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    return handler
