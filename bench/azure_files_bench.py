"""Files requests per tail cycle: N jobs with growing stdout/stderr on the fake Azure Files
server, tailed by the bot's real LogTailer over AzureShare (real SDK clients, real HTTP).

Each cycle a random share of the log files grows by a few lines (cut anywhere: mid-line,
mid-CRLF), then every job's files are tailed the way JobRunner.tail_logs does it (job by job,
file by file, again while the tailer says `more`). The fake counts every request.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.backends.azure.config import AzureConfig  # noqa: E402
from services.backends.azure.files import AzureShare  # noqa: E402
from services.jobs.tailer import LogTailer, TailResult, split_lines  # noqa: E402
from services.models import FileLocation  # noqa: E402
from tests.fakes.azure_files import FakeAzureFiles  # noqa: E402

SHARE = "bench"
LOG_FILES = ("stdout.txt", "stderr.txt")
OPS = {"GetFileProperties": "HEAD", "GetFile": "GET", "ListDirectoriesAndFiles": "list"}


@dataclass
class _Log:
    path: Path
    loc: FileLocation
    rng: random.Random
    expected: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    pending: bytes = b""  # generated, not yet written
    written: int = 0
    committed: int = 0
    lines: int = 0

    def grow(self) -> None:
        while len(self.pending) < 600:
            text = f"Epoch {self.lines + 1}/100 - loss: {self.rng.random():.4f} - acc: 0.9"
            ending = self.rng.choice(["\n", "\n", "\n", "\r\n", "\r"])
            self.expected.append(text)
            self.pending += (text + ending).encode()
            self.lines += 1
        step = self.rng.randrange(1, 400)
        data, self.pending = self.pending[:step], self.pending[step:]
        with self.path.open("ab") as f:
            f.write(data)
        self.written += len(data)

    def flush(self) -> None:
        with self.path.open("ab") as f:
            f.write(self.pending)
        self.written += len(self.pending)
        self.pending = b""


async def _tail(tailer: LogTailer, job: str, logs: list[_Log], *, final: bool) -> None:
    """What JobRunner._tail_file does, minus the store."""
    for log in logs:
        while True:
            result = await tailer.read((job, log.loc.path), log.loc, log.committed, final=final)
            log.committed = result.committed_offset
            log.delivered += result.lines
            if not result.more:
                break


class GetFirstTailer(LogTailer):
    """The proposed access pattern, for comparison: one ranged GET per file per cycle (206 with
    the new bytes, or 416 when there are none), no Get File Properties. `more` is guessed from a
    full chunk; a file that shrank goes unnoticed, which is why the real proposal wants the
    file size back from the GET (Content-Range) through the port."""

    async def _read(self, state: Any, loc: FileLocation, *, final: bool) -> TailResult:
        data = await self._share.read_range(loc, state.offset, self._chunk)
        state.offset += len(data)
        more = len(data) == self._chunk
        buf = state.pending + data
        lines, used = split_lines(buf, final=final and not more, max_line=self._max_line)
        state.pending = buf[used:]
        return TailResult(lines, state.committed, len(data), more=more)


async def bench(jobs: int, cycles: int, grow: float, seed: int, pattern: str) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="azure-files-bench-") as tmp:
        async with FakeAzureFiles(Path(tmp)) as files:
            share_dir = files.create_share(SHARE)
            logs: dict[str, list[_Log]] = {}
            for j in range(jobs):
                job = f"job-{j:03d}"
                rel = f"workspaces/ws/experiments/exp/jobs/{job}/0f1e2d3c/stdouterr"
                (share_dir / rel).mkdir(parents=True)
                logs[job] = []
                for name in LOG_FILES:
                    (share_dir / rel / name).touch()
                    logs[job].append(
                        _Log(
                            share_dir / rel / name,
                            FileLocation(SHARE, f"{rel}/{name}"),
                            random.Random(rng.random()),
                        )
                    )
            config = AzureConfig(
                subscription_id="sub",
                resource_group="rg",
                location="eastus",
                subnet_id="subnet",
                storage_account=files.account,
                share=SHARE,
                storage_key=files.key,
                storage_endpoint=files.account_url,
            )
            all_logs = [log for group in logs.values() for log in group]
            per_cycle: list[Counter[str]] = []
            per_grown: list[int] = []
            per_idle: list[int] = []
            walls: list[float] = []
            async with AzureShare(config) as share:
                tailer = GetFirstTailer(share) if pattern == "get-first" else LogTailer(share)
                for _ in range(cycles):
                    grown = {log.loc.path for log in all_logs if rng.random() < grow}
                    for log in all_logs:
                        if log.loc.path in grown:
                            log.grow()
                    files.requests.clear()
                    start = time.perf_counter()
                    for job, group in logs.items():
                        await _tail(tailer, job, group, final=False)
                    walls.append(time.perf_counter() - start)
                    per_cycle.append(Counter(OPS.get(r.op, r.op) for r in files.requests))
                    by_file = Counter(r.path for r in files.requests)
                    per_grown += [by_file[p] for p in grown]
                    per_idle += [
                        by_file[log.loc.path] for log in all_logs if log.loc.path not in grown
                    ]
                for log in all_logs:
                    log.flush()
                for job, group in logs.items():  # the jobs ended: the last partial lines too
                    await _tail(tailer, job, group, final=True)

    written = sum(log.written for log in all_logs)
    same = all(log.delivered == log.expected for log in all_logs)
    total = Counter[str]()
    for c in per_cycle:
        total.update(c)
    n_files = len(all_logs)
    mean = sum(total.values()) / cycles
    breakdown = ", ".join(f"{op} {total[op] / cycles:.1f}" for op in ("HEAD", "GET", "list"))
    print(f"jobs                         {jobs} ({n_files} log files: stdout + stderr)")
    print(f"cycles                       {cycles}, each file grows in a cycle with p={grow:g}")
    print(f"access pattern               {pattern}")
    print(f"Files requests per cycle     {mean:.1f}  ({breakdown})")
    print(f"  per log file per cycle     {mean / n_files:.2f}")
    print(f"  per grown file             {statistics.fmean(per_grown or [0]):.2f}")
    print(f"  per unchanged file         {statistics.fmean(per_idle or [0]):.2f}")
    print(f"  per job per cycle          {mean / jobs:.2f}")
    print(f"bytes written                {written}")
    print(f"bytes read (served)          {files.bytes_served}")
    print(f"bytes read / written         {files.bytes_served / max(written, 1):.4f}")
    print(f"lines identical              {'yes' if same else 'NO'}")
    print(f"wall per cycle (loopback)    {statistics.fmean(walls) * 1000:.0f} ms mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--grow", type=float, default=0.5, help="share of files grown per cycle")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--pattern",
        choices=["stat-read", "get-first"],
        default="stat-read",
        help="stat-read: the bot's LogTailer as it is; get-first: the proposed pattern",
    )
    args = parser.parse_args()
    asyncio.run(bench(args.jobs, args.cycles, args.grow, args.seed, args.pattern))


if __name__ == "__main__":
    main()
