"""Node setup that survives a real first boot: apt waits for the dpkg lock apt-daily holds and
retries; a stop run command that never answers does not hold up terminate (or the poll loop)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from services.backends.azure import node
from services.backends.azure.files import AzureShare
from services.models import FileLocation
from tests.azure.rig import AzureRig
from tests.azure.test_compute import backend_share, gpu_cluster
from tests.contract import job_spec, launch_request, log_loc, wait_for
from tests.contract import wait_for_text as wait_text

FAKE_APT = Path(__file__).resolve().parents[1] / "fakes" / "arm_node" / "apt-get"


def run_install(tmp_path: Path, lines: tuple[str, ...], *, lock_held: bool) -> tuple[int, str]:
    """Run install lines with only the fake apt-get on PATH (no docker, no mount.cifs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apt-get").symlink_to(FAKE_APT)
    for tool in ("mkdir", "cat", "sleep"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    root = tmp_path / "root"
    if lock_held:
        (root / "var" / "lib" / "dpkg").mkdir(parents=True)
        (root / "var" / "lib" / "dpkg" / "lock-frontend").write_text("held")
    done = subprocess.run(
        ["/bin/bash", "-c", "\n".join(lines)],
        env={"PATH": str(bin_dir), "BATCHAI_NODE_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = root / "var" / "log" / "apt-get.calls"
    return done.returncode, calls.read_text() if calls.exists() else ""


def test_docker_install_waits_for_the_dpkg_lock(tmp_path: Path) -> None:
    code, calls = run_install(tmp_path, node.DOCKER_INSTALL, lock_held=True)
    assert code == 0, calls
    assert "install -y docker.io" in calls
    assert all("DPkg::Lock::Timeout=" in line for line in calls.splitlines())


def test_the_fake_apt_fails_without_the_lock_wait_as_the_real_one_does(tmp_path: Path) -> None:
    old = ("apt-get update -q && apt-get install -y -q docker.io",)  # what setup used to run
    code, _ = run_install(tmp_path, old, lock_held=True)
    assert code == 100


def test_setup_and_launch_scripts_use_the_lock_wait_everywhere() -> None:
    setup = node.setup_script(
        host="h", account="acct", key="k", mounts=[], mount_root="/mnt", setup_task=None
    )
    for script in (setup, "\n".join(node.DOCKER_INSTALL)):
        installs = [ln for ln in script.splitlines() if "apt-get" in ln and "install" in ln]
        assert installs and all("DPkg::Lock::Timeout=" in ln for ln in installs)
        assert "for i in 1 2 3 4 5" in script  # and retried


async def test_a_stop_command_that_never_answers_does_not_hold_up_terminate(
    rig: AzureRig, share: AzureShare
) -> None:
    stuck = rig.backend(share, stop_timeout=0.5)
    try:
        c = gpu_cluster("stuck", "Standard_NC4as_T4_v3", 2)
        await stuck.create_cluster(c)
        request = launch_request(job_spec("sleep", node_count=2, process_count=2), c, (0, 1))
        result = await stuck.start_job(request)
        await wait_text(backend_share(stuck), log_loc(result, "stdout-0.txt"), '"pgid"')
        rig.arm.delay_next(1, seconds=3600, match="/runCommands/stop-", method="PUT")
        await stuck.terminate_job(request.job_id)  # returns: the stop is given up, not awaited
        terminate = FileLocation("batchai", f".batchai/jobs/{request.job_id}/terminate")
        assert await backend_share(stuck).stat(terminate) is not None
        status = await wait_for(stuck, request.job_id)  # the runner obeyed TERMINATE
        assert status.exit_code == 143
    finally:
        await stuck.aclose()
