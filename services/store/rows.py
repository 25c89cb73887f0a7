"""Column types that turn domain values into rows and back, so no repository writes a mapper for
UTC datetimes, decimals or the small JSON values (conversation, layout, progress, mounts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, DateTime, Text, TypeDecorator
from sqlalchemy.engine import Dialect

from services.models import (
    Attempt,
    Conversation,
    FileLocation,
    JobLayout,
    Progress,
    ShareMount,
    location_from_json,
    location_json,
)


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and read back timezone-aware on every database (SQLite
    would keep the wall-clock digits of another zone and drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _utc(value)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SafeText(TypeDecorator[str]):
    """Text that PostgreSQL can store: it refuses NUL in text, so NUL is kept as U+FFFD, the
    same on every database (job output and typed text may hold one)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else safe_text(value)


def safe_text(value: str) -> str:
    """`value` as SafeText stores it (a value sealed before it is stored is made so first)."""
    return value.replace("\x00", "\ufffd")


class DecimalText(TypeDecorator[Decimal]):
    """Money and hours as decimal text: exact on SQLite and PostgreSQL, of any length (an
    hour count has 28 digits)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


class ConversationJson(TypeDecorator[Conversation]):
    """Where a job's or cluster's story is told, as {"channel", "thread", "user"}."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Conversation | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return {"channel": value.channel, "thread": value.thread, "user": value.user}

    def process_result_value(self, value: Any, dialect: Dialect) -> Conversation | None:
        if not value:
            return None
        return Conversation(value["channel"], value.get("thread"), value.get("user"))


class LayoutJson(TypeDecorator[JobLayout]):
    """Where a launched job writes: its stdouterr and output directories, its log files."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: JobLayout | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return {
            "stdouterr": _location_row(value.stdouterr),
            "outputs": {k: _location_row(v) for k, v in value.outputs.items()},
            "log_files": list(value.log_files),
            "primary_log": value.primary_log,
            "journals": [_location_row(j) for j in value.journals],
        }

    def process_result_value(self, value: Any, dialect: Dialect) -> JobLayout | None:
        if not value:
            return None
        outputs = {k: loc for k, v in value["outputs"].items() if (loc := _location(v))}
        return JobLayout(
            stdouterr=_location(value["stdouterr"]),
            outputs=outputs,
            log_files=tuple(value["log_files"]),
            primary_log=value["primary_log"],
            journals=tuple(j for raw in value.get("journals", ()) if (j := _location(raw))),
        )


def _location_row(x: FileLocation | None) -> dict[str, Any] | None:
    return None if x is None else location_json(x)


def _location(x: Any) -> FileLocation | None:
    return None if x is None else location_from_json(x)


class ProgressJson(TypeDecorator[Progress]):
    """A job's step counter, as {"current", "total"}."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Progress | None, dialect: Dialect) -> Any:
        return None if value is None else {"current": value.current, "total": value.total}

    def process_result_value(self, value: Any, dialect: Dialect) -> Progress | None:
        return None if value is None else Progress(value["current"], value["total"])


class MountsJson(TypeDecorator[tuple[ShareMount, ...]]):
    """A cluster's mounts, as a list of {"share", "mount_path", "kind"?, "account"?, "key"?}."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: tuple[ShareMount, ...] | None, dialect: Dialect) -> Any:
        return None if value is None else mounts_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[ShareMount, ...]:
        return mounts_from_json(value or ())


def mounts_json(mounts: Iterable[ShareMount]) -> list[dict[str, Any]]:
    """Mounts as stored; a key must be sealed by the repository before this."""
    rows = []
    for m in mounts:  # the afs defaults are left out: rows of older versions read the same
        row: dict[str, Any] = {"share": m.share, "mount_path": m.mount_path}
        if m.kind != "afs":
            row["kind"] = m.kind
        if m.account is not None:
            row["account"] = m.account
        if m.account_key is not None:
            row["key"] = m.account_key
        rows.append(row)
    return rows


def mounts_from_json(rows: Iterable[Mapping[str, Any]]) -> tuple[ShareMount, ...]:
    return tuple(
        ShareMount(
            m["share"], m["mount_path"], m.get("kind", "afs"), m.get("account"), m.get("key")
        )
        for m in rows
    )


class AttemptsJson(TypeDecorator[tuple[Attempt, ...]]):
    """A job's earlier attempts (lost nodes), oldest first; NULL for a job that had none."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: tuple[Attempt, ...] | None, dialect: Dialect) -> Any:
        if not value:
            return None
        return [
            {
                "number": a.number,
                "started_at": None if a.started_at is None else _iso(a.started_at),
                "ended_at": _iso(a.ended_at),
                "nodes": list(a.nodes),
                "reason": safe_text(a.reason),
                "usd": None if a.usd is None else str(a.usd),
                "logs": _location_row(a.logs),
            }
            for a in value
        ]

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[Attempt, ...]:
        return tuple(
            Attempt(
                number=int(a["number"]),
                started_at=_when(a.get("started_at")),
                ended_at=_when(a["ended_at"]) or datetime.now(UTC),
                nodes=tuple(a.get("nodes") or ()),
                reason=str(a.get("reason") or ""),
                usd=None if a.get("usd") is None else Decimal(a["usd"]),
                logs=_location(a.get("logs")),
            )
            for a in value or ()
        )


def _iso(value: datetime) -> str:
    return (
        value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    ).isoformat()


def _when(text: str | None) -> datetime | None:
    return None if text is None else _utc(datetime.fromisoformat(text))
