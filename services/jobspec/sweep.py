"""Sweeps: one job.json run once per point of a grid of parameter values (pure).

`--sweep "lr=0.1,0.03,0.01" --sweep "batch=32,64"` (or a job.json's `sweep` section, shaped as a
W&B sweep's `parameters` / `metric`) is the cartesian product: six jobs `NAME-1` … `NAME-6`, the
first parameter varying slowest. Each job gets its values as environment variables (`$lr`,
`$batch`) and substituted where its command line names them (`$lr` or `${lr}`), so a script
that reads argv and one that reads the environment both see them. Values are plain tokens
(numbers, names, paths): nothing a shell or a template could read as code.

The metric that ranks the jobs is the one the logs report (`val_acc=0.91`, `loss: 0.2`): its
goal is known for the usual names (accuracy up, loss down) or given as `NAME:max` / `NAME:min`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel

from services.jobspec.base import RESERVED_ENV_PREFIX, EnvironmentVariable
from services.jobspec.job import TOOLKITS, JobProperties, JobSpec
from services.jobspec.load import parse_json

MAX_JOBS: Final = 100  # one approval, one card: more than this is a different tool's job
MAX_VALUES: Final = 100  # per parameter
Goal = Literal["max", "min"]

_PARAM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}", re.ASCII)
_VALUE_RE = re.compile(r"[A-Za-z0-9._+\-:/@%]{1,64}", re.ASCII)
# The environment a job's node runner sets up or needs: a sweep must not shadow it.
_RESERVED_NAMES = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PWD", "SHELL", "USER"})
_UP = ("acc", "accuracy", "auc", "f1", "precision", "recall", "score", "map", "bleu", "iou")
_DOWN = ("loss", "error", "err", "perplexity", "ppl", "mae", "mse", "rmse", "wer", "cer")
# The fields of a toolkit (and jobPreparation) a value is substituted into, by name ending.
_COMMAND_FIELDS = ("command_line", "command_line_args")
_GOAL_WORDS: Final[dict[str, Goal]] = {
    "max": "max",
    "maximize": "max",
    "min": "min",
    "minimize": "min",
}


@dataclass(frozen=True)
class Parameter:
    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Metric:
    name: str
    goal: Goal

    def better(self, a: float, b: float) -> bool:
        """Whether `a` beats `b` for this metric."""
        return a > b if self.goal == "max" else a < b


@dataclass(frozen=True)
class Point:
    """One job of a sweep: its name and the values it runs with, in parameter order."""

    name: str
    values: tuple[tuple[str, str], ...]

    @property
    def env(self) -> dict[str, str]:
        return dict(self.values)

    def label(self) -> str:
        """`lr=0.1 batch=32`, as a sweep card and a receipt show it."""
        return " ".join(f"{k}={v}" for k, v in self.values)


@dataclass(frozen=True)
class Sweep:
    parameters: tuple[Parameter, ...]
    metric: Metric | None = None

    @property
    def size(self) -> int:
        return math.prod(len(p.values) for p in self.parameters)

    def points(self, base: str) -> list[Point]:
        """Every job of the sweep, `base-1` … `base-N`, the first parameter varying slowest."""
        names = [p.name for p in self.parameters]
        grid = itertools.product(*(p.values for p in self.parameters))
        return [
            Point(f"{base}-{i}", tuple(zip(names, combo, strict=True)))
            for i, combo in enumerate(grid, start=1)
        ]


# ----------------------------------------------------------------------------- parsing


def parse_parameter(text: str) -> Parameter:
    """One `--sweep NAME=V1,V2,…` flag."""
    name, sep, values = text.partition("=")
    if not sep:
        raise ValueError("write NAME=V1,V2,… (for example lr=0.1,0.01)")
    return _parameter(name.strip(), [v.strip() for v in values.split(",")], where="--sweep")


def parse_metric(text: str) -> Metric:
    """`--sweep-metric val_acc` (goal from the name), or `NAME:max` / `NAME:min`."""
    name, sep, goal = text.partition(":")
    name = name.strip()
    if not _PARAM_RE.fullmatch(name):
        raise ValueError("the metric is a name the logs report, such as val_acc or loss")
    if sep:
        if goal.strip().lower() not in _GOAL_WORDS:
            raise ValueError("the goal after : is max or min")
        return Metric(name, _GOAL_WORDS[goal.strip().lower()])
    inferred = goal_of(name)
    if inferred is None:
        raise ValueError(f"say whether {name} should go up or down: {name}:max or {name}:min")
    return Metric(name, inferred)


def goal_of(name: str) -> Goal | None:
    """Up for accuracy-like names, down for loss-like ones, None when the name does not say."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    if any(w in _DOWN for w in words):
        return "min"
    if any(w in _UP for w in words):
        return "max"
    return None


