"""Block Kit messages (pure functions) and the action ids they carry; plus a text renderer."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from handlers.outputs import Output, query_rows
from handlers.rest import (
    cluster_resource,
    experiment_resource,
    file_resource,
    file_server_resource,
    job_resource,
    usage_resource,
    workspace_resource,
)
from services.clusters.idle import ClickOutcome
from services.core.errors import BatchAIError, NotOwner
from services.core.events import (
    GpuIdleWarning,
    GpuIdleWarningClosed,
    IdleWarning,
    IdleWarningClosed,
    JobRequeued,
    NodeUnusable,
)
from services.core.spans import say_span
from services.jobs.gpu_idle import GpuClick
from services.jobs.lifecycle import JobState
from services.models import (
    Approval,
    AuditEntry,
    Cluster,
    ClusterFileListing,
    ClusterView,
    DownloadLink,
    ExperimentView,
    FileEntry,
    FileListing,
    FileServer,
    GpuUse,
    Job,
    Node,
    NodeOutput,
    Schedule,
    ShareMount,
    Usage,
    WorkspaceView,
)
from services.schedules.service import fmt_time, zone_of
from services.spend import pricing
from services.spend.approvals.policy import Approvers, NotApprover
from services.spend.approvals.service import Decision, Extended, Extension, Outcome
from services.spend.pricing import Price, format_rate, format_usd

Block = dict[str, Any]

# action ids (buttons) — handlers/slack/buttons.py listens for these, handlers/actions.py acts
ACTION_LOGS = "job_logs"
ACTION_TERMINATE = "job_terminate"
ACTION_REFRESH = "job_refresh"

SECTION_LIMIT = 3000  # characters in one section's text
MESSAGE_BLOCK_LIMIT = 50
# Slack answers msg_blocks_too_long above ~12-13k characters of block text in all, although
# each block is within its own limit (bolt-js #2509): long answers stay below this.
MESSAGE_TEXT_BUDGET = 12_000
FALLBACK_LIMIT = 40_000  # Slack truncates a message's text beyond this
TABLE_BLOCK_LIMIT = MESSAGE_BLOCK_LIMIT - 2  # room for a note above and the "…and N more"
SNIPPET_CHARS = 2800  # room for the fences and a header inside one section
SNIPPET_MAX_LINES = 40

STATE_EMOJI = {
    JobState.PENDING_APPROVAL: ":hourglass:",
    JobState.QUEUED: ":inbox_tray:",
    JobState.PREPARING: ":gear:",
    JobState.RUNNING: ":runner:",
    JobState.TERMINATING: ":octagonal_sign:",
    JobState.SUCCEEDED: ":white_check_mark:",
    JobState.FAILED: ":x:",
    JobState.TERMINATED: ":no_entry:",
    JobState.DENIED: ":no_entry_sign:",
    JobState.EXPIRED: ":alarm_clock:",
}


@dataclass(frozen=True)
class Message:
    """What a transport sends: fallback `text` (notifications, console) and `blocks`.

    The fallback is mrkdwn too: plain `str` is escaped here (see `Mrkdwn`), and kept within
    what transports send of it without cutting an entity."""

    text: str
    blocks: list[Block] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", fit(trusted(self.text), FALLBACK_LIMIT))


class Mrkdwn(str):
    """mrkdwn the bot wrote itself, trusted as is. Every other `str` is escaped on its way in.

    Views build text with `md("template {} {}", a, b)`, `user()`, `channel()`, `link()` and
    `code()`; `section()`, `context()`, `info()`, `error()` and `Message` escape whatever plain
    `str` reaches them, so a view that forgets a helper shows `&lt;` rather than pinging."""

    __slots__ = ()

    def __add__(self, other: str) -> Mrkdwn:
        return Mrkdwn(str.__add__(self, trusted(other)))

    def __radd__(self, other: str) -> Mrkdwn:
        return Mrkdwn(str.__add__(trusted(other), self))

    def join(self, parts: Iterable[str]) -> Mrkdwn:
        return Mrkdwn(str.join(self, (trusted(p) for p in parts)))


class _Hole:
    """One value of an md() template, escaped as str.format formats it (unless it is Mrkdwn):
    str.format in C, where string.Formatter parsed each template in Python (a dozen calls a
    hole). Templates use `{}` and `{:spec}` only: a conversion or an attribute would apply
    to the hole."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __format__(self, spec: str) -> str:
        value = self.value
        return value if isinstance(value, Mrkdwn) else esc(format(value, spec))


def md(template: str, *args: object, **kwargs: object) -> Mrkdwn:
    """The view's own markup `template` (a literal, never an f-string of outside text) with
    `{}` holes; each value is escaped unless it is already Mrkdwn."""
    holes = {name: _Hole(value) for name, value in kwargs.items()}
    return Mrkdwn(template.format(*map(_Hole, args), **holes))


def trusted(text: str) -> Mrkdwn:
    """Mrkdwn as is; any other text escaped."""
    return text if isinstance(text, Mrkdwn) else Mrkdwn(esc(text))


