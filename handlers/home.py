"""The App Home tab (pure): clusters with node counts and $/h, live jobs, approvals, spend.

Long lists are packed into a bounded number of sections and end in "…and N more", so the view
stays within Slack's 100 blocks and 3,000 characters per section whatever the counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from handlers.views import (
    SECTION_LIMIT,
    STATE_EMOJI,
    Block,
    Mrkdwn,
    actions,
    button,
    context,
    elapsed,
    fit,
    fmt_duration,
    md,
    progress_bar,
    section,
)
from services.clusters.lifecycle import ClusterState
from services.jobs.lifecycle import ACTIVE_STATES, JobState
from services.models import ClusterView, Job
from services.spend.pricing import cost_so_far, format_rate, format_usd, sku_key

ACTION_OPEN_SUBMIT: Final = "home_open_submit"
ACTION_HOME_REFRESH: Final = "home_refresh"

HOME_BLOCK_LIMIT: Final = 100
LINE_LIMIT: Final = 400  # one list entry; keeps a single odd entry from eating a section
_MORE_ROOM: Final = 80  # reserved in the last section for the "…and N more" line


def home_view(
    *,
    clusters: Sequence[ClusterView],
    jobs: Sequence[Job],
    now: datetime,
    prices: Mapping[str, Decimal],
    pending_approvals: Sequence[str] = (),
    month_spend: Decimal | None = None,
    budget: Decimal | None = None,
) -> dict[str, Any]:
    """The dashboard `views.publish` shows. `prices`: USD per node-hour by VM size (may miss some).

    `pending_approvals` are one line each, Mrkdwn as the dashboard words them (plain text is
    escaped).
    """
    rates = {sku_key(size): rate for size, rate in prices.items()}
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Batch AI", "emoji": True}},
        context(f"Updated {now:%Y-%m-%d %H:%M} UTC"),
        actions(
            button("Open submit form", ACTION_OPEN_SUBMIT, "open", style="primary"),
            button("Refresh", ACTION_HOME_REFRESH, "refresh"),
        ),
        {"type": "divider"},
        *_clusters(clusters, rates),
        {"type": "divider"},
        *_jobs(jobs, clusters, rates, now),
        {"type": "divider"},
        *_approvals(pending_approvals),
        {"type": "divider"},
        section(_spend(month_spend, budget)),
    ]
    return {"type": "home", "blocks": blocks[:HOME_BLOCK_LIMIT]}


def refused_view(reason: str) -> dict[str, Any]:
    """The Home tab of someone the bot does not serve: why, and nothing else."""
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Batch AI", "emoji": True}},
        section(md(":no_entry: {}", reason)),
    ]
    return {"type": "home", "blocks": blocks}


# ----------------------------------------------------------------------------- sections


def _clusters(views: Sequence[ClusterView], rates: Mapping[str, Decimal]) -> list[Block]:
    if not views:
        return [section("*Clusters*\nNone yet. Create one with `/batchai cluster create`.")]
    lines = []
    burn = Decimal(0)
    for view in views:
        c, n = view.cluster, view.counts
        rate = rates.get(sku_key(c.vm_size))
        if rate is None:
            money = "price unknown"
        else:
            burn += rate * n.total
            money = f"{format_rate(rate)} per node, {format_rate(rate * n.total)} now"
        line = md(
            "• *{}* `{}` — {} idle · {} running · {} preparing (of {}) — {}",
            c.name,
            c.vm_size,
            n.idle,
            n.running,
            n.preparing,
            n.total,
            money,
        )
        if view.queued_jobs:
            line += md(" · {} queued", view.queued_jobs)
        if c.state is not ClusterState.STEADY:
            line += md(" · _{}_", c.state.value)
        lines.append(line)
    title = md("*Clusters* ({}) — {} for the nodes up now", len(views), format_rate(burn))
    return _packed(title, lines, max_sections=3)


def _jobs(
    jobs: Sequence[Job],
    clusters: Sequence[ClusterView],
    rates: Mapping[str, Decimal],
    now: datetime,
) -> list[Block]:
    active = sorted(
        (j for j in jobs if j.state in ACTIVE_STATES), key=lambda j: (j.started_at or now, j.name)
    )
    queued = sorted(
        (j for j in jobs if j.state is JobState.QUEUED),
        key=lambda j: (j.queued_at or j.created_at, j.name),
    )
    if not active and not queued:
        return [section("*Jobs*\nNothing running or queued.")]
    sizes = {v.cluster.name: v.cluster.vm_size for v in clusters}
    lines = [_active_line(j, sizes, rates, now) for j in active]
    lines += [_queued_line(j, now) for j in queued]
    title = md("*Jobs* — {} running, {} queued", len(active), len(queued))
    return _packed(title, lines, max_sections=4)


def _active_line(
    job: Job, sizes: Mapping[str, str], rates: Mapping[str, Decimal], now: datetime
) -> Mrkdwn:
    parts: list[str] = [
        md("{} *{}* on `{}`", STATE_EMOJI.get(job.state, ""), job.name, job.cluster)
    ]
    parts.append(_nodes(job.node_count))
    if job.progress is not None:
        p = job.progress
        parts.append(f"`{progress_bar(p.fraction, width=10)}` {p.fraction:.0%}")
    spent = elapsed(job, now)
    parts.append(fmt_duration(spent))
    # The rate fixed at submit time (spot or not) wins; else today's price of the cluster's size.
    rate = job.node_rate
    if rate is None and (size := sizes.get(job.cluster)) is not None:
        rate = rates.get(sku_key(size))
    if rate is None:
        parts.append("cost unknown")
    elif spent is not None:
        cost = cost_so_far(rate, nodes=job.node_count, elapsed=spent)
        parts.append(f"{format_usd(cost)} so far")
    return Mrkdwn(" · ").join(parts)


def _queued_line(job: Job, now: datetime) -> Mrkdwn:
    since = job.queued_at or job.created_at
    return md(
        "{} *{}* on `{}` · {} · waiting {}",
        STATE_EMOJI[JobState.QUEUED],
        job.name,
        job.cluster,
        _nodes(job.node_count),
        fmt_duration(now - since),
    )


def _approvals(pending: Sequence[str]) -> list[Block]:
    if not pending:
        return [section("*Pending approvals*\nnone")]
    lines = [md("• {}", text) for text in pending]
    return _packed(md("*Pending approvals* ({})", len(pending)), lines, max_sections=2)


def _spend(month_spend: Decimal | None, budget: Decimal | None) -> str:
    if month_spend is None:
        head = "*Spend this month*: not available"
    else:
        head = f"*Spend this month*: {format_usd(month_spend)}"
    if budget is None:
        return f"{head} · no budget set"
    if month_spend is None:
        return f"{head} · budget {format_usd(budget)}"
    share = month_spend / budget if budget > 0 else Decimal(1 if month_spend > 0 else 0)
    mark = ""
    if share > 1:
        mark = " :warning: over budget"
    elif share >= Decimal("0.8"):
        mark = " :warning:"
    return (
        f"{head} of {format_usd(budget)} budget ({share:.0%}){mark}\n`{progress_bar(float(share))}`"
    )


# ----------------------------------------------------------------------------- packing


def _packed(title: Mrkdwn, lines: Sequence[Mrkdwn], *, max_sections: int) -> list[Block]:
    """`title` and `lines` in at most `max_sections` sections of <= 3,000 characters each."""
    chunks: list[list[Mrkdwn]] = [[title]]
    size = len(title)
    shown = 0
    for raw in lines:
        line = fit(raw, LINE_LIMIT)
        last_chunk = len(chunks) == max_sections
        room = SECTION_LIMIT - (_MORE_ROOM if last_chunk else 0)
        if size + 1 + len(line) > room:
            if last_chunk:
                break
            chunks.append([])
            size = -1  # no newline before a chunk's first line
        chunks[-1].append(line)
        size += 1 + len(line)
        shown += 1
    if shown < len(lines):
        chunks[-1].append(md("…and {} more", len(lines) - shown))
    return [section(Mrkdwn("\n").join(chunk)) for chunk in chunks]


def _nodes(count: int) -> str:
    return f"{count} node{'s' if count != 1 else ''}"
