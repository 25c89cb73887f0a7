"""Registry credentials on the local backend: `docker login --password-stdin` into the job's own
docker config when a docker engine answers (the fake docker CLI, a listening socket), one note
saying they need the docker runtime when none does."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.backends.local import LocalBackend
from services.core.errors import UserError
from tests.contract import cluster, job_spec, launch_request
from tests.fakes.arm.node import SHIM_DIR

PASSWORD = "Loc4l-Reg-Pa55"


def registry(**creds: Any) -> dict[str, Any]:
    return {
        "containerSettings": {
            "imageSourceRegistry": {
                "serverUrl": "myregistry.azurecr.io",
                "image": "myregistry.azurecr.io/train:1",
                "credentials": {"username": "puller", **creds},
            }
        }
    }


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A docker engine that answers: the fake CLI on PATH, a socket listening at DOCKER_HOST."""
    sock_path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(sock_path))
        sock.listen(8)
        monkeypatch.setenv("PATH", f"{SHIM_DIR}:/usr/bin:/bin")
        monkeypatch.setenv("DOCKER_HOST", f"unix://{sock_path}")
        yield sock_path


async def test_credentials_log_the_jobs_own_docker_config_in(tmp_path: Path, engine: Path) -> None:
    backend = LocalBackend(tmp_path / "data", grace_seconds=0.5)
    c = cluster("c1", nodes=1)
    await backend.create_cluster(c)
    request = launch_request(job_spec("ok", extra=registry(password=PASSWORD)), c)
    await backend.start_job(request)
    [record] = (tmp_path / "data").rglob("logins.jsonl")  # the CLI ran in the job's config dir
    [login] = [json.loads(line) for line in record.read_text().splitlines()]
    assert login["argv"] == ["--username", "puller", "--password-stdin", "myregistry.azurecr.io"]
    assert login["password"] == PASSWORD and login["stdin_mode"] == 0o600
    config = Path(login["docker_config"])
    assert config.is_relative_to(tmp_path / "data") and not (config / "registry-password").exists()
    spec = json.loads((config.parent / "node-0.json").read_text())
    assert all(p["env"]["DOCKER_CONFIG"] == str(config) for p in spec["processes"])
    await backend.terminate_job(request.job_id)


async def test_without_docker_the_credentials_get_one_note(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "data", grace_seconds=0.5, containers=False)
    c = cluster("c1", nodes=1)
    await backend.create_cluster(c)
    request = launch_request(job_spec("ok", extra=registry(password=PASSWORD)), c)
    result = await backend.start_job(request)
    assert (
        "registry credentials for myregistry.azurecr.io need the docker runtime; not used here"
        in result.notes
    )
    await backend.terminate_job(request.job_id)


async def test_a_refused_login_fails_the_start_in_one_line(
    tmp_path: Path, engine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        "#!/bin/sh\n"
        'echo "Error response from daemon: Get \\"https://myregistry.azurecr.io/v2/\\": '
        'unauthorized: authentication required" >&2\nexit 1\n'
    )
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    backend = LocalBackend(tmp_path / "data", grace_seconds=0.5)
    c = cluster("c1", nodes=1)
    await backend.create_cluster(c)
    request = launch_request(job_spec("ok", extra=registry(password=PASSWORD)), c)
    with pytest.raises(UserError, match="^docker login to myregistry.azurecr.io as puller failed: "
                       "Error response from daemon: .*unauthorized"):  # fmt: skip
        await backend.start_job(request)
    assert not list((tmp_path / "data").rglob("registry-password"))
