"""The attacker's view of job mounts on either backend: a mount path that would be made through
another volume, i.e. inside a share rather than in the job's own mount root, and a backend's own
share named in a job.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.backends.links import LinkSigner
from services.backends.local import LocalShare
from services.core.clock import SystemClock
from services.core.errors import SpecError, UserError
from services.jobs.service import JobRequest, JobService
from services.jobs.sources import ConfigLoader
from services.jobspec import load_job_spec
from services.models import Actor, ConfigSource
from services.store import SqlStore
from tests.contract import job_json

ACCOUNT = "https://acct.file.core.windows.net"


def nested(outer: str, inner: str) -> str:
    volumes = [
        {"azureFileUrl": f"{ACCOUNT}/data", "relativeMountPath": outer},
        {"azureFileUrl": f"{ACCOUNT}/other", "relativeMountPath": inner},
    ]
    return json.dumps(job_json(extra={"mountVolumes": {"azureFileShares": volumes}}))


@pytest.mark.parametrize(("outer", "inner"), [("a", "a/evil"), ("a/b", "a/b/c/d"), ("x/", "x/y")])
def test_a_volume_mounted_inside_another_is_refused(outer: str, inner: str) -> None:
    # Both backends would make the inner link through the outer one: into the share (where the
    # local backend's relative link then points outside the data dir), as root on a node.
    with pytest.raises(SpecError, match="inside volume") as err:
        load_job_spec(nested(outer, inner))
    assert "\n" not in str(err.value)


def test_volumes_side_by_side_are_still_fine() -> None:
    spec = load_job_spec(nested("a", "ab"))
    assert spec.properties.mount_volumes is not None


async def test_a_job_json_mounting_a_reserved_share_is_refused_at_submit(
    tmp_path: Path, store: SqlStore
) -> None:
    # The backend refuses it again at launch; refusing at submit means no job row, no approval
    # request and no money committed for a job that could never start.
    jobs = JobService(
        store=store,
        share=LocalShare(tmp_path, LinkSigner(b"s" * 32, "http://127.0.0.1:1/files")),
        clock=SystemClock(),
        configs=ConfigLoader(tmp_path),
        resource_group="rg",
        workspace="ws",
        reserved_shares=frozenset({"batchai-bot"}),
    )
    volumes = [{"azureFileUrl": f"{ACCOUNT}/batchai-bot/", "relativeMountPath": "loot"}]
    text = json.dumps(job_json(extra={"mountVolumes": {"azureFileShares": volumes}}))
    request = JobRequest("loot", "c1", ConfigSource("inline", text))
    with pytest.raises(UserError, match="control share") as err:
        await jobs.create_job(request, actor=Actor("U0MALLORY", None))
    assert "\n" not in str(err.value)
    assert await store.list_jobs(include_deleted=True) == []
