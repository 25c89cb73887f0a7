"""The fake storage server's Blob service, driven by the real azure-storage-blob aio clients.

Containers are directories (`create_container` -> `<root>/.blobs/<name>`); what a node writes there
is a blob at once, and what the SDK uploads is a file there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yarl
from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobProperties, BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import BlobPrefix, BlobServiceClient, ContainerClient, LinearRetry

from services.backends.azure.config import AzureConfig
from tests.fakes.azure_files import FakeAzureFiles

CONTAINER = "outputs"


def blob_service(
    files: FakeAzureFiles, *, key: str | None = None, **kwargs: Any
) -> BlobServiceClient:
    """The client as the Azure backend builds it: the account URL and the account key."""
    config = AzureConfig(
        subscription_id="sub",
        resource_group="rg",
        location="eastus",
        subnet_id="subnet",
        storage_account=files.account,
        share="control",
        storage_key=key or files.key,
        storage_endpoint=files.account_url,
    )
    return BlobServiceClient(
        config.blob_url,
        credential={"account_name": config.storage_account, "account_key": config.storage_key},
        **kwargs,
    )


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[FakeAzureFiles]:
    async with FakeAzureFiles(tmp_path / "azure") as fake:
        yield fake


@pytest.fixture
async def container(files: FakeAzureFiles) -> AsyncIterator[ContainerClient]:
    files.create_container(CONTAINER)
    async with blob_service(files) as service:
        yield service.get_container_client(CONTAINER)


def put(files: FakeAzureFiles, name: str, data: bytes) -> Path:
    """A file written straight into the container's directory, as a node's job does."""
    target = files.container_dir(CONTAINER) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def sas_url(files: FakeAzureFiles, name: str, *, sas_for: str | None = None, **kwargs: Any) -> str:
    """A download link as the bot hands it out: the blob URL and a read-only blob SAS."""
    kwargs.setdefault("expiry", datetime.now(UTC) + timedelta(hours=1))
    token = generate_blob_sas(
        files.account,
        CONTAINER,
        sas_for or name,
        account_key=files.key,
        permission=BlobSasPermissions(read=True),
        **kwargs,
    )
    return f"{files.account_url}/{CONTAINER}/{quote(name, safe='/~')}?{token}"


async def fetch(
    url: str | yarl.URL,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """A plain HTTP request, as a browser follows a download link."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, data=data) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


# --------------------------------------------------------------------------- layout


async def test_create_container_returns_its_backing_directory(files: FakeAzureFiles) -> None:
    path = files.create_container(CONTAINER)
    assert path == files.root / ".blobs" / CONTAINER and path.is_dir()
    assert files.containers == {CONTAINER}
    assert files.container_dir(CONTAINER) == path
    with pytest.raises(ValueError, match="not a container name"):
        files.create_container("../up")


