"""The App Home dashboard: what it says, and that it stays inside Slack's limits at any size."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from slack_sdk.models.views import View

from handlers import views
from handlers.home import ACTION_HOME_REFRESH, ACTION_OPEN_SUBMIT, home_view
from services.clusters.lifecycle import ClusterState
from services.jobs.lifecycle import JobState
from services.models import ClusterView, Job, NodeCounts, Progress
from tests.conftest import NOW, make_cluster, make_job

PRICES = {"Standard_NC24ads_A100_v4": Decimal("3.673"), "Standard_NC6s_v3": Decimal("3.06")}


def cluster(name: str, vm_size: str = "Standard_NC24ads_A100_v4", **counts: int) -> ClusterView:
    return ClusterView(make_cluster(name, vm_size=vm_size), NodeCounts(**counts), queued_jobs=0)


def running(name: str, *, cluster: str = "a100", hours: float = 2, **changes: Any) -> Job:
    values: dict[str, Any] = dict(
        cluster=cluster, state=JobState.RUNNING, started_at=NOW - timedelta(hours=hours)
    )
    values.update(changes)
    return make_job(name, **values)


def texts(view: dict[str, Any]) -> list[str]:
    out = []
    for block in view["blocks"]:
        if block["type"] in ("section", "header"):
            out.append(block["text"]["text"])
        elif block["type"] == "context":
            out += [e["text"] for e in block["elements"]]
    return out


def all_text(view: dict[str, Any]) -> str:
    return "\n".join(texts(view))


def check_limits(view: dict[str, Any]) -> None:
    assert View(**view).to_dict() == view  # the SDK's validators, and nothing dropped
    assert view["type"] == "home"
    assert 1 <= len(view["blocks"]) <= 100
    for block in view["blocks"]:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000


def build(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(clusters=[], jobs=[], now=NOW, prices=PRICES)
    args.update(kw)
    view = home_view(**args)
    check_limits(view)
    return view


# ----------------------------------------------------------------------------- empty and small


def test_empty_dashboard() -> None:
    view = build()
    text = all_text(view)
    assert view["blocks"][0]["type"] == "header"
    assert "No" in text and "/batchai cluster create" in text
    assert "Nothing running or queued" in text
    assert "*Pending approvals*\nnone" in text
    assert "not available" in text and "no budget set" in text
    buttons = [e for b in view["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [ACTION_OPEN_SUBMIT, ACTION_HOME_REFRESH]
    assert buttons[0]["style"] == "primary"


def test_cluster_lines_show_nodes_and_money() -> None:
    view = build(
        clusters=[
            cluster("a100", idle=1, running=2, preparing=0),
            cluster("old", "STANDARD_NC6S_V3", idle=0, running=0, preparing=1),
            cluster("mystery", "Standard_Unknown_v9", idle=4),
        ]
    )
    text = all_text(view)
    assert (
        "• *a100* `Standard_NC24ads_A100_v4` — 1 idle · 2 running · 0 preparing (of 3) — "
        "$3.673/h per node, $11.019/h now" in text
    )
    assert "$3.06/h per node, $3.06/h now" in text  # the size matched whatever its case
    assert re.search(r"\*mystery\*.*price unknown", text)
    assert "$14.079/h for the nodes up now" in text  # 11.019 + 3.06; unknown sizes left out


def test_cluster_state_and_queue_are_shown_when_notable() -> None:
    resizing = ClusterView(
        make_cluster("grow", vm_size="Standard_NC6s_v3", state=ClusterState.RESIZING),
        NodeCounts(preparing=2),
        queued_jobs=3,
    )
    text = all_text(build(clusters=[resizing]))
    assert "3 queued" in text and "_resizing_" in text


def test_running_job_shows_progress_elapsed_and_cost() -> None:
    job = running(
        "mnist", hours=2, node_count=2, progress=Progress(3, 10), last_metrics={"loss": 0.1}
    )
    text = all_text(build(clusters=[cluster("a100", running=2)], jobs=[job]))
    line = next(line for line in text.splitlines() if "*mnist*" in line)
    assert line.startswith(":runner: *mnist* on `a100` · 2 nodes")
    assert "`███░░░░░░░` 30%" in line
    assert "2h 00m 00s" in line
    assert "$14.69 so far" in line  # 2 nodes × 3.673 × 2 h = 14.692
    assert "*Jobs* — 1 running, 0 queued" in text


def test_job_on_an_unpriced_or_unknown_cluster_says_cost_unknown() -> None:
    jobs = [running("lost", cluster="gone"), running("odd", cluster="mystery")]
    view = build(clusters=[cluster("mystery", "Standard_Unknown_v9")], jobs=jobs)
    lines = [line for line in all_text(view).splitlines() if "*lost*" in line or "*odd*" in line]
    assert len(lines) == 2
    assert all("cost unknown" in line and "$0" not in line for line in lines)


def test_the_rate_fixed_at_submit_time_wins() -> None:
    job = running("spot", cluster="gone", hours=4, node_rate=Decimal("0.7345"))
    line = next(line for line in all_text(build(jobs=[job])).splitlines() if "*spot*" in line)
    assert "$2.94 so far" in line  # 0.7345 × 4 h = 2.938


def test_queued_jobs_wait_and_finished_jobs_are_left_out() -> None:
    jobs = [
        make_job("waiting", state=JobState.QUEUED, queued_at=NOW - timedelta(minutes=5)),
        make_job("done", state=JobState.SUCCEEDED),
        make_job("asking", state=JobState.PENDING_APPROVAL),
        running("first", hours=1),
    ]
    text = all_text(build(clusters=[cluster("c1")], jobs=jobs))
    assert ":inbox_tray: *waiting* on `c1` · 1 node · waiting 5m 00s" in text
    assert "*done*" not in text and "*asking*" not in text
    assert text.index("*first*") < text.index("*waiting*")  # running before queued
    assert "1 running, 1 queued" in text


def test_approvals_are_listed() -> None:
    formula = "4 × Standard_NC24ads_A100_v4 × $3.673/h × 8 h max = $117.54"
    pending = [views.md("*train-big* by {}: {}", views.user("U1"), formula)]
    text = all_text(build(pending_approvals=pending))
    assert "*Pending approvals* (1)\n• *train-big* by <@U1>: 4 ×" in text


def test_plain_approval_lines_are_escaped() -> None:
    text = all_text(build(pending_approvals=["<!channel> <@U1>"]))
    assert "&lt;!channel&gt; &lt;@U1&gt;" in text and "<!channel>" not in text


@pytest.mark.parametrize(
    "spend,budget,expected",
    [
        (Decimal("1234.5"), None, "*Spend this month*: $1,234.50 · no budget set"),
        (Decimal("1234.5"), Decimal(5000), "$1,234.50 of $5,000.00 budget (25%)"),
        (Decimal("4500"), Decimal(5000), "(90%) :warning:"),
        (Decimal("6000"), Decimal(5000), "(120%) :warning: over budget"),
        (Decimal("10"), Decimal(0), "(100%) :warning:"),
        (None, Decimal(5000), "not available · budget $5,000.00"),
    ],
)
def test_month_spend_against_budget(
    spend: Decimal | None, budget: Decimal | None, expected: str
) -> None:
    assert expected in all_text(build(month_spend=spend, budget=budget))


# ----------------------------------------------------------------------------- limits at size


def shown_and_more(view: dict[str, Any], marker: str) -> tuple[int, int]:
    """(lines containing `marker`, N of "…and N more" in the same list)."""
    blocks = view["blocks"]
    first = next(
        i for i, b in enumerate(blocks) if b["type"] == "section" and marker in b["text"]["text"]
    )
    group = []
    for block in blocks[first:]:
        if block["type"] != "section":
            break
        group.append(block["text"]["text"])
    text = "\n".join(group)
    more = re.search(r"…and (\d+) more", text)
    return text.count(marker), int(more.group(1)) if more else 0


def test_300_jobs_50_clusters_300_approvals_fit() -> None:
    clusters = [cluster(f"cluster-{i:02d}", idle=i % 5, running=3) for i in range(50)]
    jobs = [
        running(f"job-{i:03d}", cluster=f"cluster-{i % 50:02d}", progress=Progress(i % 10, 10))
        for i in range(200)
    ]
    jobs += [make_job(f"q-{i:03d}", cluster="cluster-01") for i in range(100)]
    pending = [f"*job-{i}* by <@U{i}> needs approval: $" + "9" * 40 for i in range(300)]
    view = build(
        clusters=clusters,
        jobs=jobs,
        pending_approvals=pending,
        month_spend=Decimal("99999.99"),
        budget=Decimal("1000"),
    )
    assert len(view["blocks"]) <= 100

    shown, more = shown_and_more(view, "• *cluster-")
    assert shown > 0 and shown + more == 50
    shown_jobs, more_jobs = shown_and_more(view, " on `cluster-")
    assert 0 < shown_jobs < 300 and shown_jobs + more_jobs == 300
    shown_asks, more_asks = shown_and_more(view, "needs approval")
    assert 0 < shown_asks < 300 and shown_asks + more_asks == 300
    assert "*Jobs* — 200 running, 100 queued" in all_text(view)
    assert "over budget" in all_text(view)


def test_absurdly_long_entries_are_cut_not_dropped() -> None:
    view = build(pending_approvals=["x" * 10_000, "short one"])
    text = all_text(view)
    assert "short one" in text
    assert max(len(t) for t in texts(view)) <= 3000


def test_200_clusters_are_cut_with_a_count() -> None:
    view = build(clusters=[cluster(f"cluster-{i:03d}", idle=1) for i in range(200)])
    shown, more = shown_and_more(view, "• *cluster-")
    assert 0 < shown < 200 and shown + more == 200
