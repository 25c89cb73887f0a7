"""Log tailing by byte offset, and progress / metric parsing of training log lines."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from urllib.parse import unquote

from services.core.ports import FileShare
from services.models import FileLocation, MetricPoint, Progress

MAX_LINE = 65536
_EOL = re.compile(rb"\r\n|\n|\r")


# --------------------------------------------------------------------------- line splitting


def _utf8_cut(data: bytes, limit: int) -> int:
    """A cut point <= limit that does not split a UTF-8 sequence (falls back to `limit`)."""
    cut = limit
    # Back off over at most 3 continuation bytes so the piece before the cut decodes cleanly.
    while cut > limit - 3 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 and (data[cut] & 0xC0) != 0x80 else limit


def _pieces(line: bytes, max_line: int) -> list[bytes]:
    out: list[bytes] = []
    while len(line) > max_line:
        cut = _utf8_cut(line, max_line)
        out.append(line[:cut])
        line = line[cut:]
    out.append(line)
    return out


def split_lines(data: bytes, *, final: bool, max_line: int = MAX_LINE) -> tuple[list[str], int]:
    """Complete lines of `data` and the number of bytes they used up.

    `\\r\\n`, `\\n` and a bare `\\r` (tqdm redraws) end a line. A trailing partial line is held
    back (not consumed) unless `final`, or it is longer than `max_line`, in which case it is cut
    into `max_line` pieces. Long complete lines are cut the same way, so the lines a file yields
    do not depend on how its bytes were chunked.
    """
    if max_line < 4:
        raise ValueError("max_line must be at least 4")
    raw: list[bytes] = []
    pos = 0
    for m in _EOL.finditer(data):
        if m.group() == b"\r" and m.end() == len(data) and not final:
            break  # a lone \r at the end may be the first half of \r\n still being written
        raw.extend(_pieces(data[pos : m.start()], max_line))
        pos = m.end()
    rest = data[pos:]
    if rest and final:
        raw.extend(_pieces(rest, max_line))
        pos = len(data)
    else:
        while len(rest) > max_line:
            cut = _utf8_cut(rest, max_line)
            raw.append(rest[:cut])
            rest = rest[cut:]
            pos += cut
    return [line.decode("utf-8", errors="replace") for line in raw], pos


# --------------------------------------------------------------------------- log journal

MAX_JOURNAL_HEADER = 1024  # a record header is short; a longer line means the file is not one


@dataclass(frozen=True)
class JournalRecord:
    """`length` bytes of log `name` from `offset`, copied by the node runner; `size` was the
    log's size then. A heartbeat record has no name."""

    name: str | None
    offset: int = 0
    data: bytes = b""
    size: int = 0


def split_records(data: bytes) -> tuple[list[JournalRecord], int]:
    """Complete records of a log journal (noderun.runner.JOURNAL) and the bytes they used up;
    a record not yet complete is held back. ValueError when `data` is not a journal."""
    records: list[JournalRecord] = []
    pos = 0
    while True:
        end = data.find(b"\n", pos, pos + MAX_JOURNAL_HEADER)
        if end < 0:
            if len(data) - pos >= MAX_JOURNAL_HEADER:
                raise ValueError("not a log journal: a header line that does not end")
            return records, pos
        head = data[pos:end].split(b" ")
        if head[0] == b"H" and len(head) == 2:
            records.append(JournalRecord(None))
            pos = end + 1
            continue
        if head[0] != b"D" or len(head) != 5 or not all(h.isdigit() for h in head[2:]):
            raise ValueError(f"not a log journal record: {data[pos:end][:80]!r}")
        offset, length, size = (int(h) for h in head[2:])
        if end + 1 + length > len(data):
            return records, pos
        name = unquote(head[1].decode("ascii", errors="replace"))
        records.append(JournalRecord(name, offset, data[end + 1 : end + 1 + length], size))
        pos = end + 1 + length


@dataclass(frozen=True)
class JournalRead:
    records: list[JournalRecord]
    committed_offset: int  # just past the last complete record returned
    bytes_read: int
    more: bool = False
    missing: bool = False


# --------------------------------------------------------------------------- tailer


@dataclass(frozen=True)
class TailResult:
    lines: list[str]
    committed_offset: int  # just past the last complete line returned; the caller stores it
    bytes_read: int
    more: bool = False  # more bytes were already there than one chunk; call again
    restarted: bool = False  # the file shrank (truncated or replaced): read again from 0
    missing: bool = False


@dataclass
class _TailState:
    offset: int  # next byte to read
    pending: bytes = b""  # read but not yet part of a returned line

    @property
    def committed(self) -> int:
        return self.offset - len(self.pending)


