"""What every benchmark script shares: this checkout on ``sys.path`` (the scripts import faceops
and the test harness from it, wherever they are run from), a command line built from the
script's docstring, and the JSON line each run ends with, which BENCHMARKS.md quotes.

The scripts import it as ``common`` (their own folder is first on ``sys.path``), before any
faceops module."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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


def report(benchmark: str, ratio: float, goal: float, **figures: Any) -> None:
    """Print the run's last line: the benchmark's name, its ratio (baseline cost / ours, higher is
    better), the goal for that ratio, then the figures behind it."""
    print(json.dumps({"benchmark": benchmark, "ratio": ratio, "goal": goal, **figures}))
