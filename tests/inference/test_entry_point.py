"""``python -m inference.job`` as a container runs it: ``--help`` of each task lists its parameters,
a bad hyperparameter exits 2 with the reason in the contract's failure file (jobs.core.entry)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def entry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference.job", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("task, params", [("gallery", ("det_size", "far", "index")),
                                          ("identify", ("threshold", "top_k", "annotate"))])
def test_help_lists_the_parameters(task, params):
    done = entry(task, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m inference.job {task} [KEY=VALUE ...]")
    assert all(f"  {name} (" in done.stdout for name in params), done.stdout


def test_without_a_task_it_says_how_to_call_it():
    assert entry("--help").returncode == 0 and "gallery,identify" in entry("--help").stdout
    done = entry("search")
    assert done.returncode == 2 and "usage: python -m inference.job {gallery,identify}" in done.stderr


def test_bad_hyperparameter_exits_2_with_the_reason(tmp_path):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"index": "annoy"}))
    failure = tmp_path / "failure"
    done = entry("gallery", env={"FACEOPS_HYPERPARAMETERS": str(hp), "FACEOPS_FAILURE_FILE": str(failure)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert failure.read_text().startswith("hyperparameters.index: ") and "flat, hnsw, ivf" in failure.read_text()