async def test_an_upload_is_a_file_in_the_container_directory(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    await container.upload_blob("job-1/outputs/model.bin", b"weights")
    path = files.container_dir(CONTAINER) / "job-1" / "outputs" / "model.bin"
    assert path.read_bytes() == b"weights"
    assert files.bytes_written == len(b"weights")
    assert not list(path.parent.glob(".put-*"))  # no upload leftovers beside it
    assert files.ops["PutBlob"] == 1


async def test_a_name_added_to_containers_is_an_empty_container_until_written(
    files: FakeAzureFiles,
) -> None:
    files.containers.add("plain")
    async with blob_service(files) as service:
        plain = service.get_container_client("plain")
        assert [b async for b in plain.list_blobs()] == []
        assert not files.container_dir("plain").exists()
        await plain.upload_blob("x.txt", b"x")
    assert (files.container_dir("plain") / "x.txt").read_bytes() == b"x"


async def test_a_container_and_a_share_of_one_name_are_separate(files: FakeAzureFiles) -> None:
    files.create_share(CONTAINER).joinpath("on-share.txt").write_bytes(b"share")
    files.create_container(CONTAINER)
    put(files, "in-container.txt", b"blob")
    async with blob_service(files) as service:
        names = [b.name async for b in service.get_container_client(CONTAINER).list_blobs()]
    assert names == ["in-container.txt"]


# --------------------------------------------------------------------------- listing


async def test_written_files_are_listed_flat_in_the_service_s_order(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    put(files, "a/x.txt", b"12345678")
    put(files, "a/b/c.txt", b"hello")
    put(files, "a-b.txt", b"dash")
    put(files, "empty.txt", b"")
    (files.container_dir(CONTAINER) / "emptydir" / "sub").mkdir(parents=True)  # not a blob
    blobs = [b async for b in container.list_blobs(include=["metadata"])]
    # By name, as the service sorts: "-" (0x2d) before "/" (0x2f), whatever the directory walk.
    assert [b.name for b in blobs] == ["a-b.txt", "a/b/c.txt", "a/x.txt", "empty.txt"]
    first = blobs[2]
    st = (files.container_dir(CONTAINER) / "a/x.txt").stat()
    assert first.size == 8 and first.blob_type == "BlockBlob" and first.container == CONTAINER
    assert first.last_modified == datetime.fromtimestamp(int(st.st_mtime), UTC)
    assert first.creation_time is not None and first.etag
    assert first.content_settings.content_type == "application/octet-stream"
    assert [b.name async for b in container.list_blobs(name_starts_with="a/")] == [
        "a/b/c.txt",
        "a/x.txt",
    ]
    assert files.ops["ListBlobs"] == 2


async def test_walk_blobs_lists_one_level_with_prefixes(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    put(files, "a/x.txt", b"x")
    put(files, "a/b/c.txt", b"c")
    put(files, "top.txt", b"t")
    (files.container_dir(CONTAINER) / "emptydir").mkdir()
    top = [item async for item in container.walk_blobs(delimiter="/")]
    assert [(type(i).__name__, i.name) for i in top] == [
        ("BlobPrefix", "a/"),
        ("BlobProperties", "top.txt"),
    ]
    prefix = top[0]
    assert isinstance(prefix, BlobPrefix)
    inner = [item async for item in prefix]
    assert [(type(i).__name__, i.name) for i in inner] == [
        ("BlobPrefix", "a/b/"),
        ("BlobProperties", "a/x.txt"),
    ]
    assert isinstance(inner[1], BlobProperties) and inner[1].size == 1


async def test_listing_pages_with_next_marker(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    for name in ("1.txt", "2.txt", "d/3.txt", "d/4.txt", "e.txt"):
        put(files, name, name.encode())
    pages = [
        [b.name async for b in page]
        async for page in container.list_blobs(results_per_page=2).by_page()
    ]
    assert pages == [["1.txt", "2.txt"], ["d/3.txt", "d/4.txt"], ["e.txt"]]
    walked = [
        [i.name async for i in page]
        async for page in container.walk_blobs(results_per_page=2).by_page()
    ]
    assert walked == [["1.txt", "2.txt"], ["d/", "e.txt"]]
    assert files.ops["ListBlobs"] == 5


async def test_a_name_xml_cannot_carry_is_listed_encoded(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    put(files, "tab\there & <there>.txt", b"x")
    assert [b.name async for b in container.list_blobs()] == ["tab\there & <there>.txt"]


async def test_a_link_out_of_the_container_is_no_blob(
    tmp_path: Path, files: FakeAzureFiles, container: ContainerClient
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    put(files, "ok.txt", b"ok")
    (files.container_dir(CONTAINER) / "leak.txt").symlink_to(secret)
    (files.container_dir(CONTAINER) / "leakdir").symlink_to(tmp_path, target_is_directory=True)
    assert [b.name async for b in container.list_blobs()] == ["ok.txt"]
    assert [b.name async for b in container.list_blobs(name_starts_with="leakdir/")] == []
    for name in ("leak.txt", "leakdir/secret.txt"):
        with pytest.raises(ResourceNotFoundError):
            await (await container.download_blob(name)).readall()


async def test_listing_a_missing_container_is_not_found(files: FakeAzureFiles) -> None:
    async with blob_service(files) as service:
        with pytest.raises(ResourceNotFoundError) as info:
            [b async for b in service.get_container_client("nope").list_blobs()]
    assert info.value.error_code == "ContainerNotFound"


# --------------------------------------------------------------------------- reads


async def test_properties_and_downloads_whole_and_by_range(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    put(files, "logs/stdout.txt", b"0123456789")
    blob = container.get_blob_client("logs/stdout.txt")
    props = await blob.get_blob_properties()
    assert props.size == 10 and props.blob_type == "BlockBlob" and props.etag.startswith('"0x')
    assert props.creation_time is not None and props.last_modified is not None
    assert await (await blob.download_blob()).readall() == b"0123456789"
    assert await (await blob.download_blob(offset=3, length=4)).readall() == b"3456"
    assert await (await blob.download_blob(offset=8)).readall() == b"89"
    statuses = [(r.op, r.status) for r in files.requests]
    assert statuses == [
        ("GetBlobProperties", 200),
        ("GetBlob", 206),  # download_blob asks for more than there is and learns the size
        ("GetBlob", 206),
        ("GetBlob", 206),
    ]
    assert files.bytes_served == 10 + 4 + 2


async def test_an_empty_blob_downloads_as_nothing(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    put(files, "empty.txt", b"")
    assert await (await container.download_blob("empty.txt")).readall() == b""
    # The ranged first get is refused as the service refuses it, then the whole blob is read.
    assert [(r.op, r.status) for r in files.requests] == [("GetBlob", 416), ("GetBlob", 200)]
    assert (await container.get_blob_client("empty.txt").get_blob_properties()).size == 0


async def test_a_missing_blob_is_resource_not_found(container: ContainerClient) -> None:
    blob = container.get_blob_client("nothing/here.txt")
    with pytest.raises(ResourceNotFoundError) as props:
        await blob.get_blob_properties()
    with pytest.raises(ResourceNotFoundError) as download:
        await (await blob.download_blob()).readall()
    assert props.value.error_code == download.value.error_code == "BlobNotFound"


async def test_a_prefix_is_no_blob(files: FakeAzureFiles, container: ContainerClient) -> None:
    put(files, "dir/file.txt", b"x")
    with pytest.raises(ResourceNotFoundError):
        await container.get_blob_client("dir").get_blob_properties()


# --------------------------------------------------------------------------- writes


async def test_upload_without_overwrite_keeps_what_is_there(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    await container.upload_blob("a.txt", b"first")
    with pytest.raises(ResourceExistsError):
        await container.upload_blob("a.txt", b"second")
    assert (files.container_dir(CONTAINER) / "a.txt").read_bytes() == b"first"
    await container.upload_blob("a.txt", b"third", overwrite=True)
    assert (files.container_dir(CONTAINER) / "a.txt").read_bytes() == b"third"
    await container.upload_blob("empty.txt", b"")
    assert (files.container_dir(CONTAINER) / "empty.txt").read_bytes() == b""


async def test_a_conditional_upload_is_refused_when_the_blob_changed(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    blob = container.get_blob_client("a.txt")
    first = await blob.upload_blob(b"first")
    put(files, "a.txt", b"someone else's")
    with pytest.raises(ResourceModifiedError):
        await blob.upload_blob(
            b"mine",
            overwrite=True,
            etag=first["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    assert (files.container_dir(CONTAINER) / "a.txt").read_bytes() == b"someone else's"
    now = (await blob.get_blob_properties()).etag
    await blob.upload_blob(
        b"mine", overwrite=True, etag=now, match_condition=MatchConditions.IfNotModified
    )
    assert (files.container_dir(CONTAINER) / "a.txt").read_bytes() == b"mine"


async def test_a_blob_beside_a_prefix_of_its_name_is_refused(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    put(files, "a/b.txt", b"x")
    with pytest.raises(HttpResponseError) as info:
        await container.upload_blob("a", b"y")
    assert info.value.status_code == 409
    assert (files.container_dir(CONTAINER) / "a" / "b.txt").read_bytes() == b"x"


async def test_delete_removes_the_blob_and_the_directories_only_it_kept(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    put(files, "a/b/c.txt", b"c")
    put(files, "a/keep.txt", b"k")
    await container.delete_blob("a/b/c.txt")
    assert not (files.container_dir(CONTAINER) / "a" / "b").exists()
    assert [b.name async for b in container.list_blobs()] == ["a/keep.txt"]
    with pytest.raises(ResourceNotFoundError):
        await container.delete_blob("a/b/c.txt")


@pytest.mark.parametrize("name", ["a\\b.txt", "/etc/passwd", "a//b.txt", "a/"])
async def test_a_name_that_could_leave_the_container_is_refused(
    files: FakeAzureFiles, container: ContainerClient, name: str
) -> None:
    with pytest.raises(HttpResponseError) as info:
        await container.upload_blob(name, b"x")
    assert info.value.status_code == 400 and info.value.error_code == "InvalidResourceName"
    assert not any(p.is_file() for p in files.root.rglob("*"))


async def test_dot_segments_in_a_blob_name_are_refused(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    # aiohttp folds `..` out of the URL it sends, so the SDK's request for this name arrives
    # signed for one path and sent to another: refused, and nothing is written anywhere.
    with pytest.raises(HttpResponseError):
        await container.upload_blob("a/../../escape.txt", b"x")
    put(files, "inside.txt", b"in")
    (files.root / "outside.txt").write_bytes(b"out")
    # A client that sends `..` as it is (literal or percent-encoded) gets 400.
    for raw in ("a/../../outside.txt", "a/%2E%2E/%2E%2E/outside.txt", "../outside.txt", "./x"):
        name = raw.replace("%2E", ".")
        url = yarl.URL(sas_url(files, "x", sas_for=name).replace("/x?", f"/{raw}?"), encoded=True)
        status, _, headers = await fetch(url)
        assert (status, headers["x-ms-error-code"]) == (400, "InvalidResourceName"), raw
    assert sorted(str(p.relative_to(files.root)) for p in files.root.rglob("*.txt")) == [
        f".blobs/{CONTAINER}/inside.txt",
        "outside.txt",
    ]


# --------------------------------------------------------------------------- authorization


async def test_a_wrong_account_key_is_refused(
    files: FakeAzureFiles, container: ContainerClient
) -> None:
    put(files, "a.txt", b"a")
    wrong = files.key[:-4] + ("AAA=" if not files.key.endswith("AAA=") else "BBB=")
    async with blob_service(files, key=wrong) as service:
        with pytest.raises(ClientAuthenticationError):
            [b async for b in service.get_container_client(CONTAINER).list_blobs()]
        with pytest.raises(ClientAuthenticationError):
            await service.get_blob_client(CONTAINER, "a.txt").download_blob()
    assert [r.status for r in files.requests] == [403, 403]


async def test_a_blob_sas_link_fetches_the_bytes(files: FakeAzureFiles) -> None:
    files.create_container(CONTAINER)
    put(files, "job 1/out/result.csv", b"a,b\n1,2\n")
    url = sas_url(files, "job 1/out/result.csv", content_disposition="attachment")
    status, body, headers = await fetch(url)
    assert (status, body) == (200, b"a,b\n1,2\n")
    assert headers["Content-Disposition"] == "attachment"  # the SAS's rscd override
    status, body, headers = await fetch(url, headers={"Range": "bytes=2-4"})
    assert (status, body, headers["Content-Range"]) == (206, b"b\n1", "bytes 2-4/8")
    status, body, headers = await fetch(url, method="HEAD")
    assert (status, headers["Content-Length"], headers["x-ms-blob-type"]) == (200, "8", "BlockBlob")
    assert [(r.op, r.auth) for r in files.requests] == [
        ("GetBlob", "SAS"),
        ("GetBlob", "SAS"),
        ("GetBlobProperties", "SAS"),
    ]


async def test_blob_sas_refusals(files: FakeAzureFiles) -> None:
    files.create_container(CONTAINER)
    put(files, "a.txt", b"a")
    put(files, "b.txt", b"b")
    now = datetime.now(UTC)
    good = sas_url(files, "a.txt")
    refused = {
        "https only": (sas_url(files, "a.txt", protocol="https"), "AuthorizationProtocolMismatch"),
        "another blob": (sas_url(files, "b.txt", sas_for="a.txt"), "AuthenticationFailed"),
        "not yet valid": (sas_url(files, "a.txt", start=now + timedelta(minutes=10)), None),
        "tampered": (good.replace("sp=r", "sp=rw"), None),
        "bad signature": (good[: good.index("sig=")] + "sig=AAAA", None),
    }
    for why, (url, code) in refused.items():
        for method in ("GET", "HEAD"):
            status, body, headers = await fetch(url, method=method)
            assert status == 403, why
            assert headers["x-ms-error-code"] == (code or "AuthenticationFailed"), why
            assert (body == b"") == (method == "HEAD"), why
    assert (await fetch(good))[0] == 200
    files.clock = lambda: now + timedelta(hours=2)  # past the hour the link was signed for
    status, _, headers = await fetch(good)
    assert (status, headers["x-ms-error-code"]) == (403, "AuthenticationFailed")


async def test_a_blob_sas_does_not_list_or_write(files: FakeAzureFiles) -> None:
    files.create_container(CONTAINER)
    put(files, "a.txt", b"a")
    url = sas_url(files, "a.txt")
    token = url.partition("?")[2]
    status, _, _ = await fetch(
        f"{files.account_url}/{CONTAINER}?restype=container&comp=list&{token}"
    )
    assert status == 403
    status, _, _ = await fetch(
        url, method="PUT", data=b"x", headers={"x-ms-blob-type": "BlockBlob"}
    )
    assert status == 403
    assert (files.container_dir(CONTAINER) / "a.txt").read_bytes() == b"a"


# --------------------------------------------------------------------------- faults


async def test_faults_and_delays_apply_to_blob_calls(files: FakeAzureFiles) -> None:
    files.create_container(CONTAINER)
    put(files, "a.txt", b"abc")
    retry = LinearRetry(backoff=0, random_jitter_range=0, retry_total=2)
    async with blob_service(files, retry_policy=retry, read_timeout=0.2) as service:
        blob = service.get_blob_client(CONTAINER, "a.txt")
        files.fail_next(1, status=503)
        assert await (await blob.download_blob()).readall() == b"abc"
        assert [(r.op, r.status) for r in files.requests] == [("GetBlob", 503), ("GetBlob", 206)]
        files.delay_next(1, seconds=30)
        assert (await blob.get_blob_properties()).size == 3
    assert files.ops["GetBlobProperties"] == 2  # the hung one and its retry
