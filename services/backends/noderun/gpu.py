"""GPU use from the node runners' `gpu` files (written every `gpu_seconds` beside the heartbeat):
one node's sample parsed, and a job's nodes together (pure)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from services.models import GpuUse

MAX_BYTES = 4096  # a node's file: a few dozen bytes per GPU


@dataclass(frozen=True)
class NodeGpu:
    at: float
    gpus: tuple[tuple[float, float, float], ...]  # (util %, used MiB, total MiB) per GPU
    samples: int
    util_sum: float  # sum over samples of the node's mean utilisation


def parse(text: str | bytes | None) -> NodeGpu | None:
    """A node's `gpu` file; None when absent, half-written or not what the runner writes."""
    if not text:
        return None
    try:
        raw = json.loads(text)
        gpus = tuple((float(u), float(m), float(t)) for u, m, t in raw["gpus"] if float(t) >= 0)
        node = NodeGpu(float(raw["at"]), gpus, int(raw["samples"]), float(raw["util_sum"]))
    except (ValueError, TypeError, KeyError):
        return None
    return node if node.gpus and node.samples > 0 else None


def combine(nodes: Sequence[NodeGpu]) -> GpuUse | None:
    """The job's GPU use: min and mean of the nodes' mean utilisation, memory per GPU."""
    if not nodes:
        return None
    per_node = [sum(g[0] for g in n.gpus) / len(n.gpus) for n in nodes]
    every = [g for n in nodes for g in n.gpus]
    return GpuUse(
        util_min=min(per_node),
        util_avg=sum(per_node) / len(per_node),
        util_max=max(g[0] for g in every),
        used_mib=sum(g[1] for g in every) / len(every),
        total_mib=sum(g[2] for g in every) / len(every),
        gpus=len(every),
        run_avg=sum(n.util_sum / n.samples for n in nodes) / len(nodes),
        at=max(n.at for n in nodes),
    )