def sweep_of(flags: Sequence[str], metric: str | None = None) -> Sweep:
    """The sweep the `--sweep` flags (and `--sweep-metric`) describe."""
    return _sweep([parse_parameter(f) for f in flags], parse_metric(metric) if metric else None)


def sweep_from_json(data: Any) -> Sweep:
    """A job.json's `sweep` section, W&B-shaped:
    `{"parameters": {"lr": {"values": [0.1, 0.01]}, "batch": [32, 64]},
      "metric": {"name": "val_acc", "goal": "maximize"}}` (`metric` may be a plain name)."""
    if not isinstance(data, Mapping) or set(data) - {"parameters", "metric"}:
        raise ValueError('sweep: an object with "parameters" and an optional "metric"')
    params = data.get("parameters")
    if not isinstance(params, Mapping) or not params:
        raise ValueError('sweep.parameters: an object of NAME: [values] or NAME: {"values": [...]}')
    parsed = []
    for name, spec in params.items():
        where = f"sweep.parameters.{name}"
        raw = spec.get("values") if isinstance(spec, Mapping) and set(spec) == {"values"} else spec
        if not isinstance(raw, list):
            raise ValueError(f'{where}: a list of values, or {{"values": [...]}}')
        parsed.append(_parameter(str(name), [_json_value(v, where) for v in raw], where=where))
    return _sweep(parsed, _json_metric(data.get("metric")))


