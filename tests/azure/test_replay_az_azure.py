"""The old CLI's scenario flows of tests/test_replay_az.py, replayed through a real
`batchai-bot console` process with BATCHAI_BACKEND=azure against the fake ARM (TLS) and Files
servers: the same commands, the same `-o json` answers and JMESPath checks.

The process finds its credential as in production (DefaultAzureCredential: a managed-identity
endpoint, here the fake one) and every endpoint from its settings; the fake ARM's nodes run the
real node runner. The account the files' `<AZURE_BATCHAI_STORAGE_ACCOUNT>` names is the bot's own
storage account, the fake's.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

import tests.test_replay_az as flows
from tests.azure.rig import AzureRig, azure_rig, bot_azure_settings
from tests.fakes.identity import FakeIdentity
from tests.test_replay_az import Replay, replaying

pytestmark = pytest.mark.skipif(not flows.CLI_FILES.is_dir(), reason="../shared/corpus is not here")

# What the CLI's tests created with `az storage share/container create` before their flows, and
# where the fake nodes reach them (a link stands for the SMB mount; blobfuse2's stand-in makes a
# directory).
SHARE = "share"
CONTAINER = "container"
CLUSTER_MOUNTS = ("azfiles", "afs")


def _env(rig: AzureRig, identity: FakeIdentity) -> dict[str, str]:
    cfg = rig.config
    env = {k.upper(): str(v) for k, v in bot_azure_settings(rig).items()}
    env.update(
        AZURE_MOUNT_ROOT=cfg.mount_root,
        AZURE_CONTROL_MOUNT=cfg.control_mount,
        AZURE_JOB_TEMP_ROOT=cfg.job_temp_root,
        AZURE_SHARE_MOUNT_ROOT=cfg.share_mount_root,
        AZURE_NODE_PYTHON=sys.executable,
        AZURE_NODE_PATH=cfg.node_path,
        **identity.env,
    )
    return env


@pytest.fixture
async def rig() -> AsyncIterator[AzureRig]:
    # Jobs run as a uid of their own (AZURE_JOB_GID's group, as in production), so the nodes'
    # paths are not below pytest's temp root, which is 0700 (a real node's /mnt is open).
    base = Path(tempfile.mkdtemp(prefix="batchai-replay-"))
    base.chmod(0o711)
    try:
        async with azure_rig(base) as r:
            yield r
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def az(tmp_path: Path, rig: AzureRig) -> AsyncIterator[Replay]:
    for path in CLUSTER_MOUNTS:
        rig.mount(SHARE, path)
    shares = Path(rig.config.share_mount_root)  # job-level mounts of the share, once per node
    (shares / SHARE).symlink_to(rig.files.create_share(SHARE), target_is_directory=True)
    # the nodes' blobfuse2 mount of the container (job-level: once per node) is its directory
    (shares / f"blob-{CONTAINER}").symlink_to(
        rig.files.create_container(CONTAINER), target_is_directory=True
    )
    async with FakeIdentity() as identity:
        async with replaying(
            tmp_path / "replay", _env(rig, identity), account=rig.files.account
        ) as replay:
            yield replay
        assert identity.calls and not identity.refused  # it did sign in, the production way


Flow = Callable[[Replay], Awaitable[None]]
FLOWS = [
    pytest.param(flows.test_2017_manual_scale_scenario, id="2017 manual scale"),
    pytest.param(flows.test_2017_auto_scale_scenario, id="2017 auto scale"),
    pytest.param(
        flows.test_2017_file_server_and_share_from_files, id="2017 file server and share from files"
    ),
    pytest.param(flows.test_2017_configless_cluster_and_file_server, id="2017 config-less nfs"),
    pytest.param(flows.test_2018_manual_scale_scenario, id="2018 manual scale"),
    pytest.param(flows.test_2018_auto_scale_scenario, id="2018 auto scale"),
    pytest.param(
        flows.test_2018_cluster_with_file_systems_from_a_file_and_flags,
        id="2018 file systems from a file and flags",
    ),
    pytest.param(
        flows.test_2018_config_less_cluster_with_file_systems, id="2018 config-less file systems"
    ),
    pytest.param(
        flows.test_2018_cluster_with_auto_storage_and_a_setup_task,
        id="2018 auto storage and a setup task",
    ),
    pytest.param(flows.test_2018_job_level_mounting_scenario, id="2018 job-level mounts"),
    pytest.param(flows.test_usages, id="usages"),
]


@pytest.mark.parametrize("flow", FLOWS)
async def test_the_old_clis_flow_passes_on_azure(az: Replay, flow: Flow) -> None:
    await flow(az)


async def test_a_blob_output_is_listed_from_the_container_and_linked_by_a_blob_sas(
    az: Replay, rig: AzureRig
) -> None:
    """The job-level flow's OUTPUT is on the blob container: what the job wrote through its
    blobfuse2 mount is a blob, listed by the Blob API, and its link is a read-only blob SAS
    for that one blob that fetches the bytes."""
    ws, exp = flows.WS, flows.EXP
    await az.az("batchai workspace create -g rg -n workspace -o json")
    await az.az(
        f"batchai cluster create {ws} -n cluster -f {az.file('simple_cluster.json')} "
        f"-u DemoUser -k {az.file('key.txt')} -o json"
    )
    await az.az(f"batchai experiment create {ws} -n experiment -o json")
    await az.az(
        f"batchai job create -c cluster {exp} -n job -f {az.file('job_with_file_systems.json')} "
        "-o json"
    )
    await az.run(f"batchai job wait {exp} -n job")
    listed = rig.files.ops["ListBlobs"]
    outputs = await az.az(f"batchai job file list {exp} -j job -d OUTPUT -o json")
    assert rig.files.ops["ListBlobs"] > listed  # from the container, not a share
    assert [(f["name"], f["contentLength"]) for f in outputs] == [("result.txt", 3)]
    written = list(rig.files.container_dir(CONTAINER).rglob("result.txt"))
    assert len(written) == 1 and written[0].read_text() == "hi\n"
    url = outputs[0]["downloadUrl"]
    query = parse_qs(urlsplit(url).query)
    assert query["sr"] == ["b"] and query["sp"] == ["r"], url
    async with aiohttp.ClientSession() as http, http.get(url) as got:
        assert got.status == 200 and await got.read() == b"hi\n"
