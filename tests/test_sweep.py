"""Sweeps, the pure part (issue 15, item 1): flags and job.json sections into a grid of jobs,
each job.json with its values in its environment and command line, and the ranking."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.jobspec import sweep
from services.jobspec.load import load_job_spec
from services.jobspec.sweep import Metric, Parameter, Point

JOB = {
    "properties": {
        "nodeCount": 1,
        "customToolkitSettings": {"commandLine": "python train.py --lr $lr --batch ${batch}"},
        "environmentVariables": [{"name": "lr", "value": "old"}, {"name": "SEED", "value": "7"}],
        "jobPreparation": {"commandLine": "echo preparing lr=$lr $lrx $AZ_BATCHAI_JOB_TEMP"},
    }
}


def test_the_flags_make_the_cartesian_product_first_parameter_slowest() -> None:
    grid = sweep.sweep_of(["lr=0.1,0.03,0.01", "batch=32,64"])
    points = grid.points("lr")
    assert grid.size == 6 and [p.name for p in points] == [f"lr-{i}" for i in range(1, 7)]
    assert [p.label() for p in points[:3]] == [
        "lr=0.1 batch=32",
        "lr=0.1 batch=64",
        "lr=0.03 batch=32",
    ]
    assert points[5].env == {"lr": "0.01", "batch": "64"}


def test_a_point_lands_in_the_environment_and_the_command_lines_only_where_named() -> None:
    spec = load_job_spec(json.dumps(JOB))
    point = Point("lr-1", (("lr", "0.1"), ("batch", "32")))
    one = sweep.apply(spec, point)
    props = one.properties
    assert props.custom_toolkit_settings is not None
    assert props.custom_toolkit_settings.command_line == "python train.py --lr 0.1 --batch 32"
    assert props.job_preparation is not None
    # $lrx is another name; the service's variables are the node's to expand
    assert props.job_preparation.command_line == ("echo preparing lr=0.1 $lrx $AZ_BATCHAI_JOB_TEMP")
    env = {v.name: v.value for v in props.environment_variables}
    assert env == {"SEED": "7", "lr": "0.1", "batch": "32"}  # the sweep's value wins
    assert spec.properties.custom_toolkit_settings.command_line.endswith("${batch}")  # unchanged


def test_every_toolkit_s_command_lines_are_substituted() -> None:
    data = {
        "properties": {
            "nodeCount": 2,
            "tensorFlowSettings": {
                "pythonScriptFilePath": "train.py",
                "workerCommandLineArgs": "--lr=$lr",
                "parameterServerCommandLineArgs": "--lr=${lr} --ps",
            },
        }
    }
    one = sweep.apply(load_job_spec(json.dumps(data)), Point("x-1", (("lr", "1e-4"),)))
    tf = one.properties.tensor_flow_settings
    assert tf is not None
    assert tf.worker_command_line_args == "--lr=1e-4"
    assert tf.parameter_server_command_line_args == "--lr=1e-4 --ps"


def test_a_job_json_sweep_section_reads_like_a_wandb_sweep() -> None:
    grid = sweep.sweep_from_json(
        {
            "parameters": {"lr": {"values": [0.1, 0.001]}, "opt": ["adam", "sgd"]},
            "metric": {"name": "val_loss", "goal": "minimize"},
        }
    )
    assert grid.parameters == (Parameter("lr", ("0.1", "0.001")), Parameter("opt", ("adam", "sgd")))
    assert grid.metric == Metric("val_loss", "min")
    assert sweep.sweep_from_json({"parameters": {"k": [1]}, "metric": "val_acc"}).metric == Metric(
        "val_acc", "max"
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["lr"], "write NAME=V1,V2"),
        (["lr="], "needs at least one value"),
        (["lr=0.1,,0.2"], "none of them empty"),
        (["lr=0.1,0.1"], "lists a value twice"),
        (["lr=0.1; rm -rf /"], "values are 1-64 letters"),
        (["lr=$(id)"], "values are 1-64 letters"),
        (["lr=a b"], "values are 1-64 letters"),
        (["1lr=1"], "named like a variable"),
        (["PATH=/tmp"], "set by the node"),
        (["AZ_BATCHAI_X=1"], "set by the node"),
        (["lr=1,2", "lr=3"], "named once"),
        (
            ["a=" + ",".join(map(str, range(11))), "b=" + ",".join(map(str, range(10)))],
            "at most 100",
        ),
        ([], "at least one"),
    ],
)
def test_a_bad_sweep_is_one_line_saying_what_is_wrong(flags: list[str], expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as err:
        sweep.sweep_of(flags)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ([1, 2], "an object with"),
        ({"parameters": {}}, "sweep.parameters"),
        ({"parameters": {"lr": 0.1}}, "sweep.parameters.lr: a list"),
        ({"parameters": {"lr": [True]}}, "numbers or strings"),
        ({"parameters": {"lr": [1]}, "metric": {"name": "x", "goal": "up"}}, "maximize"),
        ({"parameters": {"lr": [1]}, "metric": "throughput"}, "throughput:max"),
        ({"parameters": {"lr": [1]}, "extra": 1}, "an object with"),
    ],
)
def test_a_bad_sweep_section_names_its_json_path(section: object, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        sweep.sweep_from_json(section)


def test_a_sweep_value_may_not_shadow_a_secret() -> None:
    data = json.loads(json.dumps(JOB))
    data["properties"]["secrets"] = [{"name": "lr", "value": "s3cret"}]
    data["properties"]["environmentVariables"] = []
    with pytest.raises(ValueError, match="also a secret"):
        sweep.apply(load_job_spec(json.dumps(data)), Point("x-1", (("lr", "1"),)))


@pytest.mark.parametrize(
    ("name", "goal"),
    [
        ("val_acc", "max"),
        ("accuracy", "max"),
        ("top1_acc", "max"),
        ("f1", "max"),
        ("loss", "min"),
        ("val_loss", "min"),
        ("eval-error", "min"),
        ("ppl", "min"),
        ("throughput", None),
        ("lossless_ratio", None),
    ],
)
def test_the_goal_of_a_metric_follows_its_name(name: str, goal: str | None) -> None:
    assert sweep.goal_of(name) == goal


def test_metric_flags_take_an_explicit_goal() -> None:
    assert sweep.parse_metric("throughput:max") == Metric("throughput", "max")
    assert sweep.parse_metric("val_acc") == Metric("val_acc", "max")
    with pytest.raises(ValueError, match="max or min"):
        sweep.parse_metric("loss:down")


def test_ranking_puts_the_best_first_and_jobs_without_a_value_last() -> None:
    results = {"a-1": 0.9, "a-2": None, "a-3": 0.95, "a-4": 0.5, "a-5": math.nan}
    up = Metric("val_acc", "max")
    assert sweep.ranked(results, up) == ["a-3", "a-1", "a-4", "a-2", "a-5"]
    assert sweep.ranked(results, Metric("loss", "min"))[:3] == ["a-4", "a-1", "a-3"]
    assert sweep.losing_half(results, up) == ["a-4"]  # 3 report: the worst goes
    assert sweep.losing_half({"x": 1.0}, up) == []


def test_stop_losing_half_picks_the_worse_half_of_those_that_report() -> None:
    up = Metric("val_acc", "max")
    results = {"j-1": 0.1, "j-2": 0.4, "j-3": 0.3, "j-4": 0.2, "j-5": None}
    assert sweep.losing_half(results, up) == ["j-4", "j-1"]
    assert sweep.losing_half({**results, "j-6": 0.9}, up) == ["j-4", "j-1"]  # 5 report: 2 go


@given(
    st.lists(
        st.lists(st.integers(0, 999), min_size=1, max_size=4, unique=True), min_size=1, max_size=3
    )
)
def test_every_point_is_distinct_and_the_count_is_the_product(grid: list[list[int]]) -> None:
    flags = [f"p{i}=" + ",".join(map(str, values)) for i, values in enumerate(grid)]
    points = sweep.sweep_of(flags).points("s")
    assert len(points) == math.prod(len(v) for v in grid)
    assert len({p.values for p in points}) == len(points)
    assert len({p.name for p in points}) == len(points)
