"""Hostile text in every string field of every model, through every view: nothing pings,
nothing fakes a link, no entity is cut in half, no code block is left open."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest

from handlers import home, presenter, views
from handlers.outputs import Output, Query
from services.backends.links import LinkSigner
from services.clusters.idle import ClickOutcome
from services.core.events import (
    ApprovalDecided,
    ApprovalRequested,
    GpuIdleWarning,
    GpuIdleWarningClosed,
    IdleWarning,
    IdleWarningClosed,
    JobFinished,
    JobNote,
    JobRequeued,
    JobStateChanged,
    JobSubmitted,
    LogSnippet,
    NodeUnusable,
    ScheduleFailed,
    ScheduleFired,
    ScheduleMissed,
    WallClockWarning,
)
from services.core.ports import Delivery
from services.jobs.gpu_idle import GpuClick
from services.jobs.lifecycle import JobState
from services.models import (
    Approval,
    Attempt,
    AuditEntry,
    ClusterFileListing,
    ClusterView,
    ConfigSource,
    Conversation,
    DownloadLink,
    Experiment,
    ExperimentView,
    FileEntry,
    FileListing,
    FileLocation,
    FileServer,
    GpuUse,
    Node,
    NodeCounts,
    NodeOutput,
    NodeProblem,
    Progress,
    Schedule,
    ScheduledJob,
    ShareMount,
    Usage,
    Vote,
    Workspace,
    WorkspaceView,
)
from services.spend.approvals.policy import Approvers
from services.spend.approvals.service import Decision, Extended, Extension, Outcome
from services.spend.pricing import Price
from tests.conftest import NOW, make_cluster, make_job

HOSTILE = "<!channel> <@U0EVIL> <#C0EVIL> <https://evil.example/x|sign in> a&lt;&b ``` x|y>"
BASE = "https://bot.example/files/tok/"
APPROVERS = "<@U0BOSS>"  # the bot's configured approvers: the only mention allowed through
# Fields read as data, not shown: times the views parse, a zone, a decimal, the bot's own URLs.
NOT_TEXT = {
    "since",
    "deadline",
    "at",
    "until",
    "timezone",
    "saves_per_hour",
    "url",
    "attempt_usd",
    "spent_usd",
}


def hostile(obj: Any) -> Any:
    """`obj` with every string field (nested dataclasses, tuples, dicts too) made hostile."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name in NOT_TEXT:
                continue
            text = isinstance(value, str) and not isinstance(value, Enum)
            changes[f.name] = HOSTILE if text else hostile(value)
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, tuple):
        return tuple(HOSTILE if isinstance(v, str) else hostile(v) for v in obj)
    if isinstance(obj, dict):
        return {HOSTILE + str(k): hostile(v) for k, v in obj.items()}
    return obj


REQUEUED = hostile(JobRequeued(attempt=2, of=4, reason="x", attempt_usd="1.5", spent_usd="3"))


def _job(state: JobState = JobState.FAILED) -> Any:
    return hostile(
        make_job(
            state=state,
            started_at=NOW - timedelta(hours=1),
            ended_at=NOW if state.finished else None,
            exit_code=1,
            error="x",
            node_rate=Decimal("3.673"),
            estimate=Decimal("7"),
            progress=Progress(3, 10),
            last_metrics={"loss": 0.5},
            nodes=(0, 1),
            conversation=Conversation("C0JOBS", "1.000001", "U1"),
            container_image="img",
            max_retries=3,
            attempts=(
                Attempt(
                    1, NOW - timedelta(hours=2), NOW, (0,), "x", Decimal(2), FileLocation("s", "p")
                ),
            ),
        )
    )


def _link(name: str) -> DownloadLink:
    return DownloadLink(name, 10, BASE + name, NOW)  # the raw name, as a careless signer makes it


