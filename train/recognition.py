"""Entry point of the ``recognition`` task: ``python -m train.recognition [KEY=VALUE ...]``.

Thin on purpose: :func:`jobs.core.entry.run` reads the container contract, checks the
hyperparameters against the task's schema (``KEY=VALUE`` arguments override them, for runs
outside a job such as ``scripts/run_face_recognition_train.sh``), answers ``--help`` and applies
the one exit-code policy; :func:`train.recognition_loop.train` does the work. Two cases stay
here: started as a DMLC ``server`` or ``scheduler`` it only serves MXNet's ``dist_sync`` kvstore
for the workers, and ``export PARAMS NETWORK EMBEDDING_SIZE MODEL_DIR [VAL]`` is the fresh
process in which training exports its model.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from jobs.core import entry
from jobs.core.contract import JobEnv
from train.config import RECOGNITION


def _loop() -> ModuleType:
    """:mod:`train.recognition_loop`, imported on demand: it is MXNet-built, and this entry point
    answers ``--help`` and runs the kvstore server and scheduler roles without it."""
    from train import recognition_loop  # MXNet-built: see the docstring

    return recognition_loop


def train(hp: dict[str, Any], env: JobEnv) -> None:
    """Train with the checked hyperparameters; the loop logs its own metrics."""
    _loop().train(hp, env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("DMLC_ROLE") in ("server", "scheduler"):
        # Importing MXNet in a server or scheduler process runs it until the workers finish.
        import mxnet  # noqa: F401
        return 0
    if argv[:1] == ["export"]:
        params, network, embedding_size, model_dir, *val = argv[1:]
        _loop().export_model(Path(params), network, int(embedding_size), Path(model_dir), Path(val[0]) if val else None)
        return 0
    return entry.run(RECOGNITION, train, argv)


if __name__ == "__main__":
    sys.exit(main())
