"""AzureShare with the real azure-storage-file-share aio clients against the fake Files server."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.fileshare import generate_file_sas
from azure.storage.fileshare.aio import ShareServiceClient

from services.backends.azure.config import AzureConfig
from services.backends.azure.files import AzureShare, FilesRetry
from services.core.downloads import download_links
from services.core.errors import NotAllowed, NotFound, TransientError
from services.jobs.tailer import LogTailer
from services.models import FileLocation
from tests.fakes.azure_files import FakeAzureFiles

SHARE = "data"
NO_PAUSE = {"retry_backoff_factor": 0, "jitter": 0}


class Pauses(list[float]):
    """Records the retry policy's pauses instead of sleeping them."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def config_for(files: FakeAzureFiles, *, key: str | None = None) -> AzureConfig:
    return AzureConfig(
        subscription_id="sub",
        resource_group="rg",
        location="eastus",
        subnet_id="subnet",
        storage_account=files.account,
        share=SHARE,
        storage_key=key or files.key,
        storage_endpoint=files.account_url,
    )


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[FakeAzureFiles]:
    async with FakeAzureFiles(tmp_path / "azure") as fake:
        fake.create_share(SHARE)
        yield fake


@pytest.fixture
async def share(files: FakeAzureFiles) -> AsyncIterator[AzureShare]:
    async with AzureShare(config_for(files), retry_policy=FilesRetry(**NO_PAUSE)) as s:
        yield s


def put(files: FakeAzureFiles, path: str, data: bytes) -> Path:
    """A file written straight into the share's directory, as a node does over SMB."""
    target = files.share_dir(SHARE) / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def loc(path: str) -> FileLocation:
    return FileLocation(SHARE, path)


# --------------------------------------------------------------------------- reads


async def test_log_read_across_three_growing_chunks_reads_no_byte_twice(
    files: FakeAzureFiles, share: AzureShare
) -> None:
    log_file = put(files, "jobs/j1/stdouterr/stdout.txt", b"")
    tailer = LogTailer(share)
    chunks = [b"epoch 1 loss 0.9\nepoch 2 lo", b"ss 0.5\nepoch 3 loss 0.2\n", b"done\n"]
    lines: list[str] = []
    committed = 0
    for chunk in chunks:
        with log_file.open("ab") as f:
            f.write(chunk)
        result = await tailer.read(
            "j1", loc("jobs/j1/stdouterr/stdout.txt"), committed, final=False
        )
        lines += result.lines
        committed = result.committed_offset
    idle = await tailer.read("j1", loc("jobs/j1/stdouterr/stdout.txt"), committed, final=True)

    assert lines == ["epoch 1 loss 0.9", "epoch 2 loss 0.5", "epoch 3 loss 0.2", "done"]
    assert idle.lines == [] and idle.bytes_read == 0
    written = sum(len(c) for c in chunks)
    assert files.bytes_served == written  # every byte crossed the wire exactly once
    # One ranged GET per read, the idle one too (416); no Get File Properties.
    assert [r.op for r in files.requests] == ["GetFile"] * 4
    starts = [r.range.split("=")[1].split("-")[0] for r in files.requests if r.range]
    assert starts == ["0", "27", "51", "56"]


async def test_a_tail_read_is_one_signed_get_and_says_what_failed_in_one_line(
    files: FakeAzureFiles, share: AzureShare
) -> None:
    put(files, "t.txt", b"0123456789")
    assert await share.read_tail(loc("t.txt"), 4, 3) == (b"456", 10)
    assert await share.read_tail(loc("t.txt"), 10, 3) == (b"", 10)  # nothing new: 416
    assert await share.read_tail(loc("gone.txt"), 0, 3) is None
    assert [(r.op, r.status) for r in files.requests] == [
        ("GetFile", 206),
        ("GetFile", 416),
        ("GetFile", 404),
    ]
    files.fail_next(1, status=503, retry_after=4)
    with pytest.raises(TransientError) as busy:
        await share.read_tail(loc("t.txt"), 0, 3)
    assert busy.value.retry_after == 4.0 and "\n" not in str(busy.value)
    assert "sig=" not in str(busy.value) and files.key not in str(busy.value)
    assert await share.read_tail(loc("t.txt"), 0, 3) == (b"012", 10)  # the next round reads


