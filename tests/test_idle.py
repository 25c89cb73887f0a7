"""Idle scale-down: IdleService + ClusterService + relay + presenter on real SQLite, the real local
backend and a fake clock; the chat is a recording fake of the presenter's Transport port."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handlers import views
from handlers.actions import ActionHandler
from handlers.commands import CommandHandler, Services
from handlers.presenter import MessageRef, Presenter
from handlers.views import Message
from services.access import AccessGuard, AccessPolicy, AuditLog, Caller
from services.backends.links import LinkSigner
from services.backends.local import LocalBackend, LocalShare
from services.clusters.idle import BOT, STALE, IdleService
from services.clusters.lifecycle import ClusterState
from services.clusters.service import ClusterRequest, ClusterService
from services.core.clock import FakeClock
from services.core.errors import UserError
from services.jobs.service import JobRequest, JobService
from services.jobs.sources import ConfigLoader
from services.models import Actor, ConfigSource, Conversation
from services.notify.relay import EventRelay
from services.spend.ledger import PriceBook
from services.spend.pricing import format_rate, load_price_table
from services.store import SqlStore

PROJECT = Path(__file__).resolve().parents[1]
START = datetime(2026, 11, 27, 14, 2, tzinfo=UTC)
CHANNEL = "C0GPU"
VM = "Standard_NC4as_T4_v3"
OWNER = Actor("U0OWNER", Conversation(CHANNEL, None, "U0OWNER"), is_admin=True)
BOB = Actor("U0BOB", Conversation(CHANNEL, None, "U0BOB"))


@dataclass
class Post:
    channel: str
    message: Message
    keys: tuple[str, ...]
    id: str
    edits: list[Message] = field(default_factory=list)

    @property
    def current(self) -> Message:
        return self.edits[-1] if self.edits else self.message

    def value(self) -> str:
        """What the buttons carry (as posted: an answered warning has none left)."""
        _, buttons = views.to_text(self.message)
        return str(buttons[0]["value"])


@dataclass
class Chat:
    """The presenter's Transport, recording; its keys outlive a restart like the outbox's."""

    posts: list[Post] = field(default_factory=list)
    sent: dict[str, MessageRef] = field(default_factory=dict)

    async def post(
        self,
        channel: str,
        message: Message,
        *,
        thread: str | None = None,
        broadcast: bool = False,
        keys: Sequence[str] = (),
        low_priority: bool = False,
    ) -> MessageRef:
        for key in keys:
            if key in self.sent:
                return self.sent[key]
        post = Post(channel, message, tuple(keys), f"m{len(self.posts) + 1}")
        self.posts.append(post)
        self.sent.update(dict.fromkeys(keys, MessageRef(channel, post.id)))
        return MessageRef(channel, post.id)

    async def update(
        self, channel: str, message_id: str, message: Message, *, priority: int = 1
    ) -> None:
        next(p for p in self.posts if p.id == message_id).edits.append(message)

    async def lookup(self, key: str) -> MessageRef | None:
        return self.sent.get(key)

    async def upload(self, channel: str, **kw: object) -> None:
        raise AssertionError("no uploads in idle tests")

    def warnings(self) -> list[Post]:
        return [p for p in self.posts if "is idle since" in p.message.text]


@dataclass
class Rig:
    root: Path
    store: SqlStore
    clock: FakeClock
    chat: Chat
    share: LocalShare
    prices: PriceBook
    clusters: ClusterService = field(init=False)
    idle: IdleService = field(init=False)
    relay: EventRelay = field(init=False)
    actions: ActionHandler = field(init=False)
    jobs: JobService = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self, *, default_minutes: int = 15) -> None:
        """What a restart does: new services over the same database, share and chat."""
        self.backend = LocalBackend(self.root, python=sys.executable)
        self.clusters = ClusterService(
            store=self.store,
            backend=self.backend,
            clock=self.clock,
            configs=ConfigLoader(self.root),
            resource_group="rg",
            workspace="ws",
            prices=self.prices,
            idle_timeout=timedelta(minutes=default_minutes),
        )
        self.idle = IdleService(
            store=self.store, clusters=self.clusters, clock=self.clock, prices=self.prices
        )
        presenter = Presenter(self.chat, default_channel="console", clock=self.clock.now)
        self.relay = EventRelay(
            store=self.store, share=self.share, notifier=presenter, clock=self.clock
        )
        self.jobs = JobService(
            store=self.store,
            share=self.share,
            clock=self.clock,
            configs=ConfigLoader(self.root),
            resource_group="rg",
            workspace="ws",
        )
        self.guard = AccessGuard(
            policy=AccessPolicy(), audit=AuditLog(self.store), now=self.clock.now
        )
        self.actions = ActionHandler(self.jobs, self.clock.now, self.guard, None, self.idle)

    async def cluster(self, name: str = "gpu", **kw: object) -> None:
        values: dict[str, object] = {"min_nodes": 0, "max_nodes": 2, "target_nodes": 2}
        values.update(kw)
        request = ClusterRequest(name=name, vm_size=VM, afs_name="data", **values)  # type: ignore[arg-type]
        await self.clusters.create_cluster(request, actor=OWNER)

    async def at(self, hh: int, mm: int, ss: int = 0) -> None:
        """Move the clock to hh:mm:ss that day, run the idle check, deliver what it said."""
        target = START.replace(hour=hh, minute=mm, second=ss)
        assert target >= self.clock.now()
        self.clock.advance(target - self.clock.now())
        await self.idle.check()
        await self.relay.drain()

    async def click(self, action_id: str, value: str, actor: Actor = BOB) -> str:
        reply = await self.actions.handle(action_id, value, caller=_caller(actor))
        await self.relay.drain()
        return reply.message.text

    async def nodes(self, name: str = "gpu") -> int:
        cluster = await self.store.get_cluster(name)
        assert cluster is not None and cluster.state is ClusterState.STEADY
        return cluster.target_nodes


@pytest.fixture
async def rig(tmp_path: Path, store: SqlStore) -> AsyncIterator[Rig]:
    share = LocalShare(tmp_path, LinkSigner(b"s" * 32, "http://127.0.0.1:1/files"))
    share.create_share("data")
    prices = PriceBook(load_price_table(PROJECT / "manifests" / "prices.json"))
    yield Rig(tmp_path, store, FakeClock(START), Chat(), share, prices)


def saving(rig: Rig, nodes: int) -> str:
    return format_rate(rig.prices.table.get_price(VM).usd_per_hour * nodes)


async def test_one_warning_at_idle_plus_timeout_minus_lead_with_price_and_buttons(
    rig: Rig,
) -> None:
    await rig.cluster(idle_timeout_minutes=20)
    await rig.at(14, 2)
    await rig.at(14, 16, 59)
    assert rig.chat.warnings() == []
    await rig.at(14, 17)
    (warning,) = rig.chat.warnings()
    assert warning.channel == CHANNEL
    assert warning.message.text == (
        f"Cluster *gpu* is idle since 14:02 UTC — scaling to 0 nodes at 14:22 UTC "
        f"(saves {saving(rig, 2)})"
    )
    text, buttons = views.to_text(warning.message)
    assert "[1] Keep 1 h  [2] Scale down now" in text  # what the console shows
    cluster = await rig.store.get_cluster("gpu")
    assert cluster is not None and cluster.idle.warning is not None
    value = f"gpu:{cluster.idle.warning.id}"
    assert [(b["action_id"], b["value"]) for b in buttons] == [
        (views.ACTION_IDLE_KEEP, value),
        (views.ACTION_IDLE_SCALE, value),
    ]
    await rig.at(14, 18)
    await rig.at(14, 21, 59)
    assert len(rig.chat.warnings()) == 1 and await rig.nodes() == 2


async def test_nobody_answers_so_it_scales_to_min_at_the_deadline(rig: Rig) -> None:
    await rig.cluster(min_nodes=1, max_nodes=3, target_nodes=3)
    await rig.at(14, 2)
    await rig.at(14, 12)  # the default: 15 min timeout, warned 5 min before
    (warning,) = rig.chat.warnings()
    assert "scaling to 1 node at 14:17 UTC" in warning.message.text
    assert f"saves {saving(rig, 2)}" in warning.message.text
    await rig.at(14, 16, 59)
    assert await rig.nodes() == 3
    await rig.at(14, 17)
    assert await rig.nodes() == 1
    cluster = await rig.store.get_cluster("gpu")
    assert cluster is not None
    assert len(await rig.backend.list_nodes(cluster)) == 1
    text, buttons = views.to_text(warning.current)
    assert buttons == [] and "scaled down to 1 node at 14:17 UTC (nobody answered)" in text
    (entry,) = await rig.store.list_audit(target="gpu")
    assert (entry.actor, entry.action, entry.outcome) == (
        BOT,
        "idle scale down (nobody answered)",
        "allowed",
    )
    await rig.at(15, 30)  # at its minimum now: never warned again
    assert len(rig.chat.warnings()) == 1


async def test_keep_postpones_for_an_hour_edits_and_warns_again(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    await rig.at(14, 12)
    (first,) = rig.chat.warnings()
    answer = await rig.click(views.ACTION_IDLE_KEEP, first.value())
    assert "until 2026-11-27 15:12 UTC" in answer
    text, buttons = views.to_text(first.current)
    assert buttons == [] and "kept by @U0BOB until 15:12 UTC" in text
    (entry,) = await rig.store.list_audit(target="gpu")
    assert (entry.actor, entry.action, entry.outcome) == ("U0BOB", "idle keep", "allowed")
    assert entry.detail is not None and "15:12" in entry.detail
    await rig.at(14, 17)
    await rig.at(15, 11, 59)
    assert await rig.nodes() == 2 and len(rig.chat.warnings()) == 1
    await rig.at(15, 12)  # the hour is up and it is still idle: a new warning
    second = rig.chat.warnings()[-1]
    assert len(rig.chat.warnings()) == 2 and second.value() != first.value()
    assert "idle since 14:02 UTC — scaling to 0 nodes at 15:17 UTC" in second.message.text
    assert await rig.click(views.ACTION_IDLE_SCALE, first.value()) == STALE
    assert await rig.nodes() == 2
    await rig.at(15, 17)
    assert await rig.nodes() == 0


async def test_scale_down_now_scales_at_once_and_edits_the_message(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    await rig.at(14, 12)
    (warning,) = rig.chat.warnings()
    await rig.at(14, 13)
    answer = await rig.click(views.ACTION_IDLE_SCALE, warning.value())
    assert answer == "*gpu* is scaled down to 0 nodes"
    assert await rig.nodes() == 0
    text, buttons = views.to_text(warning.current)
    assert buttons == [] and "scaled down to 0 nodes by @U0BOB at 14:13 UTC" in text
    assert await rig.click(views.ACTION_IDLE_SCALE, warning.value()) == STALE
    actions = [(e.actor, e.action, e.outcome) for e in await rig.store.list_audit(target="gpu")]
    assert actions == [
        ("U0BOB", "idle scale down", "denied"),
        ("U0BOB", "idle scale down", "allowed"),
    ]


async def test_a_job_arriving_cancels_the_pending_scale_down(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    await rig.at(14, 12)
    (warning,) = rig.chat.warnings()
    config = ConfigSource("inline", json.dumps({"properties": {"nodeCount": 1, **_TOOLKIT}}))
    await rig.jobs.create_job(JobRequest("train", "gpu", config), actor=OWNER)
    await rig.at(14, 14)
    text, buttons = views.to_text(warning.current)
    assert buttons == [] and "cancelled: job train arrived" in text
    await rig.at(14, 30)
    assert await rig.nodes() == 2 and len(rig.chat.warnings()) == 1
    assert await rig.click(views.ACTION_IDLE_KEEP, warning.value()) == STALE
    cluster = await rig.store.get_cluster("gpu")
    assert cluster is not None and cluster.idle.since is None


_TOOLKIT = {"customToolkitSettings": {"commandLine": "echo hi"}}


async def test_scale_down_now_after_a_job_arrived_says_why_and_cancels(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    await rig.at(14, 12)
    (warning,) = rig.chat.warnings()
    config = ConfigSource("inline", json.dumps({"properties": {"nodeCount": 1, **_TOOLKIT}}))
    await rig.jobs.create_job(JobRequest("eval", "gpu", config), actor=OWNER)
    answer = await rig.click(views.ACTION_IDLE_SCALE, warning.value())  # before the next check
    assert answer == "*gpu* was not scaled down: job eval arrived"
    assert await rig.nodes() == 2
    assert "cancelled: job eval arrived" in views.to_text(warning.current)[0]


async def test_a_cluster_at_its_minimum_or_of_fixed_size_never_warns(rig: Rig) -> None:
    await rig.cluster("small", min_nodes=0, max_nodes=2, target_nodes=0)
    await rig.cluster("fixed", min_nodes=None, max_nodes=None, target_nodes=2)
    for hour in (14, 15, 16, 17):
        await rig.at(hour, 30)
    assert rig.chat.posts == []
    assert await rig.nodes("fixed") == 2
    with pytest.raises(UserError, match="fixed-size cluster keeps its nodes"):
        await rig.cluster("nope", min_nodes=None, max_nodes=None, idle_timeout_minutes=30)
    assert await rig.store.get_cluster("nope") is None


async def test_per_cluster_timeouts_and_zero_means_never(rig: Rig) -> None:
    await rig.cluster("default")
    await rig.cluster("slow", idle_timeout_minutes=60)
    await rig.cluster("never", idle_timeout_minutes=0)
    await rig.cluster("quick", idle_timeout_minutes=4)  # lead: half of it, 2 min
    await rig.at(14, 2)
    await rig.at(14, 4)
    assert [_name(p) for p in rig.chat.warnings()] == ["quick"]
    await rig.at(14, 6)
    assert await rig.nodes("quick") == 0
    await rig.at(14, 12)
    assert [_name(p) for p in rig.chat.warnings()] == ["quick", "default"]
    await rig.at(14, 56)
    await rig.at(17, 0)
    assert [_name(p) for p in rig.chat.warnings()] == ["quick", "default", "slow"]
    assert await rig.nodes("never") == 2
    view = await rig.clusters.get_cluster("never")
    assert view.idle_after is None
    assert (
        "idle scale-down: off"
        in views.cluster_detail(view, output="text").blocks[0]["text"]["text"]
    )


async def test_turning_idle_scale_down_off_cancels_a_pending_warning(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    await rig.at(14, 12)
    (warning,) = rig.chat.warnings()
    await rig.clusters.update_cluster("gpu", idle_timeout_minutes=0, actor=OWNER)
    await rig.at(14, 13)
    assert "cancelled: idle scale-down is off for this cluster" in views.to_text(warning.current)[0]
    await rig.at(18, 0)
    assert await rig.nodes() == 2 and len(rig.chat.warnings()) == 1
    # back on: counts anew
    await rig.clusters.update_cluster("gpu", idle_timeout_minutes=30, actor=OWNER)
    await rig.at(18, 0)
    await rig.at(18, 24, 59)
    assert len(rig.chat.warnings()) == 1
    await rig.at(18, 25)
    assert len(rig.chat.warnings()) == 2


async def test_a_longer_timeout_withdraws_a_warning_that_is_no_longer_due(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    await rig.at(14, 12)
    (warning,) = rig.chat.warnings()
    await rig.clusters.update_cluster("gpu", idle_timeout_minutes=60, actor=OWNER)
    await rig.at(14, 17)
    assert "cancelled: the idle timeout is now 60 min" in views.to_text(warning.current)[0]
    assert await rig.nodes() == 2
    await rig.at(14, 57)  # still idle since 14:02: warned 5 min before the hour
    assert "scaling to 0 nodes at 15:02 UTC" in rig.chat.warnings()[-1].message.text


async def test_stale_and_malformed_clicks_change_nothing(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    await rig.at(14, 12)
    (warning,) = rig.chat.warnings()
    before = await rig.store.get_cluster("gpu")
    for value in ("gpu:0000", "other:" + warning.value().split(":")[1], "", ":", "garbage"):
        for action in views.IDLE_ACTIONS:
            assert await rig.click(action, value) == STALE
    assert await rig.store.get_cluster("gpu") == before
    assert warning.edits == []
    entries = await rig.store.list_audit(limit=100)
    assert len(entries) == 10 and {e.outcome for e in entries} == {"denied"}


async def test_deleting_a_warned_cluster_closes_its_warning(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    await rig.at(14, 12)
    (warning,) = rig.chat.warnings()
    assert await rig.clusters.delete_cluster("gpu")
    await rig.relay.drain()
    text, buttons = views.to_text(warning.current)
    assert buttons == [] and "cancelled: the cluster was deleted" in text
    assert await rig.click(views.ACTION_IDLE_KEEP, warning.value()) == STALE


async def test_restart_in_the_middle_repeats_nothing_and_keeps_the_buttons(rig: Rig) -> None:
    await rig.cluster()
    await rig.at(14, 2)
    rig.clock.advance(timedelta(minutes=10))
    await rig.idle.check()  # stored, not yet delivered: the bot dies here
    rig.restart()
    await rig.idle.check()
    await rig.relay.drain()
    await rig.at(14, 13)
    rig.restart()
    await rig.at(14, 14)
    (warning,) = rig.chat.warnings()
    assert "scaling to 0 nodes at 14:17 UTC" in warning.message.text
    answer = await rig.click(views.ACTION_IDLE_KEEP, warning.value())
    assert "until 2026-11-27 15:14 UTC" in answer
    assert "kept by @U0BOB until 15:14 UTC" in views.to_text(warning.current)[0]


async def test_cluster_update_and_create_flags_through_the_command_handler(rig: Rig) -> None:
    services = Services(clusters=rig.clusters, jobs=rig.jobs, now=rig.clock.now, guard=rig.guard)
    handler = CommandHandler(services)

    async def run(text: str) -> str:
        reply = await handler.handle(text, caller=_caller(OWNER), source="console")
        return views.to_text(reply.message)[0]

    await run(f"cluster create -n a -s {VM} --min 0 --max 2 -t 2 --idle-timeout 30")
    cluster = await rig.store.get_cluster("a")
    assert cluster is not None and cluster.idle_timeout_s == 30 * 60
    assert "never scaled down" in await run("cluster update -n a --idle-timeout 0")
    assert "after 45 idle minutes" in await run("cluster update -n a --idle-timeout 45")
    await run("cluster auto-scale -n a --min 1 --max 3 --idle-timeout 20")
    cluster = await rig.store.get_cluster("a")
    assert cluster is not None and cluster.idle_timeout_s == 20 * 60
    assert "--idle-timeout must be a whole number" in await run(
        "cluster update -n a --idle-timeout -5"
    )
    await run(f"cluster create -n f -s {VM} -t 1")
    refused = await run("cluster update -n f --idle-timeout 10")
    assert "fixed-size cluster keeps its nodes" in refused
    assert "/batchai cluster update" in refused  # the usage comes with it


def _name(post: Post) -> str:
    return post.message.text.split("*")[1]


def _caller(actor: Actor) -> Caller:
    return Caller(actor.user, actor.conversation.channel if actor.conversation else None)