CLUSTER = hostile(
    make_cluster(
        mounts=(ShareMount("data", "afs"),),
        error="x",
        autoscale=True,
        setup_task="x",
        setup_task_output="x",
        setup_task_suffix="x",
        setup_task_env=(("A", "b"),),
        setup_task_secrets=(("S", "v"),),
        unusable=(NodeProblem("c1", "n", "r"),),
    )
)
VIEW = ClusterView(CLUSTER, NodeCounts(1, 1, 1, 1, 1), 2, idle_after=timedelta(minutes=30))
APPROVAL = hostile(
    Approval(
        id="a1",
        job_id="j1",
        kind="job",
        requester="U1",
        channel="C1",
        estimate=Decimal("117.54"),
        formula="4 × x",
        reasons=("over limit",),
        required=2,
        state="pending",
        created_at=NOW,
        expires_at=NOW,
        votes=(Vote("U2", "deny", NOW, "why"),),
        month_spend=Decimal(1),
        budget=Decimal(2),
    )
)
SCHEDULE = hostile(
    Schedule(
        id="s1",
        kind="cron",
        expression="0 2 * * *",
        timezone="UTC",
        job=ScheduledJob("n", "c1", ConfigSource("manifest", "m")),
        requester="U1",
        channel="C1",
        created_at=NOW,
        next_run_at=NOW,
        last_run_at=NOW,
        last_error="x",
    )
)
IDLE = hostile(
    IdleWarning(
        cluster="c1",
        warning_id="w",
        channel="C1",
        since=NOW.isoformat(),
        deadline=NOW.isoformat(),
        nodes=3,
        min_nodes=0,
        saves_per_hour="1.5",
    )
)


NODE = hostile(NodeUnusable(cluster="c1", channel="C1", node="n", reason="r", vm_size="v"))
GPU_IDLE = dataclasses.replace(
    hostile(GpuIdleWarning(job_id="j", cluster="c", warning_id="w", gpus=4, gpu_model="A100")),
    per_hour="14.692",
)


def _idle_closed(outcome: str) -> IdleWarning:
    closed = IdleWarningClosed(**{**dataclasses.asdict(IDLE), "outcome": outcome})
    return dataclasses.replace(closed, at=NOW.isoformat(), until=NOW.isoformat(), by=HOSTILE)


@dataclasses.dataclass(frozen=True)
class SpendRow:
    key: str
    jobs: int
    node_hours: Decimal
    usd: Decimal


def _listing() -> FileListing:
    entries = (FileEntry(HOSTILE, False, 5, NOW), FileEntry(HOSTILE + "dir", True, 0))
    return FileListing(_job(), HOSTILE, HOSTILE, entries, {HOSTILE: _link(HOSTILE)})


def _cluster_listing() -> ClusterFileListing:
    entries = (FileEntry(HOSTILE, False, 5, NOW), FileEntry(HOSTILE + "dir", True, 0))
    return ClusterFileListing(VIEW.cluster, HOSTILE, entries, {HOSTILE: _link(HOSTILE)})


SERVER = FileServer(
    HOSTILE,
    HOSTILE,
    HOSTILE,
    HOSTILE,
    2,
    10,
    HOSTILE,
    HOSTILE,
    HOSTILE,
    HOSTILE,
    NOW,
    HOSTILE,
    HOSTILE,
    HOSTILE,
)

WORKSPACE = WorkspaceView(
    Workspace(HOSTILE, HOSTILE, HOSTILE, NOW, HOSTILE), (HOSTILE,), (HOSTILE, HOSTILE)
)
EXPERIMENT = ExperimentView(Experiment(HOSTILE, HOSTILE, HOSTILE, NOW, HOSTILE), 3, (HOSTILE,))

