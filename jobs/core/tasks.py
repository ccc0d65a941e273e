"""Task registry: what a job can run and which hyperparameters it takes.

A task names its entry point and a typed hyperparameter schema. The built-in ``custom`` task lives
here; the model and batch tasks (``recognition``, ``detection``, ``gallery``, ``identify``) register
themselves from their own packages through the ``faceops.tasks`` entry-point group in setup.py, so
this module never imports MXNet or onnxruntime and adding a task never touches the CLI.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

TYPES = ("int", "float", "str", "bool")
DIRECTIONS = ("min", "max")


INT_LIMIT = 2 ** 63  # what the runtimes' (C) integers hold: bigger ones fail deep inside a job


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, default, allowed range or choices and a help line."""

    type: str
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None

    def check(self, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ``ValueError`` saying
        what was expected. Strings are parsed (``--set`` values arrive as text)."""
        value = _coerce(self.type, value)
        if self.type == "int" and not -INT_LIMIT <= value < INT_LIMIT:
            raise ValueError(f"expected an integer a 64-bit number holds (at most {INT_LIMIT - 1}), got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}, got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"expected a value >= {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ValueError(f"expected a value <= {self.max}, got {value!r}")
        return value


@dataclass(frozen=True)
class Metric:
    """How to read one logged metric: whether lower (``min``) or higher (``max``) is better, so
    views can show the best value beside the last one, and its unit for axis labels. A metric
    with a ``chance`` level (e.g. 0.5 for accuracy on balanced pairs) lets views say when a
    finished job ended within ``CHANCE_BAND`` of it, with ``at_chance`` saying what that means."""

    direction: str
    unit: str = ""
    chance: float | None = None
    at_chance: str = ""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"expected direction min or max, got {self.direction!r}")

    def best(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return a < b if self.direction == "min" else a > b


def parse_metric(value: Any) -> Metric:
    """A metric declaration from a spec: ``min``, ``max`` or ``{direction: max, unit: "%",
    chance: 0.5}``; ``ValueError`` saying what was expected otherwise."""
    if isinstance(value, str):
        return Metric(value.strip().lower())
    if isinstance(value, dict):
        unknown = set(value) - {"direction", "unit", "chance"}
        if unknown:
            raise ValueError(unknown_key_message(sorted(unknown)[0], ("direction", "unit", "chance")))
        chance = value.get("chance")
        if chance is not None and (isinstance(chance, bool) or not isinstance(chance, (int, float))):
            raise ValueError(f"chance: expected a number (the metric's value at chance), got {chance!r}")
        return Metric(str(value.get("direction", "")).strip().lower(), str(value.get("unit") or ""),
                      None if chance is None else float(chance))
    raise ValueError(f"expected min, max or {{direction: min|max, unit: ..., chance: ...}}, got {value!r}")


CHANCE_BAND = 0.1  # 0.5-0.6 on balanced pairs is a coin, not a recognizer


def chance_warnings(metrics: dict[str, Any], schema: dict[str, Metric]) -> list[str]:
    """One line per final metric that sits within CHANCE_BAND of its declared chance level."""
    lines = []
    for name, value in metrics.items():
        metric = find_metric(schema, name)
        if metric is None or metric.chance is None or not isinstance(value, (int, float)):
            continue
        if (value < metric.chance + CHANCE_BAND) if metric.direction == "max" else (value > metric.chance - CHANCE_BAND):
            meaning = metric.at_chance or "nothing was learned"
            lines.append(f"{name} {value:.2f}: at chance ({metric.chance:g}), {meaning}")
    return lines


def find_metric(schema: dict[str, Metric], name: str) -> Metric | None:
    """The declaration of metric ``name``: an exact key first, then the first matching glob
    pattern (``val_*_acc`` covers every verification set)."""
    if name in schema:
        return schema[name]
    return next((m for pattern, m in schema.items() if fnmatch.fnmatchcase(name, pattern)), None)


@dataclass(frozen=True)
class Slot:
    """One input channel or output a task takes: what goes there, and whether a job must give it."""

    help: str
    required: bool = True


@dataclass(frozen=True)
class Sharding:
    """How a processing task scales out over ``instance_count`` instances: each takes a share of
    the input channel ``input`` (by a stable key) and writes a part of its outputs; ``merge``
    (``module:function``, called with the hyperparameters and the local output folders) makes the
    parts one output and returns the job's metrics, as one instance would have logged them."""

    input: str
    merge: str


@dataclass(frozen=True)
class Task:
    """A kind of job. ``entrypoint`` is the argv run inside the container contract;
    ``params`` is None for schema-less tasks (``custom``), whose values pass through as typed JSON.
    ``kind`` tells cloud backends whether it is a training or a processing (batch) job;
    ``metrics`` declares what the entry point logs (name or glob pattern -> :class:`Metric`);
    ``inputs``/``outputs`` the channels and outputs it reads and writes (None: any, for ``custom``);
    ``sharding`` how a processing task runs on several instances (None: it cannot)."""

    name: str
    entrypoint: tuple[str, ...]
    params: dict[str, Param] | None = field(default_factory=dict)
    kind: str = "training"
    help: str = ""
    metrics: dict[str, Metric] = field(default_factory=dict)
    inputs: dict[str, Slot] | None = None
    outputs: dict[str, Slot] | None = None
    sharding: Sharding | None = None

    def defaults(self) -> dict[str, Any]:
        """The schema's default values (parameters without a default are left out)."""
        return {k: p.default for k, p in (self.params or {}).items() if p.default is not None}

    def check(self, key: str, value: Any) -> Any:
        """Validate one hyperparameter; unknown keys name the nearest allowed one."""
        if self.params is None:
            return value
        if key not in self.params:
            raise KeyError(unknown_key_message(key, self.params))
        return self.params[key].check(value)


def param_line(key: str, param: Param) -> list[str]:
    """``lr (float; default 0.1, min 0)`` and its help line, as ``--help`` and ``task show`` print it."""
    limits = ", ".join(part for part in (
        f"default {param.default!r}" if param.default is not None else "",
        f"min {param.min:g}" if param.min is not None else "",
        f"max {param.max:g}" if param.max is not None else "",
        f"one of {', '.join(map(str, param.choices))}" if param.choices else "") if part)
    return [f"  {key} ({param.type}{'; ' + limits if limits else ''})"] + ([f"      {param.help}"] if param.help else [])


def reference(task: Task) -> list[str]:
    """The task's reference as text lines: what it does, the inputs and outputs it takes, each
    hyperparameter (type, default, range, help) and the metrics it writes. One text for the entry
    point's ``--help`` and ``faceops task show``."""
    lines = [task.help or f"The {task.name} task.", "", f"kind: {task.kind}",
             f"entry point: {' '.join(task.entrypoint) or '(the spec entrypoint)'}"]
    for title, slots in (("inputs", task.inputs), ("outputs", task.outputs)):
        if slots:
            lines += ["", f"{title}:"] + [f"  {name}{'' if slot.required else ' (optional)'}: {slot.help}"
                                          for name, slot in slots.items()]
    lines += ["", "hyperparameters:"]
    if task.params is None:
        lines.append("  any (passed through as typed JSON)")
    for key, param in sorted((task.params or {}).items()):
        lines += param_line(key, param)
    if task.metrics:
        lines += ["", "metrics (name: better when):"]
        lines += [f"  {name}: {'lower' if m.direction == 'min' else 'higher'}{f' ({m.unit})' if m.unit else ''}"
                  for name, m in task.metrics.items()]
    return lines


def _slots(slots: dict[str, Slot] | None) -> dict[str, dict[str, Any]] | None:
    return None if slots is None else {n: {"help": s.help, "required": s.required} for n, s in slots.items()}


def describe(task: Task) -> dict[str, Any]:
    """The same reference as data (``faceops task show --json``)."""
    return {"name": task.name, "kind": task.kind, "entrypoint": list(task.entrypoint), "help": task.help,
            "inputs": _slots(task.inputs), "outputs": _slots(task.outputs),
            "hyperparameters": None if task.params is None else {
                k: {"type": p.type, "default": p.default, "min": p.min, "max": p.max,
                    "choices": list(p.choices) if p.choices else None, "help": p.help} for k, p in sorted(task.params.items())},
            "metrics": {n: {"direction": m.direction, "unit": m.unit} for n, m in task.metrics.items()}}


def unknown_key_message(key: str, allowed: Any) -> str:
    """'unknown key 'lr_rate' (did you mean 'lr'?); allowed: ...' for any key set."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.4)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}; allowed: {', '.join(allowed)}"


def _coerce(type_name: str, value: Any) -> Any:
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"expected true or false, got {value!r}")
    if type_name == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if type_name == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if type_name == "str":
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    raise ValueError(f"unknown parameter type {type_name!r}")


def parse_untyped(text: str) -> Any:
    """A ``--set`` value for a schema-less key, read as YAML so ``--set epochs=3`` gives the
    integer 3, exactly as it would in the spec file."""
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


CUSTOM = Task(
    name="custom",
    entrypoint=(),
    params=None,
    help="Any command given as `entrypoint: [argv...]`; hyperparameters pass through as typed JSON.",
)


@lru_cache(maxsize=None)
def registry() -> dict[str, Task]:
    """All known tasks: ``custom`` plus every ``faceops.tasks`` entry point (loaded lazily, once)."""
    tasks = {CUSTOM.name: CUSTOM}
    for ep in entry_points(group="faceops.tasks"):
        tasks[ep.name] = ep.load()
    return tasks


def get_task(name: str) -> Task:
    """The task called ``name``; ``KeyError`` with the known names otherwise."""
    tasks = registry()
    if name not in tasks:
        raise KeyError(unknown_key_message(name, tasks).replace("unknown key", "unknown task"))
    return tasks[name]
