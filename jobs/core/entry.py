"""The one way a task's entry point starts: read the container contract, check the
hyperparameters against the task's schema, run, and exit with one policy for every task.

Exit codes: 0 done, 1 the job failed (e.g. a NaN loss), 2 bad input or settings, 143 stopped by
SIGTERM (the training loops raise ``SystemExit(143)`` after saving a checkpoint). The reason of a
failure goes where the contract says (``output/failure``), so every backend can show it.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable

from jobs.core.contract import JobEnv, from_env, log_metrics, write_failure
from jobs.core.errors import FaceopsError, SpecError
from jobs.core.tasks import Task, reference

STOPPED_EXIT = 143


def overrides(argv: list[str], task: Task) -> dict[str, str]:
    """``["lr=0.05", "network=mbf"]`` -> ``{"lr": "0.05", "network": "mbf"}`` (typed later by the schema)."""
    pairs = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"argument {item!r}: expected KEY=VALUE (a hyperparameter of the {task.name} task)")
        pairs[key] = value
    return pairs


def checked(task: Task, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked against ``task``'s schema and typed, defaults filled in; the first bad
    key raises :class:`SpecError` naming it and what was expected."""
    hp = task.defaults()
    for key, value in values.items():
        try:
            hp[key] = task.check(key, value)
        except (KeyError, ValueError) as exc:
            raise SpecError(f"hyperparameters.{key}: {exc.args[0]}") from None
    return hp


def usage(task: Task, prog: str) -> str:
    """What ``--help`` prints: how it is run, then the task's reference (inputs, outputs, each
    hyperparameter with its type, default, range and help, metrics), as ``faceops task show``."""
    return "\n".join([f"usage: {prog} [KEY=VALUE ...]", "",
                      "Runs under the container contract (FACEOPS_* or SM_* variables, /opt/ml by default);",
                      "KEY=VALUE arguments override the job's hyperparameters.", "", *reference(task)])


def run(task: Task, main: Callable[[dict[str, Any], JobEnv], dict[str, Any] | None],
        argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``main(hyperparameters, env)`` as the entry point of ``task`` and return the exit code.

    ``main`` returns the final metrics (logged to the metrics file and printed as JSON) or None
    when it logs them itself."""
    argv = sys.argv[1:] if argv is None else argv
    prog = prog or " ".join(task.entrypoint) or task.name
    if argv[:1] in (["--help"], ["-h"]):
        print(usage(task, prog))
        return 0
    env = from_env()
    try:
        hp = checked(task, {**env.hyperparameters, **overrides(argv, task)})
        metrics = main(hp, env)
    except FaceopsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        write_failure(str(exc), env.failure_file)
        return exc.exit_code
    if metrics:
        print(json.dumps(metrics, indent=2, default=str))
        log_metrics(env.metrics_file, **scalars(metrics))
    return 0


def scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a summary, flattened (``calibration.tar`` -> ``calibration_tar``)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out
