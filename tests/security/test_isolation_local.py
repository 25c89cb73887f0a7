"""The attacker's view of job mounts on either backend: a mount path that would be made through
another volume, i.e. inside a share rather than in the job's own mount root."""

from __future__ import annotations

import json

import pytest

from services.errors import SpecError
from services.jobspec import load_job_spec
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