def _json_value(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{where}: values are numbers or strings")
    return value if isinstance(value, str) else repr(value)


def _json_metric(data: Any) -> Metric | None:
    if data is None:
        return None
    if isinstance(data, str):
        return parse_metric(data)
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise ValueError('sweep.metric: a name, or {"name": …, "goal": "maximize"|"minimize"}')
    goal = data.get("goal")
    if goal is None:
        return parse_metric(data["name"])
    if not isinstance(goal, str) or goal.lower() not in _GOAL_WORDS:
        raise ValueError('sweep.metric.goal: "maximize" or "minimize"')
    return parse_metric(f"{data['name']}:{goal}")


def _parameter(name: str, values: list[str], *, where: str) -> Parameter:
    if not _PARAM_RE.fullmatch(name):
        raise ValueError(f"{where}: a parameter is named like a variable (letters, digits, _)")
    if name.upper().startswith(RESERVED_ENV_PREFIX) or name.upper() in _RESERVED_NAMES:
        raise ValueError(f"{where}: {name} is set by the node, pick another name")
    if not values or any(not v for v in values):
        raise ValueError(f"{where}: {name} needs at least one value, none of them empty")
    if len(values) > MAX_VALUES:
        raise ValueError(f"{where}: {name} has {len(values)} values, at most {MAX_VALUES}")
    bad = next((v for v in values if not _VALUE_RE.fullmatch(v)), None)
    if bad is not None:
        raise ValueError(
            f"{where}: values are 1-64 letters, digits and . _ + - : / @ % (not {bad[:20]!r})"
        )
    if len(set(values)) != len(values):
        raise ValueError(f"{where}: {name} lists a value twice")
    return Parameter(name, tuple(values))


def _sweep(params: list[Parameter], metric: Metric | None) -> Sweep:
    if not params:
        raise ValueError("a sweep needs at least one --sweep NAME=V1,V2")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError("each sweep parameter is named once")
    sweep = Sweep(tuple(params), metric)
    if sweep.size > MAX_JOBS:
        raise ValueError(f"the sweep would submit {sweep.size} jobs, at most {MAX_JOBS}")
    return sweep


def split_sweep(text: str, label: str) -> tuple[str, Any]:
    """A job.json's text without its top-level `sweep` section, and the section (None: the
    file has none, and the text is returned as it was, so errors keep their line numbers)."""
    if '"sweep"' not in text:
        return text, None
    data = parse_json(text, source=label)
    if "sweep" not in data:
        return text, None
    section = data.pop("sweep")
    return json.dumps(data, indent=2), section


def metric_of(given: str | None, reported: Iterable[str]) -> Metric | None:
    """The metric that ranks a sweep: the one it names, else what the logs report, an
    accuracy-like name before a loss-like one, validation before training."""
    if given:
        return parse_metric(given)
    names = sorted(set(reported))
    for goal in ("max", "min"):
        fitting = [n for n in names if goal_of(n) == goal]
        for name in sorted(fitting, key=lambda n: (not n.lower().startswith("val"), len(n), n)):
            return Metric(name, goal)
    return None


# ----------------------------------------------------------------------------- one job


def apply(spec: JobSpec, point: Point) -> JobSpec:
    """The job.json of one point: its values as environment variables (a value the file sets
    is replaced) and substituted where the toolkit's command line names them."""
    props = spec.properties
    if clash := sorted(set(point.env) & {s.name for s in props.secrets}):
        raise ValueError(f"sweep parameter {clash[0]} is also a secret of the job.json")
    kept = [v for v in props.environment_variables if v.name not in point.env]
    added = [EnvironmentVariable(name=k, value=x) for k, x in point.values]
    attr, block = _toolkit(props)
    update: dict[str, Any] = {
        "environment_variables": (*kept, *added),
        attr: _substituted(block, point.env),
    }
    if props.job_preparation is not None:
        update["job_preparation"] = _substituted(props.job_preparation, point.env)
    return spec.model_copy(update={"properties": props.model_copy(update=update)})


def _substituted(block: BaseModel, values: Mapping[str, str]) -> BaseModel:
    """`block` with `$name` / `${name}` replaced in its command lines (`commandLine`,
    `commandLineArgs`, TensorFlow's `workerCommandLineArgs`…)."""
    pattern = _reference(values)
    commands = {
        field: pattern.sub(lambda m: values[m.group(1) or m.group(2)], value)
        for field in type(block).model_fields
        if field.endswith(_COMMAND_FIELDS) and isinstance(value := getattr(block, field), str)
    }
    return block.model_copy(update=commands)


def _toolkit(props: JobProperties) -> tuple[str, BaseModel]:
    """The attribute name and block of the job's one toolkit settings block."""
    for attr, _, _ in TOOLKITS.values():
        if (block := getattr(props, attr)) is not None:
            return attr, block
    raise AssertionError("validated JobProperties without a toolkit")  # pragma: no cover


def _reference(names: Iterable[str]) -> re.Pattern[str]:
    """`$name` (not followed by a name character) or `${name}`, for these names only."""
    alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"\$\{{({alts})\}}|\$({alts})(?![A-Za-z0-9_])")


# ----------------------------------------------------------------------------- ranking


def ranked(results: Mapping[str, float | None], metric: Metric) -> list[str]:
    """Job names best first by their latest metric; jobs with none yet (or NaN) last, by name."""
    scored = _scored(results, metric)
    return scored + sorted(set(results) - set(scored))


def losing_half(results: Mapping[str, float | None], metric: Metric) -> list[str]:
    """The worse half (rounded down) of the jobs that report the metric: what *Stop losing
    half* stops. Jobs without a value yet are never stopped by it."""
    scored = _scored(results, metric)
    return scored[len(scored) - len(scored) // 2 :] if len(scored) > 1 else []


def _scored(results: Mapping[str, float | None], metric: Metric) -> list[str]:
    """The jobs with a finite value, best first (ties by name, so the order is stable)."""
    scored = [(n, v) for n, v in results.items() if v is not None and math.isfinite(v)]
    scored.sort(key=lambda nv: (-nv[1] if metric.goal == "max" else nv[1], nv[0]))
    return [n for n, _ in scored]
