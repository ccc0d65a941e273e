"""Entry point of the ``detection`` task: ``python -m train.detection [KEY=VALUE ...]`` under the
container contract, run by :func:`jobs.core.entry.run` (schema check, ``--help``, exit codes).

Reads channel ``train`` (the seed's ``detection_train_data/`` with ``train/`` and optional ``val/``,
or one split), optional channel ``val``; writes the model to output ``model`` and metrics to the
job record. SIGTERM saves a checkpoint and exits 143.
"""
from __future__ import annotations

import sys
from typing import Any

from jobs.core import entry
from jobs.core.contract import JobEnv
from train.detection_config import DETECTION


def train(hp: dict[str, Any], env: JobEnv) -> dict[str, Any]:
    """Open the splits, train, evaluate, export; returns the final metrics."""
    from train.detection_data import find_splits, open_split
    from train.detection_train import fit

    splits = find_splits(env.channel("train"))
    val_dir = env.channels.get("val") or splits["val"]
    train_split = open_split(splits["train"], "train")
    val = open_split(val_dir, "val") if val_dir is not None else None
    return fit(train_split, val, env.output("model"), env.checkpoint_dir, hp, env.metrics_file,
               progress=sys.stderr.isatty())


def main(argv: list[str] | None = None) -> int:
    return entry.run(DETECTION, train, argv)


if __name__ == "__main__":
    sys.exit(main())
