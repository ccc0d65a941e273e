"""What the fault cases share: the CLI run as its own process, a minimal custom job, a
supervisor run in the test's own process with one step of its runtime changed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``faceops ARGS`` as its own process (the way a user or a script does), with the
    current environment (``FACEOPS_HOME`` and the S3 settings the fixtures set)."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               **(env or {})}
    return subprocess.run([sys.executable, "-c", "import cli; cli.main()", *args], capture_output=True, text=True,
                          timeout=timeout, env=environ, cwd=cwd)


def custom_job(folder: Path, name: str = "fault-job", script: str = "print('ok')\n",
               hyperparameters: dict | None = None, extra: str = "") -> Path:
    """A minimal custom job (spec + script) in ``folder``; returns the spec path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(script)
    spec = folder / "job.yaml"
    hp = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in (hyperparameters or {}).items())
    spec.write_text(f"name: {name}\ntask: custom\nentrypoint: [python, main.py]\n"
                    + (f"hyperparameters:\n{hp}" if hp else "") + extra)
    return spec


@contextmanager
def tmpfs(mount: Path, megabytes: int) -> Iterator[Path]:
    """``mount`` as a tmpfs of ``megabytes`` (root only: the test skips with the reason
    elsewhere), unmounted afterwards."""
    import pytest

    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def submit_here(spec: Path, monkeypatch: Any) -> tuple[dict, Path]:
    """Submit ``spec`` without starting its supervisor; returns the version's record and the
    bundle its supervisor gets, for :func:`supervise_here`."""
    from jobs.backends import local
    from jobs.spec import load_spec
    from jobs.submit import submit

    launches = []
    monkeypatch.setattr(local.LocalBackend, "start", lambda self, launch: launches.append(launch) or {})
    record = submit(load_spec(spec))
    return record, launches[0].bundle


class PassThrough:
    """The real job runtime, every call passed on; a test subclasses it to change one step (fail
    it, or take the store away after it) exactly there, instead of racing for the moment."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runtime, name)


def supervise_here(record: dict, bundle: Path, monkeypatch: Any, runtime: type[PassThrough] = PassThrough) -> None:
    """Run the version's supervisor to its end in this process, over the real runtime wrapped in
    ``runtime``; the SIGTERM handler it installs is put back afterwards."""
    import signal

    from jobs.backends import supervisor

    real = supervisor.get_runtime
    monkeypatch.setattr(supervisor, "get_runtime", lambda kind: runtime(real(kind)))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        supervisor.Supervisor(record["name"], record["version"], bundle).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
