"""JobRunner: the periodic work — dispatch queued jobs, poll running ones, tail their logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from services.clusters.lifecycle import ClusterState
from services.clusters.service import ClusterService
from services.core import context
from services.core.errors import BatchAIError, NotFound, TransientError
from services.core.events import (
    ApprovalRequested,
    Event,
    GpuIdleWarningClosed,
    JobNote,
    LogSnippet,
    OutputFile,
    WallClockWarning,
)
from services.core.ports import Clock, ComputeBackend, FileShare, LaunchRequest, RunStatus
from services.jobs.gpu_idle import closed_warning, gpu_model
from services.jobs.lifecycle import (
    ACTIVE_STATES,
    LIVE_STATES,
    JobState,
    advance,
    finished_event,
    requeue,
)
from services.jobs.tailer import LogParser, LogTailer, TailResult
from services.jobspec import load_job_spec
from services.models import Actor, Attempt, Cluster, FileLocation, Job, LogAdvance, MetricPoint
from services.spend.gate import NeedsApproval, Refused
from services.store import SqlStore

if TYPE_CHECKING:
    from services.jobs.gpu_idle import GpuIdleService
    from services.spend.approvals.service import ApprovalService
    from services.spend.ledger import SpendService

log = logging.getLogger(__name__)

MAX_OUTPUT_FILES = 200
SNIPPET_LINES = 200
MAX_POLL_FAILURES = 5  # per event; the presenter trims further for Slack's limits
BACKOFF_FIRST = 1.0  # seconds a step rests after the backend said "busy"; doubles each time
BACKOFF_MAX = 120.0
# A cluster that could not grow back after lost nodes (e.g. no Spot capacity) is not asked
# again for this long; its queue goes on over the nodes it has meanwhile.
RESTORE_BACKOFF = timedelta(minutes=5)
CONCURRENCY = 32  # jobs polled, and jobs tailed, at once (POLL_CONCURRENCY)
TAIL_TIMEOUT = 5.0  # seconds one log read may take in a round before the round moves on
TAIL_IDLE_FIRST = 1.0  # seconds a log file that did not grow (or failed) rests; doubles each time
TAIL_IDLE_MAX = 8.0
COMMIT_BATCH = 200  # jobs whose new log lines are stored in one transaction
ROUND_BYTES = 4 << 20  # bytes of one log read in a round; a longer backlog continues next round
JOURNAL_STALE = 90.0  # seconds a journal may say nothing (it beats every 15 s) before logs are read


async def each(items: Sequence[Job], work: Callable[[Job], Awaitable[None]], limit: int) -> None:
    """`work` on every item, at most `limit` at a time: a fixed pool of workers sharing one
    iterator, so 5,000 jobs cost `limit` tasks, not 5,000. `work` handles its own errors; one
    that escapes stops the other workers too (a TaskGroup), as it stopped the old loop."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:  # next() never awaits: each item goes to exactly one worker
            await work(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(max(1, limit), len(items))):
            group.create_task(worker())


def journal_key(index: int) -> str:
    """Node `index`'s journal among a job's log offsets (a log's name has no slash)."""
    return f"journal/node-{index}"


@dataclass
class _LogState:
    offsets: dict[str, tuple[int, int]]  # as stored
    parser: LogParser = field(default_factory=LogParser)
    heard: datetime | None = None  # when one of the job's journals last said anything
    no_journal: bool = False  # its journal is not one: the logs are read directly


@dataclass
class _LogNews:
    """What one read of a job's logs found, to be stored in one go: the new offsets, the
    snippets they produced and the metrics parsed from them."""

    job: Job
    state: _LogState
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    points: list[MetricPoint] = field(default_factory=list)
    read: int = 0  # reads that found new bytes

    def offset(self, name: str) -> tuple[int, int]:
        """(committed byte offset, lines) of `name` with this news applied."""
        return self.offsets.get(name) or self.state.offsets.get(name, (0, 0))

    def add(self, name: str, result: TailResult) -> None:
        offset, count = self.offset(name)
        if result.restarted:
            count = 0
        lines = result.lines
        self.points += self.state.parser.feed_all(lines)
        self.events += [
            LogSnippet(
                job_id=self.job.id,
                cluster=self.job.cluster,
                file=name,
                first_line=count + 1 + i,
                lines=tuple(lines[i : i + SNIPPET_LINES]),
            )
            for i in range(0, len(lines), SNIPPET_LINES)
        ]
        self.offsets[name] = (result.committed_offset, count + len(lines))


