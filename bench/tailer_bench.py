"""Tailer benchmark: 100 growing logs on a LocalShare, polled every 0.25 s like the bot does."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.backends.links import LinkSigner  # noqa: E402
from services.backends.local import LocalShare  # noqa: E402
from services.jobs.tailer import LogTailer  # noqa: E402
from services.models import FileLocation  # noqa: E402
from tests.fakes.shares import CountingShare  # noqa: E402

SHARE = "bench"
WORDS = ["loss", "acc", "val_loss", "épocha", "→", "step", "batch", "lr", "grad", "ok"]


def _line(rng: random.Random, n: int) -> tuple[str, str]:
    """(text, ending): mixed lengths, some multi-byte characters, Keras / tqdm / CRLF endings."""
    kind = rng.random()
    if kind < 0.1:  # a tqdm redraw: ends in a bare \r
        pct = rng.randrange(101)
        return f"{pct:3d}%|{'#' * (pct // 10):<10}| {pct}/100 [00:01<00:02, 30.1it/s]", "\r"
    length = rng.choice([8, 40, 80, 120, 200, 400]) if kind < 0.98 else 5000
    words = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(WORDS))
    text = f"Epoch {n} - " + " ".join(words) + f": {rng.random():.4f}"
    return text, "\r\n" if kind < 0.15 else "\n"


async def _write_one(
    path: Path, seed: int, seconds: float, interval: float
) -> tuple[int, int, str]:
    rng = random.Random(seed)
    digest = hashlib.sha256()
    lines = 0
    written = 0
    pending = b""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            while len(pending) < 2048:
                text, ending = _line(rng, lines)
                digest.update(text.encode() + b"\n")
                lines += 1
                pending += (text + ending).encode()
            # Cut anywhere: mid-line, mid-CRLF, mid-UTF-8 character.
            step = rng.randrange(1, 400)
            os.write(fd, pending[:step])
            written += min(step, len(pending))
            pending = pending[step:]
            await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
        os.write(fd, pending)
        written += len(pending)
    finally:
        os.close(fd)
    return lines, written, digest.hexdigest()


def _writer_main(paths: list[str], seconds: float, interval: float, out: mp.Queue[object]) -> None:
    async def run() -> list[tuple[int, int, str]]:
        return await asyncio.gather(
            *(_write_one(Path(p), i, seconds, interval) for i, p in enumerate(paths))
        )

    out.put(asyncio.run(run()))


@dataclass
class _Tail:
    committed: int = 0
    lines: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


async def _poll(tailer: LogTailer, tails: dict[str, _Tail], *, final: bool) -> None:
    for name, state in tails.items():
        loc = FileLocation(SHARE, name)
        while True:
            result = await tailer.read(name, loc, state.committed, final=final)
            state.committed = result.committed_offset
            state.lines += len(result.lines)
            for line in result.lines:
                state.digest.update(line.encode() + b"\n")
            if not result.more:
                break


async def bench(files: int, seconds: float, interval: float, poll_every: float) -> None:
    with tempfile.TemporaryDirectory(prefix="tailer-bench-") as tmp:
        root = Path(tmp)
        share = CountingShare(LocalShare(root, LinkSigner(b"bench", "http://127.0.0.1/files")))
        share_dir = share.inner.create_share(SHARE)
        names = [f"job-{i:03d}/stderr.txt" for i in range(files)]
        for name in names:
            (share_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (share_dir / name).touch()

        queue: mp.Queue[object] = mp.get_context("spawn").Queue()
        writer = mp.get_context("spawn").Process(
            target=_writer_main,
            args=([str(share_dir / n) for n in names], seconds, interval, queue),
        )
        tailer = LogTailer(share)
        tails = {n: _Tail() for n in names}
        wall0, cpu0 = time.perf_counter(), time.process_time()
        writer.start()  # the writers live in another process: process_time is the tailer's
        polls, slowest = 0, 0.0
        while writer.is_alive():
            start = time.perf_counter()
            await _poll(tailer, tails, final=False)
            took = time.perf_counter() - start
            polls, slowest = polls + 1, max(slowest, took)
            await asyncio.sleep(max(0.0, poll_every - took))
        writer.join()
        results = queue.get()
        await _poll(tailer, tails, final=True)  # the job ended: flush what is left
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    assert isinstance(results, list)
    lines_written = sum(r[0] for r in results)
    bytes_written = sum(r[1] for r in results)
    lines_delivered = sum(t.lines for t in tails.values())
    same = all(t.digest.hexdigest() == r[2] for t, r in zip(tails.values(), results, strict=True))
    print(f"files                      {files}")
    print(f"writer seconds             {seconds:g}  (append every ~{interval * 1000:.0f} ms/file)")
    print(
        f"poll interval              {poll_every:g} s, polls {polls}, slowest poll {slowest:.3f} s"
    )
    print(f"bytes written              {bytes_written}")
    print(f"bytes read                 {share.bytes_read}  ({share.reads} reads)")
    print(f"bytes read / written       {share.bytes_read / max(bytes_written, 1):.4f}")
    print(f"lines written              {lines_written}")
    print(f"lines delivered            {lines_delivered}")
    print(f"lines identical            {'yes' if same else 'NO'}")
    print(f"lines/s delivered          {lines_delivered / wall:.0f}")
    print(f"tailer CPU time            {cpu:.2f} s")
    print(f"wall time                  {wall:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between appends")
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between tailer polls")
    args = parser.parse_args()
    asyncio.run(bench(args.files, args.seconds, args.interval, args.poll))


if __name__ == "__main__":
    main()
