"""What the SageMaker and ModelArts tests share: a job spec whose image counts as pushed, and the
cloud bootstrap (images/bin/faceops-cloud-bootstrap) run for real as a cloud container runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "images" / "bin" / "faceops-cloud-bootstrap"


def pushed_job(folder: Path, image: str, digest: str, spec: str, name: str = "job.yaml") -> Path:
    """``spec`` written to ``folder/name`` with ``image`` recorded as pushed with ``digest`` (what
    `faceops image push` leaves behind, and what cloud submits pin the job to)."""
    from images.digests import record

    record(image, digest)
    path = folder / name
    path.write_text(spec)
    return path


def training_code(folder: Path) -> Path:
    """A custom job's code folder ``folder/code`` holding a one-line train.py."""
    code = folder / "code"
    code.mkdir()
    (code / "train.py").write_text("print('training')\n")
    return code


def stage_bundle(dest: Path, root: Path, names: list[str] | None = None) -> None:
    """The code bundle of ``root`` (``names`` in it, else all) as ``dest/code.tar.gz``, where the
    bootstrap finds the faceops_code input channel."""
    from jobs.core.bundle import build_bundle

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "code.tar.gz").write_bytes(build_bundle(root, names, store=False).path.read_bytes())


def stage_job_file(root: Path, hyperparameters: dict) -> None:
    """The typed hyperparameters where a ModelArts container finds its faceops_job input under
    ``root`` (the container's /opt/ml)."""
    import json

    from jobs.core.contract import JOB_CHANNEL

    folder = root / "input" / "data" / JOB_CHANNEL
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparameters.json").write_text(json.dumps(hyperparameters))


def run_bootstrap(argv: list[str], env: dict[str, str], timeout: float = 60,
                  cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The bootstrap with ``argv`` in a clean environment, as in a cloud container: this one
    without any FACEOPS_* variable or PYTHONPATH, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FACEOPS_", "PYTHONPATH"))}
    return subprocess.run([sys.executable, str(BOOTSTRAP), *argv], env={**clean, **env}, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def refused(runner, spec: Path, *args: str) -> str:
    """`faceops job submit SPEC ARGS...` that must be refused with exit code 2 (a clear error, no
    traceback); its output, for the test to check the reason."""
    result = runner("job", "submit", spec, *args)
    assert result.exit_code == 2, result.output
    return result.output


# A cloud job's entry point: six metrics rows, each after a log line of its own.
METRICS_JOB = ("from jobs.core.contract import log_metrics\n"
               "for step in range(1, 7):\n"
               "    print(f'training step {step}', flush=True)\n"
               "    log_metrics(step=step, loss=round(1.0 / step, 4))\n")


def printed_metrics(result: subprocess.CompletedProcess, metrics_file: Path) -> tuple[list[str], bytes]:
    """A bootstrap run of :data:`METRICS_JOB`: its stdout lines (what the service's log gets) and
    the metrics file it left for the service to upload; every row is in both."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("faceops-metrics {") for line in lines) == 6, lines
    return lines, metrics_file.read_bytes()
