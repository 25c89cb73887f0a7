"""JOB_PYTHON: local jobs' Python scripts run with it (the bot's own install carries no
scikit-learn); the node runner stays on the bot's interpreter; the default is .venv-jobs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import JOBS_ENV_PYTHON, Settings

ROOT = Path(__file__).resolve().parents[1]
SEED = [
    "cluster create --name mycluster --vm-size STANDARD_NC6 --image UbuntuLTS --min 1 --max 1 "
    "--afs-name batchaiquickstart --afs-mount-path azurefileshare --resource-group myBatchAIGroup",
    "job create --name myjob --cluster-name mycluster --resource-group myBatchAIGroup "
    "--config manifests/jobs/mnist.json",
]
TIMEOUT = 300  # a hang fails the test instead of stalling the suite; never a timing assertion


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BATCHAI_", "DATABASE"))
    }
    env.pop("JOB_PYTHON", None)
    env.update(
        BATCHAI_DATA_DIR=str(tmp_path / "data"),
        PORT="0",
        POLL_SECONDS="0.2",
        LOG_LEVEL="WARNING",
        PRICE_REFRESH_HOURS="0",  # no test reaches the internet
        **extra,
    )
    return env


def test_the_digits_job_runs_with_job_python_and_the_runner_with_ours(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    wrapper = tmp_path / "bin" / "job-python"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    wrapper.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--wait-timeout", str(TIMEOUT)],
        input="\n".join(SEED) + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path, JOB_PYTHON=str(wrapper)),
        timeout=TIMEOUT + 60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"myjob succeeded.*exit code 0.*model\.npz", done.stdout, re.S), done.stdout
    lines = calls.read_text().splitlines()
    assert len(lines) == 1 and re.search(r"/examples/mnist/train\.py --epochs 10 ", lines[0])


def test_a_job_python_that_is_no_program_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "console"],
        input="cluster list\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path, JOB_PYTHON=str(tmp_path / "no-such-python")),
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"JOB_PYTHON: {tmp_path / 'no-such-python'} is not an executable file or a program on PATH"
    ]
    assert not (tmp_path / "data").exists()


def test_the_default_is_the_jobs_env_when_made_else_the_bots_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOB_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings().job_python == sys.executable
    jobs_python = tmp_path / JOBS_ENV_PYTHON
    jobs_python.parent.mkdir(parents=True)
    jobs_python.symlink_to(sys.executable)  # as a venv's python is: not resolved through it
    assert Settings().job_python == str(jobs_python)


def test_a_relative_job_python_is_made_absolute_not_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "env" / "python"
    link.parent.mkdir()
    link.symlink_to(sys.executable)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOB_PYTHON", "env/python")
    assert Settings().job_python == str(link)
