"""Block Kit for sweeps (pure): the sweep card, its summary receipt, the answers about a sweep.

Everything from outside (job names, values, metric names, errors) goes through views' escaping
helpers (`md`, `section`, `context`), as every other view does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from handlers import views
from handlers.outputs import Output
from handlers.views import STATE_EMOJI, Block, Message, Mrkdwn, md
from services.jobs.lifecycle import JobState
from services.jobs.sweeps import SweepStopped, SweepSubmitted, best_job, ranking_metric
from services.jobspec.sweep import Metric, ranked
from services.models import DownloadLink, Job, SweepView
from services.spend.pricing import format_usd

# action ids: handlers/slack/buttons.py listens for these, handlers/actions.py acts
ACTION_SWEEP_BEST = "sweep_logs_best"
ACTION_SWEEP_STOP = "sweep_stop_all"
ACTION_SWEEP_HALF = "sweep_stop_half"
SWEEP_ACTIONS = (ACTION_SWEEP_BEST, ACTION_SWEEP_STOP, ACTION_SWEEP_HALF)
ROWS_PER_SECTION = 25  # ~80 characters a row: a section holds 3,000
CARD_TEXT_BUDGET = 10_000  # of views.MESSAGE_TEXT_BUDGET: the head and buttons need the rest


def sweep_card(view: SweepView, *, now: datetime) -> Message:
    """The one message per sweep, edited in place: a row per job (state, progress, metric,
    cost), the best job marked, and the buttons that act on the whole sweep."""
    sweep, jobs = view.sweep, view.jobs
    metric = ranking_metric(view)
    best = best_job(view)
    live = [j for j in jobs if not j.state.finished]
    head = md(
        ":bar_chart: sweep *{}* on `{}` — {} jobs: {}",
        sweep.name,
        sweep.cluster,
        len(jobs),
        _states(jobs),
    )
    facts = [md("requested by {}", views.user(sweep.requester))]
    facts.append(_ranking_fact(metric, best))
    facts.append(_cost_fact(jobs, now))
    blocks: list[Block] = [views.section(head), views.context(Mrkdwn(" · ").join(facts))]
    rows = [_row(j, sweep_label(view, j), metric, best, now) for j in jobs]
    blocks += _row_sections(rows)
    buttons = []
    if best is not None:
        buttons.append(views.button("Logs of best", ACTION_SWEEP_BEST, sweep.id))
    if live:
        buttons.append(
            views.button(
                "Stop all", ACTION_SWEEP_STOP, sweep.id, style="danger", confirm=_confirm(view)
            )
        )
        if metric is not None and best is not None:
            buttons.append(
                views.button(
                    "Stop losing half",
                    ACTION_SWEEP_HALF,
                    sweep.id,
                    confirm=_confirm(view, half=True),
                )
            )
    if buttons:
        blocks.append(views.actions(*buttons))
    return Message(f"sweep {sweep.name}: {_states(jobs)}", blocks[: views.MESSAGE_BLOCK_LIMIT])


def sweep_label(view: SweepView, job: Job) -> str:
    try:
        return view.sweep.label(job.name)
    except (ValueError, IndexError):  # a job renamed by hand: show no values rather than fail
        return ""


def _states(jobs: Sequence[Job]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    order = [s.value for s in JobState]
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)


def _ranking_fact(metric: Metric | None, best: Job | None) -> Mrkdwn:
    if metric is None:
        return md("ranked by val_acc or loss once the logs report one")
    way = "higher" if metric.goal == "max" else "lower"
    fact = md("ranked by {} ({} is better)", metric.name, way)
    if best is not None:
        fact += md(" · best *{}* {:.4g}", best.name, best.last_metrics[metric.name])
    return fact


def _cost_fact(jobs: Sequence[Job], now: datetime) -> Mrkdwn:
    spent = sum((views.cost_so_far(j, now) or Decimal(0) for j in jobs), Decimal(0))
    estimates = [j.estimate for j in jobs if j.estimate is not None]
    fact = md("cost so far {}", format_usd(spent))
    if estimates:
        fact += md(" of {} estimated", format_usd(sum(estimates, Decimal(0))))
    return fact


def _row(job: Job, label: str, metric: Metric | None, best: Job | None, now: datetime) -> Mrkdwn:
    mark = ":trophy: " if best is not None and job.id == best.id else ""
    name = md("*{}*", job.name) if mark else md("`{}`", job.name)
    parts = [
        md("{}{} {}", Mrkdwn(mark), name, label),
        md("{} {}", STATE_EMOJI.get(job.state, ""), job.state.value),
    ]
    if job.progress is not None:
        parts.append(md("{:.0%}", job.progress.fraction))
    if metric is not None and (value := job.last_metrics.get(metric.name)) is not None:
        parts.append(md("{} {:.4g}", metric.name, value))
    if (cost := views.cost_so_far(job, now)) is not None:
        parts.append(md("{}", format_usd(cost)))
    return Mrkdwn(" · ").join(parts)


def _row_sections(rows: Sequence[Mrkdwn]) -> list[Block]:
    """The rows in sections of ROWS_PER_SECTION, within the card's text budget."""
    kept, size = [], 0
    for row in rows:
        if size + len(row) + 1 > CARD_TEXT_BUDGET:
            break
        kept.append(row)
        size += len(row) + 1
    blocks = [
        views.section(Mrkdwn("\n").join(kept[i : i + ROWS_PER_SECTION]))
        for i in range(0, len(kept), ROWS_PER_SECTION)
    ]
    if len(kept) < len(rows):
        blocks.append(
            views.context(md("…and {} more jobs (`job list --sweep`)", len(rows) - len(kept)))
        )
    return blocks


