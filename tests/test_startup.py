"""Start-up: the quick subcommands load only what they use (a real interpreter per case)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the bot itself needs, and what `--help` and friends must never pay for.
HEAVY = ("sqlalchemy", "alembic", "azure", "slack_bolt", "slack_sdk", "matplotlib", "aiohttp")

PROBE = """
import json, sys
from bot.__main__ import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"code": code, "heavy": heavy}))
"""


def loaded(*argv: str) -> dict[str, object]:
    """Run `batchai-bot argv` in a fresh interpreter; its exit code and the heavy packages it
    imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        input=json.dumps(HEAVY),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("--version",),
        ("manifest",),
        ("validate", "manifests/jobs/mnist.json"),
        ("validate", "mnist"),
    ],
    ids=["help", "version", "manifest", "validate-file", "validate-name"],
)
def test_quick_subcommands_do_not_import_the_bots_heavy_packages(argv: tuple[str, ...]) -> None:
    result = loaded(*argv)
    assert result["code"] in (0, None), result
    assert result["heavy"] == [], f"batchai-bot {' '.join(argv)} imported {result['heavy']}"


def test_the_probe_sees_a_heavy_import() -> None:
    """The check above can fail: `check` talks to Slack, so it loads the Slack SDK."""
    result = loaded("check")  # no token set: one FAIL line, exit 1, nothing sent
    assert result["code"] == 1
    assert "slack_sdk" in result["heavy"]