async def test_read_at_the_end_and_on_an_empty_file_is_empty(
    files: FakeAzureFiles, share: AzureShare
) -> None:
    put(files, "a.txt", b"0123456789")
    put(files, "empty.txt", b"")
    assert await share.read_range(loc("a.txt"), 2, 3) == b"234"
    assert await share.read_range(loc("a.txt"), 8, 100) == b"89"
    assert await share.read_range(loc("a.txt"), 10, 5) == b""
    assert await share.read_range(loc("a.txt"), 50, 5) == b""
    assert await share.read_range(loc("empty.txt"), 0, 10) == b""
    statuses = [r.status for r in files.requests if r.op == "GetFile"]
    assert statuses == [206, 206, 416, 416, 416]  # the 416s were the service's, handled
    assert files.bytes_served == 5
    with pytest.raises(NotFound):
        await share.read_range(loc("missing.txt"), 0, 10)


async def test_a_long_read_comes_in_ranges_inside_what_was_asked(files: FakeAzureFiles) -> None:
    data = bytes(range(256)) * 12
    put(files, "big.bin", data[:3000])
    small_gets = {"max_single_get_size": 1024, "max_chunk_get_size": 1024}
    async with AzureShare(config_for(files), **small_gets) as share:
        assert await share.read_range(loc("big.bin"), 500, 10_000) == data[500:3000]
        assert await share.read_range(loc("big.bin"), 0, 2500) == data[:2500]
    ranges = [r.range for r in files.requests]
    assert ranges == [
        "bytes=500-1523",
        "bytes=1524-2547",
        "bytes=2548-2999",
        "bytes=0-1023",
        "bytes=1024-2047",
        "bytes=2048-2499",
    ]
    assert files.bytes_served == 2500 + 2500


async def test_a_zero_length_read_asks_nothing(files: FakeAzureFiles, share: AzureShare) -> None:
    put(files, "a.txt", b"abc")
    assert await share.read_range(loc("a.txt"), 1, 0) == b""
    assert files.ops["GetFile"] == 0


async def test_stat_of_a_file_a_directory_and_nothing(
    files: FakeAzureFiles, share: AzureShare
) -> None:
    put(files, "dir/a.txt", b"0123456789")
    entry = await share.stat(loc("dir/a.txt"))
    assert entry is not None
    assert (entry.name, entry.is_directory, entry.size) == ("a.txt", False, 10)
    assert entry.modified is not None and entry.modified.tzinfo is not None
    directory = await share.stat(loc("dir"))
    assert directory is not None and (directory.name, directory.is_directory) == ("dir", True)
    root = await share.stat(loc(""))
    assert root is not None and root.is_directory
    assert await share.stat(FileLocation("nosuchshare", "a.txt")) is None
    files.reset_counters()
    assert await share.stat(loc("dir/missing.txt")) is None  # not a file, not a directory
    assert files.count("GetFileProperties", "GetDirectoryProperties") == 2
    files.reset_counters()
    assert await share.stat(loc("nodir/stdout.txt")) is None  # ParentNotFound says it all
    assert [(r.op, r.status) for r in files.requests] == [("GetFileProperties", 404)]


async def test_paths_that_leave_the_share_are_refused(share: AzureShare) -> None:
    for bad in ("../other/x", "/abs", "a/../../b", "a\\b"):
        with pytest.raises(NotAllowed):
            await share.stat(loc(bad))


