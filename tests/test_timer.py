"""Interval work never overlaps itself and never drops a tick (services/schedules/timer.py)."""

from __future__ import annotations

import asyncio

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, JobEvent

from services.schedules.timer import Scheduler, _run


async def test_ticks_during_a_round_become_one_round_right_after_it() -> None:
    scheduler = Scheduler()
    release = asyncio.Event()
    rounds: list[int] = []

    async def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            await release.wait()

    scheduler.every("work", 3600, work)
    first = asyncio.create_task(_run(scheduler, "work"))
    await asyncio.sleep(0)  # a yield: the first round starts and waits
    await _run(scheduler, "work")  # two ticks while it runs: noted, not run beside it
    await _run(scheduler, "work")
    assert rounds == [0]
    release.set()
    await first
    assert rounds == [0, 1]  # the two ticks coalesced into one round, right after
    assert scheduler.follow_ups == {"work": 1}
    await _run(scheduler, "work")  # the next tick is an ordinary round again
    assert rounds == [0, 1, 2] and scheduler.follow_ups == {"work": 1}


async def test_apscheduler_skips_no_tick_of_a_round_longer_than_its_interval() -> None:
    """Before: APScheduler found the round still running at the next tick and dropped it
    ("maximum number of running instances reached"); the work waited a whole interval more."""
    scheduler = Scheduler()
    release, second = asyncio.Event(), asyncio.Event()
    rounds: list[int] = []
    fired = asyncio.Event()
    ticks: list[str] = []
    dropped: list[str] = []

    async def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            await release.wait()
        else:
            second.set()

    def listen(event: JobEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            dropped.append(event.job_id)
        else:
            ticks.append(event.job_id)
        if len(ticks) + len(dropped) >= 2:  # a second tick, while round one is under way
            fired.set()

    scheduler._scheduler.add_listener(listen, EVENT_JOB_EXECUTED | EVENT_JOB_MAX_INSTANCES)
    scheduler.every("work", 0.05, work, now=True)
    scheduler.start()
    try:
        await asyncio.wait_for(fired.wait(), 10)  # a later tick came due during round one
        assert rounds == [0]
        release.set()
        await asyncio.wait_for(second.wait(), 10)
        assert dropped == [] and scheduler.skipped == {}
        assert scheduler.follow_ups["work"] >= 1
    finally:
        release.set()
        await scheduler.aclose()