class JobRunner:
    def __init__(
        self,
        *,
        store: SqlStore,
        backend: ComputeBackend,
        share: FileShare,
        clusters: ClusterService,
        clock: Clock,
        spend: SpendService | None = None,
        approvals: ApprovalService | None = None,
        gpu_idle: GpuIdleService | None = None,
        concurrency: int = CONCURRENCY,
        tail_timeout: float = TAIL_TIMEOUT,
        tail_idle_max: float = TAIL_IDLE_MAX,
    ) -> None:
        self._store = store
        self._spend = spend
        self._approvals = approvals
        self._gpu_idle = gpu_idle
        self._deadlines: dict[str, datetime] = {}
        self._backend = backend
        self._share = share
        self._clusters = clusters
        self._clock = clock
        self._tailer = LogTailer(share)
        self._logs: dict[str, _LogState] = {}
        self._failures: dict[str, int] = {}
        self._final_reads: dict[str, int] = {}  # job -> failed final log reads in a row
        self._resting: dict[str, tuple[int, datetime]] = {}  # step -> (busy answers, until)
        self._concurrency = concurrency
        self._tail_timeout = tail_timeout
        self._tail_idle_max = tail_idle_max
        # (job, file) -> (rounds in a row without growth or with a failed read, next read at)
        self._tail_pace: dict[tuple[str, str], tuple[int, datetime]] = {}
        self._tail_locks: dict[str, asyncio.Lock] = {}  # a round's read and the final read
        self._regrown: set[str] = set()  # run ids whose cluster was grown back before they ran
        # Clusters whose grow-back failed: not before this time again (see RESTORE_BACKOFF).
        self._restore_after: dict[str, datetime] = {}
        self._growing: dict[str, asyncio.Future[None]] = {}  # cluster -> its grow-back under way
        self._news: list[_LogNews] = []  # read this round, not stored yet
        self._commit_lock = asyncio.Lock()  # one batch at a time, in order
        # The active jobs as this tick's poll listed (and moved) them: tail and warn reuse it.
        self._tick_jobs: dict[str, Job] | None = None
        self._ticking = False
        self._polled = False  # a poll of this process went through: dispatch may go first
        self.step_failures: Counter[str] = Counter()  # read by the bot's /metrics

    async def aclose(self) -> None:
        """Stop waiting for grow-backs under way (the resize itself goes on in the cloud)."""
        growing = list(self._growing.values())
        for task in growing:
            task.cancel()
        await asyncio.gather(*growing, return_exceptions=True)

    async def tick(self) -> None:
        """One round of everything; each part survives the failure of another. A step the
        backend called busy rests, twice as long each time in a row (or as long as it asked)."""
        self._ticking, self._tick_jobs = True, None
        try:
            await self._tick()
        finally:
            self._ticking, self._tick_jobs = False, None

    async def _tick(self) -> None:
        steps = [self.expire_approvals, self.dispatch, self.poll, self.tail_logs]
        if not self._polled:
            # The first round of a process (or of a new leader) polls before it places: the
            # backend learns where the running jobs are (their nodes may have moved while no
            # bot watched) before a queued job is given nodes.
            steps = [self.expire_approvals, self.poll, self.dispatch, self.tail_logs]
        for step in (*steps, self.warn_wall_clock):
            name = step.__name__
            now = self._now()
            busy, until = self._resting.get(name, (0, now))
            if now < until:
                continue
            try:
                await step()
            except TransientError as err:
                self.step_failures[name] += 1
                delay = max(err.retry_after or 0.0, min(BACKOFF_MAX, BACKOFF_FIRST * 2**busy))
                self._resting[name] = (busy + 1, now + timedelta(seconds=delay))
                log.warning("%s: backend busy, retrying in %g s: %s", name, delay, err)
            except Exception:
                self.step_failures[name] += 1
                log.exception("%s failed; retrying next tick", name)
            else:
                self._resting.pop(name, None)
                self._polled = self._polled or name == "poll"

    # -- dispatch: FIFO per cluster, gang-scheduled -----------------------------------------

    async def dispatch(self) -> None:
        clusters = await self._store.list_clusters()
        live: dict[str, list[Job]] = {}  # one listing for every cluster, in FIFO order
        for job in await self._store.list_jobs(states=LIVE_STATES, include_deleted=True):
            live.setdefault(job.cluster, []).append(job)
        for cluster in clusters:
            if cluster.state not in (ClusterState.STEADY, ClusterState.FAILED):
                continue
            try:
                await self._dispatch_cluster(cluster, live.get(cluster.name, []))
            except TransientError:
                raise
            except Exception:  # one broken cluster must not stop the others' queues
                log.exception("dispatch on cluster %s failed", cluster.name)

    async def _dispatch_cluster(self, cluster: Cluster, jobs: list[Job]) -> None:
        queued = [j for j in jobs if j.state is JobState.QUEUED]
        in_use = {n for j in jobs if j.state in ACTIVE_STATES for n in j.nodes}
        retries = [j.run_id for j in queued if j.attempts and j.run_id not in self._regrown]
        after = self._restore_after.get(cluster.name)
        growing = self._growing.get(cluster.name)
        if retries and (after is None or self._now() >= after) and growing is None:
            # Lost nodes may have shrunk the cluster (an evicted Spot VM is deleted): it grows
            # back to its size, within its limits, once per retry. In the background: a scale
            # set takes minutes to add a VM, and this round's polls and log reads must not wait
            # for it; the retry is placed when a node is there.
            self._regrown.update(retries)
            growing = asyncio.ensure_future(self._grow_back(cluster))
            self._growing[cluster.name] = growing
            growing.add_done_callback(lambda _: self._growing.pop(cluster.name, None))
        if cluster.autoscale:
            # Batch AI never took a node from under a running job: keep every busy index.
            busy_span = max(in_use) + 1 if in_use else 0
            demand = max(busy_span, len(in_use) + sum(j.node_count for j in queued))
            cluster = await self._clusters.scale_for_demand(cluster, demand)
        free = sorted(set(range(cluster.target_nodes)) - in_use)
        if not queued or queued[0].node_count > len(free):
            return  # nothing to place: the backend is not asked about its nodes
        # Only nodes that passed their health check take a job (never an unusable one, nor one
        # whose check has not reported yet).
        unusable = await self._backend.unusable_nodes(cluster)
        free = [n for n in free if n not in unusable]
        if growing is not None or cluster.name in self._restore_after:
            # short of nodes: only those that exist
            present = {n.index for n in await self._backend.list_nodes(cluster)}
            free = [n for n in free if n in present]
        for job in queued:  # strict FIFO: the head waits for its nodes, nobody overtakes
            if job.node_count > len(free):
                return
            nodes, free = tuple(free[: job.node_count]), free[job.node_count :]
            step = advance(job, JobState.PREPARING, nodes=nodes, detail=f"nodes {list(nodes)}")
            if step is None:
                continue
            preparing = step.job
            if await self._store.update_job(preparing, step.events, transition=step.transition):
                with context.bound(**context.for_job(job.id)):
                    await self._launch(preparing, cluster)

    async def _grow_back(self, cluster: Cluster) -> None:
        """Grow a cluster back to its size; a failure is told once and rests RESTORE_BACKOFF,
        and the cluster's queue goes on over the nodes it has meanwhile."""
        try:
            await self._clusters.restore_nodes(cluster)
            self._restore_after.pop(cluster.name, None)
        except BatchAIError as err:
            self._restore_after[cluster.name] = self._now() + RESTORE_BACKOFF
            log.warning(
                "cluster %s could not grow back to %d nodes (%s); its queue goes on over the "
                "nodes it has",
                cluster.name,
                cluster.target_nodes,
                err,
            )
        except Exception:
            self._restore_after[cluster.name] = self._now() + RESTORE_BACKOFF
            log.exception("cluster %s: growing back failed", cluster.name)

    async def _launch(self, job: Job, cluster: Cluster) -> None:
        """Start (or finish starting) a job on its reserved nodes; start_job is idempotent."""
        request = LaunchRequest(
            job_id=job.run_id,
            job_uuid=job.id,
            attempt=job.attempt,
            job_name=job.name,
            experiment=job.experiment,
            resource_group=job.resource_group,
            workspace=job.workspace,
            cluster=cluster,
            spec=load_job_spec(self._store.open_spec(job.spec_json), source=job.name),
            nodes=job.nodes,
        )
        try:
            result = await self._backend.start_job(request)
        except TransientError:
            raise  # still preparing without a layout: the next poll tries again
        except Exception as err:
            log.warning("job %s failed to start: %s", job.name, err)
            try:
                await self._backend.terminate_job(job.run_id)  # what a half-done start left
            except Exception as stop_err:  # the failure must be recorded all the same
                log.warning("job %s: cleaning up the failed start failed: %s", job.name, stop_err)
            await self._finish(job, JobState.FAILED, exit_code=None, detail=str(err))
            return
        notes: list[Event] = [
            JobNote(job_id=job.id, cluster=job.cluster, text=n) for n in result.notes
        ]
        await self._store.set_layout(job.id, result.layout, notes)

    # -- poll --------------------------------------------------------------------------------

    async def poll(self) -> None:
        """When the backend was busy for every job, the step rests (TransientError)."""
        busy: TransientError | None = None
        answered = False

        async def poll_one(job: Job) -> None:
            nonlocal busy, answered
            with context.bound(**context.for_job(job.id)):
                try:
                    await self._poll_job(job)
                except TransientError as err:
                    log.info("job %s: status unavailable for now: %s", job.name, err)
                    busy = err
                except Exception as err:  # one broken job must not stop the others
                    await self._count_failure(job, err)
                else:
                    answered = True
                    self._failures.pop(job.id, None)

        jobs = await self._store.list_jobs(states=ACTIVE_STATES, include_deleted=True)
        if self._ticking:  # the rest of this tick works from this listing
            self._tick_jobs = {j.id: j for j in jobs}
        await each(jobs, poll_one, self._concurrency)  # one slow answer holds one worker
        if busy is not None and not answered:
            raise busy

    async def _count_failure(self, job: Job, err: Exception) -> None:
        count = self._failures[job.id] = self._failures.get(job.id, 0) + 1
        log.exception("job %s: poll failed (%d/%d)", job.name, count, MAX_POLL_FAILURES)
        if count >= MAX_POLL_FAILURES:
            self._failures.pop(job.id, None)
            fresh = await self._store.get_job(job.id)
            if fresh is not None and not fresh.state.finished:
                detail = f"the bot could not follow this job: {type(err).__name__}: {err}"
                await self._finish(fresh, JobState.FAILED, None, detail[:500], retry_logs=False)
                # A job the bot no longer follows must not keep its nodes (and their bill).
                try:
                    await self._backend.terminate_job(fresh.run_id)
                except Exception:
                    log.warning("job %s: could not stop it after giving up", job.name)

    async def _poll_job(self, job: Job) -> None:
        if job.layout is None:
            if job.state is JobState.TERMINATING:
                await self._backend.terminate_job(job.run_id)  # a half-done start leaves nothing
                await self._finish(job, JobState.TERMINATED, None, "terminated before it ran")
                return
            cluster = await self._store.get_cluster(job.cluster)
            if cluster is None:
                await self._finish(job, JobState.FAILED, None, f"cluster {job.cluster} is gone")
                return
            await self._launch(job, cluster)  # reserved, but the start did not complete
            return
        if job.state is JobState.TERMINATING:
            await self._backend.terminate_job(job.run_id)
        try:
            status = await self._backend.get_job_status(job.run_id)
        except NotFound:
            status = RunStatus("lost", detail="the backend no longer knows this job")
        await self._apply(job, status)

    async def _apply(self, job: Job, status: RunStatus) -> None:
        if status.nodes is not None and status.nodes != job.nodes and not job.state.finished:
            # Its nodes moved in the cluster's list (a VM before them was deleted): the
            # dispatcher places by position, so the stored one must be where they are now.
            log.info("job %s: its nodes are now %s (were %s)", job.name, status.nodes, job.nodes)
            await self._store.set_nodes(job.id, status.nodes)
            job = replace(job, nodes=status.nodes)
            if self._tick_jobs is not None:
                self._tick_jobs[job.id] = job
        if status.phase == "preparing":
            return
        if status.phase == "running":
            if job.state is JobState.PREPARING:
                # Times come from the bot's clock, the one every limit and cost is measured with.
                step = advance(job, JobState.RUNNING, started_at=self._now())
                if step is not None and await self._store.update_job(
                    step.job, step.events, transition=step.transition
                ):
                    job = step.job
                    if self._tick_jobs is not None:
                        self._tick_jobs[job.id] = job
            await self._sync_deadline(job)
            if self._gpu_idle is not None and job.state is JobState.RUNNING:
                await self._gpu_idle.observe(job, status.gpu)
            return
        if status.phase == "lost":
            reason = status.detail or "node runner lost"
            retry = status.retryable and job.state is not JobState.TERMINATING
            if retry and job.retries_left > 0:
                await self._requeue(job, status, reason)
                return
            if retry and job.attempts:
                reason = f"{reason}; no retry left ({len(job.attempts)} of {job.max_retries} used)"
            await self._finish(job, JobState.FAILED, None, reason)
            return
        terminated = job.state is JobState.TERMINATING or (status.detail or "").startswith(
            "terminated"
        )
        if terminated:
            target = JobState.TERMINATED
        else:
            target = JobState.SUCCEEDED if status.exit_code == 0 else JobState.FAILED
        await self._finish(job, target, status.exit_code, status.detail, status)

    async def _finish(
        self,
        job: Job,
        target: JobState,
        exit_code: int | None,
        detail: str | None,
        status: RunStatus | None = None,
        *,
        retry_logs: bool = True,
    ) -> None:
        """Final log read, then the end state and its one receipt in a single transaction.

        A failed final read is tried again on the next polls (the job stays live meanwhile,
        so no line is lost to a share hiccup); after MAX_POLL_FAILURES tries, or when
        `retry_logs` is off, the end is recorded without it."""
        if job.layout is not None:
            try:
                await self._tail_job(job, final=True)
            except Exception as err:
                tries = self._final_reads[job.id] = self._final_reads.get(job.id, 0) + 1
                if retry_logs and tries < MAX_POLL_FAILURES:
                    raise TransientError(f"its last log lines could not be read: {err}") from err
                log.exception(
                    "job %s: final log read failed; recording the end without it", job.name
                )
            self._final_reads.pop(job.id, None)
        events: list[Event] = []
        current = job
        first = None
        if current.state is JobState.PREPARING and target is not JobState.FAILED:
            first = advance(current, JobState.RUNNING, started_at=self._start_time(job, status))
            if first is not None:
                current = first.job
                events += first.events
        started = current.started_at or self._start_time(job, status)
        step = advance(
            current,
            target,
            detail=detail,
            exit_code=exit_code,
            error=detail if target is not JobState.SUCCEEDED else None,
            ended_at=self._now(),
            started_at=started,
        )
        if step is None:
            return
        done = step.job
        events += step.events
        transition = step.transition if first is None else step.transition.after(first.transition)
        events.append(finished_event(done, await self._outputs(done)))
        entry = None
        if self._spend is not None and done.node_rate is not None:
            cluster = await self._store.get_cluster(done.cluster)
            entry = self._spend.actual_entry(done, cluster.vm_size if cluster else "unknown")
        if await self._store.update_job(
            done,
            events,
            transition=transition,
            ledger_entry=entry,
            gpu_closed=await self._gpu(done),
        ):
            self._forget_attempt(job)

    async def _gpu(self, job: Job, outcome: str = "ended") -> GpuIdleWarningClosed | None:
        """An idle-GPU warning still open when its job (or, `requeued`, its attempt) ends:
        closed, its buttons gone."""
        watch = job.gpu
        if watch is None or watch.warning_id is None or watch.closed is not None:
            return None
        prices = self._spend.prices if self._spend is not None else None
        model = await gpu_model(self._store, prices, job)
        return closed_warning(job, watch.warning_id, outcome, gpu_model=model)

    async def _requeue(self, job: Job, status: RunStatus, reason: str) -> None:
        """The job's nodes were lost and it has retries left: its last log lines, then in one
        transaction the lost attempt (and its cost in the ledger), the job back in the queue
        and the thread's message. A retry whose cost would pass what was approved for the job
        waits for approval again (the gate decides); a refused one ends the job."""
        if job.layout is not None:
            try:
                await self._tail_job(job, final=True)
            except Exception as err:
                tries = self._final_reads[job.id] = self._final_reads.get(job.id, 0) + 1
                if tries < MAX_POLL_FAILURES:
                    raise TransientError(f"its last log lines could not be read: {err}") from err
                log.exception("job %s: final log read of attempt %d failed", job.name, job.attempt)
            self._final_reads.pop(job.id, None)
        now = self._now()
        started = job.started_at or (
            status.started_at if status.started_at and status.started_at <= now else None
        )
        usd = None
        if self._spend is not None:
            usd = self._spend.attempt_cost(job, started=started, ended=now)
        layout = job.layout
        lost = Attempt(
            number=job.attempt,
            started_at=started,
            ended_at=now,
            nodes=job.nodes,
            reason=reason,
            usd=usd,
            logs=layout.stdouterr if layout is not None else None,
        )
        spent = None if usd is None else (job.spent_before or Decimal(0)) + usd
        cluster = await self._store.get_cluster(job.cluster)
        if cluster is None:
            await self._finish(
                job, JobState.FAILED, None, f"{reason}; cluster {job.cluster} is gone"
            )
            return
        commitment = None
        if self._approvals is not None and spent is not None:
            commitment = self._approvals.gate.retry(job, cluster, spent=spent)
        approval = None
        if commitment is not None and self._approvals is not None:
            owner = Actor(job.requester, job.conversation)
            verdict = await self._approvals.gate.assess(commitment, actor=owner)
            if isinstance(verdict, Refused):
                why = f"{reason}; the retry was refused: {verdict.reason}"
                await self._finish(job, JobState.FAILED, None, why[:500], retry_logs=False)
                return
            if isinstance(verdict, NeedsApproval):
                approval = self._approvals.new_approval(
                    job=job,
                    kind="retry",
                    estimate=commitment.estimate.total,
                    formula=commitment.formula(),
                    assessment=verdict.assessment,
                    month_spend=verdict.month_spend,
                    budget=verdict.budget,
                )
        step = requeue(job, lost, now=now, spent=spent, approval=approval is not None)
        events = list(step.events)
        entry = None
        if self._spend is not None:
            entry = self._spend.attempt_entry(job, lost, cluster.vm_size)
        gpu_closed = await self._gpu(job, "requeued")  # the attempt's open warning ends with it
        async with self._store.unit() as uow:
            # Closed before the move clears the watch; both roll back together.
            if gpu_closed is not None and await uow.jobs.close_gpu_warning(
                job.id, gpu_closed.warning_id, gpu_closed.outcome
            ):
                events.append(gpu_closed)
            if not await uow.jobs.move(step.job, step.transition):
                return  # it moved meanwhile (terminated): the next poll decides again
            await uow.logs.reset_offsets(job.id)
            if entry is not None:
                await uow.ledger.add(entry)
            if approval is not None:
                await uow.approvals.add(approval)
                events.append(ApprovalRequested(job_id=job.id, approval_id=approval.id))
            uow.emit(*events, at=now)
            await uow.commit()
        self._forget_attempt(job)
        try:  # the backend told the other nodes already; this makes sure of it
            await self._backend.terminate_job(job.run_id)
        except Exception:
            log.warning("job %s: could not stop what is left of attempt %d", job.name, job.attempt)

    def _forget_attempt(self, job: Job) -> None:
        """What this runner kept about an attempt's logs and deadline."""
        self._deadlines.pop(job.id, None)
        self._logs.pop(job.id, None)
        self._tail_locks.pop(job.id, None)
        if self._tick_jobs is not None:
            self._tick_jobs.pop(job.id, None)
        layout = job.layout
        journals = map(journal_key, range(len(layout.journals))) if layout else ()
        for name in [*(layout.log_files if layout else ()), *journals]:
            self._tailer.forget((job.id, name))
            self._tail_pace.pop((job.id, name), None)

    def _start_time(self, job: Job, status: RunStatus | None) -> datetime:
        """A job that ran and ended between two polls still ran: take the backend's start time
        (when it is not ahead of our clock), so its cost is not $0."""
        now = self._now()
        started = status.started_at if status is not None else None
        return job.started_at or (started if started is not None and started <= now else now)

    async def _outputs(self, job: Job) -> tuple[OutputFile, ...]:
        if job.layout is None:
            return ()
        found: list[OutputFile] = []
        for directory_id, loc in job.layout.outputs.items():
            try:
                entries = await self._share.list_files(loc, recursive=True)
            except BatchAIError as err:  # gone, or replaced by a link out of the share
                log.info("job %s: outputs of %s not listed: %s", job.name, directory_id, err)
                continue
            for e in entries:
                if not e.is_directory and len(found) < MAX_OUTPUT_FILES:
                    child = loc.child(e.name)
                    found.append(
                        OutputFile(
                            directory_id, e.name, child.share, child.path, e.size, child.container
                        )
                    )
        return tuple(found)

    # -- money and time ----------------------------------------------------------------------

    async def expire_approvals(self) -> None:
        if self._approvals is not None:
            await self._approvals.expire_due()

    async def _sync_deadline(self, job: Job) -> None:
        """The store holds the limit (extensions change it); the backend is told when it moves."""
        if job.started_at is None:
            return
        deadline = job.started_at + job.max_wall_clock
        if self._deadlines.get(job.id) != deadline:
            try:
                await self._backend.set_time_left(job.run_id, deadline - self._now())
            except Exception:  # the limit in force still holds; try again next tick
                log.exception("job %s: could not move its deadline", job.name)
                return
            self._deadlines[job.id] = deadline

    async def warn_wall_clock(self) -> None:
        """Before a priced job hits its limit, its thread gets Extend / Stop now, once."""
        if self._approvals is None:
            return
        warn_before = self._approvals.policy.warn_before
        now = self._now()
        if self._tick_jobs is not None:
            running = [j for j in self._tick_jobs.values() if j.state is JobState.RUNNING]
        else:
            running = await self._store.list_jobs(states=(JobState.RUNNING,), include_deleted=True)
        for job in running:
            if (
                job.started_at is None
                or job.estimate is None
                or job.max_wall_clock <= warn_before * 2
            ):
                continue
            deadline = job.started_at + job.max_wall_clock
            warned = job.wall_clock_warned_at
            if now < deadline - warn_before or (warned and warned >= deadline - warn_before):
                continue
            event = WallClockWarning(
                job_id=job.id, cluster=job.cluster, deadline=deadline.isoformat()
            )
            await self._store.set_wall_clock_warned(job.id, now, [event])

    # -- logs --------------------------------------------------------------------------------

    async def tail_logs(self) -> None:
        """New log lines of every active job, `concurrency` jobs at a time (a fixed worker
        pool), so the round costs the slowest read, not the sum of all reads.

        A job with log journals (one per node, kept by the node runner) costs one read per
        node: the journal carries what was written to every log of that node; a log itself is
        read only to fill a gap the journal left (it started late, or skipped ahead), and when
        the journal has said nothing, not even its heartbeat, for JOURNAL_STALE seconds.

        Per-file pacing keeps one slow or quiet share from holding up the rest: a read that
        takes longer than `tail_timeout` is given up for this round (nothing was consumed; the
        next read starts at the same offset), and a file that did not grow or whose read failed
        or timed out rests 1 s, 2 s, 4 s ... up to `tail_idle_max` before it is read again. The
        final read when a job ends is never paced and never cut short, so no line is lost.

        What the round read is stored COMMIT_BATCH jobs to a transaction, each job's offsets
        with the snippets and metrics they produced: a crash before a commit loses nothing
        (the next process reads those bytes again from the stored offsets) and repeats nothing
        (no snippet was stored without its offsets)."""
        if self._tick_jobs is not None:
            listed = list(self._tick_jobs.values())
        else:
            listed = await self._store.list_jobs(states=ACTIVE_STATES, include_deleted=True)
        jobs = [j for j in listed if j.layout is not None and j.layout.stdouterr is not None]
        try:
            await each(jobs, self._tail_round, self._concurrency)
        finally:
            await self._flush(everything=True)

    async def _tail_round(self, job: Job) -> None:
        with context.bound(**context.for_job(job.id)):
            try:
                news = await self._tail_job(job, final=False)
                if news is not None and news.offsets:
                    self._news.append(news)
                    await self._flush(everything=False)
            except TransientError as err:
                log.info("job %s: logs unavailable for now: %s", job.name, err)
            except Exception:
                log.exception("job %s: reading its logs failed", job.name)

    async def _flush(self, *, everything: bool) -> None:
        """Store the round's news COMMIT_BATCH jobs at a time (all of it with `everything`).
        A worker that finds a batch being stored goes back to reading: the one storing takes
        whatever has piled up meanwhile."""
        if not everything and (self._commit_lock.locked() or len(self._news) < COMMIT_BATCH):
            return
        async with self._commit_lock:
            while self._news and (everything or len(self._news) >= COMMIT_BATCH):
                batch, self._news = self._news[:COMMIT_BATCH], self._news[COMMIT_BATCH:]
                await self._store_news(batch)

    async def _store_news(self, batch: Sequence[_LogNews]) -> None:
        await self._store.commit_logs(
            [
                LogAdvance(
                    job_id=n.job.id,
                    offsets=n.offsets,
                    events=tuple(n.events),
                    points=tuple(n.points),
                    progress=n.state.parser.progress,
                    last_metrics=n.state.parser.last_metrics or None,
                )
                for n in batch
                if n.offsets
            ]
        )
        for n in batch:  # only once stored: a failed commit leaves them to be read again
            n.state.offsets.update(n.offsets)

    async def _tail_job(self, job: Job, *, final: bool) -> _LogNews | None:
        """Read the job's new log lines; the final read stores them itself, a round's read
        returns them for the round's batch."""
        layout = job.layout
        if layout is None or layout.stdouterr is None:
            return None
        if final:
            await self._flush(everything=True)  # this job's news of the round go first
        # A round's read and the final read of the same job take turns: both move its offsets.
        async with self._tail_locks.setdefault(job.id, asyncio.Lock()):
            state = self._logs.get(job.id)
            if state is None:
                state = self._logs[job.id] = _LogState(await self._store.get_log_offsets(job.id))
            news = _LogNews(job, state)
            if final:
                for name in layout.log_files:
                    loc = layout.stdouterr.child(name)
                    news = await self._tail_file(news, name, loc, final=True)
                async with self._commit_lock:
                    await self._store_news([news])
                return None
            direct = await self._tail_journals(news)
            for name in layout.log_files:
                loc = layout.stdouterr.child(name)
                if direct is None:
                    await self._paced(news, name, loc)
                elif name in direct:  # a gap in the journal: now, unpaced
                    with contextlib.suppress(TimeoutError):
                        await self._tail_file(news, name, loc, final=False, timeout=True)
            return news

    async def _tail_journals(self, news: _LogNews) -> set[str] | None:
        """Read the job's journals; the logs to read directly for their gaps, or None: read
        every log directly (no journal, or one that is missing, broken or silent)."""
        job, state = news.job, news.state
        journals = job.layout.journals if job.layout else ()
        if not journals or state.no_journal:
            return None
        now = self._now()
        if state.heard is None:
            state.heard = now
        direct: set[str] = set()
        for index, loc in enumerate(journals):
            key = (job.id, journal_key(index))
            quiet, due = self._tail_pace.get(key, (0, now))
            if now < due:
                continue
            grew = False
            try:
                grew = await self._read_journal(news, journal_key(index), loc, direct)
            except TimeoutError:
                log.info("job %s: reading its journal took over %g s", job.name, self._tail_timeout)
            except ValueError as err:  # not a journal: do without
                log.warning("job %s: log journal %s unusable: %s", job.name, loc.path, err)
                state.no_journal = True
                return None
            finally:
                self._pace(key, quiet, grew)
        if (now - state.heard).total_seconds() > JOURNAL_STALE:
            return None
        return direct

    async def _read_journal(
        self, news: _LogNews, name: str, loc: FileLocation, direct: set[str]
    ) -> bool:
        """Apply one journal's new records; whether they carried new log bytes."""
        job = news.job
        logs = set(job.layout.log_files) if job.layout else set()
        grew = False
        while True:
            offset = news.offset(name)[0]
            read = self._tailer.read_journal((job.id, name), loc, offset)
            result = await asyncio.wait_for(read, self._tail_timeout)
            if result.missing:  # not written yet (or an older runner): the logs tell
                direct.update(logs)
                return grew
            if result.records:
                news.state.heard = self._now()
            for record in result.records:
                if record.name is None or record.name not in logs or record.name in direct:
                    continue
                key = (job.id, record.name)
                got = self._tailer.accept(key, news.offset(record.name)[0], record)
                if got is None:
                    direct.add(record.name)
                    continue
                grew = grew or got.bytes_read > 0
                news.add(record.name, got)
            if result.committed_offset != offset:
                news.offsets[name] = (result.committed_offset, 0)
            if not result.more:
                return grew

    def _pace(self, key: tuple[str, str], quiet: int, grew: bool) -> None:
        if grew:
            self._tail_pace.pop(key, None)
        else:
            rest = min(self._tail_idle_max, TAIL_IDLE_FIRST * 2**quiet)
            self._tail_pace[key] = (quiet + 1, self._now() + timedelta(seconds=rest))

    async def _paced(self, news: _LogNews, name: str, loc: FileLocation) -> None:
        """One file's read in a round: skipped while it rests, bounded by `tail_timeout`."""
        key = (news.job.id, name)
        now = self._now()
        quiet, due = self._tail_pace.get(key, (0, now))
        if now < due:
            return
        before = news.read
        try:
            await self._tail_file(news, name, loc, final=False, timeout=True)
        except TimeoutError:
            log.info("job %s: reading %s took over %g s", news.job.name, name, self._tail_timeout)
        finally:
            self._pace(key, quiet, news.read > before)

    async def _tail_file(
        self,
        news: _LogNews,
        name: str,
        loc: FileLocation,
        *,
        final: bool,
        timeout: bool = False,
    ) -> _LogNews:
        """Read the file's new lines into `news` (the final read stores each chunk as it goes,
        and returns what is left to store).

        With `timeout` each read may take `tail_timeout` (TimeoutError after): only the read is
        cut short, which consumes nothing; a store commit under way is never interrupted."""
        job = news.job
        budget = ROUND_BYTES
        while True:
            offset = news.offset(name)[0]
            read = self._tailer.read((job.id, name), loc, offset, final=final)
            result = await asyncio.wait_for(read, self._tail_timeout if timeout else None)
            if result.bytes_read > 0 or result.restarted:
                news.read += 1
            if not result.lines and result.committed_offset == offset and not result.restarted:
                return news
            news.add(name, result)
            budget -= result.bytes_read
            if not result.more:
                return news
            if final:  # a long backlog is stored chunk by chunk, not held in memory
                async with self._commit_lock:
                    await self._store_news([news])
                news = _LogNews(job, news.state)
            elif budget <= 0:
                return news  # the rest next round: one job's backlog must not hold the round

    def _now(self) -> datetime:
        return self._clock.now()
