"""Entry point of the ``detection`` task: ``python -m train.detection [KEY=VALUE ...]`` under the
container contract, run by :func:`jobs.core.entry.run` (schema check, ``--help``, exit codes).

Reads channel ``train`` (the seed's ``detection_train_data/`` with ``train/`` and optional ``val/``,
or one split), optional channel ``val`` (a split, or a WIDER FACE val folder: ``images/<event>/`` with
the four ``.mat`` files beside it or in ``ground_truth/``, measured by :mod:`train.widerface`); writes the model to output ``model`` and metrics to the
job record. SIGTERM saves a checkpoint and exits 143.
"""
from __future__ import annotations

import sys
from typing import Any

from jobs.core import entry
from jobs.core.contract import JobEnv
from train import widerface
from train.detection_config import DETECTION
from train.detection_data import find_splits, open_split
from train.detection_train import fit


def train(hp: dict[str, Any], env: JobEnv) -> dict[str, Any]:
    """Open the splits, train, evaluate, export; returns the final metrics."""
    splits = find_splits(env.channel("train"))
    val_dir = env.channels.get("val") or splits["val"]
    train_split = open_split(splits["train"], "train")
    wider_gt = widerface.ground_truth_dir(val_dir) if val_dir is not None else None
    val = open_split(val_dir, "val") if val_dir is not None and wider_gt is None else None
    final = fit(train_split, val, env.output("model"), env.checkpoint_dir, hp, env.metrics_file,
                progress=sys.stderr.isatty())
    if wider_gt is not None:
        # A WIDER FACE val folder: the official protocol on the exported model, as `faceops eval detection` runs it.
        aps = widerface.evaluate(env.output("model") / "model.onnx", val_dir, wider_gt, hp["eval_size"],
                                 hp["score_threshold"])
        final.update({f"val_wider_{name}_ap": round(ap, 5) for name, ap in aps.items()})
        print("WIDER FACE val: " + ", ".join(f"{name} AP {100 * ap:.2f}%" for name, ap in aps.items()), flush=True)
    return final


def main(argv: list[str] | None = None) -> int:
    return entry.run(DETECTION, train, argv)


if __name__ == "__main__":
    sys.exit(main())