def _confirm(view: SweepView, *, half: bool = False) -> Block:
    what = "the worse half (by the metric) of" if half else "every live job of"
    return {
        "title": {"type": "plain_text", "text": "Stop losing half?" if half else "Stop sweep?"},
        "text": {
            "type": "mrkdwn",
            "text": views.fit(md("Stop {} sweep *{}*?", Mrkdwn(what), view.sweep.name), 300),
        },
        "confirm": {"type": "plain_text", "text": "Stop"},
        "deny": {"type": "plain_text", "text": "Keep running"},
        "style": "danger",
    }


# -- answers ---------------------------------------------------------------------------------


def sweep_submitted(result: SweepSubmitted) -> Message:
    """The answer to `job create --sweep`: how many jobs, the estimate, approval or not."""
    view = result.view
    first, last = view.jobs[0].name, view.jobs[-1].name
    text = md(
        "sweep *{}* submitted to `{}`: {} jobs, {} … {}",
        view.sweep.name,
        view.sweep.cluster,
        len(view.jobs),
        first,
        last,
    )
    if result.approval is not None:
        text += "; it waits for one approval for all of them (see the sweep card's thread)"
    else:
        text += "; its sweep card follows"
    blocks = [views.section(text)]
    if result.formula is not None:
        blocks.append(views.context(md("estimate: {}", result.formula)))
    return Message(text, blocks)


def sweep_detail(view: SweepView, *, output: Output | str, now: datetime) -> Message:
    """`job show -n SWEEP`: the card (text), the ranking (table) or every job (json)."""
    out = Output.of(output)
    if out.structured:
        return views.job_list(list(view.jobs), output=output, now=now)
    if out.format == "table":
        return views.monospace(ranking_table(view, now=now))
    return sweep_card(view, now=now)


