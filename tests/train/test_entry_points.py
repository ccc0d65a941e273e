"""The training entry points as a container runs them (a real ``python -m`` process): ``--help``
lists the task's parameters and exits 0, a bad hyperparameter exits 2 with the reason in the
contract's failure file, as for every task (jobs.core.entry)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def entry(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("module, params", [("train.recognition", ("network", "embedding_size", "margin_m2")),
                                            ("train.detection", ("image_size", "cls_loss", "nms_threshold"))])
def test_help_lists_the_parameters(module, params):
    done = entry(module, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module} [KEY=VALUE ...]")
    assert all(f"  {name} (" in done.stdout for name in params), done.stdout


@pytest.mark.parametrize("module", ["train.recognition", "train.detection"])
def test_bad_hyperparameter_exits_2_with_the_reason(module, tmp_path):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"lr": "fast"}))
    failure = tmp_path / "failure"
    done = entry(module, env={"FACEOPS_HYPERPARAMETERS": str(hp), "FACEOPS_FAILURE_FILE": str(failure)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert failure.read_text().startswith("hyperparameters.lr: ") and "'fast'" in failure.read_text()
    done = entry(module, "workers=-1", env={"FACEOPS_FAILURE_FILE": str(failure)})
    assert done.returncode == 2 and "hyperparameters.workers" in failure.read_text(), done.stderr