def esc(text: str) -> str:
    """Text from outside (logs, file names, errors) as inert mrkdwn: no pings, no fake links,
    and no run of three backticks to open or close a code block."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _FENCE.sub("`\u200b", text)


_FENCE = re.compile(r"`(?=``)")
_USER_ID = re.compile(r"[UWB][A-Z0-9]{1,20}")
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{1,20}")
_GROUP_ID = re.compile(r"S[A-Z0-9]{1,20}")
_MENTION = re.compile(r"&lt;([@#])([A-Z0-9]{2,21})&gt;")


def user(user_id: str) -> Mrkdwn:
    """A mention of one user; anything that is not a user id is shown as text."""
    return Mrkdwn(f"<@{user_id}>") if _USER_ID.fullmatch(user_id) else trusted(user_id)


def channel(channel_id: str) -> Mrkdwn:
    """A link to one channel; anything that is not a channel id is shown as text."""
    return Mrkdwn(f"<#{channel_id}>") if _CHANNEL_ID.fullmatch(channel_id) else trusted(channel_id)


def group(group_id: str) -> Mrkdwn:
    """A mention of one user group; anything that is not a group id is shown as text."""
    return Mrkdwn(f"<!subteam^{group_id}>") if _GROUP_ID.fullmatch(group_id) else trusted(group_id)


def approvers(named: Approvers) -> Mrkdwn:
    """Who decides approvals, as mentions: the users, then the groups; else "an approver"."""
    mentions = [*map(user, sorted(named.users)), *map(group, sorted(named.groups))]
    return Mrkdwn(", ").join(mentions) or Mrkdwn("an approver")


def refusal(err: BatchAIError) -> Mrkdwn:
    """A service's refusal (not allowed, not found, a conflict): the owner or approvers it
    names are mentioned; its own sentence keeps only user and channel mentions."""
    if isinstance(err, NotOwner):
        return md("only {} or an admin may {}", user(err.owner), err.action)
    if isinstance(err, NotApprover):
        return md("only {} may decide on this", approvers(err.approvers))
    return said(str(err))


def said(text: str) -> Mrkdwn:
    """A sentence a service wrote (an outcome, a refusal): escaped, but its mentions of user
    and channel ids (`<@U…>`, `<#C…>`, nothing else) still mention them."""
    if isinstance(text, Mrkdwn):
        return text

    def keep(m: re.Match[str]) -> str:
        sigil, ident = m.group(1), m.group(2)
        pattern = _USER_ID if sigil == "@" else _CHANNEL_ID
        return f"<{sigil}{ident}>" if pattern.fullmatch(ident) else m.group(0)

    return Mrkdwn(_MENTION.sub(keep, esc(text)))


def link(url: str, text: str) -> Mrkdwn:
    """`<url|text>`: characters that would end the link are percent-encoded in the URL and
    the label is escaped (a `|` in a label would end it early)."""
    target = re.sub(r"[\s<>|\"`]", lambda m: quote(m.group(0), safe=""), url)
    if not target.startswith(("https://", "http://")):
        return trusted(text)
    return Mrkdwn(f"<{esc(target)}|{esc(text).replace('|', '¦')}>")  # Slack unescapes `&amp;`


def code(text: str) -> Mrkdwn:
    """A code block; the text is escaped, and backtick runs cannot close the fence."""
    body = _code_body(text)
    return Mrkdwn(f"```{body}```" if body else "```(empty)```")


def section(text: str) -> Block:
    """One section; its text must fit (views split long text with `sections()`)."""
    body = trusted(text)
    if len(body) > SECTION_LIMIT:
        body = _cut(body, SECTION_LIMIT)
    return {"type": "section", "text": {"type": "mrkdwn", "text": body}}


def context(text: str) -> Block:
    body = trusted(text)
    if len(body) > SECTION_LIMIT:
        body = _cut(body, SECTION_LIMIT)
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": body}]}


def _cut(text: Mrkdwn, limit: int) -> Mrkdwn:
    """The text within `limit`, ending in `…`: never inside an entity, a link or a code block."""
    head = text[: limit - 4]  # room for a closing fence and the ellipsis
    if head.rfind("&") > head.rfind(";"):  # an entity cut in half
        head = head[: head.rfind("&")]
    if head.rfind("<") > head.rfind(">"):  # a link or a mention cut in half
        head = head[: head.rfind("<")]
    if head.count("```") % 2:
        head += "```"
    return Mrkdwn(head + "…")


def button(
    text: str,
    action_id: str,
    value: str,
    *,
    style: str | None = None,
    url: str | None = None,
    confirm: Block | None = None,
) -> Block:
    b: Block = {
        "type": "button",
        "text": {"type": "plain_text", "text": text[:75]},
        "action_id": action_id,
        "value": value[:2000],
    }
    if style:
        b["style"] = style
    if url:
        b["url"] = url
    if confirm:
        b["confirm"] = confirm
    return b


def actions(*buttons: Block) -> Block:
    return {"type": "actions", "elements": list(buttons)}


# -- formatting helpers ----------------------------------------------------------------------


def fmt_duration(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = max(0, round(delta.total_seconds()))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def fmt_span(delta: timedelta) -> str:
    """A length of time as people write it: `45 s`, `10 min`, `2 h 30 min`, `7 days`."""
    return say_span(delta)


def span(text: str) -> Mrkdwn:
    """Inline code: Slack shows `*` and `_` inside it as typed (a cron's `*`s are not bold)."""
    return Mrkdwn("`" + esc(text).replace("`", "'") + "`")


def fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def progress_bar(fraction: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def cost_so_far(job: Job, now: datetime) -> Decimal | None:
    """Node-hours so far × the job's node rate, every attempt's (None when the VM size has no
    price)."""
    earlier = job.spent_before
    spent = elapsed(job, now)
    if job.node_rate is None or spent is None:
        return earlier
    this = pricing.cost_so_far(job.node_rate, nodes=job.node_count, elapsed=spent)
    return this + (earlier or Decimal(0))


def attempt_label(job: Job) -> str:
    """`attempt 2/4` for a job that may retry after lost nodes (or did); "" otherwise."""
    if job.max_retries == 0 and not job.attempts:
        return ""
    return f"attempt {job.attempt}/{max(job.max_retries, len(job.attempts)) + 1}"


def elapsed(job: Job, now: datetime) -> timedelta | None:
    if job.started_at is None:
        return None
    return (job.ended_at or now) - job.started_at


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A monospace table like `az ... -o table`."""
    cells = [[str(c) for c in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- jobs ------------------------------------------------------------------------------------


def status_card(job: Job, *, now: datetime) -> Message:
    """The one message per job that is edited in place as the job moves."""
    emoji = STATE_EMOJI.get(job.state, "")
    head = md("{} *{}* on `{}` — *{}*", emoji, job.name, job.cluster, job.state.value)
    facts = [
        f"{job.node_count} node{'s' if job.node_count != 1 else ''}",
        md("toolkit {}", job.toolkit),
        f"elapsed {fmt_duration(elapsed(job, now))}",
        f"limit {fmt_span(job.max_wall_clock)}",
    ]
    if job.exit_code is not None:
        facts.append(f"exit code {job.exit_code}")
    cost = cost_so_far(job, now)
    if cost is not None:
        facts.append(f"cost so far {format_usd(cost)}")
    if job.attempts:
        facts.append(attempt_label(job))
    if job.gpu is not None and job.gpu.use is not None and not job.state.finished:
        facts.append(gpu_use(job.gpu.use, nodes=job.node_count))
    requested = md(" · requested by {}", user(job.requester))
    blocks = [section(head), context(Mrkdwn(" · ").join(facts) + requested)]
    if job.progress is not None:
        p = job.progress
        bar = f"`{progress_bar(p.fraction)}` {p.current}/{p.total} ({p.fraction:.0%})"
        metrics = "  ".join(f"{k} {v:.4g}" for k, v in sorted(job.last_metrics.items()))
        blocks.append(section(bar + (f"\n{metrics}" if metrics else "")))
    if job.error and job.state is not JobState.SUCCEEDED:
        blocks.append(context(md("reason: {}", job.error)))
    # Buttons carry the job's id: a re-created job of the same name is another job.
    buttons = [button("Logs", ACTION_LOGS, job.id)]
    if not job.state.finished:
        buttons.append(
            button("Terminate", ACTION_TERMINATE, job.id, style="danger", confirm=_confirm(job))
        )
    buttons.append(button("Refresh", ACTION_REFRESH, job.id))
    blocks.append(actions(*buttons))
    return Message(f"{job.name}: {job.state.value}", blocks)


def _confirm(job: Job) -> Block:
    return {
        "title": {"type": "plain_text", "text": "Terminate job?"},
        "text": {"type": "mrkdwn", "text": fit(md("Stop *{}* on every node now?", job.name), 300)},
        "confirm": {"type": "plain_text", "text": "Terminate"},
        "deny": {"type": "plain_text", "text": "Keep running"},
        "style": "danger",
    }


def state_reply(job: Job, new: str, detail: str | None, *, passed: Sequence[str] = ()) -> Message:
    text = {
        "preparing": md(":gear: preparing on node(s) {}", str(list(job.nodes))),
        "running": md(":runner: running"),
        "terminating": md(":octagonal_sign: terminating…"),
        "queued": md(":inbox_tray: queued"),
    }.get(new, trusted(new))
    if passed:  # several steps delivered at once
        text = md("{} → {}", " → ".join(passed), text)
    if detail and new not in ("preparing",):
        text += md(" — {}", detail)
    return Message(text, [section(text)])


def submitted_reply(job: Job, warnings: Sequence[str], estimate: str | None = None) -> Message:
    verb = "submitted to" if job.state is JobState.PENDING_APPROVAL else "queued on"
    text = md(
        ":inbox_tray: {} `{}` ({} node{}, max {})",
        verb,
        job.cluster,
        job.node_count,
        "s" if job.node_count != 1 else "",
        fmt_span(job.max_wall_clock),
    )
    blocks = [section(text)]
    if estimate:
        blocks.append(context(md("estimate: `{}`", estimate)))
    blocks += [context(md(":warning: {}", w)) for w in warnings[:5]]
    return Message(text, blocks)


def note_reply(text: str, by: str | None = None) -> Message:
    """A note for a job's thread; its text comes from the job (image names, paths): escaped.
    `by` is mentioned before it: whose click it tells of."""
    line = md("{} {}", user(by), text) if by else md("{}", text)
    return Message(line, [context(md(":information_source: {}", line))])


def log_snippet(
    file: str, first_line: int, lines: Sequence[str], *, full_log_url: str | None = None
) -> Message:
    """The newest lines inside one section, measured as Slack gets them (escaped); whatever
    is left out is counted exactly, with a link to the rest."""
    shown = list(lines[-SNIPPET_MAX_LINES:])
    size = sum(len(_code_body(line)) + 1 for line in shown) - 1
    while shown and size > SNIPPET_CHARS:
        size -= len(_code_body(shown.pop(0))) + 1
    cut = ""
    if not shown and lines:  # one enormous line: show its end
        tail = _tail_within(lines[-1], SNIPPET_CHARS)
        shown = [tail]
        start = len(lines[-1]) - len(tail) + 1
        cut = f", line {first_line + len(lines) - 1} shown from its character {start}"
    skipped = len(lines) - len(shown)
    last = first_line + len(lines) - 1
    header = (
        md("`{}` lines {}-{}", file, first_line, last)
        if first_line > 0
        else md("`{}` (tail)", file)
    )
    blocks = [context(header), section(code("\n".join(shown)))]
    if skipped or cut:
        note = md("{} lines skipped{}", skipped, cut)
        if full_log_url:
            note += md(", full log: {}", link(full_log_url, file))
        blocks.append(context(note))
    return Message(md("{}: {} new lines", file, len(lines)), blocks)


def _code_body(text: str) -> str:
    return esc(text)


def _head_within(text: str, limit: int) -> str:
    """`text`, or its start and `…`, so that its code-block form fits in `limit` characters."""
    if len(_code_body(text)) <= limit:
        return text
    size, end = 1, 0
    while end < len(text) and size + len(_code_body(text[end])) <= limit - 2:
        size += len(_code_body(text[end]))
        end += 1
    return text[:end] + "…"


def _tail_within(text: str, limit: int) -> str:
    """The longest end of `text` whose code-block form fits in `limit` characters."""
    size, start = 0, len(text)
    while start > 0:
        grown = size + len(_code_body(text[start - 1]))
        if grown > limit - 2:  # a backtick run may grow by one where the cut joins it
            break
        size, start = grown, start - 1
    return text[start:]


def receipt(job: Job, links: Sequence[DownloadLink]) -> Message:
    emoji = STATE_EMOJI.get(job.state, "")
    head = md("{} {} *{}* {}", emoji, user(job.requester), job.name, job.state.value)
    facts = [
        f"exit code {job.exit_code if job.exit_code is not None else '-'}",
        f"duration {fmt_duration(job.duration)}",
    ]
    end = job.ended_at
    if end is not None and (cost := cost_so_far(job, end)) is not None:
        estimated = f" (estimate {format_usd(job.estimate)})" if job.estimate is not None else ""
        over = f" over {job.attempt} attempts" if job.attempts else ""
        facts.append(f"cost {format_usd(cost)}{over}{estimated}")
    use = job.gpu.use if job.gpu is not None else None
    if use is not None and use.run_avg is not None:
        facts.append(f"GPU use avg {use.run_avg:.0f} %")
    if job.error and job.state is not JobState.SUCCEEDED:
        facts.append(md("reason: {}", job.error))
    blocks = [section(head), context(Mrkdwn(" · ").join(facts))]
    if job.attempts:
        blocks.append(context(attempt_lines(job)))
    if job.last_metrics:
        blocks.append(
            context(
                md(
                    "final {}",
                    "  ".join(f"{k} {v:.4g}" for k, v in sorted(job.last_metrics.items())),
                )
            )
        )
    if links:
        expires = min(link_.expires_at for link_ in links)
        listed = [md("• {} ({})", link(x.url, x.name), fmt_size(x.size)) for x in links]
        text, count = _fit_lines(listed, SECTION_LIMIT - 200)
        if count < len(listed):
            text += md(
                "\n…and {} more (`/batchai job list-files -n {}`)", len(listed) - count, job.name
            )
        head_ = md("*Outputs* (links expire {:%Y-%m-%d %H:%M} UTC)\n", expires)
        blocks.append(section(head_ + text))
    else:
        blocks.append(context("no output files"))
    summary = md("{} {} (exit {})", job.name, job.state.value, job.exit_code)
    return Message(summary, blocks[:MESSAGE_BLOCK_LIMIT])


def attempt_lines(job: Job) -> Mrkdwn:
    """Every attempt of a job that lost nodes: how long, what it cost, how it ended, where its
    logs are (each attempt has its own stdouterr directory)."""
    lines = []
    for a in job.attempts:
        cost = f", {format_usd(a.usd)}" if a.usd is not None else ""
        where = md(" · logs {}", span(f"{a.logs.share}/{a.logs.path}")) if a.logs else ""
        lines.append(
            md("attempt {}: {}{} — {}", a.number, fmt_duration(a.duration), cost, a.reason) + where
        )
    last = ""
    if job.ended_at is not None and job.started_at is not None and job.node_rate is not None:
        used = job.ended_at - job.started_at
        last_cost = pricing.cost_so_far(job.node_rate, nodes=job.node_count, elapsed=used)
        last = f", {format_usd(last_cost)}"
    ran = fmt_duration(job.duration) if job.started_at is not None else "did not run"
    lines.append(md("attempt {}: {}{} — {}", job.attempt, ran, last, job.state.value))
    text, count = _fit_lines(lines, SECTION_LIMIT - 100)
    if count < len(lines):
        text += md("\n…and {} more attempts", len(lines) - count)
    return text


def requeued_reply(job: Job, requeued: JobRequeued) -> Message:
    """The thread's word on a lost attempt: why, what it cost, what all attempts cost so far,
    and that the job goes round again (or waits for approval to)."""
    cost = ""
    if requeued.attempt_usd is not None:
        cost = md(" · that attempt cost {}", format_usd(Decimal(requeued.attempt_usd)))
        if requeued.spent_usd is not None and requeued.spent_usd != requeued.attempt_usd:
            cost += md(", {} so far", format_usd(Decimal(requeued.spent_usd)))
    step = md("attempt {}/{}", requeued.attempt, requeued.of)
    if requeued.waits_for_approval:
        then = md("{} would pass what was approved for this job: it waits for approval", step)
    else:
        then = md("back in the queue for {}; its output directories are kept", step)
    text = md(":recycle: {} lost its node: {}{}\n{}", job.name, requeued.reason, cost, then)
    return Message(text, [section(text)])


def _fit_lines(lines: Sequence[Mrkdwn], limit: int) -> tuple[Mrkdwn, int]:
    out: list[Mrkdwn] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > limit:
            break
        out.append(line)
        size += len(line) + 1
    return Mrkdwn("\n").join(out), len(out)


def fit(text: Mrkdwn, limit: int) -> Mrkdwn:
    """`text` within `limit` characters, cut where it does not break markup."""
    return text if len(text) <= limit else _cut(text, limit)


def job_table(jobs: Sequence[Job]) -> str:
    return table(
        ["Name", "Cluster", "Cluster RG", "Tool", "Nodes", "State", "Exit code"],
        [
            [
                j.name,
                j.cluster,
                j.resource_group,
                j.toolkit,
                j.node_count,
                j.state.value,
                j.exit_code,
            ]
            for j in jobs
        ],
    )


_JOBS_REST = (
    "`/batchai job list -r CLUSTER` lists one cluster's jobs; `/batchai job show -n NAME` shows one"
)


def job_list(jobs: Sequence[Job], *, output: Output | str, now: datetime) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, [job_json(j) for j in jobs], rest=_JOBS_REST)
    if not jobs:
        return Message("no jobs", [section("No jobs. Submit one with `/batchai job create`.")])
    return _table_message(job_table(jobs), rest=_JOBS_REST)


def job_detail(job: Job, *, output: Output | str, now: datetime) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, job_json(job))
    if out.format == "table":
        return _table_message(job_table([job]))
    return status_card(job, now=now)


def job_json(job: Job) -> dict[str, Any]:
    """`az batchai job show -o json`: the 2018-05-01 Job, secrets null (handlers/rest.py)."""
    return job_resource(job)


def file_listing(listing: FileListing, *, output: Output | str) -> Message:
    where = f"{listing.directory_id}/{listing.path}".replace("/.", "")
    empty = md("`{}` of *{}* is empty", listing.directory_id, listing.job.name)
    return _files(listing.entries, listing.links, listing.job.name, where, empty, output)


def cluster_file_listing(listing: ClusterFileListing, *, output: Output | str) -> Message:
    """`cluster file list`: the setup-task logs, with links."""
    name = listing.cluster.name
    where = f"setup task logs/{listing.path}".replace("/.", "").rstrip("/")
    empty = md("*{}* has no setup-task logs yet: they appear when its nodes run the task", name)
    return _files(listing.entries, listing.links, name, where, empty, output)


def _files(
    entries: Sequence[FileEntry],
    links: dict[str, DownloadLink],
    name: str,
    where: str,
    empty: str,
    output: Output | str,
) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(
            out,
            [
                file_resource(
                    e.name,
                    directory=e.is_directory,
                    size=e.size,
                    url=links[e.name].url if e.name in links else None,
                    modified=e.modified,
                )
                for e in entries
            ],
        )
    if not entries:
        return Message("empty", [section(empty)])
    rows = []
    for e in entries:
        url = links.get(e.name)
        rows.append(
            md("• {} ({})", link(url.url, e.name), fmt_size(e.size))
            if url
            else md("• {}/ (directory)", e.name)
        )
    text, count = _fit_lines(rows, SECTION_LIMIT - 200)
    if count < len(rows):
        text += md("\n…and {} more", len(rows) - count)
    expiry = next(iter(links.values())).expires_at if links else None
    head = md("*{}* `{}`", name, where)
    if expiry:
        head += md(" (links expire {:%Y-%m-%d %H:%M} UTC)", expiry)
    return Message(f"{len(entries)} files", [section(head + "\n" + text)])


# -- clusters --------------------------------------------------------------------------------


def cluster_table(views: Sequence[ClusterView]) -> str:
    return table(
        [
            "Name",
            "Resource Group",
            "Workspace",
            "VM Size",
            "State",
            "Idle",
            "Running",
            "Preparing",
            "Leaving",
            "Unusable",
            "Queued",
        ],
        [
            [
                v.cluster.name,
                v.cluster.resource_group,
                v.cluster.workspace,
                v.cluster.vm_size,
                v.cluster.state.value,
                v.counts.idle,
                v.counts.running,
                v.counts.preparing,
                v.counts.leaving,
                v.counts.unusable,
                v.queued_jobs,
            ]
            for v in views
        ],
    )


def cluster_list(views: Sequence[ClusterView], *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, [cluster_json(v) for v in views])
    if not views:
        return Message(
            "no clusters", [section("No clusters. Create one with `/batchai cluster create`.")]
        )
    return _table_message(
        cluster_table(views), rest="`/batchai cluster show -n NAME` shows one cluster"
    )


def usage_list(usages: Sequence[Usage], *, output: Output | str) -> Message:
    """`az batchai list-usages`: what is in use of what limit; "-" where nothing caps it."""
    if (out := Output.of(output)).structured:
        return _structured(out, [usage_resource(u) for u in usages])
    rows = [[u.localized_name, u.current, "-" if u.limit is None else u.limit] for u in usages]
    return _table_message(table(["Name", "Current Value", "Limit"], rows))


def cluster_detail(view: ClusterView, *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, cluster_json(view))
    if out.format == "table":
        return _table_message(cluster_table([view]))
    c, n = view.cluster, view.counts
    scale = (
        f"auto-scale {c.min_nodes}-{c.max_nodes}"
        if c.autoscale
        else f"manual, {c.target_nodes} nodes"
    )
    mounts = ", ".join(
        f"{_MOUNT_KIND.get(m.kind, m.kind)} {m.share}{f' ({m.account})' if m.account else ''} at "
        f"$AZ_BATCHAI_MOUNT_ROOT/{m.mount_path}"
        for m in c.mounts
    )
    lines = [
        md("*{}* ({}, {}) — {}", c.name, c.vm_size, c.vm_priority, c.state.value),
        md("{}; image {}", scale, c.image),
        md(
            "nodes: {} idle · {} running · {} preparing · {} unusable · {} jobs queued",
            n.idle,
            n.running,
            n.preparing,
            n.unusable,
            view.queued_jobs,
        ),
    ]
    if mounts:
        lines.append(md("mounts: {}", mounts))
    if c.setup_task:
        task = c.setup_task.strip()
        shown = task.splitlines()[0][:80] if task else ""
        more = "…" if len(shown) < len(task) else ""
        lines.append(
            md("setup task: `{}{}` (its logs: `cluster file list -c {}`)", shown, more, c.name)
        )
    for problem in c.unusable[:10]:
        lines.append(md(":warning: node {} is unusable: {}", problem.node, problem.reason))
    if len(c.unusable) > 10:
        lines.append(md("… and {} more unusable nodes", len(c.unusable) - 10))
    if c.autoscale or view.idle_after is not None:
        lines.append(trusted(_idle_line(view)))
    if c.error:
        lines.append(md("error: {}", c.error))
    return Message(md("cluster {}", c.name), [section(Mrkdwn("\n").join(lines))])


def cluster_json(view: ClusterView) -> dict[str, Any]:
    """`az batchai cluster show -o json`: the 2018-05-01 Cluster (handlers/rest.py)."""
    return cluster_resource(view)


def cluster_created(cluster: Cluster, price: Price | None = None) -> Message:
    size = (
        f"{cluster.min_nodes}-{cluster.max_nodes} nodes (auto-scale)"
        if cluster.autoscale
        else f"{cluster.target_nodes} nodes"
    )
    text = md(
        ":white_check_mark: cluster *{}* is ready: {}, {}", cluster.name, cluster.vm_size, size
    )
    blocks = [section(text)]
    if price is not None:
        rate = price.usd_per_hour
        cost = md(
            "{} per node · {} × {} = {}/h while idle at its minimum · up to {}/h at {} nodes",
            price.label,
            cluster.min_nodes,
            format_usd(rate),
            format_usd(rate * cluster.min_nodes),
            format_usd(rate * cluster.max_nodes),
            cluster.max_nodes,
        )
        if price.retired:
            cost += " · this size is retired on Azure: price as last published"
        blocks.append(context(cost))
    return Message(text, blocks)


def job_submitted(job: Job) -> Message:
    """The answer to `job create`: the estimate, and whether it starts or waits for approval."""
    text = md("job *{}* submitted to `{}`", job.name, job.cluster)
    if job.state is JobState.PENDING_APPROVAL:
        text += "; it waits for approval (see its thread)"
    else:
        text += "; its status card follows"
    blocks = [section(text)]
    if job.estimate is not None and job.node_rate is not None:
        blocks.append(
            context(
                f"estimate: {job.node_count} × {format_rate(job.node_rate)} × "
                f"{fmt_span(job.max_wall_clock)} max = {format_usd(job.estimate)}"
            )
        )
    return Message(text, blocks)


def unguarded_spend(message: Message, what: str) -> Message:
    """`message` with the warning that `what` (an amount or a formula) needed no approval."""
    note = context(
        md(
            ":warning: {} needed nobody's approval: without an approval policy "
            "(APPROVALS_FILE) nothing needs approval",
            what,
        )
    )
    return Message(message.text, [*message.blocks, note])


def node_table(nodes: Sequence[Node], *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(
            out,
            [{"nodeId": n.id, "ipAddress": n.ip, "port": n.port, "state": n.state} for n in nodes],
        )
    if any(n.detail for n in nodes):  # why a node is unusable (or what it waits for)
        rows = [[n.id, n.ip, n.port, n.state, n.detail] for n in nodes]
        return _table_message(table(["ID", "IP", "Port", "State", "Detail"], rows))
    return _table_message(
        table(["ID", "IP", "Port", "State"], [[n.id, n.ip, n.port, n.state] for n in nodes]),
    )


# -- workspaces and experiments --------------------------------------------------------------


def _names_or_none(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def workspace_table(views: Sequence[WorkspaceView]) -> str:
    return table(
        ["Name", "Resource Group", "Location", "Clusters", "Experiments", "Created (UTC)"],
        [
            [
                v.workspace.name,
                v.workspace.resource_group,
                v.workspace.location or "-",
                len(v.clusters),
                len(v.experiments),
                f"{v.workspace.created_at:%Y-%m-%d %H:%M}",
            ]
            for v in views
        ],
    )


def workspace_list(views: Sequence[WorkspaceView], *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, [workspace_resource(v) for v in views])
    if not views:
        return Message(
            "no workspaces",
            [section("No workspaces. Create one with `/batchai workspace create -n NAME`.")],
        )
    return _table_message(
        workspace_table(views), rest="`/batchai workspace show -n NAME` shows one workspace"
    )


def workspace_detail(view: WorkspaceView, *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, workspace_resource(view))
    if out.format == "table":
        return _table_message(workspace_table([view]))
    w = view.workspace
    lines = [
        md("*{}* (resource group {}, {})", w.name, w.resource_group, w.location or "no region"),
        md("clusters: {}", _names_or_none(view.clusters)),
        md("experiments: {}", _names_or_none(view.experiments)),
        md("created {:%Y-%m-%d %H:%M} UTC", w.created_at),
    ]
    return Message(md("workspace {}", w.name), [section(Mrkdwn("\n").join(lines))])


def workspace_created(view: WorkspaceView, created: bool) -> Message:
    w = view.workspace
    if created:
        return info(md("workspace *{}* created in resource group {}", w.name, w.resource_group))
    return info(md("workspace *{}* already exists in resource group {}", w.name, w.resource_group))


def experiment_table(views: Sequence[ExperimentView]) -> str:
    return table(
        ["Name", "Workspace", "Resource Group", "Jobs", "Unfinished", "Created (UTC)"],
        [
            [
                v.experiment.name,
                v.experiment.workspace,
                v.experiment.resource_group,
                v.jobs,
                len(v.live_jobs),
                f"{v.experiment.created_at:%Y-%m-%d %H:%M}",
            ]
            for v in views
        ],
    )


def experiment_list(
    views: Sequence[ExperimentView], *, workspace: str, output: Output | str
) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, [experiment_resource(v) for v in views])
    if not views:
        hint = md(
            "No experiments in workspace {}. Create one with "
            "`/batchai experiment create -w {} -n NAME`.",
            workspace,
            workspace,
        )
        return Message("no experiments", [section(hint)])
    return _table_message(
        experiment_table(views),
        rest="`/batchai experiment show -w WORKSPACE -n NAME` shows one experiment",
    )


def experiment_detail(view: ExperimentView, *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, experiment_resource(view))
    if out.format == "table":
        return _table_message(experiment_table([view]))
    e = view.experiment
    lines = [
        md("*{}* (workspace {}, resource group {})", e.name, e.workspace, e.resource_group),
        md("jobs: {} · not finished: {}", view.jobs, _names_or_none(view.live_jobs)),
        md("created {:%Y-%m-%d %H:%M} UTC", e.created_at),
    ]
    return Message(md("experiment {}", e.name), [section(Mrkdwn("\n").join(lines))])


def experiment_created(view: ExperimentView, created: bool) -> Message:
    e = view.experiment
    verb = "created in" if created else "already exists in"
    return info(md("experiment *{}* {} workspace {}", e.name, Mrkdwn(verb), e.workspace))


def node_output(out: NodeOutput, command: str, *, output: Output | str) -> Message:
    """What `node exec` answered: the exit code, and the end of the output in a code block
    (escaped: a node's output is outside text), saying when and why it was cut."""
    if (fmt := Output.of(output)).structured:
        return _structured(
            fmt,
            {
                "nodeId": out.node_id,
                "exitCode": out.exit_code,
                "timedOut": out.timed_out,
                "truncated": out.truncated,
                "output": out.output,
            },
        )
    typed = _head_within(command.replace("\n", " "), 200)
    if out.timed_out:
        head = md("`{}` on *{}* was stopped at its time limit", typed, out.node_id)
    else:
        head = md("`{}` on *{}* exited with code {}", typed, out.node_id, out.exit_code)
    text = out.output.rstrip("\n")
    shown = _tail_within(text, SNIPPET_CHARS)
    if len(shown) < len(text) and "\n" in shown:
        shown = shown[shown.index("\n") + 1 :]  # start at a line
    blocks = [context(head), section(code(shown))]
    notes = []
    if len(shown) < len(text):
        notes.append(md("showing the last {} of {} characters", len(shown), len(text)))
    if out.truncated:
        notes.append(md("output truncated: {}", out.limit or "the start was not kept"))
    if notes:
        blocks.append(context(Mrkdwn("; ".join(notes))))
    fallback = md("{}: exit code {}", out.node_id, out.exit_code)
    return Message("stopped at its time limit" if out.timed_out else fallback, blocks)


def node_unusable(event: NodeUnusable) -> Message:
    """A node failed its health check: said once, in the cluster's channel."""
    text = md(
        ":warning: node {} of cluster *{}* ({}) is unusable: {}",
        event.node,
        event.cluster or "",
        event.vm_size,
        event.reason,
    )
    note = "no job is placed on it; resize the cluster to replace it, or check its image"
    return Message(text, [section(text), context(note)])


# -- generic ---------------------------------------------------------------------------------


def info(text: str) -> Message:
    """A one-section answer; a service's sentence keeps only its user/channel mentions."""
    body = said(text)
    return Message(body, [section(body)])


def error(text: str, usage: str | None = None) -> Message:
    """A refusal; it often repeats what was typed, so all of it is escaped."""
    body = trusted(text)
    blocks = [section(md(":warning: {}", body))]
    if usage:
        blocks.append(section(code(usage)))
    return Message(body, blocks)


def no_output(*, console: bool) -> Message:
    """The answer to `-o none`: nothing in a terminal, as az; in Slack a short ack (a slash
    command that answers nothing looks as if it failed)."""
    if console:
        return Message("")
    return Message("done", [context("done (-o none: no answer shown)")])


def monospace(text: str) -> Message:
    return _table_message(text)


def _table_message(text: str, *, rest: str | None = None) -> Message:
    """A table in code-block sections split between rows, its header atop each; rows beyond
    Slack's limits are counted, and `rest` says which command shows them."""
    lines = text.split("\n")
    head = lines[:2] if len(lines) > 2 and set(lines[1]) <= {"-", " "} else []
    body = lines[len(head) :]
    blocks, shown = _code_sections(body, head=head)
    if shown < len(body):
        blocks.append(_more(len(body) - shown, "rows", rest))
    return Message("\n".join(head + body[:shown]), blocks)


def _structured(output: Output, data: Any, *, rest: str | None = None) -> Message:
    """The JSON answer after `--query`, printed as `-o` says, in code-block sections split
    between lines so that they read as one document; a list too long for one message shows its
    first items as a complete document, and a count."""
    data = output.apply(data)
    if output.format == "table":
        return _table_message(table(*query_rows(data)), rest=rest)
    items = data if isinstance(data, list) else None
    shown = len(items) if items is not None else 0
    while True:
        part = items[:shown] if items is not None else data
        lines = output.dump(part).rstrip("\n").split("\n")
        blocks, fitted = _code_sections(lines)
        if fitted == len(lines) or items is None or shown == 0:
            break
        shown = min(shown - 1, shown * fitted // len(lines))
    if items is not None and shown < len(items):
        blocks.append(_more(len(items) - shown, "items", rest))
    elif fitted < len(lines):  # one object too long for a message: say how much is left out
        blocks.append(_more(len(lines) - fitted, "lines", rest))
    return Message("\n".join(lines[:fitted]), blocks)


def _more(count: int, what: str, rest: str | None) -> Block:
    hint = md("; {}", Mrkdwn(rest)) if rest else ""
    return context(md("…and {} more {} not shown{}", count, what, hint))


def _code_sections(lines: Sequence[str], *, head: Sequence[str] = ()) -> tuple[list[Block], int]:
    """Whole lines in code-block sections, measured after escaping, within the message's
    block and text budget; the sections and how many lines they hold."""
    room = SECTION_LIMIT - 6 - 1  # the fences, and the "…" of a line too long for a section
    head_size = sum(len(_code_body(h)) + 1 for h in head)
    blocks: list[Block] = []
    chunk: list[str] = []
    size = head_size
    total = 0
    shown = 0
    for raw in lines:
        line = _head_within(raw, room - head_size)
        cost = len(_code_body(line)) + 1
        if chunk and size + cost > room:
            blocks.append(section(code("\n".join([*head, *chunk]))))
            total += size
            chunk, size = [], head_size
        if len(blocks) >= TABLE_BLOCK_LIMIT or total + size + cost > MESSAGE_TEXT_BUDGET:
            break
        chunk.append(line)
        size += cost
        shown += 1
    if chunk or not blocks:
        blocks.append(section(code("\n".join([*head, *chunk]))))
    return blocks, shown


# -- text rendering (console) ----------------------------------------------------------------


def to_text(message: Message, *, first_button: int = 1) -> tuple[str, list[Block]]:
    """The message as plain text, and its buttons in order, numbered from `first_button`."""
    out: list[str] = []
    buttons: list[Block] = []
    for block in message.blocks:
        kind = block.get("type")
        if kind == "section":
            out.append(_plain(block["text"]["text"]))
        elif kind == "context":
            out.append("  " + " ".join(_plain(e.get("text", "")) for e in block["elements"]))
        elif kind == "actions":
            labels = []
            for b in block["elements"]:
                labels.append(f"[{first_button + len(buttons)}] {b['text']['text']}")
                buttons.append(b)
            out.append("  " + "  ".join(labels))
    return ("\n".join(out) if out else _plain(message.text)), buttons


def _plain(text: str) -> str:
    """mrkdwn to terminal text: code blocks indented and verbatim, links shown as URLs."""
    parts = re.split(r"```(.*?)```", text, flags=re.S)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside a code block: only undo the escaping
            out.append("\n" + _indent(_unescape(part.replace("`\u200b", "`"))))
            continue
        # No `<` inside: an unclosed `<a|` must not make every later `<` scan to the end.
        part = re.sub(r"<@([^<>|]+)>", r"@\1", part)
        part = re.sub(r"<([^<>|]+)\|([^<>]+)>", r"\2 <\1>", part)
        part = re.sub(r":([a-z_]+):", lambda m: _EMOJI_TEXT.get(m.group(1), ""), part)
        out.append(_unescape(part.replace("*", "")))
    return "".join(out).strip("\n")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


_EMOJI_TEXT = {
    "white_check_mark": "[ok]",
    "x": "[failed]",
    "warning": "[!]",
    "no_entry": "[stopped]",
    "inbox_tray": "[queued]",
    "gear": "[preparing]",
    "runner": "[running]",
    "octagonal_sign": "[stopping]",
    "information_source": "[i]",
    "hourglass": "[waiting]",
    "alarm_clock": "[expired]",
    "no_entry_sign": "[denied]",
    "zzz": "[idle]",
    "raised_hand": "[kept]",
}


# -- spend: approvals, wall clock, budgets -----------------------------------------------------

ACTION_APPROVE = "approval_approve"
ACTION_DENY = "approval_deny"
ACTION_EXTEND = "job_extend"
ACTION_STOP = "job_stop"
CALLBACK_DENY = "approval_deny_reason"
BLOCK_REASON = "reason"


def approval_request(
    approval: Approval, job: Job | None, *, approvers: str, decided: bool = False
) -> Message:
    """The approvals-channel message: the breakdown, who asks, why, and Approve / Deny."""
    what = {"extend": "an extension of", "retry": "another attempt of"}.get(
        approval.kind, "GPU time for"
    )
    name = job.name if job else approval.job_id
    lines = [
        md(":moneybag: {} asks for {} *{}*", user(approval.requester), what, name),
        md("`{}`", approval.formula),
        *(md("• {}", r) for r in approval.reasons),
    ]
    if approval.month_spend is not None and approval.channel:
        spent = md(
            "{} has spent {} this month",
            channel(approval.channel),
            format_usd(approval.month_spend),
        )
        spent += (
            md(" of its {} budget", format_usd(approval.budget))
            if approval.budget is not None
            else " (no budget set)"
        )
        lines.append(spent)
    if approval.required > 1:
        lines.append(md("needs {} different approvers", approval.required))
    blocks = [section(Mrkdwn("\n").join(lines))]
    votes = [
        md(
            "{} by {}{}",
            "approved" if v.decision == "approve" else "denied",
            user(v.approver),
            md(": {}", v.reason) if v.reason else "",
        )
        for v in approval.votes
    ]
    if approval.state != "pending":
        at = md(" at {:%Y-%m-%d %H:%M} UTC", approval.decided_at) if approval.decided_at else ""
        votes.append(md("*{}*{}", approval.state, at))
    if votes:
        blocks.append(context(Mrkdwn(" · ").join(votes)))
    if approval.state == "pending" and not decided:
        blocks.append(
            context(
                md(
                    "decided by {} · expires {:%Y-%m-%d %H:%M} UTC",
                    said(approvers),
                    approval.expires_at,
                )
            )
        )
        blocks.append(
            actions(
                button("Approve", ACTION_APPROVE, approval.id, style="primary"),
                button("Deny", ACTION_DENY, approval.id, style="danger"),
            )
        )
    return Message(md("approval needed for {}: {}", name, approval.formula), blocks)


def waiting_for_approval(approval: Approval, approvers: str) -> Message:
    text = md(
        ":hourglass: {} — waiting for approval by {} (expires {:%Y-%m-%d %H:%M} UTC)",
        approval.formula,
        said(approvers),
        approval.expires_at,
    )
    return Message(text, [section(text)])


def approval_outcome(outcome: Outcome) -> Message:
    """What an Approve / Deny (button or command) did, for whoever clicked it."""
    approval = outcome.approval
    by = user(outcome.by) if outcome.by else None
    if outcome.decision is Decision.COUNTED:
        text = md("approved by {}; {} more needed", by, outcome.missing)
    elif outcome.decision is Decision.REPEATED:
        text = md("you have decided on this request already")
    elif outcome.decision is Decision.EXPIRED or (
        outcome.decision is Decision.ALREADY and approval.state == "expired"
    ):
        text = md("this request expired at {:%Y-%m-%d %H:%M} UTC", approval.expires_at)
    elif outcome.decision is Decision.ALREADY:
        decided = {"approved": "approve", "denied": "deny"}.get(approval.state)
        who = Mrkdwn(", ").join(user(v.approver) for v in approval.votes if v.decision == decided)
        text = md("already {}", approval.state) + (md(" by {}", who) if who else "")
    elif approval.state == "expired":
        text = md("approval request expired")
    else:
        text = md("{}", approval.state) + (md(" by {}", by) if by else "")
        text += md(": {}", outcome.reason) if outcome.reason else ""
    return info(text)


def extension_reply(extension: Extension) -> Message:
    """What an Extend click did: extended, waiting for approvers, or why not."""
    result, job = extension.result, extension.job
    if result is Extended.NOT_RUNNING or job is None:
        text = md("the job is no longer running")
    elif result is Extended.CLUSTER_GONE:
        text = md("cluster {} is gone", job.cluster)
    elif result is Extended.REFUSED:
        text = said(extension.detail)
    elif result is Extended.WAITING:
        text = md("an extension is already waiting for approval")
    elif result is Extended.ASKED and extension.approvers is not None:
        text = md(
            "the extension ({}) waits for {}", extension.detail, approvers(extension.approvers)
        )
    elif result is Extended.EXTENDED and extension.hours is not None:
        text = md("extended by {}", fmt_span(extension.hours))
    else:
        text = md("the limit was extended already; the next warning offers another extension")
    return info(text)


def decision_note(approval: Approval) -> Message:
    """For the job's thread, when an extension is decided (job starts say so themselves)."""
    who = Mrkdwn(", ").join(user(v.approver) for v in approval.votes) or "nobody, in time"
    text = md("extension {} by {}", approval.state, who)
    return Message(text, [context(text)])


def wall_clock_warning(job: Job, deadline: datetime, *, extend_hours: str) -> Message:
    text = md(
        "{} *{}* reaches its limit at {:%H:%M} UTC and will be stopped then",
        user(job.requester),
        job.name,
        deadline,
    )
    return Message(
        text,
        [
            section(md(":alarm_clock: {}", text)),
            actions(
                button(f"Extend {extend_hours}", ACTION_EXTEND, job.id, style="primary"),
                button("Stop now", ACTION_STOP, job.id, style="danger", confirm=_confirm(job)),
            ),
        ],
    )


def deny_modal(approval_id: str) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": CALLBACK_DENY,
        "private_metadata": approval_id,
        "title": {"type": "plain_text", "text": "Deny the request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": BLOCK_REASON,
                "label": {"type": "plain_text", "text": "Why? The requester sees this."},
                "element": {
                    "type": "plain_text_input",
                    "action_id": BLOCK_REASON,
                    "multiline": True,
                    "max_length": 500,
                },
            }
        ],
    }


def approvals_table(approvals: Sequence[Approval], *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(
            out,
            [
                {
                    "id": a.id,
                    "job": a.job_id,
                    "kind": a.kind,
                    "requester": a.requester,
                    "estimate": str(a.estimate),
                    "state": a.state,
                    "required": a.required,
                    "approvedBy": list(a.approvers),
                    "expires": a.expires_at.isoformat(),
                }
                for a in approvals
            ],
        )
    if not approvals:
        return info("No approval requests waiting.")
    return _table_message(
        table(
            ["ID", "Requester", "Kind", "Estimate", "State", "Approvals", "Expires (UTC)"],
            [
                [
                    a.id,
                    a.requester,
                    a.kind,
                    format_usd(a.estimate),
                    a.state,
                    f"{len(a.approvers)}/{a.required}",
                    f"{a.expires_at:%Y-%m-%d %H:%M}",
                ]
                for a in approvals
            ],
        )
    )


def spend_table(rows: Sequence[Any], *, by: str, month: str, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(
            out,
            [
                {by: r.key, "jobs": r.jobs, "nodeHours": str(r.node_hours), "usd": str(r.usd)}
                for r in rows
            ],
        )
    if not rows:
        return info(md("No spend in {}.", month))
    total = sum((r.usd for r in rows), Decimal(0))
    body = table(
        [by.capitalize(), "Jobs", "Node-hours", "USD"],
        [[r.key, r.jobs, f"{r.node_hours:.2f}", format_usd(r.usd)] for r in rows]
        + [["total", sum(r.jobs for r in rows), "", format_usd(total)]],
    )
    return _table_message(f"spend in {month} by {by}\n{body}")


def budget_view(channel_id: str, budget: Decimal | None, spent: Decimal) -> Message:
    where = channel(channel_id)
    if budget is None:
        return info(md("{} has no budget; {} spent this month.", where, format_usd(spent)))
    left = budget - spent
    bar = progress_bar(float(spent / budget) if budget else 1.0)
    return info(
        md(
            "{}: {} of {} this month (`{}` {} left)",
            where,
            format_usd(spent),
            format_usd(budget),
            bar,
            format_usd(left),
        )
    )


def audit_table(entries: Sequence[AuditEntry], *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(
            out,
            [
                {
                    "at": e.at.isoformat(),
                    "actor": e.actor,
                    "action": e.action,
                    "outcome": e.outcome,
                    "channel": e.channel,
                    "target": e.target,
                    "detail": e.detail,
                }
                for e in entries
            ],
        )
    if not entries:
        return info("The audit log is empty.")
    return _table_message(
        table(
            ["At (UTC)", "Who", "Action", "Outcome", "Target", "Detail"],
            [
                [
                    f"{e.at:%Y-%m-%d %H:%M}",
                    e.actor,
                    e.action,
                    e.outcome,
                    e.target or "",
                    (e.detail or "")[:60],
                ]
                for e in entries
            ],
        )
    )


# -- idle clusters ---------------------------------------------------------------------------

ACTION_IDLE_KEEP = "idle_keep"
ACTION_IDLE_SCALE = "idle_scale_down"
IDLE_ACTIONS = (ACTION_IDLE_KEEP, ACTION_IDLE_SCALE)  # only people who may resize may click


def gpu_use(use: GpuUse, *, nodes: int) -> str:
    """`GPU 87 % · 14.2/16 GiB` (memory per GPU); across nodes `GPU min 12 % / avg 50 % · …`."""
    memory = f"{_gib(use.used_mib)}/{_gib(use.total_mib)} GiB"
    if nodes > 1:
        return f"GPU min {use.util_min:.0f} % / avg {use.util_avg:.0f} % · {memory}"
    return f"GPU {use.util_avg:.0f} % · {memory}"


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f}".removesuffix(".0")


ACTION_GPU_KEEP = "gpu_idle_keep"
ACTION_GPU_STOP = "gpu_idle_stop"
GPU_IDLE_ACTIONS = (ACTION_GPU_KEEP, ACTION_GPU_STOP)


def gpu_idle_warning(event: GpuIdleWarning) -> Message:
    """`4 × A100 idle for 15 min, $14.69/h` with Keep / Stop; once answered, who did what."""
    what = f"{event.gpus} × {event.gpu_model}" if event.gpu_model else f"{event.gpus} GPU(s)"
    cost = f", {format_usd(Decimal(event.per_hour))}/h" if event.per_hour else ""
    text = md(":zzz: {} idle for {} min{}", what, event.minutes, cost)
    blocks = [section(text)]
    if not isinstance(event, GpuIdleWarningClosed):
        value = f"{event.job_id}:{event.warning_id}"
        blocks.append(context(f"every GPU of this job stayed under {event.threshold} % since"))
        blocks.append(
            actions(
                button("Keep", ACTION_GPU_KEEP, value, style="primary"),
                button("Stop", ACTION_GPU_STOP, value, style="danger"),
            )
        )
        return Message(text, blocks)
    if event.outcome == "kept":
        outcome = md(":raised_hand: kept running by {}", user(event.by or ""))
    elif event.outcome == "ended":
        outcome = md(":information_source: the job ended with it open")
    elif event.outcome == "requeued":
        outcome = md(
            ":information_source: that attempt lost its nodes; the next one is watched anew"
        )
    else:
        outcome = md(":octagonal_sign: stopped by {}", user(event.by or ""))
    blocks.append(context(outcome))
    return Message(md("{} — {}", text, _plain(outcome)), blocks)


def gpu_click(outcome: GpuClick) -> Message:
    """What a Keep / Stop click on an idle-GPU warning did, about its job."""
    if outcome.refused is not None:
        return info(refusal(outcome.refused))
    if outcome.job is None or not outcome.applied:
        return info(outcome.detail)
    return info(md("*{}* {}", outcome.job, outcome.detail))


def idle_click(outcome: ClickOutcome) -> Message:
    """What a Keep / Scale down now click did, about its cluster."""
    if outcome.cluster is None:
        return info(outcome.detail)
    return info(md("*{}* {}", outcome.cluster, outcome.detail))


def idle_warning(event: IdleWarning) -> Message:
    """The warning with Keep 1 h / Scale down now; once answered, what happened instead."""
    since, deadline = datetime.fromisoformat(event.since), datetime.fromisoformat(event.deadline)
    saves = (
        f" (saves {format_rate(Decimal(event.saves_per_hour))})"
        if event.saves_per_hour is not None
        else ""
    )
    text = md(
        "Cluster *{}* is idle since {:%H:%M} UTC — scaling to {} at {:%H:%M} UTC{}",
        event.cluster or "",
        since,
        _count(event.min_nodes),
        deadline,
        saves,
    )
    blocks = [section(md(":zzz: {}", text))]
    if not isinstance(event, IdleWarningClosed):
        value = f"{event.cluster}:{event.warning_id}"
        idle = f"no job is queued or running on its {_count(event.nodes)}"
        blocks.append(context(f"{idle}; if nobody answers, it scales down then"))
        blocks.append(
            actions(
                button("Keep 1 h", ACTION_IDLE_KEEP, value, style="primary"),
                button("Scale down now", ACTION_IDLE_SCALE, value, style="danger"),
            )
        )
        return Message(text, blocks)
    at = datetime.fromisoformat(event.at)
    if event.outcome == "kept":
        until = datetime.fromisoformat(event.until or event.at)
        outcome = md(":raised_hand: kept by {} until {:%H:%M} UTC", user(event.by or ""), until)
    elif event.outcome == "scaled":
        who = md(" by {}", user(event.by)) if event.by else ""
        late = "" if event.by else " (nobody answered)"
        outcome = md(
            ":white_check_mark: scaled down to {}{} at {:%H:%M} UTC{}",
            _count(event.min_nodes),
            who,
            at,
            late,
        )
    else:
        outcome = md(":information_source: cancelled: {}", event.reason or "no longer idle")
    blocks.append(context(outcome))
    return Message(md("{} — {}", text, _plain(outcome)), blocks)


def _count(nodes: int) -> str:
    return f"{nodes} node" if nodes == 1 else f"{nodes} nodes"


def idle_setting(cluster: Cluster, minutes: int) -> Message:
    """The answer to `cluster update --idle-timeout`."""
    if minutes == 0:
        return info(md("cluster *{}* is never scaled down for being idle", cluster.name))
    return info(
        md(
            "cluster *{}* scales down to {} after {} idle minutes "
            "(a warning with Keep 1 h / Scale down now comes first)",
            cluster.name,
            _count(cluster.min_nodes),
            minutes,
        )
    )


def _idle_line(view: ClusterView) -> str:
    c = view.cluster
    if view.idle_after is None:
        return "idle scale-down: off"
    line = (
        f"idle scale-down: to {_count(c.min_nodes)} after {fmt_span(view.idle_after)} without jobs"
    )
    if c.idle.warning is not None:
        line += f" · warned, scaling down at {c.idle.warning.deadline:%H:%M} UTC"
    elif c.idle.keep_until is not None:
        line += f" · kept until {c.idle.keep_until:%H:%M} UTC"
    return line


# -- user schedules ----------------------------------------------------------------------------


def _at(moment: datetime | None, zone: str) -> str:
    return "—" if moment is None else fmt_time(moment, zone_of(zone))


def _when(schedule: Schedule) -> str:
    """When it runs, for a table: a code block shows a cron expression as typed."""
    if schedule.kind == "at":
        return f"at {schedule.expression} {schedule.timezone}"
    return f'cron "{schedule.expression}" ({schedule.timezone})'


def _when_md(schedule: Schedule) -> Mrkdwn:
    """When it runs, in a sentence: a cron expression in a code span, or Slack eats its `*`s."""
    if schedule.kind == "at":
        return md("at {} {}", schedule.expression, schedule.timezone)
    return md("cron {} ({})", span(schedule.expression), schedule.timezone)


def _delete_hint(schedule: Schedule) -> Mrkdwn:
    return md("delete it with `/batchai schedule delete -n {}`", schedule.id)


def schedule_created(schedule: Schedule, upcoming: Sequence[datetime], preview: Job) -> Message:
    """The answer to `job create --at/--cron`: id, next run(s), each run's estimate, delete."""
    what = "once" if schedule.kind == "at" else md("on cron {}", span(schedule.expression))
    text = md(
        "⏰ schedule `{}` will submit job *{}* to `{}` {} ({})",
        schedule.id,
        schedule.job.name,
        preview.cluster,
        what,
        schedule.timezone,
    )
    runs = "\n".join(f"• {_at(t, schedule.timezone)}" for t in upcoming)
    label_ = "next run" if len(upcoming) == 1 else f"next {len(upcoming)} runs"
    blocks = [section(text), section(f"{label_}:\n{runs}")]
    if preview.estimate is not None and preview.node_rate is not None:
        cost = (
            f"each run: {preview.node_count} × {format_rate(preview.node_rate)} × "
            f"{fmt_span(preview.max_wall_clock)} max = {format_usd(preview.estimate)}"
        )
        if preview.state is JobState.PENDING_APPROVAL:
            cost += " · at today's prices and limits it will wait for approval"
        blocks.append(context(cost))
    if schedule.kind == "cron":
        blocks.append(context(f"each run's job is named {schedule.job.name}-YYYYMMDD-HHMM"))
    blocks.append(context(_delete_hint(schedule)))
    return Message(text + f"; next: {_at(upcoming[0], schedule.timezone)}", blocks)


def _schedule_state(schedule: Schedule) -> str:
    if schedule.active:
        return "active"
    return "missed" if (schedule.last_error or "").startswith("missed") else "done"


def _last(schedule: Schedule) -> str:
    if schedule.last_run_at is None:
        return "—"
    outcome = schedule.last_job_name or f"error: {schedule.last_error or '?'}"
    return f"{_at(schedule.last_run_at, schedule.timezone)} → {outcome}"


def schedule_json(schedule: Schedule, upcoming: Sequence[datetime] = ()) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "kind": schedule.kind,
        "expression": schedule.expression,
        "timezone": schedule.timezone,
        "job": schedule.job.name,
        "cluster": schedule.job.cluster,
        "owner": schedule.requester,
        "channel": schedule.channel,
        "state": _schedule_state(schedule),
        "nextRun": None if schedule.next_run_at is None else schedule.next_run_at.isoformat(),
        "upcoming": [t.isoformat() for t in upcoming],
        "lastRun": None if schedule.last_run_at is None else schedule.last_run_at.isoformat(),
        "lastJob": schedule.last_job_name,
        "lastError": schedule.last_error,
        "runs": schedule.runs,
    }


def schedule_list(schedules: Sequence[Schedule], *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, [schedule_json(s) for s in schedules])
    if not schedules:
        return info("No scheduled jobs here. Schedule one with `job create ... --at` or `--cron`.")
    return _table_message(
        table(
            ["ID", "Job", "When", "Next run", "Last run", "Owner", "State"],
            [
                [
                    s.id,
                    s.job.name,
                    _when(s),
                    _at(s.next_run_at, s.timezone),
                    _last(s),
                    s.requester,
                    _schedule_state(s),
                ]
                for s in schedules
            ],
        )
    )


def schedule_detail(
    schedule: Schedule, upcoming: Sequence[datetime], *, output: Output | str
) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, schedule_json(schedule, upcoming))
    config = schedule.job.config
    size = f"{config.kind} ({len(config.value)} chars)"
    source = config.value if config.kind == "manifest" else size
    lines = [
        md(
            "schedule `{}` ({}): job *{}* on `{}`, {}",
            schedule.id,
            _schedule_state(schedule),
            schedule.job.name,
            schedule.job.cluster or "the cluster in its job.json",
            _when_md(schedule),
        ),
        md(
            "owner {}{}, config {}, {} run(s) so far",
            user(schedule.requester),
            md(" in {}", channel(schedule.channel)) if schedule.channel else "",
            source,
            schedule.runs,
        ),
        md("next runs: {}", ", ".join(_at(t, schedule.timezone) for t in upcoming) or "none"),
        md("last run: {}", _last(schedule)),
    ]
    if schedule.job.mounts:
        lines.append(md("mounts: {}", ", ".join(_mount_of(m) for m in schedule.job.mounts)))
    if schedule.last_error and schedule.last_job_name is None:
        lines.append(md("last error: {}", schedule.last_error))
    body = Mrkdwn("\n").join(lines)
    return Message(lines[0], [section(body), context(_delete_hint(schedule))])


def _mount_of(m: ShareMount) -> str:
    """`afs` ← share data (of account x): what a mount flag adds, never its key."""
    what = {"afs": "share", "bfs": "container", "nfs": "file server"}.get(m.kind, m.kind)
    account = f" of account {m.account}" if m.account else ""
    return f"{m.mount_path} ← {what} {m.share}{account}"


def schedule_fired(schedule_id: str, job_name: str) -> Message:
    text = md("⏰ schedule `{}` submitted job *{}*", schedule_id, job_name)
    return Message(text, [section(text)])


def schedule_failed(schedule_id: str, error: str, next_run: datetime | None, zone: str) -> Message:
    text = md(":warning: schedule `{}` could not submit its job: {}", schedule_id, error)
    tail = f"next run: {_at(next_run, zone)}" if next_run else "this was its only run; it has ended"
    return Message(text, [section(text), context(tail)])


def schedule_missed(
    schedule_id: str, missed: datetime, next_run: datetime | None, zone: str
) -> Message:
    text = md(
        "⏰ schedule `{}` missed its run at {}: the bot was down, and it is too late to start "
        "it now",
        schedule_id,
        _at(missed, zone),
    )
    tail = f"next run: {_at(next_run, zone)}" if next_run else "it has ended"
    return Message(text, [section(text), context(tail)])


# -- file servers (az batchai file-server)

_MOUNT_KIND = {"afs": "share", "bfs": "container", "nfs": "file server"}


def _file_server_row(fs: FileServer) -> list[object]:
    return [fs.name, fs.vm_size, fs.disk_count, fs.disk_size_gb, fs.storage_sku, fs.state]


_FILE_SERVER_HEADERS = ["Name", "VM size", "Disks", "Disk GB", "Disk type", "State"]


def file_server_list(servers: Sequence[FileServer], *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, [file_server_resource(fs) for fs in servers])
    if not servers:
        return Message(
            "no file servers",
            [section("No file servers. Create one with `/batchai file-server create`.")],
        )
    rows = [_file_server_row(fs) for fs in servers]
    return _table_message(
        table(_FILE_SERVER_HEADERS, rows),
        rest="`/batchai file-server show -n NAME` shows one file server",
    )


def file_server_detail(fs: FileServer, *, output: Output | str) -> Message:
    if (out := Output.of(output)).structured:
        return _structured(out, file_server_resource(fs))
    if out.format == "table":
        return _table_message(table(_FILE_SERVER_HEADERS, [_file_server_row(fs)]))
    lines = [
        md("*{}* ({}) — {}", fs.name, fs.vm_size, fs.state),
        md(
            "{} × {} GB {} data disks, RAID 0, exported from {}",
            fs.disk_count,
            fs.disk_size_gb,
            fs.storage_sku,
            fs.export,
        ),
        md("admin user {}; mount it with `--nfs {}`", fs.admin_user, fs.name),
    ]
    if fs.error:
        lines.append(md("error: {}", fs.error))
    return Message(md("file server {}", fs.name), [section(Mrkdwn("\n").join(lines))])
