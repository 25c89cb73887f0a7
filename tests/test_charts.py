"""The receipt's loss curve: a small PNG for a real series, nothing for a single point."""

from __future__ import annotations

import struct
import sys

import pytest

from handlers.charts import loss_curve_png
from services.models import MetricPoint


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def epochs(name: str, n: int = 10, start: float = 1.0) -> list[MetricPoint]:
    return [MetricPoint(step, name, start / step) for step in range(1, n + 1)]


def test_ten_epochs_make_a_small_png() -> None:
    points = epochs("loss") + epochs("val_loss", start=1.2)
    data = loss_curve_png(points, title="mnist")
    assert data is not None
    assert data.startswith(b"\x89PNG")
    width, height = png_size(data)
    assert (width, height) == (800, 450)
    assert len(data) < 200_000


def test_accuracy_goes_on_a_second_axis() -> None:
    loss_only = loss_curve_png(epochs("loss"), title="t")
    with_acc = loss_curve_png(
        epochs("loss") + [MetricPoint(s, "val_acc", s / 10) for s in range(1, 11)], title="t"
    )
    assert loss_only is not None and with_acc is not None
    assert png_size(with_acc) == (800, 450)
    assert with_acc != loss_only  # the accuracy line (and its axis) were drawn


def test_one_point_is_not_a_curve() -> None:
    assert loss_curve_png([MetricPoint(1, "loss", 0.5)], title="t") is None
    assert loss_curve_png([], title="t") is None


def test_two_points_of_one_step_are_still_one_point() -> None:
    # Minibatch lines repeat the epoch as their step: the last value of the step counts once.
    points = [MetricPoint(3, "loss", 0.9), MetricPoint(3, "loss", 0.7)]
    assert loss_curve_png(points, title="t") is None


def test_other_metrics_alone_do_not_make_a_loss_curve() -> None:
    points = epochs("acc") + epochs("perplexity") + epochs("lossy")
    assert loss_curve_png(points, title="t") is None


@pytest.mark.parametrize("name", ["loss", "val_loss", "train_loss", "validation_loss"])
def test_loss_like_names(name: str) -> None:
    assert loss_curve_png(epochs(name, 3), title="t") is not None


def test_uses_agg_and_leaves_no_figure_open() -> None:
    loss_curve_png(epochs("loss"), title="t")
    import matplotlib
    import matplotlib.pyplot as plt

    assert matplotlib.get_backend().lower() == "agg"
    assert plt.get_fignums() == []
    assert "matplotlib.backends.backend_tkagg" not in sys.modules
