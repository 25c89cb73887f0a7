"""The Slack streaming benches run end to end with --sweep at a tiny size: they print the sweep
card's staleness besides their other figures, and lose no line (no timing asserts)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BENCHES = {
    "slack_stream_bench": ["--jobs", "4", "--rate", "5", "--seconds", "4"]
    + ["--drain-timeout", "120", "--sweep"],
    "ops_bench": ["--jobs", "6", "--rate", "5", "--seconds", "6", "--channels", "2"]
    + ["--drain-timeout", "120", "--sweep"],
}


@pytest.mark.parametrize("bench", sorted(BENCHES))
def test_bench_with_sweep_prints_card_staleness_and_loses_no_line(bench: str) -> None:
    run = subprocess.run(
        [sys.executable, f"bench/{bench}.py", *BENCHES[bench]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    for label in (
        "lines written",
        "lines posted",
        "line-to-Slack latency",
        "429s received",
        "Slack posts per second",
        "bot peak RSS",
        "sweep card staleness p95",
        "sweep cards",
    ):
        assert re.search(rf"^{re.escape(label)}\s", out, re.M), f"{label!r} missing:\n{out}"
    written = int(re.search(r"^lines written\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    assert written > 0, out
    assert re.search(r"^lines lost\s+0\s", out, re.M), out
    assert re.search(r"^lines posted twice\s+0$", out, re.M), out
    # every job state change reached a card: none is missing from every version
    assert re.search(r"; 0 never shown$", out, re.M), out
    sweeps = 2 if bench == "ops_bench" else 1
    cards = re.search(r"^sweep cards\s+(\d+) card\(s\).*; (\d+) other top-level", out, re.M)
    assert cards is not None, out
    assert int(cards.group(1)) == sweeps, out  # one card per sweep, not one per job
