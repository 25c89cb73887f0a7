"""`node exec` on the azure backend against the fake ARM: a synchronous managed run command with a
unique name on the scale-set instance, the command line in a parameter (never in the script
text), run as a job's uid rather than root, read back and deleted."""

from __future__ import annotations

import os
from pathlib import Path

from services.backends.azure import node
from services.backends.azure.backend import AzureBackend
from services.backends.azure.files import AzureShare
from tests.azure.rig import AzureRig
from tests.contract import cluster
from tests.fakes import gpu


def scripts(inst_dir: Path) -> list[str]:
    where = inst_dir / "var/lib/waagent/run-command-handler/download"
    return [p.read_text() for p in sorted(where.glob("exec-*/*/script.sh"))]


async def test_nvidia_smi_runs_on_the_instance_by_a_run_command_then_deleted(
    rig: AzureRig, backend: AzureBackend
) -> None:
    c = cluster("gpus", nodes=1)
    await backend.create_cluster(c)
    (inst,) = rig.arm.scale_sets["gpus"].instances.values()
    gpu.install(inst.dir / "bin", count=4)
    node_id = (await backend.list_nodes(c))[0].id
    command = "nvidia-smi -L; echo \"$(echo sub)\" '$HOME'"
    out = await backend.run_on_node(c, node_id, command, timeout=60, job_id=None)
    assert out.exit_code == 0 and not out.truncated, out
    assert out.output.count("Tesla V100") == 4 and "sub $HOME" in out.output
    assert not inst.run_commands  # read, then deleted: no run command is left behind
    again = await backend.run_on_node(c, node_id, "true", timeout=60, job_id=None)
    assert again.exit_code == 0
    texts = scripts(inst.dir)
    assert len(texts) == 2  # two unique names: exec-<uuid> each
    assert all("nvidia-smi" not in t and node.EXEC_PARAMETER in t for t in texts)


async def test_the_command_runs_as_the_jobs_uid_or_the_exec_uid_never_root(
    rig: AzureRig, share: AzureShare
) -> None:
    backend = rig.backend(share, job_gid=os.getgid() or 7000)
    try:
        c = cluster("users", nodes=1)
        await backend.create_cluster(c)
        node_id = (await backend.list_nodes(c))[0].id
        idle = await backend.run_on_node(c, node_id, "id -u", timeout=60, job_id=None)
        assert idle.output.strip() == str(node.EXEC_UID)
        mine = await backend.run_on_node(c, node_id, "id -u; id -G", timeout=60, job_id="abc123")
        uid, groups = mine.output.split("\n")[:2]
        assert uid == str(node.job_uid("abc123")) and groups == str(os.getgid() or 7000)
        env = await backend.run_on_node(c, node_id, "env", timeout=60, job_id=None)
        assert node.EXEC_PARAMETER not in env.output and "AZ_BATCHAI_MOUNT_ROOT=" in env.output
    finally:
        await backend.aclose()


async def test_output_beyond_azures_4_kb_is_cut_and_said_so(backend: AzureBackend) -> None:
    c = cluster("chatty", nodes=1)
    await backend.create_cluster(c)
    node_id = (await backend.list_nodes(c))[0].id
    out = await backend.run_on_node(c, node_id, "seq 1 5000", timeout=60, job_id=None)
    assert out.truncated and "4 KB" in out.limit
    assert out.output.endswith("5000\n") and len(out.output.encode()) <= 4096
