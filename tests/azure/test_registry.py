"""Private container registries: job.json's imageSourceRegistry.credentials log the node in with
`docker login --password-stdin` from a root-only file; Key Vault references are read with the
bot's credential from a (fake, TLS) vault; the password is in no script, argv, file or log."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.backends.azure import node
from services.backends.azure.backend import AzureBackend
from services.backends.azure.files import AzureShare
from services.backends.azure.keyvault import KeyVaultSecrets
from services.core.errors import UserError
from services.jobspec import load_job_spec
from tests.azure.rig import AzureRig
from tests.azure.test_compute import gpu_cluster
from tests.contract import cluster, job_json, job_spec, launch_request, log_loc, read_text, wait_for
from tests.fakes.keyvault import FakeKeyVault

PASSWORD = "Reg1stry-Pa55word-x9Q"
SERVER = "myregistry.azurecr.io"


@pytest.fixture
async def vault() -> AsyncIterator[FakeKeyVault]:
    async with FakeKeyVault() as kv:
        yield kv


@pytest.fixture
async def kv_backend(
    rig: AzureRig, share: AzureShare, vault: FakeKeyVault
) -> AsyncIterator[AzureBackend]:
    secrets = KeyVaultSecrets(rig.config, rig.credential, transport=vault.transport())
    b = AzureBackend(rig.config, credential=rig.credential, share=share, key_vault=secrets)
    yield b
    await b.aclose()


def registry(credentials: dict[str, Any]) -> dict[str, Any]:
    return {
        "containerSettings": {
            "imageSourceRegistry": {
                "serverUrl": SERVER,
                "image": f"{SERVER}/team/train:1.0",
                "credentials": {"username": "team-puller", **credentials},
            }
        }
    }


def logins(rig: AzureRig) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted((rig.root / "nodes").rglob("logins.jsonl"))
        for line in f.read_text().splitlines()
    ]


def files_holding(root: Path, needle: str) -> list[str]:
    """Every file below `root` whose bytes contain `needle`, but the fake registry's record."""
    found = []
    for path in root.rglob("*"):
        if (
            path.is_file()
            and not path.is_symlink()
            and path.name != "logins.jsonl"
            and needle.encode() in path.read_bytes()
        ):
            found.append(str(path.relative_to(root)))
    return found


def run_command_bodies(rig: AzureRig) -> list[str]:
    """What ARM shows of every run command (its GET view keeps no protected parameter)."""
    return [
        json.dumps({k: v for k, v in rc.properties.items() if k != "protectedParameters"})
        for ss in rig.arm.scale_sets.values()
        for inst in ss.instances.values()
        for rc in inst.run_commands.values()
    ]


def scripts_run(rig: AzureRig) -> list[str]:
    """Every script the fake nodes' agents ran (run commands and extensions)."""
    return [p.read_text() for p in sorted((rig.root / "nodes").rglob("script.sh"))]


