"""How long `faceops --help` takes against a bare interpreter start (`python -c pass`).

Ratio = python start-up / faceops --help (higher is better; 1.0 would mean faceops adds nothing).
Goal 0.25: --help may cost at most 4x a bare interpreter, which keeps it well under 300 ms.
Run: .venv/bin/python benchmarks/cli_startup.py [--runs N]
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import parse_args, report


def best_of(argv: list[str], runs: int) -> tuple[float, float]:
    """Median and best wall time of ``argv`` over ``runs`` runs (after one warm-up)."""
    subprocess.run(argv, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    args = parse_args(__doc__, {
        "--runs": {"type": int, "default": 20},
    })
    faceops = str(Path(sys.executable).with_name("faceops"))
    base_median, base_best = best_of([sys.executable, "-c", "pass"], args.runs)
    ours_median, ours_best = best_of([faceops, "--help"], args.runs)
    print(f"python -c pass : median {base_median * 1000:.1f} ms, best {base_best * 1000:.1f} ms")
    print(f"faceops --help : median {ours_median * 1000:.1f} ms, best {ours_best * 1000:.1f} ms")
    report("cli_startup", round(base_median / ours_median, 3), 0.25, faceops_help_ms=round(ours_median * 1000, 1),
           python_pass_ms=round(base_median * 1000, 1), runs=args.runs)


if __name__ == "__main__":
    main()