TailRead = Callable[[FileLocation, int, int], Awaitable[tuple[bytes, int] | None]]


class LogTailer:
    """Reads only new bytes of growing log files; never reads a byte twice within a process.

    Keys are the caller's (job id, file name). The caller persists `committed_offset`; a new
    tailer (after a restart) starts from it and re-reads at most one partial line.

    A share that offers `read_tail(loc, offset, length) -> (bytes, file size) | None` (Azure
    Files: one ranged GET whose Content-Range gives the size) is read with one request per file
    and call; any other share with `stat` + `read_range` (two calls, cheap on a local disk).
    """

    def __init__(self, share: FileShare, *, chunk: int = 1 << 20, max_line: int = MAX_LINE):
        self._share = share
        self._chunk = chunk
        self._max_line = max_line
        # getattr, not isinstance: the bot hands over its metrics proxy, not the share itself.
        self._read_tail: TailRead | None = getattr(share, "read_tail", None)
        self._states: dict[Hashable, _TailState] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}

    async def read(
        self, key: Hashable, loc: FileLocation, committed_offset: int, *, final: bool
    ) -> TailResult:
        """New complete lines since the last call, at most one chunk's worth.

        With `final` (the job has ended) the trailing partial line is returned too, once the
        result no longer says `more`.
        """
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            state = self._states.get(key)
            if state is None or state.committed != committed_offset:
                # First sight, or the caller rewound: trust the caller's committed offset.
                state = self._states[key] = _TailState(offset=committed_offset)
            return await self._read(state, loc, final=final)

    async def read_journal(
        self, key: Hashable, loc: FileLocation, committed_offset: int
    ) -> JournalRead:
        """New complete records of a log journal since the last call (one read, one chunk)."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            state = self._states.get(key)
            if state is None or state.committed != committed_offset:
                state = self._states[key] = _TailState(offset=committed_offset)
            got = await self._fetch(loc, state.offset)
            if got is None:
                return JournalRead([], state.committed, 0, missing=True)
            data, size = got
            if size < state.offset:  # replaced: its records are read again, the seen ones skipped
                state.offset, state.pending = 0, b""
                return JournalRead([], 0, 0, more=size > 0)
            state.offset += len(data)
            records, used = split_records(state.pending + data)
            state.pending = (state.pending + data)[used:]
            return JournalRead(records, state.committed, len(data), more=state.offset < size)

    def accept(
        self, key: Hashable, committed_offset: int, record: JournalRecord
    ) -> TailResult | None:
        """The new complete lines a journal record adds to log `key`, as `read` would give them;
        None when the record cannot be used (it starts past what was read: a gap; or the log
        shrank): then `read` the log itself. The caller serialises calls per key with `read`."""
        state = self._states.get(key)
        if state is None or state.committed != committed_offset:
            state = self._states[key] = _TailState(offset=committed_offset)
        end = record.offset + len(record.data)
        if record.size < state.offset or record.offset > state.offset:
            return None
        if end <= state.offset:
            return TailResult([], state.committed, 0)
        fresh = end - state.offset
        data = state.pending + record.data[state.offset - record.offset :]
        state.offset = end
        lines, used = split_lines(data, final=False, max_line=self._max_line)
        state.pending = data[used:]
        return TailResult(lines, state.committed, fresh)

    def forget(self, key: Hashable) -> None:
        self._states.pop(key, None)
        self._locks.pop(key, None)

    async def _fetch(self, loc: FileLocation, offset: int) -> tuple[bytes, int] | None:
        """(new bytes from `offset`, at most one chunk; the file's size), or None if missing."""
        if self._read_tail is not None:
            return await self._read_tail(loc, offset, self._chunk)
        entry = await self._share.stat(loc)
        if entry is None or entry.is_directory:
            return None
        length = min(self._chunk, entry.size - offset)
        data = await self._share.read_range(loc, offset, length) if length > 0 else b""
        return data, entry.size

    async def _read(self, state: _TailState, loc: FileLocation, *, final: bool) -> TailResult:
        got = await self._fetch(loc, state.offset)
        if got is None:
            return TailResult([], state.committed, 0, missing=True)
        data, size = got
        restarted = False
        if size < state.offset:  # truncated or replaced: read it again from the start
            state.offset, state.pending, restarted = 0, b"", True
            got = await self._fetch(loc, 0) if size > 0 else (b"", 0)
            if got is None:
                return TailResult([], state.committed, 0, missing=True, restarted=True)
            data, size = got
        state.offset += len(data)
        more = state.offset < size
        lines, used = split_lines(
            state.pending + data, final=final and not more, max_line=self._max_line
        )
        state.pending = (state.pending + data)[used:]
        return TailResult(lines, state.committed, len(data), more=more, restarted=restarted)


# --------------------------------------------------------------------------- parsing

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"

# (kind, pattern): "epoch" progress also becomes the step of later metrics, "step" only progress.
# Counts have at most 9 digits: a step must fit a 32-bit column, and int() refuses 4,300+ digits.
_PROGRESS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # CNTK: "Finished Epoch[ 3 of 40]: [Training] loss = ..." and "Epoch[ 3 of 40]-Minibatch[...]"
    ("epoch", re.compile(r"\bEpoch\s*\[\s*(\d{1,9}(?!\d))\s+of\s+(\d{1,9}(?!\d))\s*\]", re.I)),
    # Keras / PyTorch: "Epoch 3/10", "epoch: 3/10", "epoch 3 of 10"
    (
        "epoch",
        re.compile(r"\bepoch\b[\s:#]*(\d{1,9}(?!\d))\s*(?:/|\bof\b)\s*(\d{1,9}(?!\d))", re.I),
    ),
    # tqdm: " 45%|####      | 45/100 [00:01<00:02, 30.1it/s]". The percentage starts where a
    # digit run starts and has at most 3 digits: `\d+%` backtracked through every suffix of a
    # long digit run (quadratic: 15 s of CPU for one 64 KiB line of digits).
    ("step", re.compile(r"(?<!\d)\d{1,3}%\|[^|]*\|\s*(\d{1,9}(?!\d))/(\d{1,9}(?!\d))\b")),
    # TF: "step 100/1000", "Step: 100 / 1000"
    ("step", re.compile(r"\bstep\b[\s:#]*(\d{1,9}(?!\d))\s*(?:/|\bof\b)\s*(\d{1,9}(?!\d))", re.I)),
    # "[3/10]" as a whole bracket at the start of a line (many hand-written loops)
    ("epoch", re.compile(r"^\s*\[\s*(\d{1,9}(?!\d))\s*/\s*(\d{1,9}(?!\d))\s*\]")),
)

