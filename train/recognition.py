"""Entry point of the ``recognition`` task: ``python -m train.recognition [KEY=VALUE ...]``.

Thin on purpose: it reads the container contract (hyperparameters, channels, model and checkpoint
folders), checks the hyperparameters against the task's schema and hands over to
:func:`train.recognition_loop.train`. ``KEY=VALUE`` arguments override hyperparameters, for runs
outside a job (``scripts/run_face_recognition_train.sh``). Started as a DMLC ``server`` or
``scheduler`` it only serves MXNet's ``dist_sync`` kvstore for the workers.

Exit codes: 0 done, 1 failed training (NaN loss), 2 bad input or settings, 143 stopped by SIGTERM
after saving a checkpoint. The reason of a failure goes to the contract's failure file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from jobs.core import contract
from jobs.core.errors import FaceopsError, SpecError
from train.config import resolve


def overrides(argv: list[str]) -> dict[str, str]:
    """``["lr=0.05", "network=mbf"]`` -> ``{"lr": "0.05", "network": "mbf"}`` (typed later by the schema)."""
    pairs = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"argument {item!r}: expected KEY=VALUE (a hyperparameter of the recognition task)")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("DMLC_ROLE") in ("server", "scheduler"):
        # Importing MXNet in a server or scheduler process runs it until the workers finish.
        import mxnet  # noqa: F401
        return 0
    if argv[:1] == ["export"]:
        from train.recognition_loop import export_model

        params, network, embedding_size, model_dir, *val = argv[1:]
        export_model(Path(params), network, int(embedding_size), Path(model_dir), Path(val[0]) if val else None)
        return 0
    env = contract.from_env()
    try:
        config = resolve({**env.hyperparameters, **overrides(argv)})
        from train.recognition_loop import train

        train(config, env)
    except FaceopsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        contract.write_failure(str(exc), env.failure_file)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
