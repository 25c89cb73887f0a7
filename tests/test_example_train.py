"""examples/mnist/train.py run as a real subprocess, and the mnist job.json that launches it."""

from __future__ import annotations

import gzip
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "mnist" / "train.py"
MANIFEST = ROOT / "manifests" / "jobs" / "mnist.json"
TIMEOUT = 120  # seconds; generous for slow CI, never a timing assertion

EPOCH_RE = re.compile(
    r"^Epoch (?P<epoch>\d+)/(?P<total>\d+) - loss: (?P<loss>\d+\.\d{4}) - acc: (?P<acc>\d\.\d{4})"
    r" - val_loss: (?P<val_loss>\d+\.\d{4}) - val_acc: (?P<val_acc>\d\.\d{4})$"
)
SAVED_RE = re.compile(r"^Saved model to (?P<path>.+) \((?P<bytes>\d+) bytes\)$")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZ_BATCHAI_")}
    env.update(extra)
    return env


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _epoch_lines(stderr: str) -> list[re.Match[str]]:
    return [m for line in stderr.splitlines() if (m := EPOCH_RE.match(line))]


def test_trains_digits_and_writes_model(tmp_path: Path) -> None:
    out = tmp_path / "out" / "model"  # nested: the script must create it

    proc = _run("--epochs", "3", "--output-dir", str(out), cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    epochs = _epoch_lines(proc.stderr)
    assert [int(m["epoch"]) for m in epochs] == [1, 2, 3]
    assert {m["total"] for m in epochs} == {"3"}
    assert float(epochs[-1]["val_acc"]) > 0.8
    assert float(epochs[-1]["loss"]) < float(epochs[0]["loss"])

    lines = proc.stderr.splitlines()
    assert "sklearn-digits-8x8" in lines[0] and "train" in lines[0]
    saved = SAVED_RE.match(lines[-1])
    assert saved, lines[-1]
    model = out / "model.npz"
    assert Path(saved["path"]) == model
    assert int(saved["bytes"]) == model.stat().st_size

    with np.load(model) as weights:
        assert weights["W1"].shape == (64, 64)
        assert weights["W2"].shape == (64, 10)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert round(metrics["history"][-1]["val_acc"], 4) == float(epochs[-1]["val_acc"])

    summary = json.loads(proc.stdout)
    assert summary["status"] == "succeeded"
    assert summary["val_acc"] == float(epochs[-1]["val_acc"])


def test_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    runs = [
        _run("--epochs", "2", "--seed", "7", "--output-dir", str(tmp_path / name), cwd=tmp_path)
        for name in ("a", "b")
    ]

    assert [r.returncode for r in runs] == [0, 0]
    first, second = ([m.group(0) for m in _epoch_lines(r.stderr)] for r in runs)
    assert first == second and len(first) == 2


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_reads_mnist_idx_files_from_batchai_env_dirs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "dataset"
    data.mkdir()
    for prefix, n in (("train", 120), ("t10k", 40)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        _write_idx(data / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    out = tmp_path / "model"

    # No flags: the Batch AI input/output directory variables pick data and destination.
    proc = _run(
        "--epochs",
        "1",
        cwd=tmp_path,
        AZ_BATCHAI_INPUT_DATASET=str(data),
        AZ_BATCHAI_OUTPUT_MODEL=str(out),
    )

    assert proc.returncode == 0, proc.stderr
    assert "120 train / 40 validation samples, 784 features" in proc.stderr
    assert len(_epoch_lines(proc.stderr)) == 1
    with np.load(out / "model.npz") as weights:
        assert weights["W1"].shape == (784, 64)


def test_defaults_to_outputs_dir_without_batchai_env(tmp_path: Path) -> None:
    proc = _run("--epochs", "1", "--hidden", "0", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "outputs" / "model.npz") as weights:
        assert set(weights.files) >= {"W1", "b1"} and "W2" not in weights.files


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "abc"],
        ["--epochs", "0"],
        ["--lr", "-0.1"],
        ["--batch-size", "1.5"],
        ["--no-such-flag"],
        ["--data-dir", "/definitely/not/here"],
    ],
)
def test_bad_argument_exits_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    proc = _run(*args, "--output-dir", str(tmp_path / "out"), cwd=tmp_path)

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("train.py: error:")
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_other_failure_exits_1_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    proc = _run("--epochs", "1", "--output-dir", str(blocker / "out"), cwd=tmp_path)

    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error:"), proc.stderr


def _stderr_lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Pump the child's stderr into a queue line by line; None marks EOF."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_sigterm_exits_143(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), "--epochs", "3", "--sleep-per-epoch", "5"],
        cwd=tmp_path,
        env=_env(AZ_BATCHAI_OUTPUT_MODEL=str(tmp_path / "out")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _stderr_lines(proc)
        deadline = time.monotonic() + TIMEOUT
        seen: list[str] = []
        while not any(EPOCH_RE.match(line) for line in seen):
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"stderr closed before the first epoch: {seen}"
            seen.append(line)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 143
        while (line := lines.get(timeout=TIMEOUT)) is not None:
            seen.append(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert "terminated" in seen[-1].lower()
    assert [int(m["epoch"]) for line in seen if (m := EPOCH_RE.match(line))] == [1]
    assert not (tmp_path / "out" / "model.npz").exists()


def test_mnist_job_manifest() -> None:
    job = json.loads(MANIFEST.read_text())

    assert job["$schema"] == (
        "https://raw.githubusercontent.com/Azure/BatchAI/master/schemas/2018-05-01/job.json"
    )
    props = job["properties"]
    assert props["nodeCount"] == 1
    assert props["mountVolumes"]["azureFileShares"] == [
        {
            "azureFileUrl": (
                "https://<AZURE_BATCHAI_STORAGE_ACCOUNT>.file.core.windows.net/batchaiquickstart"
            ),
            "relativeMountPath": "afs",
        }
    ]
    assert props["inputDirectories"] == [
        {"id": "SCRIPT", "path": "$AZ_BATCHAI_JOB_MOUNT_ROOT/afs/examples/mnist"}
    ]
    assert props["outputDirectories"] == [
        {"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_JOB_MOUNT_ROOT/afs", "pathSuffix": "model"}
    ]
    assert props["stdOutErrPathPrefix"] == "$AZ_BATCHAI_JOB_MOUNT_ROOT/afs"
    assert props["pyTorchSettings"] == {
        "pythonScriptFilePath": "$AZ_BATCHAI_INPUT_SCRIPT/train.py",
        "commandLineArgs": "--epochs 10 --output-dir $AZ_BATCHAI_OUTPUT_MODEL",
    }
    assert props["constraints"] == {"maxWallClockTime": "0:10:00"}
    toolkits = [key for key in props if key.endswith("Settings") and key != "containerSettings"]
    assert toolkits == ["pyTorchSettings"]
    # The script the job points at is the one under examples/, as the bot copies it to the share.
    script_dir = props["inputDirectories"][0]["path"].removeprefix(
        "$AZ_BATCHAI_JOB_MOUNT_ROOT/afs/"
    )
    assert (ROOT / script_dir / "train.py") == TRAIN and TRAIN.is_file()
