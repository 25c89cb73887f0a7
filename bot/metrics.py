"""Prometheus metrics of one bot: counters bumped where things happen, gauges read from the
store when /metrics is scraped. Each bot has its own registry (tests run several at once)."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from services.clusters.lifecycle import ClusterState
from services.core.errors import BackendError, NotFound, QuotaError, TransientError
from services.core.ports import Clock
from services.jobs.lifecycle import JobState
from services.spend.ledger import RUNNING, SpendService
from services.store import SqlStore

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

T = TypeVar("T")


class BotMetrics:
    """The registry and the counters the outbox and the backend wrappers bump."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes…
        self.slack_calls = Counter(
            "batchai_slack_calls",
            "Slack Web API calls by method and outcome (ok, ratelimited, server_error, "
            "network, error)",
            ["method", "outcome"],
            registry=r,
        )
        self.slack_ratelimited = Counter(
            "batchai_slack_ratelimited", "Slack answers HTTP 429", ["method"], registry=r
        )
        self.slack_retries = Counter(
            "batchai_slack_retries",
            "Slack calls tried again after a failure",
            ["method"],
            registry=r,
        )
        self.backend_errors = Counter(
            "batchai_backend_errors",
            "Failed backend and file share calls by operation and kind (transient, quota, "
            "not_found, backend, other)",
            ["operation", "kind"],
            registry=r,
        )
        self.backend_seconds = Histogram(
            "batchai_backend_call_seconds",
            "Backend and file share call latency",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._state: StateCollector | None = None

    def watch(self, state: StateCollector) -> None:
        """Add the gauges read from the store at scrape time."""
        self._state = state
        self.registry.register(state)

    def slack_call(self, method: str, outcome: str) -> None:
        self.slack_calls.labels(method, outcome).inc()
        if outcome == "ratelimited":
            self.slack_ratelimited.labels(method).inc()

    async def render(self) -> bytes:
        """The Prometheus text exposition, with the store's gauges read just now."""
        if self._state is not None:
            await self._state.refresh()
        return generate_latest(self.registry)


def error_kind(err: BaseException) -> str:
    if isinstance(err, TransientError):
        return "transient"
    if isinstance(err, QuotaError):
        return "quota"
    if isinstance(err, NotFound):
        return "not_found"
    if isinstance(err, BackendError):
        return "backend"
    return "other"


class _Measured:
    """Times every coroutine method of the wrapped backend or share and counts its failures;
    everything else passes through untouched."""

    def __init__(self, inner: object, component: str, metrics: BotMetrics) -> None:
        self._inner = inner
        self._component = component
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or name == "aclose" or not inspect.iscoroutinefunction(attr):
            return attr
        operation = f"{self._component}.{name}"
        errors = self._metrics.backend_errors
        seconds = self._metrics.backend_seconds.labels(operation)

        async def measured(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            except Exception as err:
                errors.labels(operation, error_kind(err)).inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - start)

        self.__dict__[name] = measured  # built once per method
        return measured


def measured(inner: T, component: str, metrics: BotMetrics) -> T:
    """`inner` (a ComputeBackend or FileShare) with its calls timed and its errors counted."""
    return cast(T, _Measured(inner, component, metrics))


@dataclass
class _Snapshot:
    jobs: dict[JobState, int] = field(default_factory=dict)
    oldest_queued_age: float = 0.0
    outbox_pending: int = 0
    outbox_lag: float = 0.0
    month_usd: Decimal = Decimal(0)
    rate_usd_per_hour: Decimal = Decimal(0)
    approvals_pending: int = 0
    clusters: dict[ClusterState, int] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)


class StateCollector:
    """Gauges read from the store with a few aggregate queries when /metrics is scraped, and
    the failure counts of the periodic work."""

    def __init__(
        self,
        *,
        store: SqlStore,
        spend: SpendService,
        clock: Clock,
        failures: Callable[[], Mapping[str, int]],
    ) -> None:
        self._store = store
        self._spend = spend
        self._clock = clock
        self._failures = failures
        self._snapshot: _Snapshot | None = None

    async def refresh(self) -> None:
        try:
            self._snapshot = await self._read()
        except Exception as err:  # the counters are still worth serving
            log.warning("metrics: the store could not be read: %s", type(err).__name__)
            self._snapshot = None

    async def _read(self) -> _Snapshot:
        now = self._clock.now()
        store = self._store
        snap = _Snapshot(jobs=await store.count_jobs_by_state())
        if (queued := await store.get_oldest_queued()) is not None:
            snap.oldest_queued_age = max(0.0, (now - queued).total_seconds())
        snap.outbox_pending, oldest = await store.get_outbox_backlog()
        if oldest is not None:
            snap.outbox_lag = max(0.0, (now - oldest).total_seconds())
        snap.month_usd = await self._spend.month_spend(None)
        for job in await store.list_jobs(states=RUNNING, include_deleted=True):
            if job.node_rate is not None and job.started_at is not None:
                snap.rate_usd_per_hour += job.node_rate * job.node_count
        snap.approvals_pending = len(await store.list_approvals(state="pending"))
        for cluster in await store.list_clusters():
            snap.clusters[cluster.state] = snap.clusters.get(cluster.state, 0) + 1
            snap.nodes[cluster.name] = cluster.target_nodes
        return snap

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "batchai_periodic_failures",
            "Rounds of periodic work (dispatch, poll, logs, delivery…) that failed",
            labels=["work"],
        )
        for work, count in sorted(self._failures().items()):
            failures.add_metric([work], count)
        yield failures
        snap = self._snapshot
        yield GaugeMetricFamily(
            "batchai_store_up", "1 when the last scrape could read the store", 1 if snap else 0
        )
        if snap is None:
            return
        jobs = GaugeMetricFamily(
            "batchai_jobs", "Jobs by state (deleted ones left out)", labels=["state"]
        )
        for state in JobState:
            jobs.add_metric([state.value], snap.jobs.get(state, 0))
        yield jobs
        yield _gauge(
            "batchai_queue_length", "Jobs waiting in a queue", snap.jobs.get(JobState.QUEUED, 0)
        )
        yield _gauge(
            "batchai_queue_oldest_age_seconds",
            "How long the longest-waiting queued job has waited (0: none waits)",
            snap.oldest_queued_age,
        )
        yield _gauge(
            "batchai_outbox_pending_events", "Notifications not yet delivered", snap.outbox_pending
        )
        yield _gauge(
            "batchai_outbox_lag_seconds",
            "Age of the oldest notification not yet delivered (0: none)",
            snap.outbox_lag,
        )
        yield _gauge(
            "batchai_spend_month_usd",
            "GPU spend this month: ended jobs plus what running jobs cost so far",
            float(snap.month_usd),
        )
        yield _gauge(
            "batchai_spend_rate_usd_per_hour",
            "What the running jobs cost per hour together",
            float(snap.rate_usd_per_hour),
        )
        yield _gauge(
            "batchai_approvals_pending",
            "Approval requests waiting for a decision",
            snap.approvals_pending,
        )
        clusters = GaugeMetricFamily("batchai_clusters", "Clusters by state", labels=["state"])
        for cstate in ClusterState:
            clusters.add_metric([cstate.value], snap.clusters.get(cstate, 0))
        yield clusters
        nodes = GaugeMetricFamily(
            "batchai_cluster_target_nodes", "Target node count of each cluster", labels=["cluster"]
        )
        for name, count in sorted(snap.nodes.items()):
            nodes.add_metric([name], count)
        yield nodes


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
