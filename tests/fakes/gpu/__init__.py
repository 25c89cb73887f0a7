"""A fake NVIDIA driver for simulated nodes and local runs: `install(bin_dir, …)` puts a fake
`nvidia-smi` (and the container toolkit's `nvidia-ctk`) into `bin_dir`; put that directory first
on a process's PATH and it has GPUs.

Modes: "healthy" (answers `-L` and `--query-gpu` with `count` GPUs), "failed" (the driver does
not answer: exit 9 with the real message), "missing" (nothing installed: command not found).
`series` is the utilisation a job sees, one sample per query, the last repeating:
`[util %, used MiB]` for every GPU or `[[util, used], …]` one pair per GPU. `set_state` changes
it while a job runs; `queries(bin_dir)` counts the query calls made.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOOLS = ("nvidia-smi", "nvidia-ctk")


def install(
    bin_dir: Path,
    *,
    count: int = 1,
    name: str = "Tesla V100-PCIE-16GB",
    memory_mib: int = 16384,
    mode: str = "healthy",
    series: Sequence[Any] = ((0, 0),),
) -> Path:
    """Give whatever runs with `bin_dir` on PATH `count` fake GPUs; returns `bin_dir`."""
    if mode not in ("healthy", "failed", "missing"):
        raise ValueError(f"unknown fake GPU mode {mode!r}")
    bin_dir.mkdir(parents=True, exist_ok=True)
    if mode == "missing":
        return bin_dir
    for tool in TOOLS:
        link = bin_dir / tool
        if not link.exists():
            link.symlink_to(HERE / tool)
    set_state(bin_dir, count=count, name=name, memory_mib=memory_mib, mode=mode, series=series)
    return bin_dir


def set_state(bin_dir: Path, **changes: Any) -> None:
    """Change the fake driver's state (`series` restarts from its first sample)."""
    path = bin_dir / "nvidia-smi.json"
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    state.update({k: ([list(s) for s in v] if k == "series" else v) for k, v in changes.items()})
    if "series" in changes:
        state["taken"] = 0
    path.write_text(json.dumps(state))


def queries(bin_dir: Path) -> int:
    """How many `--query-gpu` calls the fake answered."""
    calls = bin_dir / "nvidia-smi.calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    return sum("--query-gpu" in line for line in lines)
