"""Entry point of the ``detection`` task: ``python -m train.detection`` under the container contract.

Reads channel ``train`` (the seed's ``detection_train_data/`` with ``train/`` and optional ``val/``,
or one split), optional channel ``val``, typed hyperparameters; writes the model to output
``model`` and metrics to the job record. A user error becomes the job's failure reason (exit 1);
SIGTERM saves a checkpoint and exits 143.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from jobs.core.contract import JobEnv, from_env, write_failure
from jobs.core.errors import FaceopsError, SpecError


def hyperparameters(env: JobEnv) -> dict[str, Any]:
    """The job's hyperparameters checked against the task schema, defaults filled in."""
    from train.detection_config import DETECTION

    hp = DETECTION.defaults()
    for key, value in env.hyperparameters.items():
        try:
            hp[key] = DETECTION.check(key, value)
        except (KeyError, ValueError) as exc:
            raise SpecError(f"hyperparameters.{key}: {exc.args[0]}") from None
    return hp


def run(env: JobEnv) -> dict[str, Any]:
    """Open the splits, train, evaluate, export; returns the final metrics."""
    from train.detection_data import find_splits, open_split
    from train.detection_train import fit

    hp = hyperparameters(env)
    splits = find_splits(env.channel("train"))
    val_dir = env.channels.get("val") or splits["val"]
    train = open_split(splits["train"], "train")
    val = open_split(val_dir, "val") if val_dir is not None else None
    return fit(train, val, env.output("model"), env.checkpoint_dir, hp, env.metrics_file, progress=sys.stderr.isatty())


def main() -> int:
    env = from_env()
    try:
        metrics = run(env)
    except FaceopsError as exc:
        write_failure(str(exc), env.failure_file)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
