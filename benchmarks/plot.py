"""How long `job plot` takes for 20 versions x 10,000 steps, against the same figure drawn by a
plain matplotlib loop over the metrics files.

Both read 20 metrics.jsonl files (10,000 rows: step, epoch, time, loss, acc, lr) and write a PNG
with a loss and an acc panel, one line per version and a legend. The baseline is what a user
writes by hand: json.loads per line, plt.subplots, ax.plot per version, savefig. Ours is
jobs.plot.plot_versions on version records (legend labels from the records' changed settings,
best points marked). Rounds are interleaved so machine load hits both alike.

Ratio = baseline seconds / ours (higher is better); goal >= 1.0, and ours under 2 s absolute.
Run: .venv/bin/python benchmarks/plot.py [--rounds N] [--versions 20] [--steps 10000]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import report


def make_versions(home: Path, versions: int, steps: int) -> list[dict]:
    """Version records of a job 'bench' (lr varied) with their metrics files under ``home``."""
    from jobs.store import workdir

    rng = random.Random(0)
    records = []
    for v in range(1, versions + 1):
        lr = round(0.01 * v, 3)
        record = {"name": "bench", "version": v, "parent": v - 1 or None, "task": "custom", "backend": "local",
                  "status": "done", "spec": {"task": "custom", "backend": "local", "runtime": "process",
                                             "entrypoint": ["python", "t.py"], "hyperparameters": {"lr": lr},
                                             "resources": {}, "outputs": {},
                                             "metrics": {"loss": {"direction": "min", "unit": ""},
                                                         "acc": {"direction": "max", "unit": ""}}},
                  "image": {}, "code": {}, "inputs": {}, "metrics": {}}
        path = workdir(record) / "output" / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        start = 1.7e9
        with open(path, "w") as fh:
            for s in range(1, steps + 1):
                loss = 2 * math.exp(-lr * s / 400) + rng.random() * 0.1
                fh.write(json.dumps({"time": round(start + s * 0.2, 3), "step": s, "epoch": 1 + s // 1000,
                                     "loss": round(loss, 5), "acc": round(1 - loss / 2.2, 5), "lr": lr}) + "\n")
        records.append(record)
    return records


def baseline(files: list[Path], out: Path) -> None:
    """The figure a user draws by hand from the metrics files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.8, 4.6))
    for i, path in enumerate(files):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for ax, metric in zip(axes, ("loss", "acc")):
            points = [(r["step"], r[metric]) for r in rows if metric in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=f"bench:{i + 1}")
    for ax, metric in zip(axes, ("loss", "acc")):
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
    fig.legend(loc="lower center", ncols=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def ours(records: list[dict], out: Path) -> None:
    from jobs.plot import plot_versions

    plot_versions(records, out, ["loss", "acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FACEOPS_HOME"] = str(Path(tmp) / "home")
        from jobs.store import workdir

        records = make_versions(Path(tmp), args.versions, args.steps)
        files = [workdir(r) / "output" / "metrics.jsonl" for r in records]
        ours(records, Path(tmp) / "warm.png")  # imports and font cache, for both
        baseline(files, Path(tmp) / "warm-base.png")
        times: dict[str, list[float]] = {"ours": [], "baseline": []}
        for _ in range(args.rounds):
            for name, call in (("baseline", lambda: baseline(files, Path(tmp) / "base.png")),
                               ("ours", lambda: ours(records, Path(tmp) / "ours.png"))):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    ours_s, base_s = statistics.median(times["ours"]), statistics.median(times["baseline"])
    for name in ("baseline", "ours"):
        values = times[name]
        print(f"{name:8s}: median {statistics.median(values):.3f} s, min {min(values):.3f} s, max {max(values):.3f} s")
    per_round = [b / o for b, o in zip(times["baseline"], times["ours"])]
    report("plot", round(base_s / ours_s, 3), 1.0, spread=[min(per_round), max(per_round)],
           ours_s=round(ours_s, 3), baseline_s=round(base_s, 3),
           ours_spread_s=[round(min(times["ours"]), 3), round(max(times["ours"]), 3)],
           baseline_spread_s=[round(min(times["baseline"]), 3), round(max(times["baseline"]), 3)],
           under_2s=ours_s < 2.0, versions=args.versions, steps=args.steps, rounds=args.rounds)


if __name__ == "__main__":
    main()