async def test_recursive_listing_names_are_relative_and_sorted(
    files: FakeAzureFiles, share: AzureShare
) -> None:
    put(files, "out/a.txt", b"0123456789")
    put(files, "out/sub/b.txt", b"xyz")
    put(files, "out/sub/deeper/c.bin", b"")
    put(files, "elsewhere.txt", b"not listed")
    top = await share.list_files(loc("out"))
    assert [(e.name, e.is_directory, e.size) for e in top] == [
        ("a.txt", False, 10),
        ("sub", True, 0),
    ]
    deep = await share.list_files(loc("out"), recursive=True)
    assert [e.name for e in deep] == ["a.txt", "sub", "sub/b.txt", "sub/deeper", "sub/deeper/c.bin"]
    assert all(e.modified is not None for e in deep)
    with pytest.raises(NotFound):
        await share.list_files(loc("nope"))
    with pytest.raises(NotFound):
        await share.list_files(loc("out/a.txt"))  # a file is not a directory


async def test_listing_follows_the_services_pages(files: FakeAzureFiles, share: AzureShare) -> None:
    files.page_size = 2
    for i in range(5):
        put(files, f"many/f{i}.txt", b"x" * i)
    entries = await share.list_files(loc("many"))
    assert [(e.name, e.size) for e in entries] == [(f"f{i}.txt", i) for i in range(5)]
    assert files.ops["ListDirectoriesAndFiles"] == 3


# --------------------------------------------------------------------------- writes


async def test_write_file_round_trip_with_new_parents_and_several_ranges(
    files: FakeAzureFiles, share: AzureShare
) -> None:
    data = bytes(range(256)) * (5 * 4096 + 7)  # 5 MiB + 1792 bytes: two Put Range calls
    await share.write_file(loc("jobs/j1/run/spec.bin"), data)
    assert (files.share_dir(SHARE) / "jobs/j1/run/spec.bin").read_bytes() == data
    assert files.ops["PutRange"] == 2 and files.ops["CreateDirectory"] == 5  # 2 misses, 3 made
    assert files.bytes_written == len(data)

    files.reset_counters()
    await share.write_file(loc("jobs/j1/run/spec.bin"), b"smaller")  # replaces, parents exist
    assert (files.share_dir(SHARE) / "jobs/j1/run/spec.bin").read_bytes() == b"smaller"
    assert dict(files.ops) == {"CreateFile": 1, "PutRange": 1}
    await share.write_file(loc("jobs/j1/empty"), b"")
    assert (files.share_dir(SHARE) / "jobs/j1/empty").read_bytes() == b""
    assert await share.read_range(loc("jobs/j1/run/spec.bin"), 0, 100) == b"smaller"


async def test_make_dirs_is_idempotent_and_delete_tree_removes_everything(
    files: FakeAzureFiles, share: AzureShare
) -> None:
    await share.make_dirs(loc("a/b/c"))
    await share.make_dirs(loc("a/b/c"))
    assert (files.share_dir(SHARE) / "a/b/c").is_dir()
    await share.write_file(loc("a/b/c/f.txt"), b"1")
    await share.write_file(loc("a/g.txt"), b"2")
    await share.write_file(loc("keep.txt"), b"3")
    assert await share.delete_tree(loc("a")) == 0
    assert not (files.share_dir(SHARE) / "a").exists()
    assert (files.share_dir(SHARE) / "keep.txt").exists()
    assert await share.delete_tree(loc("a")) == 0  # gone already: fine
    assert await share.delete_tree(loc("keep.txt")) == 0
    assert not (files.share_dir(SHARE) / "keep.txt").exists()


async def test_ensure_share_creates_it_once(files: FakeAzureFiles) -> None:
    cfg = config_for(files)
    async with AzureShare(AzureConfig(**{**cfg.__dict__, "share": "fresh"})) as share:
        await share.ensure_share()
        await share.ensure_share()
    assert files.share_dir("fresh").is_dir()
    assert [r.status for r in files.requests if r.op == "CreateShare"] == [201, 409]


# --------------------------------------------------------------------------- links


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return parts._replace(query=urlencode(query)).geturl()


