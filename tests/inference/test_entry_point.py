"""``python -m inference.job`` as a container runs it: ``--help`` of each task lists its parameters,
a bad hyperparameter exits 2 with the reason in the contract's failure file (jobs.core.entry)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference.tasks import GALLERY, IDENTIFY

REPO = Path(__file__).resolve().parents[2]


def entry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference.job", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("task", [GALLERY, IDENTIFY], ids=lambda task: task.name)
def test_help_lists_every_parameter_of_the_task(task):
    done = entry(task.name, "--help")
    section = done.stdout.split("\nhyperparameters:\n")[1].split("\n\n")[0]
    listed = [line.split()[0] for line in section.splitlines() if line[2] != " "]
    assert (done.returncode, listed) == (0, sorted(task.params)), done.stdout + done.stderr
    assert "inputs:\n  images: " in done.stdout and "  recognizer (optional): " in done.stdout
    assert done.stdout.startswith(f"usage: python -m inference.job {task.name} [KEY=VALUE ...]")


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
