"""Line splitting, the offset tailer over a real LocalShare, and progress / metric parsing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from services.backends.links import LinkSigner
from services.backends.local import LocalShare
from services.jobs.tailer import (
    LogParser,
    LogTailer,
    parse_metrics,
    parse_progress,
    split_lines,
)
from services.models import FileLocation, MetricPoint, Progress
from tests.fakes.shares import CountingShare

# --------------------------------------------------------------------------- split_lines


def test_partial_line_is_held_back() -> None:
    assert split_lines(b"one\ntwo\nthr", final=False) == (["one", "two"], 8)


def test_final_flushes_the_partial_line() -> None:
    assert split_lines(b"one\nthr", final=True) == (["one", "thr"], 7)


def test_crlf_and_lf_endings() -> None:
    assert split_lines(b"a\r\nb\nc\r\n", final=False) == (["a", "b", "c"], 8)


def test_bare_cr_ends_a_line_like_tqdm_redraws() -> None:
    data = b" 10%|#   | 1/10\r 20%|##  | 2/10\r 30%|### | 3/10\n"
    lines, used = split_lines(data, final=False)
    assert lines == [" 10%|#   | 1/10", " 20%|##  | 2/10", " 30%|### | 3/10"]
    assert used == len(data)


def test_cr_at_the_end_waits_for_a_possible_lf() -> None:
    lines, used = split_lines(b"a\nb\r", final=False)
    assert (lines, used) == (["a"], 2)
    # The next read completes it as CRLF: one line "b", not "b" and an empty line.
    assert split_lines(b"b\r\nc\n", final=False) == (["b", "c"], 5)


def test_empty_lines_are_kept() -> None:
    assert split_lines(b"a\n\nb\n", final=False) == (["a", "", "b"], 5)


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    lines, used = split_lines(b"ok \xff\xfe bytes\n", final=False)
    assert lines == ["ok \ufffd\ufffd bytes"]
    assert used == 12


def test_overlong_partial_line_is_cut_at_max_line() -> None:
    lines, used = split_lines(b"x" * 25, final=False, max_line=10)
    assert lines == ["x" * 10, "x" * 10]
    assert used == 20  # the last 5 bytes wait for more


def test_long_lines_split_the_same_however_they_arrive() -> None:
    data = ("é" * 40 + "\n").encode()  # 2-byte characters: cuts must not split one
    whole, _ = split_lines(data, final=False, max_line=15)
    pieces: list[str] = []
    pending = b""
    for i in range(0, len(data), 7):
        got, used = split_lines(pending + data[i : i + 7], final=False, max_line=15)
        pieces += got
        pending = (pending + data[i : i + 7])[used:]
    assert pieces == whole
    assert "".join(whole) == "é" * 40
    assert "\ufffd" not in "".join(whole)


def test_max_line_must_leave_room_for_a_character() -> None:
    with pytest.raises(ValueError):
        split_lines(b"abc", final=False, max_line=2)


# --------------------------------------------------------------------------- the tailer


@pytest.fixture
def share_root(tmp_path: Path) -> Path:
    (tmp_path / "shares" / "logs").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def counting(share_root: Path) -> CountingShare:
    return CountingShare(LocalShare(share_root, LinkSigner(b"k", "http://127.0.0.1/files")))


LOC = FileLocation("logs", "job/stderr.txt")


def _log_path(root: Path) -> Path:
    path = root / "shares" / "logs" / "job" / "stderr.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


async def test_tailer_reads_each_byte_once_while_the_file_grows(
    share_root: Path, counting: CountingShare
) -> None:
    rng = random.Random(7)
    expected = [f"line {i} " + "x" * rng.randrange(0, 300) for i in range(400)]
    blob = "".join(f"{line}\n" for line in expected).encode()
    path = _log_path(share_root)
    tailer = LogTailer(counting, chunk=512)
    got: list[str] = []
    committed = 0
    written = 0
    with open(path, "ab") as f:
        while written < len(blob):
            step = rng.randrange(1, 200)  # small appends that cut lines anywhere
            f.write(blob[written : written + step])
            f.flush()
            written += step
            while True:
                result = await tailer.read(("j", "stderr.txt"), LOC, committed, final=False)
                got += result.lines
                committed = result.committed_offset
                if not result.more:
                    break
    result = await tailer.read(("j", "stderr.txt"), LOC, committed, final=True)
    got += result.lines
    assert got == expected
    assert counting.bytes_read == len(blob)
    assert result.committed_offset == len(blob)


async def test_tailer_respects_the_chunk_and_says_more(
    share_root: Path, counting: CountingShare
) -> None:
    _log_path(share_root).write_bytes(b"".join(b"%04d\n" % i for i in range(100)))
    tailer = LogTailer(counting, chunk=100)
    first = await tailer.read("k", LOC, 0, final=False)
    assert first.bytes_read == 100 and first.more
    assert first.lines == [f"{i:04d}" for i in range(20)]
    total = list(first.lines)
    offset = first.committed_offset
    while True:
        r = await tailer.read("k", LOC, offset, final=False)
        total += r.lines
        offset = r.committed_offset
        if not r.more:
            break
    assert len(total) == 100 and counting.bytes_read == 500


async def test_partial_line_is_not_committed_until_complete(
    share_root: Path, counting: CountingShare
) -> None:
    path = _log_path(share_root)
    path.write_bytes(b"Epoch 1/3\nEpoch 2")
    tailer = LogTailer(counting)
    r1 = await tailer.read("k", LOC, 0, final=False)
    assert r1.lines == ["Epoch 1/3"] and r1.committed_offset == 10
    with open(path, "ab") as f:
        f.write(b"/3\n")
    r2 = await tailer.read("k", LOC, r1.committed_offset, final=False)
    assert r2.lines == ["Epoch 2/3"] and r2.bytes_read == 3
    assert counting.bytes_read == 20


async def test_a_new_tailer_resumes_from_the_committed_offset(
    share_root: Path, counting: CountingShare
) -> None:
    path = _log_path(share_root)
    path.write_bytes(b"a\nb\npart")
    first = await LogTailer(counting).read("k", LOC, 0, final=False)
    assert first.lines == ["a", "b"] and first.committed_offset == 4
    with open(path, "ab") as f:
        f.write(b"ial\nc\n")
    counting.bytes_read = 0
    # A restarted bot: a fresh tailer, only the stored committed offset.
    again = await LogTailer(counting).read("k", LOC, first.committed_offset, final=False)
    assert again.lines == ["partial", "c"]
    assert counting.bytes_read == len(b"partial\nc\n")  # only the partial line is read again


async def test_truncated_file_restarts_from_zero(share_root: Path, counting: CountingShare) -> None:
    path = _log_path(share_root)
    path.write_bytes(b"old line one\nold line two\n")
    tailer = LogTailer(counting)
    r1 = await tailer.read("k", LOC, 0, final=False)
    assert len(r1.lines) == 2 and not r1.restarted
    path.write_bytes(b"new\n")
    r2 = await tailer.read("k", LOC, r1.committed_offset, final=False)
    assert r2.restarted and r2.lines == ["new"] and r2.committed_offset == 4


async def test_missing_file_gives_no_lines(counting: CountingShare) -> None:
    r = await LogTailer(counting).read("k", LOC, 0, final=True)
    assert r.lines == [] and r.missing and r.committed_offset == 0
    assert counting.reads == 0


async def test_final_flushes_a_last_line_without_newline(
    share_root: Path, counting: CountingShare
) -> None:
    _log_path(share_root).write_bytes(b"done\nSaved model")
    tailer = LogTailer(counting)
    r1 = await tailer.read("k", LOC, 0, final=False)
    r2 = await tailer.read("k", LOC, r1.committed_offset, final=True)
    assert r1.lines == ["done"] and r2.lines == ["Saved model"]
    assert r2.bytes_read == 0  # the held-back bytes came from memory
    assert counting.bytes_read == 16


async def test_forget_drops_state_so_the_caller_offset_rules(
    share_root: Path, counting: CountingShare
) -> None:
    _log_path(share_root).write_bytes(b"a\nb\n")
    tailer = LogTailer(counting)
    await tailer.read("k", LOC, 0, final=False)
    tailer.forget("k")
    again = await tailer.read("k", LOC, 0, final=False)
    assert again.lines == ["a", "b"]


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Epoch 3/10 - loss: 0.4123 - acc: 0.9012 - val_loss: 0.4500 - val_acc: 0.8950", (3, 10)),
        ("Epoch 3/10", (3, 10)),
        ("epoch 3 of 10, lr 0.01", (3, 10)),
        ("[3/10] train loss 0.52", (3, 10)),
        (
            "Finished Epoch[ 3 of 40]: [Training] loss = 1.234 * 100, metric = 25.5% * 100 "
            "0.532s (188.0 samples/s);",
            (3, 40),
        ),
        (" Epoch[ 1 of 5]-Minibatch[   1-  10]: loss = 2.301 * 640", (1, 5)),
        (" 45%|####5     | 45/100 [00:01<00:02, 30.12it/s]", (45, 100)),
        ("INFO:tensorflow:step 100/1000: loss = 2.3", (100, 1000)),
        ("Train Epoch: 3 [1280/60000 (2%)]\tLoss: 0.123456", None),
        ("2018/05/01 12:00:00 starting", None),
        ("Epoch 0/0", None),
        ("Epoch 12/10", None),
    ],
)
def test_parse_progress(line: str, expected: tuple[int, int] | None) -> None:
    got = parse_progress(line)
    assert (None if got is None else (got.current, got.total)) == expected


def test_progress_fraction_of_a_parsed_line() -> None:
    assert parse_progress("Epoch 5/10") == Progress(5, 10)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Epoch 3/10 - loss: 0.4123 - acc: 0.9012 - val_loss: 0.4500 - val_acc: 0.8950",
            {"loss": 0.4123, "acc": 0.9012, "val_loss": 0.45, "val_acc": 0.895},
        ),
        (
            "1875/1875 [==============================] - 3s 2ms/step - loss: 0.2962 - "
            "accuracy: 0.9140 - val_loss: 0.1400 - val_accuracy: 0.9581",
            {"loss": 0.2962, "accuracy": 0.914, "val_loss": 0.14, "val_accuracy": 0.9581},
        ),
        (
            "Finished Epoch[ 3 of 40]: [Training] loss = 1.234 * 100, metric = 25.5% * 100",
            {"loss": 1.234, "metric": 25.5},
        ),
        (
            " Epoch[ 1 of 5]-Minibatch[ 1- 10]: ce = 2.30 * 60000; errs = 90.2% * 60000",
            {"ce": 2.30, "errs": 90.2},
        ),
        ("Train Epoch: 3 [1280/60000 (2%)]\tLoss: 0.123456", {"loss": 0.123456}),
        ("Test set: Average loss: 0.0330, Accuracy: 9892/10000 (99%)", {"loss": 0.033}),
        ("INFO:tensorflow:loss = 0.5, step = 100 (0.2 sec)", {"loss": 0.5}),
        (
            " * Prec@1 75.300 top-1 error: 24.7% top-5 error = 7.5%",
            {"top_1_error": 24.7, "top_5_error": 7.5},
        ),
        ("loss: nan - acc: 0.10", {"acc": 0.1}),
        ("val_loss: inf", {}),
        ("my_loss: 3.0 lr: 0.1 loss: 1e-3.", {"loss": 0.001}),
        ("no metrics here, just a note: 3 files", {}),
    ],
)
def test_parse_metrics(line: str, expected: dict[str, float]) -> None:
    assert parse_metrics(line) == pytest.approx(expected)


def test_log_parser_gives_metrics_the_last_epoch_as_step() -> None:
    parser = LogParser()
    lines = [
        "Epoch 1/2",
        "1875/1875 [====] - 3s 2ms/step - loss: 0.30 - accuracy: 0.91",
        "Epoch 2/2",
        "1875/1875 [====] - 3s 2ms/step - loss: 0.15 - accuracy: 0.95",
    ]
    points = parser.feed_all(lines)
    assert points == [
        MetricPoint(1, "loss", 0.30),
        MetricPoint(1, "accuracy", 0.91),
        MetricPoint(2, "loss", 0.15),
        MetricPoint(2, "accuracy", 0.95),
    ]
    assert parser.progress == Progress(2, 2)
    assert parser.last_metrics == {"loss": 0.15, "accuracy": 0.95}


def test_log_parser_cntk_epoch_lines() -> None:
    parser = LogParser()
    points = parser.feed_all(
        [
            "Finished Epoch[ 1 of 40]: [Training] loss = 2.0 * 100, metric = 50.0% * 100",
            "Finished Epoch[ 2 of 40]: [Training] loss = 1.5 * 100, metric = 40.0% * 100",
        ]
    )
    assert [(p.step, p.name, p.value) for p in points] == [
        (1, "loss", 2.0),
        (1, "metric", 50.0),
        (2, "loss", 1.5),
        (2, "metric", 40.0),
    ]
    assert parser.progress == Progress(2, 40)


def test_log_parser_without_epochs_uses_steps_then_a_count() -> None:
    steps = LogParser()
    steps.feed("step 100/1000 loss: 2.0")
    assert steps.feed("loss: 1.0") == [MetricPoint(100, "loss", 1.0)]
    assert steps.progress == Progress(100, 1000)

    plain = LogParser()
    assert [p.step for line in ("loss: 3", "loss: 2") for p in plain.feed(line)] == [1, 2]


def test_tqdm_progress_does_not_replace_epoch_progress() -> None:
    parser = LogParser()
    parser.feed("Epoch 2/5")
    parser.feed(" 45%|####5     | 45/100 [00:01<00:02, 30.12it/s]")
    assert parser.progress == Progress(2, 5)