async def test_a_literal_registry_password_logs_the_node_in_and_appears_nowhere(
    rig: AzureRig, backend: AzureBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c = gpu_cluster("reg", "Standard_NC4as_T4_v3", 1)
    await backend.create_cluster(c)
    request = launch_request(job_spec("ok", extra=registry({"password": PASSWORD})), c)
    await backend.start_job(request)
    bodies = run_command_bodies(rig)
    assert (await wait_for(backend, request.job_id)).exit_code == 0
    [login] = logins(rig)
    assert login["password"] == PASSWORD  # delivered on stdin ...
    assert login["stdin_mode"] == 0o600  # ... from a root-only file
    assert login["argv"] == ["--username", "team-puller", "--password-stdin", SERVER]
    assert login["docker_config"].endswith(f"{node.docker_config(request.job_id, 0)}")
    assert bodies and all(PASSWORD not in b for b in bodies)
    scripts = scripts_run(rig)
    assert any("docker login --username team-puller --password-stdin" in s for s in scripts)
    assert all(PASSWORD not in s for s in scripts)
    assert files_holding(rig.root, PASSWORD) == []  # no script, no left-over password file
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


async def test_a_key_vault_reference_is_read_with_the_bots_credential(
    rig: AzureRig, kv_backend: AzureBackend, vault: FakeKeyVault
) -> None:
    url = vault.put("teamvault", "registry-password", PASSWORD)
    ref = {"sourceVault": {"id": vault.vault_id("teamvault")}, "secretUrl": url}
    c = gpu_cluster("kvreg", "Standard_NC4as_T4_v3", 1)
    await kv_backend.create_cluster(c)
    request = launch_request(job_spec("ok", extra=registry({"passwordSecretReference": ref})), c)
    result = await kv_backend.start_job(request)
    assert (await wait_for(kv_backend, request.job_id)).exit_code == 0
    assert [login["password"] for login in logins(rig)] == [PASSWORD]
    assert not any("Key Vault" in n for n in result.notes)  # resolved: no "cannot resolve" note
    assert [(c.host, c.authorized, c.status) for c in vault.calls] == [
        ("teamvault.vault.azure.net", False, 401),  # the challenge
        ("teamvault.vault.azure.net", True, 200),
    ]
    assert files_holding(rig.root, PASSWORD) == []


async def test_a_wrong_secret_refuses_the_job_in_one_line_with_nothing_started(
    rig: AzureRig, kv_backend: AzureBackend, vault: FakeKeyVault
) -> None:
    vault.put("teamvault", "registry-password", PASSWORD)
    ref = {
        "sourceVault": {"id": vault.vault_id("teamvault")},
        "secretUrl": "https://teamvault.vault.azure.net/secrets/registry-passwd",
    }
    c = gpu_cluster("kvbad", "Standard_NC4as_T4_v3", 1)
    await kv_backend.create_cluster(c)
    mark = rig.arm.mark()
    request = launch_request(job_spec("ok", extra=registry({"passwordSecretReference": ref})), c)
    with pytest.raises(UserError) as caught:
        await kv_backend.start_job(request)
    assert str(caught.value) == (
        "the registry password: Key Vault secret "
        "https://teamvault.vault.azure.net/secrets/registry-passwd was not found in the vault"
    )
    assert not [r for r in rig.arm.since(mark) if "runCommands" in r.path and r.method == "PUT"]
    assert logins(rig) == []


@pytest.mark.parametrize(
    ("secret_url", "vault_name", "why"),
    [
        ("https://evil.example.com/secrets/pw", "evil", "is not a Key Vault secret URL"),
        ("http://teamvault.vault.azure.net/secrets/pw", "teamvault", "is not a Key Vault"),
        ("https://teamvault.vault.azure.net/secrets/pw", "othervault", "does not name the vault"),
    ],
)
async def test_a_secret_url_outside_the_clouds_vaults_gets_no_token(
    rig: AzureRig, kv_backend: AzureBackend, vault: FakeKeyVault, secret_url: str,
    vault_name: str, why: str,
) -> None:  # fmt: skip
    ref = {"sourceVault": {"id": vault.vault_id(vault_name)}, "secretUrl": secret_url}
    c = gpu_cluster("kvevil", "Standard_NC4as_T4_v3", 1)
    request = launch_request(job_spec("ok", extra=registry({"passwordSecretReference": ref})), c)
    with pytest.raises(UserError, match=why):
        await kv_backend.start_job(request)
    assert vault.calls == [] and rig.credential.calls == 0


@pytest.mark.parametrize("field", ["serverUrl", "username"])
async def test_a_server_or_user_that_docker_would_read_as_an_option_is_refused(
    rig: AzureRig, backend: AzureBackend, field: str
) -> None:
    extra = registry({"password": PASSWORD})
    reg = extra["containerSettings"]["imageSourceRegistry"]
    if field == "serverUrl":
        reg["serverUrl"] = "--config=/tmp"
    else:
        reg["credentials"]["username"] = "a b"
    c = gpu_cluster("regbad", "Standard_NC4as_T4_v3", 1)
    with pytest.raises(UserError, match="must be one word"):
        await backend.start_job(launch_request(job_spec("ok", extra=extra), c))


def test_a_failed_login_removes_the_password_file_and_starts_nothing(tmp_path: Path) -> None:
    bin_dir, here = tmp_path / "bin", tmp_path / "launch"
    bin_dir.mkdir()
    here.mkdir()
    for tool in ("rm", "printf"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "docker").write_text(
        '#!/bin/bash\nstat -L -c %a /dev/stdin > "$0.mode"; echo "unauthorized" >&2; exit 1\n'
    )
    (bin_dir / "docker").chmod(0o755)
    found = shutil.which("stat")
    assert found is not None
    (bin_dir / "stat").symlink_to(found)
    lines = node.registry_login_lines(str(here), str(here / "docker"), SERVER, "team-puller")
    proc = subprocess.run(
        ["/bin/bash", "-c", "\n".join(["set -eu", "umask 077", *lines, "echo started"])],
        env={"PATH": str(bin_dir), node.REGISTRY_PARAMETER: PASSWORD},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 4 and "started" not in proc.stdout
    assert proc.stderr.splitlines()[-1] == (
        f"batchai: docker login to {SERVER} as team-puller failed; nothing was started"
    )
    assert (bin_dir / "docker.mode").read_text().strip() == "600"
    assert list(here.iterdir()) == []  # the password file is gone
    assert PASSWORD not in "\n".join(lines)


async def test_a_job_secret_from_key_vault_reaches_the_job_and_nothing_else(
    rig: AzureRig, kv_backend: AzureBackend, vault: FakeKeyVault, share: AzureShare
) -> None:
    url = vault.put("teamvault", "team-token", PASSWORD)
    ref = {"sourceVault": {"id": vault.vault_id("teamvault")}, "secretUrl": url}
    raw = job_json()
    del raw["properties"]["pyTorchSettings"]
    raw["properties"].update(
        {
            "customToolkitSettings": {"commandLine": 'printf %s "$TEAM_TOKEN" | sha256sum'},
            "secrets": [{"name": "TEAM_TOKEN", "valueSecretReference": ref}],
        }
    )
    c = cluster("kvsecret", nodes=1)
    await kv_backend.create_cluster(c)
    request = launch_request(load_job_spec(json.dumps(raw)), c)
    result = await kv_backend.start_job(request)
    assert not any("Key Vault" in n for n in result.notes)  # resolved: no "cannot resolve" note
    assert (await wait_for(kv_backend, request.job_id)).exit_code == 0
    out = await read_text(share, log_loc(result, "stdout.txt"))
    assert hashlib.sha256(PASSWORD.encode()).hexdigest() in out
    assert PASSWORD not in out
    assert all(PASSWORD not in b for b in run_command_bodies(rig))
    assert all(PASSWORD not in s for s in scripts_run(rig))
    assert files_holding(rig.root, PASSWORD) == []


async def test_a_job_secret_that_cannot_be_read_refuses_the_job_with_nothing_started(
    rig: AzureRig, kv_backend: AzureBackend, vault: FakeKeyVault
) -> None:
    ref = {
        "sourceVault": {"id": vault.vault_id("teamvault")},
        "secretUrl": "https://teamvault.vault.azure.net/secrets/missing",
    }
    c = cluster("kvsecret2", nodes=1)
    await kv_backend.create_cluster(c)
    mark = rig.arm.mark()
    request = launch_request(
        job_spec("ok", extra={"secrets": [{"name": "TOKEN", "valueSecretReference": ref}]}), c
    )
    with pytest.raises(UserError, match="secret 'TOKEN': Key Vault secret .* was not found"):
        await kv_backend.start_job(request)
    assert not [r for r in rig.arm.since(mark) if "runCommands" in r.path and r.method == "PUT"]


async def test_a_private_image_in_the_nodes_cache_runs_only_for_a_job_the_registry_lets_pull_it(
    rig: AzureRig, backend: AzureBackend, tmp_path: Path
) -> None:
    """Job A pulls a private image with its login; on the same node, job B names that image
    without a login and job C with a wrong password: the node asks the registry again for each,
    so neither runs A's image from the cache. A public image needs no login."""
    accepted = tmp_path / "registries.json"
    accepted.write_text(json.dumps({SERVER: {"team-puller": PASSWORD}}))
    rig.arm.node_env["FAKE_REGISTRIES"] = str(accepted)
    c = gpu_cluster("priv", "Standard_NC4as_T4_v3", 1)
    await backend.create_cluster(c)
    image = f"{SERVER}/team/train:1.0"
    a = launch_request(job_spec("ok", extra=registry({"password": PASSWORD})), c)
    await backend.start_job(a)
    assert (await wait_for(backend, a.job_id)).exit_code == 0

    no_login = {"containerSettings": {"imageSourceRegistry": {"image": image}}}
    wrong = registry({"password": "not-the-password"})
    for extra, said in (
        (no_login, f"batchai: {image} is a private image another job pulled on this node"),
        (wrong, f"batchai: docker pull of {image} with the job registry login failed"),
    ):
        request = launch_request(job_spec("ok", extra=extra), c)
        await backend.start_job(request)
        status = await wait_for(backend, request.job_id)
        assert status.exit_code != 0, status
        assert said in (status.detail or ""), status

    public = {"containerSettings": {"imageSourceRegistry": {"image": "ubuntu:22.04"}}}
    d = launch_request(job_spec("ok", extra=public), c)
    await backend.start_job(d)
    assert (await wait_for(backend, d.job_id)).exit_code == 0
