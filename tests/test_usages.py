"""`list-usages` (issue 13, item 5) through the real command path on the local backend: the
clusters and nodes the bot holds, in text, table and the 2018-05-01 JSON with --query."""

from __future__ import annotations

import json

from bot.bootstrap import Bot
from tests.test_outputs import SIZE, answer, bot, say
from tests.test_rest import keys

__all__ = ["bot"]  # the fixture, shared with test_outputs


def table_rows(text: str) -> dict[str, tuple[int, str]]:
    """Name -> (current, limit) of a `list-usages` table."""
    out = {}
    for line in text.splitlines()[2:]:
        name, current, limit = line.rsplit(None, 2)
        out[name] = (int(current), limit)
    return out


async def test_usages_count_the_clusters_and_the_node_slots_they_hold(bot: Bot) -> None:
    before = table_rows(await answer(bot, "list-usages"))
    await answer(bot, f"cluster create -n big -s {SIZE} -t 2")
    after = table_rows(await answer(bot, "list-usages -o table"))
    assert set(after) == {"Clusters", "Cluster nodes (target counts)", "Node slots on this machine"}
    for name, grew in [
        ("Clusters", 1),
        ("Cluster nodes (target counts)", 2),
        ("Node slots on this machine", 2),
    ]:
        assert after[name] == (before[name][0] + grew, "-")

    query = "list-usages -o json --query \"[?name.value=='Nodes'].currentValue\""
    assert json.loads(await answer(bot, query)) == [after["Cluster nodes (target counts)"][0]]


async def test_a_usage_has_the_keys_of_the_spec_and_null_where_nothing_caps_it(bot: Bot) -> None:
    usages = json.loads(await answer(bot, "list-usages -l eastus -o json"))
    assert usages[0] == {
        "unit": "Count",
        "currentValue": len(await bot.store.list_clusters()),
        "limit": None,
        "name": {"value": "Clusters", "localizedValue": "Clusters"},
    }
    assert all(set(u) == keys("Usage") for u in usages)
    assert all(set(u["name"]) == keys("UsageName") for u in usages)


async def test_a_bad_region_is_one_line_with_the_usage_and_changes_nothing(bot: Bot) -> None:
    reply = await say(bot, "list-usages -l 'east us!'")
    assert reply.failed
    first, *_ = reply.message.text.split("\n")
    assert first == '-l "east us!" is not valid: use an Azure region name such as eastus'
    assert "usage: /batchai list-usages" in json.dumps(reply.message.blocks)
    count = len(await bot.store.list_clusters())
    assert json.loads(await answer(bot, "list-usages -o json --query '[0].currentValue'")) == count
