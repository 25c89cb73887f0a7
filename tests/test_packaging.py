"""Packaging: only public SDK modules are imported; the wheel works outside the checkout."""

from __future__ import annotations

import ast
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"bot", "handlers", "services", "manifests", "examples"}


def _private(module: str) -> bool:
    """`pkg._shared.policies`, `slack_bolt.request.async_internals`: not the SDK's public API."""
    parts = module.split(".")
    return any(p.startswith("_") or p.endswith("internals") for p in parts[1:])


def test_no_private_sdk_module_is_imported() -> None:
    found = []
    for package in ("bot", "handlers", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules = [node.module]
                else:
                    continue
                found += [
                    f"{path.relative_to(ROOT)}: {m}"
                    for m in modules
                    if m.split(".")[0] not in OURS and _private(m)
                ]
    assert found == []


# --------------------------------------------------------------------------- the wheel

SOURCES = ("pyproject.toml", "setup.py", "README.md", "bot", "handlers", "services", "manifests")
SOURCES += ("examples",)
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")
GIT = (
    "git",
    "-c",
    "user.name=test",
    "-c",
    "user.email=test@example.com",
    "-c",
    "commit.gpgsign=false",
)
TIMEOUT = 600  # a hang fails the test instead of stalling the suite; never a timing assertion


def _run(*argv: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=TIMEOUT, **kwargs
    )
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@dataclass(frozen=True)
class Installed:
    """The wheel of this tree, installed into a fresh venv; commands run in `cwd`, outside it."""

    venv: Path
    cwd: Path
    commit: str
    env: dict[str, str]

    def bot(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return _run(
            self.venv / "bin" / "batchai-bot", *argv, cwd=self.cwd, env=self.env, input=stdin
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Copy the sources (a git repo of their own, so the build records its commit), build the
    wheel offline with `pip wheel`, install it with --no-deps into a venv made by `venv`; the
    dependencies come from this interpreter's site-packages through a .pth file (no index)."""
    top = tmp_path_factory.mktemp("wheel")
    src, dist, venv, cwd = top / "src", top / "dist", top / "venv", top / "elsewhere"
    src.mkdir()
    cwd.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=IGNORE)
        else:
            shutil.copy2(ROOT / name, src / name)
    _run(*GIT, "init", "-q", cwd=src)
    _run(*GIT, "add", "-A", cwd=src)
    _run(*GIT, "commit", "-qm", "the tree under test", cwd=src)
    commit = _run("git", "rev-parse", "--short=12", "HEAD", cwd=src).stdout.strip()
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _run(
        *pip,
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        ".",
        "-w",
        dist,
        cwd=src,
    )
    (wheel,) = dist.glob("batchai_bot-*.whl")
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    deps = "\n".join(site.getsitepackages()) + "\n"
    (Path(purelib.stdout.strip()) / "_batchai_test_deps.pth").write_text(deps, encoding="utf-8")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BATCHAI_", "DATABASE"))
    }
    env.pop("PYTHONPATH", None)
    env.update(
        BATCHAI_DATA_DIR=str(cwd / "data"),
        PORT="0",
        POLL_SECONDS="0.2",
        LOG_LEVEL="WARNING",
        PRICE_REFRESH_HOURS="0",  # no test reaches the internet
        JOB_PYTHON=sys.executable,  # the examples' environment: this one has the examples extra
    )
    return Installed(venv, cwd, commit, env)


def test_the_science_stack_is_only_in_the_examples_extra(installed: Installed) -> None:
    code = "from importlib.metadata import requires; print('\\n'.join(requires('batchai-bot')))"
    out = _run(installed.venv / "bin" / "python", "-c", code, cwd=installed.cwd, env=installed.env)
    science = [r for r in out.stdout.splitlines() if r.startswith(("numpy", "scikit-learn"))]
    assert len(science) == 2, out.stdout
    assert all(r.endswith('; extra == "examples"') for r in science), science


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    code = "import bot, examples, manifests, services; print(bot.__file__, manifests.__file__)"
    where = _run(
        installed.venv / "bin" / "python", "-c", code, cwd=installed.cwd, env=installed.env
    )
    for path in where.stdout.split():
        assert Path(path).is_relative_to(installed.venv), where.stdout


def test_version_prints_the_package_version_and_the_commit_built_from(installed: Installed) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = installed.bot("--version").stdout
    assert out == f"batchai-bot {version} (commit {installed.commit})\n"


def test_validate_and_manifest_read_the_bundled_files(installed: Installed) -> None:
    (mnist,) = installed.venv.glob("lib/python*/site-packages/manifests/jobs/mnist.json")
    out = installed.bot("validate", "mnist", "t4-autoscale", str(mnist)).stdout.splitlines()
    assert out == [
        "OK   manifests/jobs/mnist.json: JobSpec (2018-05-01)",
        "OK   manifests/clusters/t4-autoscale.json: ClusterSpec",
        f"OK   {mnist}: JobSpec (2018-05-01)",
    ]
    manifest = installed.bot("manifest").stdout
    assert "command: /batchai" in manifest and "socket_mode_enabled: true" in manifest


def test_the_console_runs_the_seed_flow_on_the_bundled_examples(installed: Installed) -> None:
    seed = "\n".join(
        [
            "cluster create --name mycluster --vm-size STANDARD_NC6 --image UbuntuLTS --min 1 "
            "--max 1 --afs-name batchaiquickstart --afs-mount-path azurefileshare "
            "--user-name mytestbatchai --password PP@@ddee5 --resource-group myBatchAIGroup",
            "cluster list -o table",
            "job create --name myjob --cluster-name mycluster --resource-group myBatchAIGroup "
            "--config manifests/jobs/mnist.json",
        ]
    )
    out = installed.bot("console", "--wait-timeout", "300", stdin=seed + "\n").stdout
    assert re.search(r"cluster mycluster is ready", out), out
    assert re.search(r"Name\s+Resource Group.*mycluster\s+myBatchAIGroup", out, re.S), out
    assert "job myjob submitted" in out and "PP@@ddee5" not in out
    assert re.search(r"myjob succeeded.*exit code 0.*model\.npz", out, re.S), out
    assert "Traceback" not in out


def test_version_in_a_checkout_names_its_commit() -> None:
    out = _run(sys.executable, "-m", "bot", "--version", cwd=ROOT).stdout
    assert out.startswith("batchai-bot ")
    if (ROOT / ".git").exists():  # an editable install of a git checkout: git says which commit
        head = _run("git", "rev-parse", "--short=12", "HEAD", cwd=ROOT).stdout.strip()
        assert f"(commit {head}" in out