# What each annotation of a view's parameter gets: hostile models, hostile text.
ARGS: dict[str, Callable[[], Any]] = {
    "Job": _job,
    "Job | None": _job,
    "Sequence[Job]": lambda: [_job(s) for s in JobState],
    "Cluster": lambda: CLUSTER,
    "ClusterView": lambda: VIEW,
    "Sequence[ClusterView]": lambda: [VIEW],
    "Sequence[DownloadLink]": lambda: [_link(HOSTILE), _link("model.bin")],
    "FileListing": _listing,
    "ClusterFileListing": _cluster_listing,
    "Approval": lambda: APPROVAL,
    "Sequence[Approval]": lambda: [APPROVAL],
    "Sequence[AuditEntry]": lambda: [
        AuditEntry(NOW, HOSTILE, HOSTILE, HOSTILE, HOSTILE, HOSTILE, HOSTILE)
    ],
    "Sequence[Node]": lambda: [Node(HOSTILE, 0, HOSTILE, 22, HOSTILE)],
    "Sequence[Usage]": lambda: [Usage(HOSTILE, HOSTILE, 1, None), Usage(HOSTILE, HOSTILE, 2, 3)],
    "Schedule": lambda: SCHEDULE,
    "FileServer": lambda: SERVER,
    "WorkspaceView": lambda: WORKSPACE,
    "Sequence[WorkspaceView]": lambda: [WORKSPACE],
    "ExperimentView": lambda: EXPERIMENT,
    "Sequence[ExperimentView]": lambda: [EXPERIMENT],
    "NodeOutput": lambda: NodeOutput(HOSTILE, 1, HOSTILE, True, False, HOSTILE),
    "Sequence[FileServer]": lambda: [SERVER],
    "Sequence[Schedule]": lambda: [SCHEDULE],
    "IdleWarning": lambda: IDLE,
    "JobRequeued": lambda: REQUEUED,
    "Outcome": lambda: Outcome(APPROVAL, True, Decision.DECIDED, by=HOSTILE, reason=HOSTILE),
    "Extension": lambda: Extension(
        Extended.ASKED, _job(), HOSTILE, approvers=Approvers(frozenset({HOSTILE}), frozenset())
    ),
    "ClickOutcome": lambda: ClickOutcome(True, HOSTILE, HOSTILE),
    "NodeUnusable": lambda: NODE,
    "GpuIdleWarning": lambda: GPU_IDLE,
    "GpuClick": lambda: GpuClick(True, HOSTILE, HOSTILE),
    "GpuUse": lambda: GpuUse(1, 2, 3, 4, 5, 6, 7, 8),
    "Price | None": lambda: Price(HOSTILE, Decimal(1), 1, HOSTILE, date(2026, 1, 1), HOSTILE, True),
    "Sequence[Any]": lambda: [SpendRow(HOSTILE, 1, Decimal(1), Decimal(2))],
    "Sequence[str]": lambda: [HOSTILE, HOSTILE],
    "Sequence[datetime]": lambda: [NOW, NOW],
    "Message": lambda: views.Message(HOSTILE, [views.section(HOSTILE)]),
    "str": lambda: HOSTILE,
    "str | None": lambda: HOSTILE,
    "int": lambda: 7,
    "datetime": lambda: NOW,
    "datetime | None": lambda: NOW,
    "Decimal": lambda: Decimal(5),
    "Decimal | None": lambda: Decimal(5),
    "bool": lambda: False,
    "Output | str": lambda: "text",
    "Mapping[str, Decimal]": lambda: {HOSTILE: Decimal(1), "STANDARD_NC6": Decimal(2)},
}
BY_NAME: dict[str, Any] = {
    "approvers": APPROVERS,
    "full_log_url": BASE + "stderr.txt",
    "zone": "UTC",
    "by": "user",
    "extend_hours": "2 h",
}
# Views whose text parameter is a service's own sentence (mentions of ids kept, see
# views.said) or not Slack text at all; each has its own test below.
NOT_HOSTILE_TEXT = {"info", "to_text", "deny_modal", "monospace"}


def view_functions() -> Iterator[Callable[..., Any]]:
    for module in (views, home):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__ or name.startswith("_"):
                continue
            returns = inspect.signature(fn).return_annotation
            if returns in ("Message", "dict[str, Any]") and name not in NOT_HOSTILE_TEXT:
                yield fn


