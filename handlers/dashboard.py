"""Data for the Slack-only surfaces: the App Home dashboard and the job-submit form."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from handlers import home, modals, views
from services.clusters.service import ClusterService
from services.jobs.lifecycle import LIVE_STATES, JobState
from services.jobs.service import JobService
from services.jobs.sources import ConfigLoader
from services.models import Actor
from services.spend.approvals.service import ApprovalService
from services.spend.ledger import PriceBook, SpendService

# The Home tab lists every job that is not finished: waiting for approval, or live.
SHOWN_STATES = (JobState.PENDING_APPROVAL, *LIVE_STATES)


class Dashboard:
    def __init__(
        self,
        *,
        clusters: ClusterService,
        jobs: JobService,
        configs: ConfigLoader,
        prices: PriceBook,
        now: Callable[[], datetime],
        approvals: ApprovalService | None = None,
        spend: SpendService | None = None,
    ) -> None:
        self._approvals = approvals
        self._spend = spend
        self._clusters = clusters
        self._jobs = jobs
        self._configs = configs
        self._prices = prices
        self._now = now

    async def home(self, actor: Actor) -> dict[str, Any]:
        """What `actor` may read: the jobs of their channels (and their own), the approvals of
        those jobs; the whole month's spend only for an admin."""
        clusters = await self._clusters.list_clusters()
        jobs = [j for j in await self._jobs.list_jobs(actor=actor) if j.state in SHOWN_STATES]
        pending: list[str] = []
        if self._approvals is not None:
            pending = [
                views.md(
                    "{} {} (`/batchai approvals approve --id {}`)",
                    views.user(a.requester),
                    a.formula,
                    a.id,
                )
                for a in await self._approvals.list_approvals(actor=actor)
            ]
        spent = None
        if self._spend is not None and actor.is_admin:
            spent = await self._spend.month_spend(None)
        return home.home_view(
            clusters=clusters,
            jobs=jobs,
            now=self._now(),
            prices=self._prices.table.rates(),
            pending_approvals=pending,
            month_spend=spent,
        )

    async def submit_form(
        self, channel: str, prefill: modals.JobPrefill | None = None
    ) -> dict[str, Any]:
        clusters = await self._clusters.list_clusters()
        return modals.job_create_modal(
            clusters=clusters,
            manifests=self._configs.manifest_names(),
            channel_id=channel,
            prefill=prefill,
        )

    async def mount_paths(self) -> dict[str, str]:
        return modals.mount_paths_of(await self._clusters.list_clusters())
