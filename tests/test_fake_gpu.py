"""The fake NVIDIA driver answers as nvidia-smi does, so the node code that reads it is tested
against the real output shapes (`-L`, `--query-gpu … --format=csv[,noheader][,nounits]`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fakes import gpu

QUERY = "--query-gpu=utilization.gpu,memory.used,memory.total"


def smi(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "nvidia-smi"), *args], capture_output=True, text=True, check=False
    )


def test_lists_its_gpus_and_answers_queries_with_and_without_units(tmp_path: Path) -> None:
    b = gpu.install(tmp_path, count=2, memory_mib=16384, series=[(87, 14540)])
    assert smi(b, "-L").stdout.count("GPU ") == 2
    full = smi(b, QUERY, "--format=csv").stdout.splitlines()
    assert full == [
        "utilization.gpu [%], memory.used [MiB], memory.total [MiB]",
        "87 %, 14540 MiB, 16384 MiB",
        "87 %, 14540 MiB, 16384 MiB",
    ]
    bare = smi(b, QUERY, "--format=csv,noheader,nounits").stdout.splitlines()
    assert bare == ["87, 14540, 16384", "87, 14540, 16384"]
    assert gpu.queries(b) == 2


def test_a_series_is_taken_in_turn_per_gpu_and_its_last_sample_repeats(tmp_path: Path) -> None:
    b = gpu.install(tmp_path, count=2, series=[(10, 1), [(3, 2), (90, 3)]])
    seen = [smi(b, QUERY, "--format=csv,noheader,nounits").stdout.split() for _ in range(3)]
    assert seen[0] == ["10,", "1,", "16384", "10,", "1,", "16384"]
    assert seen[1] == seen[2] == ["3,", "2,", "16384", "90,", "3,", "16384"]


def test_a_failed_driver_answers_like_the_real_one_and_a_missing_one_is_absent(
    tmp_path: Path,
) -> None:
    b = gpu.install(tmp_path / "a", count=1)
    gpu.set_state(b, mode="failed")
    r = smi(b, "-L")
    assert r.returncode == 9 and "couldn't communicate with the NVIDIA driver" in r.stderr
    assert not (gpu.install(tmp_path / "b", mode="missing") / "nvidia-smi").exists()
    with pytest.raises(ValueError):
        gpu.install(tmp_path / "c", mode="flaky")
