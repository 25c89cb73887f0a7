"""Data for the Slack-only surfaces: the App Home dashboard and the job-submit form."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from handlers import home, modals
from services.clusters import ClusterService
from services.configs import ConfigLoader
from services.jobs import JobService
from services.pricing import PriceTable
from services.states import JobState

LIVE = (JobState.QUEUED, JobState.PREPARING, JobState.RUNNING, JobState.TERMINATING)


class Dashboard:
    def __init__(
        self,
        *,
        clusters: ClusterService,
        jobs: JobService,
        configs: ConfigLoader,
        prices: PriceTable | None,
        now: Callable[[], datetime],
    ) -> None:
        self._clusters = clusters
        self._jobs = jobs
        self._configs = configs
        self._prices = prices
        self._now = now

    async def home(self, user: str) -> dict[str, Any]:
        clusters = await self._clusters.list_clusters()
        jobs = [j for j in await self._jobs.list_jobs() if j.state in LIVE]
        return home.home_view(clusters=clusters, jobs=jobs, now=self._now(), prices=self._rates())

    async def submit_form(self, channel: str) -> dict[str, Any]:
        clusters = await self._clusters.list_clusters()
        return modals.job_create_modal(
            clusters=clusters, manifests=self._configs.manifest_names(), channel_id=channel
        )

    async def mount_paths(self) -> dict[str, str]:
        return {
            v.cluster.name: v.cluster.mounts[0].mount_path
            for v in await self._clusters.list_clusters()
            if v.cluster.mounts
        }

    def _rates(self) -> dict[str, Decimal]:
        return self._prices.rates() if self._prices is not None else {}
