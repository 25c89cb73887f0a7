"""ARM and Files requests per status-poll cycle of the azure backend: C clusters × J running jobs.

Real SDK clients against the fake ARM (TLS) and fake Files servers; every job really runs (a
sleeping process under the node runner on a fake node). Once all jobs run, each cycle asks
`get_job_status` for every job, as JobRunner.poll does, and counts the requests the fakes saw.
The design target: ARM requests grow with clusters, not with jobs × nodes.

    .venv/bin/python bench/azure_poll_bench.py                # 5 clusters × 10 jobs, and 1 × 10
    .venv/bin/python bench/azure_poll_bench.py --clusters 2 --jobs 3
    .venv/bin/python bench/azure_poll_bench.py --gpu --clusters 2 --jobs 5  # GPU sampling's cost

With --gpu the jobs run on a GPU size (fake NVIDIA driver on every node) and each shape is
measured twice, node runners sampling nvidia-smi (GPU_SAMPLE_SECONDS) off and on: the difference
is what GPU use in the card costs per poll cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.azure.rig import JOB_SHARE, azure_rig  # noqa: E402
from tests.contract import (  # noqa: E402
    JOB_SCRIPT,
    SCRIPT_PATH,
    cluster,
    job_spec,
    launch_request,
    log_loc,
    wait_for,
    wait_for_text,
)

GPU_SIZE = "Standard_NC4as_T4_v3"


async def measure(
    clusters: int, jobs: int, cycles: int, *, gpu: bool = False, sample: float = 0.0
) -> dict[str, float]:
    ticks = [0.0]
    with tempfile.TemporaryDirectory(prefix="azure-poll-bench-") as tmp:
        async with azure_rig(Path(tmp)) as rig:
            script = rig.files.create_share(JOB_SHARE) / SCRIPT_PATH
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(JOB_SCRIPT)
            share = rig.share()
            # One poll cycle = one tick, no sleeping.
            backend = rig.backend(
                share,
                poll_cache_seconds=5.0,
                monotonic=lambda: ticks[0],
                gpu_sample_seconds=sample,
            )
            for quota in ("cores", "standardNCASv3_T4Family"):
                rig.arm.set_quota(quota, 4 * clusters * jobs + 100)
            started = []
            try:
                for c in range(clusters):
                    size = GPU_SIZE if gpu else "Standard_D2s_v5"
                    cl = replace(cluster(f"bench{c}", nodes=jobs), vm_size=size)
                    await backend.create_cluster(cl)
                    for node in range(jobs):
                        request = launch_request(job_spec("sleep"), cl, (node,))
                        started.append((request.job_id, await backend.start_job(request)))
                for _, result in started:
                    await wait_for_text(share, log_loc(result, "stdout.txt"), '"pgid"', timeout=120)
                if sample:  # every node has written its first GPU sample
                    files = rig.files.share_dir("batchai") / ".batchai" / "jobs"
                    while len(list(files.glob("*/node-*/gpu"))) < len(started):
                        await asyncio.sleep(0.05)
                arm_counts: list[int] = []
                files_counts: list[int] = []
                ops: Counter[str] = Counter()
                seconds = 0.0
                for _ in range(cycles + 1):  # the first cycle warms the per-job caches
                    ticks[0] += 10.0
                    mark = rig.arm.mark()
                    rig.files.reset_counters()
                    begin = time.perf_counter()
                    for job_id, _ in started:
                        status = await backend.get_job_status(job_id)
                        assert status.phase == "running", status
                        assert (status.gpu is not None) == bool(sample), status
                    seconds = time.perf_counter() - begin
                    arm = rig.arm.since(mark)
                    arm_counts.append(len(arm))
                    files_counts.append(len(rig.files.requests))
                    ops = Counter(f"{r.method} {r.path.rsplit('/', 1)[-1]}" for r in arm)
                for job_id, _ in started:
                    await backend.terminate_job(job_id)
                for job_id, _ in started:
                    await wait_for(backend, job_id, timeout=120)
            finally:
                await backend.aclose()
                await share.aclose()
    steady_arm = arm_counts[1:]
    steady_files = files_counts[1:]
    print(f"  last cycle's ARM requests: {dict(ops)}")
    return {
        "arm": sum(steady_arm) / len(steady_arm),
        "files": sum(steady_files) / len(steady_files),
        "seconds": seconds,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10, help="running 1-node jobs per cluster")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="GPU sampling off, then on")
    args = parser.parse_args()
    shapes = [(1, args.jobs), (args.clusters, args.jobs)]
    if args.gpu:
        print("clusters  jobs  sampling  ARM req/cycle  Files req/cycle  Files per job")
        for clusters, jobs in shapes:
            total = clusters * jobs
            for sample in (0.0, 0.5):
                r = await measure(clusters, jobs, args.cycles, gpu=True, sample=sample)
                print(
                    f"{clusters:>8}  {total:>4}  {'on' if sample else 'off':>8}  "
                    f"{r['arm']:>13.1f}  {r['files']:>15.1f}  {r['files'] / total:>13.2f}"
                )
        return
    print("clusters  jobs  ARM req/cycle  ARM per job  Files req/cycle  Files per job  cycle s")
    for clusters, jobs in shapes:
        total = clusters * jobs
        print(f"measuring {clusters} × {jobs} …")
        r = await measure(clusters, jobs, args.cycles)
        print(
            f"{clusters:>8}  {total:>4}  {r['arm']:>13.1f}  {r['arm'] / total:>11.2f}  "
            f"{r['files']:>15.1f}  {r['files'] / total:>13.2f}  {r['seconds']:>7.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
