"""Block Kit rendering: Slack's limits hold, nothing from a log can ping or fake a link."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from handlers import views
from services.models import Progress
from services.states import JobState
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
