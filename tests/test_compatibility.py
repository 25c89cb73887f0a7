"""The README's compatibility table stays true: each row's verdict is what the real command path
does with what an old `az batchai` user typed (parsed and answered, or refused in one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.bootstrap import Bot
from tests.test_outputs import bot, say

__all__ = ["bot"]  # the fixture, shared with test_outputs

README = Path(__file__).resolve().parents[1] / "README.md"

# (text that starts the row's first cell, verdict of its last cell, lines a user would type)
ROWS: list[tuple[str, str, list[str]]] = [
    ("`cluster create` (", "as az", ["cluster create -n c9 -s Standard_NC4as_T4_v3 -t 1"]),
    (
        "`cluster create --bfs-name",
        "as az",
        [
            "cluster create -n c9 -s Standard_NC4as_T4_v3 -t 1 --bfs-name data",
            "cluster create -n c10 -s Standard_NC4as_T4_v3 -t 1 --container-name data "
            "--container-mount-path blobs --storage-account-name other --storage-account-key k",
        ],
    ),
    (
        "`cluster create --use-auto-storage",
        "as az",
        ["cluster create -n c11 -s Standard_NC4as_T4_v3 -t 1 --use-auto-storage"],
    ),
    (
        "`cluster create --subnet",
        "differs",
        [
            "cluster create -n c9 -s Standard_NC4as_T4_v3 -t 1 --subnet /subscriptions/s/x",
            "cluster create -n c9 -s Standard_NC4as_T4_v3 -t 1 --nfs fs1",
        ],
    ),
    (
        "`cluster create --setup-task",
        "as az",
        [
            "cluster create -n c12 -s Standard_NC4as_T4_v3 -t 1 --use-auto-storage "
            "--setup-task 'echo x' --setup-task-output $AZ_BATCHAI_MOUNT_ROOT/autoafs",
        ],
    ),
    (
        "`cluster create --custom-image",
        "differs",
        ["cluster create -n c9 -s Standard_NC4as_T4_v3 -t 1 --generate-ssh-keys"],
    ),
    ("`cluster list` / `show`", "as az", ["cluster list", "cluster show -n c2"]),
    ("`cluster resize -t`", "as az", ["cluster resize -n c2 -t 1"]),
    ("`cluster node list -c`", "as az", ["cluster node list -c c2", "cluster list-nodes -n c2"]),
    (
        "`cluster node exec -c",
        "as az",
        ["cluster node exec -c c2 --exec ls", 'cluster node exec -c c2 -n c2-node-0 --exec "pwd"'],
    ),
    (
        "`cluster file list`",
        "as az",
        [
            "cluster create -n c12 -s Standard_NC4as_T4_v3 -t 1 --afs-name data "
            "--setup-task 'echo x' --setup-task-output $AZ_BATCHAI_MOUNT_ROOT/afs",
            "cluster file list -c c12",
            "cluster file list -c c12 -o json --expiry 5",
        ],
    ),
    ("`job list` / `show`", "as az", ["job list", "job list -o table"]),
    (
        "`workspace create",
        "as az",
        [
            "workspace create -n ws -l eastus",
            "workspace list -o table",
            "workspace show --workspace ws",
            "experiment create -w ws -n exp",
            "experiment list -w ws",
            "experiment show -w ws -n exp -o json",
            "cluster list -w default",
            "job list -w ws -e exp",
        ],
    ),
    (
        "`workspace delete",
        "differs",
        ["workspace delete -n default -y", "workspace delete -g batchai -n default --no-wait"],
    ),
    (
        "`job node exec -j",
        "as az",
        ["job node exec -h"],
    ),  # a running job's: tests/test_node_exec.py
    (
        "`file-server create",
        "as az",
        [
            "file-server create -n fs1 -s Standard_D4s_v5 --disk-count 2 --disk-size 10 -u demo",
            "file-server list",
            "file-server show -n fs1 -o json",
        ],
    ),
    ("`list-usages -l`", "as az", ["list-usages -l eastus -o table"]),
    ("`-o json", "as az", ["cluster show -n c2 -o tsv", "cluster list --query '[].name'"]),
]


def verdict(start: str) -> str:
    rows = [line for line in README.read_text().splitlines() if line.startswith(f"| {start}")]
    assert len(rows) == 1, f"one README compatibility row starts with {start!r}"
    return rows[0].rstrip(" |").rsplit("|", 1)[1].strip()


@pytest.mark.parametrize(("start", "expected", "lines"), ROWS, ids=[r[0] for r in ROWS])
async def test_each_row_says_what_the_bot_does(
    bot: Bot, start: str, expected: str, lines: list[str]
) -> None:
    assert verdict(start).startswith(expected)
    for line in lines:
        reply = await say(bot, line, source="console")
        if expected == "as az":
            assert not reply.failed, f"{line}: {reply.message.text}"
        else:
            assert reply.failed, line
            assert "\n" not in reply.message.text.strip(), line
