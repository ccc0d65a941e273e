"""Entry point of the ``gallery`` and ``identify`` jobs: ``python -m inference.job gallery|identify``.

Reads the container contract (jobs.core.contract.from_env), runs the library function on the staged
channel folders, writes into the output folders (the backend uploads them) and logs the summary's
numbers as metrics, so ``faceops job diff`` compares versions by rank-1, TAR@FAR and speed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from jobs.core.contract import JobEnv, from_env, log_metrics, write_failure
from jobs.core.errors import DataError, FaceopsError

DETECTION_KEYS = ("det_size", "det_thresh", "batch_size", "workers")


def _pick(hp: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: hp[k] for k in keys if k in hp}


def _truth_file(env: JobEnv) -> Path | None:
    """The ``truth`` channel: a CSV file, or a folder holding exactly one."""
    if "truth" not in env.channels:
        return None
    path = env.channels["truth"]
    if path.is_file():
        return path
    found = sorted(path.rglob("*.csv"))
    if len(found) != 1:
        raise DataError(f"channel truth: expected one path,person CSV, found {len(found)}")
    return found[0]


def _scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a summary, flattened (``calibration.tar`` -> ``calibration_tar``)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def run_gallery(env: JobEnv) -> dict[str, Any]:
    from inference.gallery import build_gallery

    hp = env.hyperparameters
    return build_gallery(env.channel("images"), env.output("database"), env.channels.get("models"),
                         **_pick(hp, DETECTION_KEYS + ("strict", "far", "index")), progress=False)


def run_identify(env: JobEnv) -> dict[str, Any]:
    from inference.identify import identify

    hp = env.hyperparameters
    out = env.output("report")
    summary = identify(env.channel("images"), env.channel("gallery"), out, env.channels.get("models"),
                       truth=_truth_file(env), annotate_dir=out / "annotated" if hp.get("annotate") else None,
                       **_pick(hp, DETECTION_KEYS + ("threshold", "top_k", "truth_from_folders")), progress=False)
    truth_metrics = summary.pop("metrics", {})
    truth_metrics.pop("confusions", None)  # kept in metrics.json; job metrics are numbers
    return {**summary, **truth_metrics}


RUNNERS: dict[str, Callable[[JobEnv], dict[str, Any]]] = {"gallery": run_gallery, "identify": run_identify}


def main(argv: list[str] | None = None) -> int:
    """Run the task named in ``argv``; a user error becomes the job's failure reason (exit 1)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in RUNNERS:
        print(f"usage: python -m inference.job {{{','.join(RUNNERS)}}}", file=sys.stderr)
        return 2
    env = from_env()
    try:
        summary = RUNNERS[argv[0]](env)
    except FaceopsError as exc:
        write_failure(str(exc), env.failure_file)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    log_metrics(env.metrics_file, **_scalars(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
