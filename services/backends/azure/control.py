"""The bot's control share (`AZURE_SHARE`): the node runner, each job's launch and end records
(sealed with an HMAC, refused if altered) and the runner's status files, under `.batchai/`.

Run commands write here when they launch a job, the status poll reads here; the jobs a poll has
learned about are kept in `ControlRecords.jobs`, so a cycle reads a finished job's record once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.backends.azure.config import AzureConfig
from services.backends.noderun.launch import from_epoch, layout_from_json
from services.core.errors import BackendError, NotFound, UserError
from services.core.ports import FileShare, LaunchResult, RunStatus
from services.models import FileEntry, FileLocation

CONTROL_DIR = ".batchai"  # on the bot's share: the node runner, launch records, status files


class ControlShare(FileShare, Protocol):
    """The FileShare port plus the writes the backend needs on its own share."""

    async def write_file(self, loc: FileLocation, data: bytes) -> None: ...

    async def delete_tree(self, loc: FileLocation) -> int: ...
    async def ensure_share(self, share: str | None = None) -> None: ...


def refuse_control_share(share: str, control: str, where: str) -> None:
    """The bot's own share is never a job's: one line that says so."""
    if share == control:
        raise UserError(
            f"{where}: share {share} is the bot's control share (AZURE_SHARE), which holds every "
            "job's launch records and status; mount another share"
        )


@dataclass
class JobInfo:
    """What start_job recorded (`launch.json`), plus what polls learned and keep."""

    job_id: str
    cluster: str
    instances: list[str]
    result: LaunchResult
    launched_at: float
    # The job's own id (LaunchRequest.uuid), the same for every attempt while `job_id` is the
    # attempt's run id: the uid its processes run as and its temp dir's owner derive from it.
    uuid: str
    spot: bool = False
    started: dict[int, float] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)
    final: RunStatus | None = None
    cleaned: bool = False
    terminated: bool = False


def status_json(status: RunStatus, cleaned: bool) -> dict[str, Any]:
    def ts(value: datetime | None) -> float | None:
        return None if value is None else value.timestamp()

    return {
        "phase": status.phase,
        "exit_code": status.exit_code,
        "detail": status.detail,
        "started": ts(status.started_at),
        "ended": ts(status.ended_at),
        "cleaned": cleaned,
        "retryable": status.retryable,
    }


def status_from_json(raw: Mapping[str, Any]) -> RunStatus:
    return RunStatus(
        phase=raw["phase"],
        exit_code=raw["exit_code"],
        detail=raw["detail"],
        started_at=from_epoch(raw["started"]),
        ended_at=from_epoch(raw["ended"]),
        retryable=bool(raw.get("retryable")),
    )


class ControlRecords:
    """Paths on the control share (as the bot and as a node see them) and the records there."""

    def __init__(self, config: AzureConfig, share: ControlShare) -> None:
        self._config = config
        self.share = share
        self.jobs: dict[str, JobInfo] = {}
        self._seal_key = hmac.new(
            config.storage_key.encode(), b"batchai-bot control records", hashlib.sha256
        ).digest()

    def loc(self, *parts: str) -> FileLocation:
        return FileLocation(self._config.share, "/".join((CONTROL_DIR, *parts)))

    def node_path(self, *parts: str) -> str:
        return "/".join((self._config.control_mount.rstrip("/"), CONTROL_DIR, *parts))

    async def write(self, loc: FileLocation, text: str) -> None:
        await self.share.write_file(loc, text.encode())

    def seal(self, record: Mapping[str, Any]) -> str:
        """A record of the bot's on the share, with an HMAC that only the key's holders make."""
        body = json.dumps(record, sort_keys=True)
        mac = hmac.new(self._seal_key, body.encode(), hashlib.sha256).hexdigest()
        return json.dumps({"record": body, "hmac": mac})

    def unseal(self, text: str, what: str) -> dict[str, Any]:
        """The record `seal` wrote; a BackendError (never a use) when it was altered."""
        try:
            outer = json.loads(text)
            body, mac = str(outer["record"]), str(outer["hmac"])
        except (ValueError, KeyError, TypeError):
            body, mac = "", ""
        good = hmac.new(self._seal_key, body.encode(), hashlib.sha256).hexdigest()
        if not mac or not hmac.compare_digest(mac, good):
            raise BackendError(f"{what} on the bot's share was altered; it is not used")
        record: dict[str, Any] = json.loads(body)
        return record

    async def read(self, loc: FileLocation) -> str | None:
        try:
            entry = await self.share.stat(loc)
            if entry is None or entry.is_directory:
                return None
            return (await self.share.read_range(loc, 0, max(entry.size, 1))).decode().strip()
        except NotFound:
            return None

    async def load(self, job_id: str) -> JobInfo | None:
        """What start_job stored for `job_id` (read once, then kept), or None."""
        if job_id in self.jobs:
            return self.jobs[job_id]
        if not re.fullmatch(r"[-\w]{1,64}", job_id, re.ASCII):
            return None
        raw = await self.read(self.loc("jobs", job_id, "launch.json"))
        if raw is None:
            return None
        data = self.unseal(raw, f"the launch record of job {job_id}")
        job = JobInfo(
            job_id=job_id,
            cluster=data["cluster"],
            instances=list(data["instances"]),
            result=layout_from_json(data["result"]),
            launched_at=float(data["launched_at"]),
            spot=bool(data.get("spot")),
            uuid=str(data.get("uuid") or job_id),
        )
        final = await self.read(self.loc("jobs", job_id, "final.json"))
        if final is not None:
            stored = self.unseal(final, f"the end record of job {job_id}")
            job.final = status_from_json(stored)
            job.cleaned = bool(stored.get("cleaned"))
        self.jobs[job_id] = job
        return job

    async def node_files(self, job_id: str, index: int) -> dict[str, FileEntry]:
        try:
            entries = await self.share.list_files(self.loc("jobs", job_id, f"node-{index}"))
        except NotFound:
            return {}
        return {e.name: e for e in entries}
