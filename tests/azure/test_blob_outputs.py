"""Job outputs in blob containers of the bot's storage account, on the Azure backend: where a node
path is (a share, a container, nowhere the bot can list), and AzureShare listing, reading and
linking container locations with the real azure-storage-blob clients against the fake storage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from services.backends.azure.control import ControlRecords
from services.backends.azure.files import AzureShare, FilesRetry
from services.backends.azure.jobplan import JobPlanner
from services.backends.noderun.launch import layout_from_json, layout_to_json, share_layout
from services.core.errors import NotAllowed, NotFound
from services.core.events import JobFinished, OutputFile, event_from_payload
from services.core.ports import LaunchResult
from services.jobspec.load import load_job_spec
from services.models import FileLocation, JobLayout, ShareMount
from services.store import SqlStore
from tests.azure.test_files import NO_PAUSE, config_for
from tests.conftest import make_cluster, make_job
from tests.fakes.azure_files import FakeAzureFiles

CONTAINER = "models"
ROOT = "/mnt/batch/tasks/shared/LS_root/mounts"


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[FakeAzureFiles]:
    async with FakeAzureFiles(tmp_path / "azure") as fake:
        fake.create_share("data")
        blobs = fake.create_container(CONTAINER)
        (blobs / "run1" / "ckpt").mkdir(parents=True)
        (blobs / "run1" / "model.pt").write_bytes(b"weights!")
        (blobs / "run1" / "ckpt" / "step-1.pt").write_bytes(b"s1")
        (blobs / "run1" / "empty.log").write_bytes(b"")
        (blobs / "other.txt").write_bytes(b"not ours")
        yield fake


@pytest.fixture
async def share(files: FakeAzureFiles) -> AsyncIterator[AzureShare]:
    async with AzureShare(config_for(files), retry_policy=FilesRetry(**NO_PAUSE)) as s:
        yield s


def planner(files: FakeAzureFiles, share: AzureShare) -> JobPlanner:
    config = config_for(files)
    return JobPlanner(config, ControlRecords(config, share))


RUN1 = FileLocation(CONTAINER, "run1", container=True)


async def test_a_container_folder_lists_one_level_or_all_of_it(share: AzureShare) -> None:
    top = await share.list_files(RUN1)
    assert [(e.name, e.is_directory, e.size) for e in top] == [
        ("ckpt", True, 0),
        ("empty.log", False, 0),
        ("model.pt", False, 8),
    ]
    everything = await share.list_files(RUN1, recursive=True)
    assert [(e.name, e.is_directory) for e in everything] == [
        ("ckpt", True),
        ("ckpt/step-1.pt", False),
        ("empty.log", False),
        ("model.pt", False),
    ]  # nothing of the blob beside the folder
    with pytest.raises(NotFound, match="no blob container 'gone'"):
        await share.list_files(FileLocation("gone", "", container=True))


async def test_stat_and_reads_of_blobs(share: AzureShare) -> None:
    model = RUN1.child("model.pt")
    assert model.container  # a child stays in its container
    entry = await share.stat(model)
    assert entry is not None and (entry.name, entry.is_directory, entry.size) == (
        "model.pt",
        False,
        8,
    )
    folder = await share.stat(RUN1.child("ckpt"))
    assert folder is not None and folder.is_directory
    assert await share.stat(RUN1.child("nothing")) is None
    assert await share.read_range(model, 2, 4) == b"ight"
    assert await share.read_range(model, 100, 4) == b""  # past the end
    assert await share.read_range(RUN1.child("empty.log"), 0, 10) == b""
    with pytest.raises(NotAllowed):
        await share.stat(FileLocation(CONTAINER, "run1/../../x", container=True))


async def test_a_link_is_a_read_only_sas_for_that_one_blob(
    share: AzureShare, files: FakeAzureFiles
) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=30)
    url = await share.get_download_url(RUN1.child("model.pt"), expires_at=expires)
    query = parse_qs(urlsplit(url).query)
    assert query["sr"] == ["b"] and query["sp"] == ["r"]
    assert 'filename="model.pt"' in query["rscd"][0]
    other = url.replace("run1/model.pt", "other.txt")
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as got:
            assert got.status == 200 and await got.read() == b"weights!"
        async with http.get(other) as refused:  # the SAS names one blob only
            assert refused.status == 403
        async with http.put(url, data=b"overwrite") as write:
            assert write.status == 403
    # the Files-only calls refuse a container location instead of using a share of its name
    with pytest.raises(NotAllowed, match="blob container"):
        await share.write_file(RUN1.child("x"), b"x")
    with pytest.raises(NotAllowed, match="blob container"):
        await share.read_tail(RUN1.child("model.pt"), 0, 10)


async def test_a_node_path_is_on_a_share_a_container_or_nowhere_listable(
    files: FakeAzureFiles, share: AzureShare
) -> None:
    plan = planner(files, share)
    cluster = make_cluster(
        mounts=(
            ShareMount("work", "afs"),
            ShareMount(CONTAINER, "bfs", kind="bfs"),
            ShareMount("theirs", "ext", account="otheraccount", account_key="k"),
            ShareMount("theirblobs", "extb", kind="bfs", account="otheraccount", account_key="k"),
            ShareMount("nfs1", "nfs", kind="nfs"),
        )
    )
    assert plan.on_share(cluster, f"{ROOT}/afs/out") == FileLocation("work", "out")
    assert plan.on_share(cluster, f"{ROOT}/bfs/run1/out") == FileLocation(
        CONTAINER, "run1/out", container=True
    )
    for elsewhere in ("ext/out", "extb/out", "nfs/out"):
        assert plan.on_share(cluster, f"{ROOT}/{elsewhere}") is None, elsewhere
    spec = load_job_spec(
        json.dumps(
            {
                "properties": {
                    "nodeCount": 1,
                    "customToolkitSettings": {"commandLine": "true"},
                    "mountVolumes": {
                        "azureBlobFileSystems": [
                            {
                                "accountName": files.account,
                                "containerName": CONTAINER,
                                "relativeMountPath": "bfs",
                            },
                            {
                                "accountName": "otheraccount",
                                "containerName": "theirs",
                                "relativeMountPath": "other",
                            },
                        ]
                    },
                }
            }
        )
    )
    containers = plan.job_containers("job-1", spec)
    base = plan.job_mount_root("job-1")
    assert containers == [(f"{base}/bfs", CONTAINER)]  # the bot's account only
    bare = make_cluster()
    assert plan.on_share(bare, f"{base}/bfs/out", job_containers=containers) == FileLocation(
        CONTAINER, "out", container=True
    )
    assert plan.on_share(bare, f"{base}/other/out", job_containers=containers) is None


def test_logs_on_a_container_are_not_streamed_and_say_why() -> None:
    from types import SimpleNamespace

    stdouterr = "/jobs/j/mounts/bfs/logs"
    plan = SimpleNamespace(
        stdouterr_dir=stdouterr,
        output_dirs=[SimpleNamespace(id="OUTPUT", path="/jobs/j/mounts/bfs/out")],
        preparation=[],
        processes=[SimpleNamespace(stdout_name="stdout.txt", stderr_name="stderr.txt")],
    )

    def on_share(path: str) -> FileLocation:
        return FileLocation(CONTAINER, path.rsplit("/", 1)[-1], container=True)

    notes: list[str] = []
    layout = share_layout(plan, on_share, notes)  # type: ignore[arg-type]
    assert layout.stdouterr is None
    assert layout.outputs == {"OUTPUT": FileLocation(CONTAINER, "out", container=True)}
    assert len(notes) == 1 and "on blob container models" in notes[0], notes


async def test_a_container_location_survives_the_store_the_launch_record_and_the_receipt(
    store: SqlStore,
) -> None:
    out = FileLocation(CONTAINER, "run1/outputs", container=True)
    layout = JobLayout(stdouterr=FileLocation("data", "logs"), outputs={"OUTPUT": out})
    job = make_job("j1")
    async with store.unit() as uow:
        await uow.jobs.add(job)
        await uow.commit()
    await store.set_layout(job.id, layout)
    stored = await store.get_job(job.id)
    assert stored is not None and stored.layout == layout
    assert stored.layout.stdouterr is not None and not stored.layout.stdouterr.container
    record = layout_from_json(layout_to_json(LaunchResult(layout=layout, notes=())))
    assert record.layout == layout
    receipt = JobFinished(
        job_id=job.id,
        outputs=(OutputFile("OUTPUT", "model.pt", CONTAINER, "run1/outputs/model.pt", 8, True),),
    )
    stored_receipt = json.loads(json.dumps(receipt.payload()))  # as the outbox keeps it
    assert event_from_payload(JobFinished.kind, stored_receipt) == receipt