def calls(fn: Callable[..., Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    params = inspect.signature(fn).parameters.values()
    kwargs = {}
    for p in params:
        if p.name in BY_NAME:
            kwargs[p.name] = BY_NAME[p.name]
        elif p.annotation in ARGS:
            kwargs[p.name] = ARGS[p.annotation]()
        elif p.default is inspect.Parameter.empty:
            raise AssertionError(f"{fn.__name__}: no hostile value for {p.name}: {p.annotation}")
    if "output" in kwargs:
        for output in ("json", "table", "text", "tsv", "yaml"):
            yield output, {**kwargs, "output": output}
        for query in ("@", "[].*", "*"):  # every value, flattened into tsv and a table
            for fmt in ("tsv", "table"):
                yield (
                    f"{fmt} --query {query}",
                    {**kwargs, "output": Output(fmt, Query.compile(query))},
                )
    elif isinstance(kwargs.get("event"), GpuIdleWarning):
        closed = [
            GpuIdleWarningClosed(**{**dataclasses.asdict(GPU_IDLE), "outcome": o, "by": HOSTILE})
            for o in ("kept", "stopped")
        ]
        for event in (GPU_IDLE, *closed):
            yield type(event).__name__, {**kwargs, "event": event}
    elif isinstance(kwargs.get("event"), IdleWarning):
        for event in (IDLE, *(_idle_closed(o) for o in ("kept", "scaled", "cancelled"))):
            yield type(event).__name__, {**kwargs, "event": event}
    else:
        yield "", kwargs


def mrkdwn_texts(node: Any) -> Iterator[str]:
    """Every text Slack reads as mrkdwn in a payload."""
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str):
            yield node["text"]
        for value in node.values():
            yield from mrkdwn_texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from mrkdwn_texts(item)


LINK = re.compile(r"<https://bot\.example/files/tok/[^\s<>|]*\|[^<>|]*>")


def assert_inert(text: str) -> None:
    rest = LINK.sub("", text.replace(APPROVERS, ""))
    for opener in ("<!", "<@", "<#", "<http"):
        assert opener not in rest, (opener, text)
    assert not re.search(r"&(?!(amp|lt|gt);)", text), ("a half entity", text)
    assert text.count("```") % 2 == 0, ("an open code block", text)


def rendered(result: Any) -> Iterator[str]:
    if isinstance(result, views.Message):
        yield result.text
        yield from mrkdwn_texts(result.blocks)
    else:
        yield from mrkdwn_texts(result)


FUNCTIONS = list(view_functions())


def test_every_view_is_covered() -> None:
    names = {fn.__name__ for fn in FUNCTIONS}
    assert {"status_card", "receipt", "cluster_detail", "file_listing", "note_reply"} <= names
    assert {"log_snippet", "approval_request", "idle_warning", "home_view"} <= names
    assert len(names) >= 30


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: f"{fn.__module__}.{fn.__name__}")
def test_hostile_text_is_inert_in_every_view(fn: Callable[..., Any]) -> None:
    for _, kwargs in calls(fn):
        for text in rendered(fn(**kwargs)):
            assert_inert(text)
            assert HOSTILE not in text  # it was there in every field: escaped, never raw


def test_names_in_download_links_are_percent_encoded() -> None:
    message = views.receipt(_job(), [_link("a b|c>d.bin")])
    assert "<https://bot.example/files/tok/a%20b%7Cc%3Ed.bin|a b¦c&gt;d.bin>" in str(message.blocks)


def test_a_service_sentence_keeps_only_mentions_of_ids() -> None:
    (text,) = mrkdwn_texts(views.info(f"approved by <@U0BOSS> for <#C0JOBS>; {HOSTILE}").blocks)
    assert text.startswith("approved by <@U0BOSS> for <#C0JOBS>; &lt;!channel&gt;")
    assert "<https://evil" not in text and "<!" not in text
    assert "<@U0EVIL|" not in views.said("<@U0EVIL|boss>")
    assert_inert(views.error(HOSTILE).blocks[0]["text"]["text"])
    assert views.error(HOSTILE).text == views.trusted(HOSTILE)