def ranking_table(view: SweepView, *, now: datetime) -> str:
    metric = ranking_metric(view)
    order = _ranked_jobs(view, metric)
    name = metric.name if metric is not None else "metric"
    rows = []
    for rank, job in enumerate(order, start=1):
        value = job.last_metrics.get(metric.name) if metric is not None else None
        cost = views.cost_so_far(job, job.ended_at or now)
        rows.append(
            [
                rank,
                job.name,
                sweep_label(view, job),
                job.state.value,
                "-" if value is None else f"{value:.4g}",
                "-" if cost is None else format_usd(cost),
            ]
        )
    return views.table(["#", "Job", "Values", "State", name, "Cost"], rows)


def ranked_names(view: SweepView, metric: Metric) -> list[str]:
    """The sweep's job names best first by the metric (jobs without a value last)."""
    return ranked({j.name: j.last_metrics.get(metric.name) for j in view.jobs}, metric)


def _ranked_jobs(view: SweepView, metric: Metric | None) -> list[Job]:
    if metric is None:
        return list(view.jobs)
    by_name = {j.name: j for j in view.jobs}
    order = ranked({j.name: j.last_metrics.get(metric.name) for j in view.jobs}, metric)
    return [by_name[n] for n in order]


def sweep_stopped(outcome: SweepStopped, *, by: str, half: bool = False) -> Message:
    """What Stop all / Stop losing half (or `job terminate -n SWEEP`) did."""
    name = outcome.view.sweep.name
    if not outcome.stopped:
        what = "no job of sweep *{}* was left to stop" if not half else "no job of *{}* to stop"
        return views.info(md(what, name))
    stopped = Mrkdwn(", ").join(md("{}", n) for n in outcome.stopped)
    text = md(
        "{} is stopping {} of sweep *{}*: {}", views.user(by), len(outcome.stopped), name, stopped
    )
    if half and outcome.metric is not None:
        text += md(" (the worse half by {})", outcome.metric.name)
    if outcome.kept:
        text += md("; {} keep running", len(outcome.kept))
    return Message(text, [views.section(text)])


def thread_line(job: Job, message: Message) -> Message:
    """A job's message in its sweep's thread: the job named first (many jobs share it)."""
    tag = views.context(md("*{}*", job.name))
    return Message(md("{}: ", job.name) + message.text, [tag, *message.blocks])


def sweep_summary(view: SweepView, links: Sequence[DownloadLink], *, now: datetime) -> Message:
    """The sweep's one receipt: the ranking, the best job's download links, the total cost."""
    sweep, jobs = view.sweep, view.jobs
    best = best_job(view)
    head = md(
        ":checkered_flag: {} sweep *{}* finished — {}",
        views.user(sweep.requester),
        sweep.name,
        _states(jobs),
    )
    facts = [_cost_fact(jobs, now)]
    if best is not None:
        metric = ranking_metric(view)
        assert metric is not None
        facts.append(
            md(
                "best *{}* ({}) {} {:.4g}",
                best.name,
                sweep_label(view, best),
                metric.name,
                best.last_metrics[metric.name],
            )
        )
    blocks: list[Block] = [views.section(head), views.context(Mrkdwn(" · ").join(facts))]
    table = ranking_table(view, now=now)
    lines = table.split("\n")
    body = "\n".join(lines[: 2 + 30])
    blocks.append(views.section(views.code(body)))
    if len(lines) > 32:
        blocks.append(
            views.context(
                md("…and {} more (`job show -n {} -o table`)", len(lines) - 32, sweep.name)
            )
        )
    if best is not None and links:
        listed = [
            md("• {} ({})", views.link(x.url, x.name), views.fmt_size(x.size)) for x in links[:20]
        ]
        expires = min(x.expires_at for x in links)
        blocks.append(
            views.section(
                md("*Outputs of {}* (links expire {:%Y-%m-%d %H:%M} UTC)\n", best.name, expires)
                + Mrkdwn("\n").join(listed)
            )
        )
    elif best is not None:
        blocks.append(views.context(md("{} left no output files", best.name)))
    return Message(md("sweep {} finished", sweep.name), blocks)
