"""What every benchmark script shares: this checkout on ``sys.path`` (the scripts import faceops
and the test harness from it, wherever they are run from), a command line built from the
script's docstring, and the JSON line each run ends with, which BENCHMARKS.md quotes: the
figures, the machine they came from and its load before and after (:mod:`machine`), and a note
when the ratio moved since the last run by more than the runs' spread.

The scripts import it as ``common`` (their own folder is first on ``sys.path``), before any
faceops module."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import machine

# Taken when a script starts (its first import is this module), before it changes FACEOPS_HOME.
LOAD_BEFORE = machine.load()
HISTORY = machine.history_dir()

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(doc: str, options: dict[str, dict[str, Any]]) -> argparse.Namespace:
    """The command line: the docstring's first line as description, one ``--flag`` per entry of
    ``options`` with its ``add_argument`` settings."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag, settings in options.items():
        parser.add_argument(flag, **settings)
    return parser.parse_args()


def report(benchmark: str, ratio: float, goal: float, spread: list[float] | None = None, **figures: Any) -> None:
    """Print the run's last line: the benchmark's name, its ratio (baseline cost / ours, higher is
    better), the goal for that ratio, ``spread`` (the lowest and highest per-round ratio, when the
    script has rounds), then the figures behind it and the machine record. A ratio that moved
    since the previous run on this machine by more than the spread is said on a line of its own
    and as ``moved`` in the JSON."""
    record = machine.describe(LOAD_BEFORE)
    spread = [round(v, 3) for v in spread] if spread else None
    previous = machine.remember(HISTORY, benchmark, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "ratio": ratio, "spread": spread,
                                            "cpu": record["cpu"], "cores": record["cores"],
                                            "load_before": record["load_before"], "load_after": record["load_after"]})
    note = machine.moved(ratio, spread, previous)
    if note:
        print(f"{benchmark}: {note}")
        figures["moved"] = note
    print(json.dumps({"benchmark": benchmark, "ratio": ratio, "goal": goal, "spread": spread, **figures,
                      "machine": record}))
