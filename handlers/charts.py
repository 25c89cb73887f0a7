"""The loss curve for a job's receipt: metric points in, a small PNG out (pure, no display)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Final

from services.models import MetricPoint

WIDTH_IN: Final = 8.0  # 800 x 450 px at DPI 100
HEIGHT_IN: Final = 4.5
DPI: Final = 100
MAX_SERIES: Final = 4  # per axis; more lines than that is noise in a thread

StepValue = tuple[int, float]

# The names services.jobs.tailer gives metrics: `loss`, `val_loss`, `train_acc`, `val_accuracy` ...
_PREFIX = r"(?:(?:train|training|val|valid|validation|test|eval)_)?"
_LOSS_RE = re.compile(_PREFIX + r"loss")
_ACC_RE = re.compile(_PREFIX + r"acc(?:uracy)?")


def loss_curve_png(points: Sequence[MetricPoint], *, title: str) -> bytes | None:
    """Loss (and accuracy on a second axis) by step/epoch as PNG bytes.

    None when no loss-like metric has at least two steps: one point is not a curve.
    """
    losses = _series(points, _LOSS_RE)
    if not any(len(xy) >= 2 for xy in losses.values()):
        return None
    accuracies = _series(points, _ACC_RE)

    # The object API, not pyplot: pyplot keeps every figure in a global registry until it is
    # closed, and a long-running bot must not hold one per receipt.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)  # never looks for a display
    ax = fig.add_subplot()
    # One colour cycle across both axes, so that acc does not reuse loss's colour.
    colours = (f"C{i}" for i in range(2 * MAX_SERIES))
    lines = []
    for name, xy in losses.items():
        steps, values = zip(*xy, strict=True)
        lines += ax.plot(steps, values, marker=_marker(xy), color=next(colours), label=name)
    ax.set_xlabel("epoch / step")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    top = ax
    if accuracies:
        top = ax.twinx()
        for name, xy in accuracies.items():
            steps, values = zip(*xy, strict=True)
            colour = next(colours)
            lines += top.plot(steps, values, "--", marker=_marker(xy), color=colour, label=name)
        top.set_ylabel("accuracy")
    # On the top-most axes, or the second axis's lines would be drawn over the legend.
    top.legend(lines, [str(line.get_label()) for line in lines], loc="best", fontsize="small")
    ax.set_title(title[:80])
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    fig.clear()  # drop the artists now, not when the collector gets round to the cycle
    return out.getvalue()


def _series(points: Sequence[MetricPoint], pattern: re.Pattern[str]) -> dict[str, list[StepValue]]:
    """Matching metrics as sorted (step, value) lists; the last value of a step wins."""
    by_name: dict[str, dict[int, float]] = {}
    for p in points:
        if pattern.fullmatch(p.name):
            by_name.setdefault(p.name, {})[p.step] = p.value
    ranked = sorted(by_name, key=lambda name: (-len(by_name[name]), name))[:MAX_SERIES]
    return {name: sorted(by_name[name].items()) for name in sorted(ranked)}


def _marker(xy: Sequence[StepValue]) -> str:
    return "o" if len(xy) <= 30 else ""


MAX_RUNS: Final = 20  # lines on a sweep's chart: the best runs, the rest would be a blur


def sweep_curves_png(
    runs: Sequence[tuple[str, Sequence[MetricPoint]]], *, metric: str, title: str
) -> bytes | None:
    """One line per run of `metric` by step (the runs best first, at most MAX_RUNS).

    None when no run has two steps of it."""
    series = []
    for name, points in runs:
        by_step = {p.step: p.value for p in points if p.name == metric}
        if len(by_step) >= 2:
            series.append((name, sorted(by_step.items())))
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, xy) in enumerate(series[:MAX_RUNS]):
        steps, values = zip(*xy, strict=True)
        # The best run (first) is drawn thick, on top.
        ax.plot(
            steps, values, label=name, linewidth=2.5 if i == 0 else 1.0, zorder=3 if i == 0 else 2
        )
    ax.set_xlabel("epoch / step")
    ax.set_ylabel(metric[:40])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="x-small", ncol=2 if len(series) > 10 else 1)
    ax.set_title(title[:80])
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    fig.clear()
    return out.getvalue()