async def test_a_link_names_exactly_one_file(files: FakeAzureFiles, share: AzureShare) -> None:
    put(files, "out/model.txt", b"weights")
    put(files, "out/secret.txt", b"not yours")
    expires = datetime.now(UTC) + timedelta(minutes=5)
    url = await share.get_download_url(loc("out/model.txt"), expires_at=expires)
    token = urlsplit(url).query
    assert dict(parse_qsl(token))["sp"] == "r" and dict(parse_qsl(token))["sr"] == "f"
    sibling = url.replace("model.txt", "secret.txt")

    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == b"weights"
            assert resp.headers["Content-Disposition"] == 'attachment; filename="model.txt"'
        async with http.get(sibling) as resp:
            assert resp.status == 403
            assert resp.headers["x-ms-error-code"] == "AuthenticationFailed"
        for tampered in (
            _with_query(url, sp="rw"),
            _with_query(url, se=(expires + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")),
            _with_query(url, rscd='attachment; filename="other.txt"'),
            _with_query(url, sig=base64.b64encode(b"x" * 32).decode()),
        ):
            async with http.get(tampered) as resp:
                assert resp.status == 403, tampered
        files.clock = lambda: expires + timedelta(seconds=1)
        async with http.get(url) as resp:
            assert resp.status == 403
    assert files.bytes_served == len(b"weights")


async def test_links_to_awkward_names_work(files: FakeAzureFiles, share: AzureShare) -> None:
    put(files, "out/my model (1).txt", b"spaces")
    put(files, 'out/modèle "final".txt', b"accents")
    expires = datetime.now(UTC) + timedelta(minutes=5)
    async with aiohttp.ClientSession() as http:
        url = await share.get_download_url(loc("out/my model (1).txt"), expires_at=expires)
        async with http.get(url) as resp:
            assert resp.status == 200 and await resp.read() == b"spaces"
            assert resp.headers["Content-Disposition"] == 'attachment; filename="my model (1).txt"'
        url = await share.get_download_url(loc('out/modèle "final".txt'), expires_at=expires)
        async with http.get(url) as resp:
            assert resp.status == 200 and await resp.read() == b"accents"
            disposition = resp.headers["Content-Disposition"]
    assert disposition == (
        'attachment; filename="mod_le__final_.txt"; '
        "filename*=UTF-8''mod%C3%A8le%20%22final%22.txt"
    )
    # The same names through shared-key requests: the signed path is the encoded one.
    entries = await share.list_files(loc("out"))
    assert [e.name for e in entries] == ['modèle "final".txt', "my model (1).txt"]
    assert await share.read_range(loc('out/modèle "final".txt'), 0, 3) == b"acc"


async def test_an_https_only_link_is_refused_over_http(files: FakeAzureFiles) -> None:
    put(files, "f.txt", b"x")
    token = generate_file_sas(
        files.account,
        SHARE,
        ["f.txt"],
        account_key=files.key,
        permission="r",
        expiry=datetime.now(UTC) + timedelta(minutes=5),
        protocol="https",
    )
    url = f"{files.account_url}/{SHARE}/f.txt?{token}"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 403
        assert resp.headers["x-ms-error-code"] == "AuthorizationProtocolMismatch"


async def test_links_use_https_only_for_an_https_account(files: FakeAzureFiles) -> None:
    cfg = AzureConfig(**{**config_for(files).__dict__, "storage_endpoint": None})
    async with AzureShare(cfg) as share:
        url = await share.get_download_url(
            loc("dir/my file.txt"), expires_at=datetime.now(UTC) + timedelta(minutes=5)
        )
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == f"{files.account}.file.core.windows.net"
    assert parts.path == f"/{SHARE}/dir/my%20file.txt"
    query = dict(parse_qsl(parts.query))
    assert query["spr"] == "https"
    assert query["rscd"] == 'attachment; filename="my file.txt"'


# --------------------------------------------------------------------------- failures


async def test_a_wrong_storage_key_is_a_one_line_not_allowed(files: FakeAzureFiles) -> None:
    put(files, "a.txt", b"abc")
    wrong = base64.b64encode(b"w" * 64).decode()
    async with AzureShare(config_for(files, key=wrong)) as share:
        for call in (
            share.stat(loc("a.txt")),
            share.read_range(loc("a.txt"), 0, 3),
            share.list_files(loc("")),
        ):
            with pytest.raises(NotAllowed) as info:
                await call
            message = str(info.value)
            assert "\n" not in message and "AuthenticationFailed" in message
            assert wrong not in message and files.key not in message
    assert {r.status for r in files.requests} == {403}


async def test_server_errors_are_retried_by_the_sdk(files: FakeAzureFiles) -> None:
    put(files, "a.txt", b"abc")
    pauses = Pauses()
    async with AzureShare(config_for(files), retry_policy=FilesRetry(sleep=pauses)) as share:
        files.fail_next(1, status=500)
        files.fail_next(1, status=503)
        assert await share.read_range(loc("a.txt"), 0, 3) == b"abc"
    assert [r.status for r in files.requests] == [500, 503, 206]
    assert len(pauses) == 2 and 1 <= pauses[0] <= 3 and 3 <= pauses[1] <= 5  # not 15 s


async def test_throttling_waits_for_retry_after(files: FakeAzureFiles) -> None:
    put(files, "a.txt", b"abc")
    pauses = Pauses()
    async with AzureShare(config_for(files), retry_policy=FilesRetry(sleep=pauses)) as share:
        files.fail_next(2, status=429, retry_after=7)
        files.fail_next(1, status=503, retry_after=3600)
        entry = await share.stat(loc("a.txt"))
    assert entry is not None and entry.size == 3
    assert [r.status for r in files.requests] == [429, 429, 503, 200]
    assert pauses == [7.0, 7.0, 60.0]  # as the service asked, capped at a minute


async def test_a_service_that_stays_down_is_a_transient_error(files: FakeAzureFiles) -> None:
    put(files, "a.txt", b"abc")
    async with AzureShare(
        config_for(files), retry_policy=FilesRetry(retry_total=2, sleep=Pauses())
    ) as share:
        files.fail_next(5, status=503, retry_after=2)
        with pytest.raises(TransientError) as info:
            await share.read_range(loc("a.txt"), 0, 3)
    assert info.value.retry_after == 2.0
    assert len(files.requests) == 3


async def test_a_hung_request_times_out_and_is_retried(files: FakeAzureFiles) -> None:
    put(files, "a.txt", b"abc")
    async with AzureShare(
        config_for(files), retry_policy=FilesRetry(**NO_PAUSE), read_timeout=0.2
    ) as share:
        files.delay_next(1, seconds=30)
        assert await share.read_range(loc("a.txt"), 0, 3) == b"abc"
    assert files.ops["GetFile"] == 2


# --------------------------------------------------------------------------- secrets


@pytest.fixture
def debug_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("azure", "aiohttp", "services", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


async def test_the_storage_key_never_reaches_a_log_or_an_error(
    files: FakeAzureFiles, debug_records: list[logging.LogRecord]
) -> None:
    put(files, "logs/stdout.txt", b"line\n")
    errors: list[str] = []
    cfg = config_for(files)
    assert cfg.storage_key not in repr(cfg)
    async with AzureShare(
        cfg, retry_policy=FilesRetry(**NO_PAUSE), logging_enable=True, logging_body=True
    ) as share:
        await share.write_file(loc("jobs/j9/spec.json"), b'{"a": 1}')
        await share.stat(loc("logs/stdout.txt"))
        await share.read_range(loc("logs/stdout.txt"), 0, 100)
        await share.read_range(loc("logs/stdout.txt"), 5, 100)
        await share.list_files(loc(""), recursive=True)
        url = await share.get_download_url(
            loc("logs/stdout.txt"), expires_at=datetime.now(UTC) + timedelta(minutes=5)
        )
        files.fail_next(1, status=503)
        await share.stat(loc("logs/stdout.txt"))
        for failing in (share.read_range(loc("missing"), 0, 1), share.list_files(loc("nope"))):
            try:
                await failing
            except Exception as err:  # noqa: BLE001 - every message is scanned below
                errors.append(str(err))
    wrong = base64.b64encode(b"w" * 64).decode()
    async with AzureShare(config_for(files, key=wrong), logging_enable=True) as bad:
        try:
            await bad.read_range(loc("logs/stdout.txt"), 0, 1)
        except NotAllowed as err:
            errors.append(str(err))

    signature = dict(parse_qsl(urlsplit(url).query))["sig"]
    lines = [r.getMessage() for r in debug_records]
    assert any("Request URL" in line for line in lines)  # the SDK did log at DEBUG
    assert len(errors) == 3
    for secret in (files.key, wrong, signature):
        assert not [line for line in lines if secret in line]
        assert not [e for e in errors if secret in e]


# --------------------------------------------------------------------------- the fake itself


async def test_the_fake_checks_every_signed_part_of_a_shared_key_request(
    files: FakeAzureFiles,
) -> None:
    put(files, "a.txt", b"0123456789")
    put(files, "b.txt", b"abcdefghij")
    seen: list[Any] = []
    credential = {"account_name": files.account, "account_key": files.key}
    async with ShareServiceClient(files.account_url, credential=credential) as service:
        client = service.get_share_client(SHARE).get_file_client("a.txt")
        stream = await client.download_file(offset=0, length=3, raw_request_hook=seen.append)
        assert await stream.readall() == b"012"
    sent = seen[0].http_request  # signed in place after the hook saw it
    headers = dict(sent.headers)
    assert headers["Authorization"].startswith(f"SharedKey {files.account}:")

    async with aiohttp.ClientSession() as http:

        async def replay(method: str = "GET", url: str = sent.url, **changed: str) -> int:
            async with http.request(method, url, headers={**headers, **changed}) as resp:
                return resp.status

        assert await replay() == 206  # the same request again is fine
        assert await replay(**{"x-ms-range": "bytes=0-9"}) == 403
        assert await replay(**{"x-ms-version": "2025-01-05"}) == 403
        assert await replay(url=sent.url.replace("a.txt", "b.txt")) == 403
        assert await replay(url=f"{sent.url}{'&' if '?' in sent.url else '?'}timeout=30") == 403
        assert await replay("HEAD") == 403
        assert (
            await replay(Authorization=headers["Authorization"].replace(files.account, "x")) == 403
        )
    assert files.bytes_served == 3 + 3


async def test_the_fake_lists_by_prefix_clears_ranges_and_keeps_full_directories(
    files: FakeAzureFiles,
) -> None:
    put(files, "d/stdout.txt", b"1")
    put(files, "d/stderr.txt", b"2")
    put(files, "d/other.txt", b"3")
    put(files, "f.bin", b"a" * 512 + b"b" * 512 + b"c" * 512)
    credential = {"account_name": files.account, "account_key": files.key}
    async with ShareServiceClient(files.account_url, credential=credential) as service:
        share = service.get_share_client(SHARE)
        names = [
            i.name async for i in share.list_directories_and_files("d", name_starts_with="std")
        ]
        assert names == ["stderr.txt", "stdout.txt"]
        await share.get_file_client("f.bin").clear_range(offset=512, length=512)
        with pytest.raises(ResourceExistsError) as info:
            await share.get_directory_client("d").delete_directory()
        assert info.value.error_code == "DirectoryNotEmpty"
        full = await (await share.get_file_client("f.bin").download_file()).readall()
    assert full == b"a" * 512 + b"\0" * 512 + b"c" * 512
    assert (files.share_dir(SHARE) / "d/other.txt").exists()


async def test_a_name_no_link_can_be_made_for_is_listed_without_one(
    share: AzureShare, files: FakeAzureFiles
) -> None:
    """A job may name a file anything: `a\\b` is no path the bot will sign, and it must not
    take the links of the other files of the folder with it."""
    folder = files.create_share("outs")
    (folder / "model.pt").write_bytes(b"weights!")
    (folder / "we\\ird.txt").write_bytes(b"?")
    where = FileLocation("outs", "")
    entries = await share.list_files(where)
    assert sorted(e.name for e in entries) == ["model.pt", "we\\ird.txt"]
    expires = datetime.now(UTC) + timedelta(minutes=5)
    links = await download_links(share, where, entries, expires_at=expires)
    assert sorted(links) == ["model.pt"]
