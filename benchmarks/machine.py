"""What a benchmark's figures depend on besides our code: the machine (CPU model, cores, memory),
its load before and after the run, and the versions of the libraries doing the work; and whether
a figure moved between runs by more than its own spread.

:func:`common.report` puts :func:`describe` into every headline JSON line and checks the ratio
against the previous run of the same benchmark (kept one line per run in
``$FACEOPS_HOME/benchmarks/<name>.jsonl``, :func:`history_dir`), so a figure quoted in BENCHMARKS.md can be read
against the machine and load it came from, and a run that disagrees with the last one says so.
"""
from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# The distributions whose speed the headline figures measure (those installed are recorded).
LIBRARIES = ("numpy", "onnxruntime", "opencv-python-headless", "opencv-python", "insightface", "faiss-cpu",
             "mxnet", "scipy", "boto3", "docker", "Pillow", "simplejpeg")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total memory in GiB (Linux), None where /proc/meminfo is not there."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable threads; above the core count the
    machine is oversubscribed and wall-clock figures are the machine's, not ours)."""
    return [round(v, 2) for v in os.getloadavg()]


def versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (missing ones left out), plus Python's."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


QUIET_LOAD = 1.0  # a machine is quiet when less than one thread was runnable, on average, before the run


def describe(load_before: list[float]) -> dict[str, Any]:
    """The machine record of a run that started at ``load_before`` and ends now; ``quiet`` when
    the 1-minute load was under :data:`QUIET_LOAD` at the start (a run's own work raises the load
    it ends with, so only the load before says what else was running)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "memory_gib": memory_gib(), "system": platform.platform(),
            "load_before": load_before, "load_after": load(), "quiet": load_before[0] < QUIET_LOAD,
            "versions": versions()}


def history_dir() -> Path:
    """Where the runs of each benchmark on this machine are kept, one JSON line per run (taken
    when a script starts: some point ``FACEOPS_HOME`` at a temporary folder while they run)."""
    return Path(os.environ.get("FACEOPS_HOME") or Path.home() / ".faceops").expanduser() / "benchmarks"


def moved(ratio: float, spread: list[float] | None, previous: dict[str, Any] | None) -> str | None:
    """A sentence when ``ratio`` differs from the previous run's by more than the wider of the two
    runs' spreads (max - min of the per-round ratios), None when it does not or nothing can be
    compared. Runs on a different CPU or core count are not compared."""
    if not spread or not previous or not previous.get("spread"):
        return None
    width = max(spread[1] - spread[0], previous["spread"][1] - previous["spread"][0])
    change = ratio - previous["ratio"]
    if abs(change) <= width:
        return None
    return (f"ratio moved {change:+.3f} since the previous run ({previous['ratio']} -> {ratio}, load "
            f"{previous.get('load_before', ['?'])[0]} then, {load()[0]} now), more than the spread {width:.3f}")


def remember(folder: Path, benchmark: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """Append ``record`` to the benchmark's history in ``folder`` (:func:`history_dir`) and return
    the previous record of a run on the same CPU model and core count (None for the first)."""
    path = folder / f"{benchmark}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                past = json.loads(line)
            except json.JSONDecodeError:
                continue
            if past.get("cpu") == record["cpu"] and past.get("cores") == record["cores"]:
                previous = past
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return previous
