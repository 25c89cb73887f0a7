"""Block Kit rendering: Slack's limits hold, nothing from a log can ping or fake a link."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml

from handlers import views
from handlers.outputs import Output, Query
from services.jobs.lifecycle import JobState
from services.models import Progress
from tests.conftest import NOW, make_job


def all_text(message: views.Message) -> str:
    return str(message.blocks)


def test_snippet_keeps_the_tail_and_counts_what_it_skipped() -> None:
    lines = [f"step {i}" for i in range(1, 101)]
    msg = views.log_snippet("stderr.txt", 1, lines, full_log_url="http://x/files/t/stderr.txt")
    text = all_text(msg)
    assert "step 100" in text and "step 60" not in text
    assert "60 lines skipped, full log: <http://x/files/t/stderr.txt|stderr.txt>" in text
    assert all(len(b["text"]["text"]) <= 3000 for b in msg.blocks if b["type"] == "section")


def test_snippet_of_huge_lines_stays_in_one_section() -> None:
    lines = ["x" * 5000, "y" * 5000]
    msg = views.log_snippet("stdout.txt", 7, lines)
    sections = [b for b in msg.blocks if b["type"] == "section"]
    assert len(sections) == 1 and len(sections[0]["text"]["text"]) <= 3000
    assert "1 lines skipped" in all_text(msg)


def test_log_text_cannot_ping_or_fake_links_or_close_the_fence() -> None:
    msg = views.log_snippet("stderr.txt", 1, ["<!channel> look", "<https://evil|model.npz>", "```"])
    text = all_text(msg)
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "<https://evil|" not in text
    body = msg.blocks[1]["text"]["text"]
    assert body.startswith("```") and body.endswith("```") and body.count("```") == 2


def test_errors_are_escaped_too() -> None:
    assert "&lt;@U1&gt;" in all_text(views.error("no job <@U1>"))


def test_status_card_shows_progress_cost_and_buttons_with_the_job_id() -> None:
    job = make_job(
        state=JobState.RUNNING,
        started_at=NOW - timedelta(hours=2),
        node_count=2,
        node_rate=Decimal("3.673"),
        progress=Progress(3, 10),
        last_metrics={"loss": 0.25},
    )
    card = views.status_card(job, now=NOW)
    text = all_text(card)
    assert "cost so far $14.69" in text  # 2 nodes × 2 h × $3.673
    assert "3/10 (30%)" in text and "loss 0.25" in text
    buttons = [e for b in card.blocks if b["type"] == "actions" for e in b["elements"]]
    assert {b["value"] for b in buttons} == {job.id}
    assert [b["action_id"] for b in buttons] == ["job_logs", "job_terminate", "job_refresh"]


def test_finished_card_has_no_terminate_button_and_the_receipt_shows_the_cost() -> None:
    job = make_job(
        state=JobState.SUCCEEDED,
        started_at=NOW - timedelta(minutes=30),
        ended_at=NOW,
        exit_code=0,
        node_rate=Decimal("0.526"),
    )
    card = views.status_card(job, now=NOW)
    assert "job_terminate" not in all_text(card)
    receipt = views.receipt(job, [])
    assert "cost $0.26" in all_text(receipt) and "no output files" in all_text(receipt)


def test_console_text_undoes_the_escaping_and_numbers_buttons() -> None:
    msg = views.log_snippet("f", 1, ["a <b> & c"])
    text, buttons = views.to_text(views.status_card(make_job(), now=NOW), first_button=7)
    assert "[7] Logs" in text and "[9] Refresh" in text and len(buttons) == 3
    assert "a <b> & c" in views.to_text(msg)[0]


# -- long answers: split between rows, never cut inside a fence or an entity ---------------

PYTORCH = "tensor(2.3026, grad_fn=<NllLossBackward0>) & <class 'torch.Tensor'> step {i:04d}"


def _code_bodies(message: views.Message) -> list[str]:
    bodies = []
    for block in message.blocks:
        if block["type"] == "section" and block["text"]["text"].startswith("```"):
            text = block["text"]["text"]
            assert text.endswith("```") and len(text) <= 3000, text[-20:]
            bodies.append(text[3:-3])
    return bodies


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _more(message: views.Message) -> int:
    notes = [e["text"] for b in message.blocks if b["type"] == "context" for e in b["elements"]]
    counts = [int(m.group(1)) for n in notes if (m := re.search(r"…and (\d+) more", n))]
    return sum(counts)


def test_a_snippet_is_measured_after_escaping_and_counts_every_line_it_leaves_out() -> None:
    lines = [PYTORCH.format(i=i) * 2 for i in range(1, 41)]
    msg = views.log_snippet("stdout.txt", 1, lines, full_log_url="https://x/files/t/stdout.txt")
    (body,) = _code_bodies(msg)
    shown = _unescape(body).split("\n")
    assert shown[-1] == lines[-1]  # the newest line is whole
    assert shown == lines[-len(shown) :]
    skipped = re.search(r"(\d+) lines skipped", str(msg.blocks))
    assert skipped and int(skipped.group(1)) == len(lines) - len(shown)
    assert not re.search(r"&(?!(amp|lt|gt);)", body)


def test_one_enormous_escaped_line_shows_its_end_and_says_where_it_starts() -> None:
    line = "<>" * 3000
    msg = views.log_snippet("stdout.txt", 5, ["first", line])
    (body,) = _code_bodies(msg)
    assert line.endswith(_unescape(body)) and not body.startswith(("lt;", "t;", ";"))
    start = len(line) - len(_unescape(body)) + 1
    assert f"1 lines skipped, line 6 shown from its character {start}" in str(msg.blocks)


def _long_jobs(count: int) -> list[Any]:
    return [
        make_job(f"job-{i:02d}-" + "x" * 56, error="<bad> & " * 20, resource_group="rg-" + "r" * 40)
        for i in range(count)
    ]


def test_sixty_jobs_make_a_table_split_between_rows_with_the_header_on_each() -> None:
    jobs = _long_jobs(60)
    msg = views.job_list(jobs, output="table", now=NOW)
    bodies = _code_bodies(msg)
    assert len(bodies) > 1 and len(msg.blocks) <= 50
    rows = [line for body in bodies for line in body.split("\n")[2:]]
    assert all(body.startswith("Name") for body in bodies)
    assert len(rows) + _more(msg) == 60
    assert sum(len(b["text"]["text"]) for b in msg.blocks) <= views.MESSAGE_TEXT_BUDGET


def test_json_that_does_not_fit_is_a_complete_array_and_a_count() -> None:
    jobs = _long_jobs(60)
    msg = views.job_list(jobs, output="json", now=NOW)
    shown = json.loads(_unescape("\n".join(_code_bodies(msg))))
    assert 0 < len(shown) < 60 and len(shown) + _more(msg) == 60
    assert [j["name"] for j in shown] == [j.name for j in jobs[: len(shown)]]
    assert "/batchai job show -n NAME" in str(msg.blocks)
    assert json.loads(_unescape(msg.text)) == shown  # the fallback text too
    small = views.job_list(jobs[:2], output="json", now=NOW)
    assert len(json.loads(_unescape("\n".join(_code_bodies(small))))) == 2 and _more(small) == 0


def test_yaml_and_queried_tsv_that_do_not_fit_are_split_like_json() -> None:
    jobs = _long_jobs(300)
    msg = views.job_list(jobs, output="yaml", now=NOW)
    shown = yaml.safe_load(_unescape("\n".join(_code_bodies(msg))))
    assert 0 < len(shown) < 300 and len(shown) + _more(msg) == 300
    assert sum(len(body) for body in _code_bodies(msg)) <= views.MESSAGE_TEXT_BUDGET
    names = Output("tsv", Query.compile("[].[name, executionInfo.errors[0].message]"))
    msg = views.job_list(jobs, output=names, now=NOW)
    lines = _unescape("\n".join(_code_bodies(msg))).split("\n")
    assert 0 < len(lines) < 300 and len(lines) + _more(msg) == 300
    assert lines[0] == f"{jobs[0].name}\t{jobs[0].error}" and "&lt;bad&gt;" in str(msg.blocks)


def test_cutting_never_splits_an_entity_a_mention_or_a_fence() -> None:
    for n in range(2990, 3001):
        text = views.md("```{}```", "a" * (n - 10) + "<&>" * 20)
        cut = views.section(text)["text"]["text"]
        assert len(cut) <= 3000 and cut.count("```") == 2
        assert not re.search(r"&(?!(amp|lt|gt);)", cut)
    mention = views.section(views.md("{}{}", "a" * 2995, views.user("U0123456")))
    assert "<@" not in mention["text"]["text"]


@pytest.mark.parametrize(
    ("delta", "written"),
    [
        (timedelta(seconds=45), "45 s"),
        (timedelta(minutes=10), "10 min"),
        (timedelta(hours=1), "1 h"),
        (timedelta(hours=2, minutes=30), "2 h 30 min"),
        (timedelta(days=7), "7 days"),
        (timedelta(days=1, hours=2), "1 day 2 h"),
    ],
)
def test_durations_read_as_people_write_them(delta: timedelta, written: str) -> None:
    assert views.fmt_span(delta) == written


def test_the_estimate_of_a_short_job_says_minutes_not_a_fraction_of_an_hour() -> None:
    job = make_job(
        max_wall_clock=timedelta(minutes=10), node_rate=Decimal("0.90"), estimate=Decimal("0.15")
    )
    text = all_text(views.job_submitted(job))
    assert "× 10 min max = $0.15" in text and "0.166667" not in text


def test_a_note_names_whose_click_it_tells_of_and_escapes_its_text() -> None:
    """The service gives the user id apart from the text (no markup in services): the view
    mentions the user; the text stays inert."""
    note = views.note_reply("extended the limit by 2 h (now <!here>)", "U0ALICE")
    assert note.text == "<@U0ALICE> extended the limit by 2 h (now &lt;!here&gt;)"
    assert views.note_reply("no container engine").text == "no container engine"


def test_the_card_and_the_queued_note_say_the_limit_as_people_write_it() -> None:
    job = make_job(max_wall_clock=timedelta(minutes=10))
    assert "limit 10 min" in views.to_text(views.status_card(job, now=NOW))[0]
    long = make_job(max_wall_clock=timedelta(days=7))
    assert "limit 7 days" in views.to_text(views.status_card(long, now=NOW))[0]
