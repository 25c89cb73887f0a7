"""The scale bench runs end to end at a small size and prints its figures (no timing asserts)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_bench_prints_its_figures_and_loses_no_line() -> None:
    run = subprocess.run(
        [sys.executable, "bench/scale_bench.py", "--jobs", "20", "--clusters", "4"]
        + ["--minutes", "0.08", "--write-every", "0.5", "--drain-timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    for label in (
        "poll cycle",
        "ARM requests/cycle",
        "Files requests/cycle",
        "per running job",
        "bot CPU",
        "peak RSS",
        "database size",
    ):
        assert re.search(rf"^\s*{re.escape(label)}\s", out, re.M), f"{label!r} missing:\n{out}"
    assert re.search(r"^shape\s+4 clusters, 20 running jobs$", out, re.M), out
    assert re.search(r"HEAD 0\b", out), out  # the tail read is GET only
    written = int(re.search(r"^lines written\s+(\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert written > 0, out
    assert re.search(r"^lines lost\s+0$", out, re.M), out