_METRIC_NAMES = (
    r"top-?[15](?:[ _-]?(?:error|err|acc(?:uracy)?))?",
    r"(?:(?:val|valid|validation|train|training|test|eval)[ _])?"
    r"(?:loss|acc|accuracy|error|err|errs|metric|ce|perplexity|ppl|f1|auc|precision|recall"
    r"|mae|mse|rmse)",
)
_METRIC = re.compile(
    r"(?<![\w-])(?P<name>" + "|".join(_METRIC_NAMES) + r")\s*[:=]\s*(?P<value>" + _NUM + r")"
    r"(?P<pct>%)?(?![\w/]|\.\d)",
    re.I,
)


def _match_progress(line: str) -> tuple[str, Progress] | None:
    for kind, pattern in _PROGRESS:
        m = pattern.search(line)
        if m:
            current, total = int(m.group(1)), int(m.group(2))
            if total > 0 and current <= total:
                return kind, Progress(current, total)
    return None


def parse_progress(line: str) -> Progress | None:
    """Epoch or step progress on one log line (Keras, PyTorch, CNTK, tqdm, TensorFlow)."""
    found = _match_progress(line)
    return None if found is None else found[1]


def _metric_name(raw: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", raw.lower()).strip("_")


def parse_metrics(line: str) -> dict[str, float]:
    """Named metric values on one log line; `25.5%` gives 25.5; NaN and infinities are skipped."""
    out: dict[str, float] = {}
    for m in _METRIC.finditer(line):
        value = float(m.group("value"))
        if math.isfinite(value):
            out[_metric_name(m.group("name"))] = value
    return out


class LogParser:
    """Turns a job's log lines into progress and metric points; metrics take the last epoch seen
    as their step (else the last step count, else a running count of lines with metrics)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.epoch: int | None = None
        self._step: int | None = None
        self._metric_lines = 0
        self.last_metrics: dict[str, float] = {}

    def feed(self, line: str) -> list[MetricPoint]:
        found = _match_progress(line)
        if found is not None:
            kind, progress = found
            if kind == "epoch":
                self.epoch = progress.current
                self.progress = progress
            else:
                self._step = progress.current
                if self.epoch is None:  # epochs, when a log has them, are the better headline
                    self.progress = progress
        metrics = parse_metrics(line)
        if not metrics:
            return []
        self._metric_lines += 1
        self.last_metrics.update(metrics)
        step = self.epoch if self.epoch is not None else self._step
        if step is None:
            step = self._metric_lines
        return [MetricPoint(step, name, value) for name, value in metrics.items()]

    def feed_all(self, lines: list[str]) -> list[MetricPoint]:
        return [point for line in lines for point in self.feed(line)]