def test_plain_text_reaching_a_block_is_escaped_so_a_new_view_cannot_forget() -> None:
    assert views.section(HOSTILE)["text"]["text"] == views.esc(HOSTILE)
    assert views.context(HOSTILE)["elements"][0]["text"] == views.esc(HOSTILE)
    assert views.Message(HOSTILE).text == views.esc(HOSTILE)
    assert views.md("*{}* {}", HOSTILE, views.user("U1")) == f"*{views.esc(HOSTILE)}* <@U1>"
    assert views.user(HOSTILE) == views.esc(HOSTILE)
    assert views.channel(HOSTILE) == views.esc(HOSTILE)


class Recorder:
    """A chat transport that keeps what it was asked to send (the presenter's port)."""

    def __init__(self) -> None:
        self.sent: list[views.Message] = []

    async def post(self, channel: str, message: views.Message, **_: Any) -> presenter.MessageRef:
        self.sent.append(message)
        return presenter.MessageRef(channel, "1.000001")

    async def update(
        self, channel: str, message_id: str, message: views.Message, *, priority: int = 1
    ) -> None:
        self.sent.append(message)

    async def lookup(self, key: str) -> presenter.MessageRef | None:
        return presenter.MessageRef("C0HOSTILE", "1.000001")

    async def upload(self, channel: str, **_: Any) -> None:
        return None


async def test_hostile_events_through_the_presenter() -> None:
    job = _job()
    events = [
        JobSubmitted(warnings=(HOSTILE,), estimate=HOSTILE),
        JobStateChanged(old=HOSTILE, new=HOSTILE, detail=HOSTILE),
        JobStateChanged(old="queued", new="running", detail=HOSTILE),
        LogSnippet(file=HOSTILE, first_line=1, lines=(HOSTILE,) * 50),
        JobNote(text=HOSTILE),
        REQUEUED,
        JobStateChanged(old="running", new="queued", detail=HOSTILE),
        ApprovalRequested(),
        ApprovalDecided(),
        WallClockWarning(deadline=NOW.isoformat()),
        JobFinished(),
        ScheduleFired(schedule_id=HOSTILE, job_name=HOSTILE),
        ScheduleFailed(schedule_id=HOSTILE, error=HOSTILE, timezone="UTC"),
        ScheduleMissed(schedule_id=HOSTILE, missed=NOW.isoformat(), timezone="UTC"),
        IDLE,
        _idle_closed("cancelled"),
    ]
    recorder = Recorder()
    p = presenter.Presenter(
        recorder, default_channel="C0JOBS", clock=lambda: NOW, approvers=APPROVERS
    )
    for n, event in enumerate(events):
        delivery = Delivery(
            event_ids=(n,),
            event=event,
            job=job,
            approval=APPROVAL,
            links=(_link(HOSTILE),),
            log_url=BASE + "stderr.txt",
        )
        await p.deliver(delivery)
    assert len(recorder.sent) >= len(events)
    for message in recorder.sent:
        for text in rendered(message):
            assert_inert(text)
    json.dumps([m.blocks for m in recorder.sent])  # plain data, nothing else


def test_the_link_signer_percent_encodes_the_file_name() -> None:
    signer = LinkSigner(b"k" * 32, "http://127.0.0.1:8080/files")
    url = signer.sign(FileLocation("data", "jobs/x/<!channel>|a b>.bin"), NOW + timedelta(hours=1))
    assert url.endswith("/%3C%21channel%3E%7Ca%20b%3E.bin")
    token = url.split("/")[-2]
    assert signer.verify(token, now=NOW).path == "jobs/x/<!channel>|a b>.bin"
