"""`--query JMESPATH` and every `-o` of az (json, jsonc, table, tsv, yaml, none) through the
command handler of the real bot on the local backend, with a fake clock and no Slack."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.bootstrap import Bot
from handlers import views
from handlers.commands import Reply
from handlers.grammar import Source
from services.access import Caller
from services.core.clock import FakeClock
from tests.test_schedules import ADMIN, CHANNEL, CONFIG, started

SIZE = "Standard_NC4as_T4_v3"  # the size of test_schedules' cluster c1


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[Bot]:
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    async with started(tmp_path, clock, first=True) as rig:
        created = await say(rig.bot, f"cluster create -n c2 -s {SIZE} -t 1 --afs-name data")
        assert not created.failed, created.message.text
        yield rig.bot


async def say(bot: Bot, text: str, *, source: Source = "slack") -> Reply:
    return await bot.commands.handle(text, caller=Caller(ADMIN, CHANNEL), source=source)


async def answer(bot: Bot, text: str) -> str:
    reply = await say(bot, text)
    assert not reply.failed, reply.message.text
    return reply.message.text


def _tsv_cells(obj: dict[str, Any]) -> list[str]:
    """What az -o tsv prints of one object: values by key, `` for objects, lengths of lists."""
    cells = []
    for _, value in sorted(obj.items()):
        if isinstance(value, dict):
            cells.append("")
        elif isinstance(value, list):
            cells.append(str(len(value)))
        else:
            cells.append(str(value))
    return cells


async def test_cluster_list_tsv_is_one_headerless_line_per_cluster(bot: Bot) -> None:
    clusters = json.loads(await answer(bot, "cluster list -o json"))
    lines = (await answer(bot, "cluster list -o tsv")).split("\n")
    assert [line.split("\t") for line in lines] == [_tsv_cells(c) for c in clusters]
    assert len(lines) == 2 and {"c1", "c2"} <= set(lines[0].split("\t")) | set(lines[1].split("\t"))
    assert not any("Name" in line or "{" in line for line in lines)


async def test_query_then_tsv_prints_one_job_name_a_line(bot: Bot) -> None:
    for name in ("first", "second"):
        assert not (await say(bot, f"job create -n {name} -r c1 -c {CONFIG}")).failed
    names = (await answer(bot, 'job list --query "[].name" -o tsv')).split("\n")
    assert sorted(names) == ["first", "second"]
    assert await answer(bot, 'job list --query "length(@)" -o tsv') == "2"


async def test_cluster_show_yaml_parses_back_to_the_json_answer(bot: Bot) -> None:
    as_json = json.loads(await answer(bot, "cluster show -n c1 -o json"))
    as_yaml = yaml.safe_load(await answer(bot, "cluster show -n c1 -o yaml"))
    assert as_yaml == as_json and as_yaml["name"] == "c1"
    assert json.loads(await answer(bot, "cluster show -n c1 -o jsonc")) == as_json


async def test_query_selects_from_the_json_answer_in_every_format(bot: Bot) -> None:
    assert json.loads(await answer(bot, "cluster show -n c1 --query vmSize")) == SIZE
    picked = json.loads(await answer(bot, "cluster list --query \"[?name=='c2'].name\" -o json"))
    assert picked == ["c2"]
    table = await answer(bot, 'cluster list --query "[].{name: name, size: vmSize}" -o table')
    assert table.split("\n")[0].split() == ["Name", "Size"]
    assert f"c1    {SIZE}" in table and f"c2    {SIZE}" in table


async def test_queried_text_stays_escaped(bot: Bot) -> None:
    reply = await say(bot, "cluster show -n c1 --query \"'<!channel> &'\" -o tsv")
    text = str(reply.message.blocks)
    assert "&lt;!channel&gt; &amp;" in text and "<!channel>" not in text


async def test_a_bad_query_is_one_line_with_usage_and_runs_nothing(bot: Bot) -> None:
    reply = await say(bot, 'cluster create -n c3 -s Standard_NC6 -t 1 --query "[?name=="')
    assert reply.failed
    line, *_ = reply.message.text.split("\n")
    assert "--query" in line and "not a valid JMESPath expression" in line
    assert "usage: /batchai cluster create" in str(reply.message.blocks)
    assert await bot.store.get_cluster("c3") is None
    wrong_type = await say(bot, 'cluster list --query "length(name)"')
    assert wrong_type.failed and "does not apply to this answer" in wrong_type.message.text
    assert "usage: /batchai cluster list" in str(wrong_type.message.blocks)


async def test_output_none_runs_the_command_and_answers_nothing(bot: Bot) -> None:
    quiet = await say(bot, f"cluster create -n c3 -s {SIZE} -t 1 -o none", source="console")
    assert not quiet.failed and views.to_text(quiet.message) == ("", [])
    assert await bot.store.get_cluster("c3") is not None
    acked = await say(bot, "cluster show -n c3 -o none")
    assert not acked.failed and "-o none" in str(acked.message.blocks)
    assert "c3" not in str(acked.message.blocks)


async def test_resize_answers_in_words_a_person_would_write(bot: Bot) -> None:
    assert (await answer(bot, "cluster resize -n c2 -t 1")).endswith("now has 1 node")
    assert (await answer(bot, "cluster resize -n c2 -t 2")).endswith("now has 2 nodes")
