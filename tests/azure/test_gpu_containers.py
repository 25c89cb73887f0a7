"""Container jobs on GPU nodes: the launch script installs the NVIDIA container toolkit where a
driver answers and none is there, registers it as docker's runtime, and docker gets --gpus all."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from services.backends.azure import node
from services.backends.noderun.launch import docker_argv

FAKE_APT = Path(__file__).resolve().parents[1] / "fakes" / "arm_node" / "apt-get"
STUB = '#!/bin/sh\necho "${0##*/} $*" >> "$CALLS"\n'
CURL = (
    STUB
    + 'case "$*" in *.list*) echo "deb https://nvidia.github.io/libnvidia-container/x /";; esac\n'
)
GPG = STUB + "cat >/dev/null\n"


def run_setup(tmp_path: Path, *tools: str) -> tuple[list[str], Path]:
    """GPU_CONTAINER_SETUP on a simulated node with only `tools` (stubs) and coreutils."""
    bin_dir, root = tmp_path / "bin", tmp_path / "root"
    bin_dir.mkdir()
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / "usr" / "share" / "keyrings").mkdir(parents=True, exist_ok=True)
    for tool in ("sed", "grep", "cat", "mkdir"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "apt-get").symlink_to(FAKE_APT)
    bodies = {"curl": CURL, "gpg": GPG}
    for tool in ("systemctl", *tools):
        (bin_dir / tool).write_text(bodies.get(tool, STUB))
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls"
    subprocess.run(
        ["/bin/bash", "-c", "\n".join(node.GPU_CONTAINER_SETUP)],
        env={"PATH": str(bin_dir), "BATCHAI_NODE_ROOT": str(root), "CALLS": str(calls)},
        check=False,  # without a real apt the freshly "installed" nvidia-ctk is not there
        timeout=60,
    )
    apt = root / "var" / "log" / "apt-get.calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    lines += [f"apt-get {a}" for a in (apt.read_text().splitlines() if apt.exists() else [])]
    return lines, root


def test_a_gpu_node_without_the_toolkit_gets_it_from_nvidias_signed_repo(tmp_path: Path) -> None:
    calls, root = run_setup(tmp_path, "nvidia-smi", "curl", "gpg")
    assert sum(c.startswith("curl ") for c in calls) == 2 and any(
        c.startswith("gpg ") for c in calls
    )
    listing = (root / "etc/apt/sources.list.d/nvidia-container-toolkit.list").read_text()
    assert "signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg" in listing
    installs = [c for c in calls if "install -y nvidia-container-toolkit" in c]
    assert installs and all("DPkg::Lock::Timeout=" in c for c in installs)


def test_the_toolkit_is_registered_as_dockers_runtime_once(tmp_path: Path) -> None:
    calls, root = run_setup(tmp_path, "nvidia-smi", "nvidia-ctk", "curl")
    assert "nvidia-ctk runtime configure --runtime=docker" in calls
    assert "systemctl restart docker" in calls
    assert not any(c.startswith("curl ") for c in calls)  # already installed: no download
    (root / "etc" / "docker").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "docker" / "daemon.json").write_text('{"runtimes": {"nvidia": {}}}')
    (tmp_path / "calls").unlink()
    shutil.rmtree(tmp_path / "bin")
    again, _ = run_setup(tmp_path, "nvidia-smi", "nvidia-ctk")
    assert not any(c.startswith("nvidia-ctk") for c in again)


def test_a_cpu_node_gets_no_toolkit(tmp_path: Path) -> None:
    calls, _ = run_setup(tmp_path, "curl", "gpg", "nvidia-ctk")
    assert calls == []


def test_launch_scripts_of_container_jobs_carry_the_toolkit_setup_and_gpus_all() -> None:
    script = node.launch_script(
        job_id="j",
        node_index=0,
        python="python3",
        runner="/r/noderunner.py",
        runner_sha256="0" * 64,
        status_dir="/s",
        dirs=["/d"],
        host_file="/h",
        host_lines=["10.0.0.4"],
        owner=None,
        container=True,
    )
    assert "nvidia-ctk runtime configure --runtime=docker" in script
    argv = docker_argv(
        docker="docker", name="n", image="i", argv=["x"], env_names=[], volumes=[], workdir="/",
        gpus=4,
    )  # fmt: skip
    assert argv[argv.index("--gpus") + 1] == "all"
