"""Run one of our modules in a fresh Python process with oneDNN off.

MXNet 1.9.1 segfaults on MobileFaceNet's grouped-conv weights once oneDNN has reordered them for
inference, and AMP rewrites a training process's operators (ONNX cannot express ``amp_cast``), so
everything that runs a trained backbone in inference (export, verification, import checks) runs
in a process of its own, started here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from jobs.core.bundle import faceops_root
from jobs.core.errors import FaceopsError

ROOT = str(faceops_root())


def env() -> dict[str, str]:
    """This process's environment, oneDNN off, our code first on the path."""
    return {**os.environ, "MXNET_MKLDNN_ENABLED": "0", "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


def run(module: str, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """``python -m module args`` without oneDNN. With ``capture`` the child's stdout is returned
    while its stderr (its progress) reaches ours as it is written, and a failing child raises
    :class:`FaceopsError` with its exit code and last stderr line (not repeated on stderr);
    otherwise its output goes to ours and a failure raises ``CalledProcessError``."""
    command = [sys.executable, "-m", module, *args]
    if not capture:
        return subprocess.run(command, env=env(), check=True)
    last = ""
    with tempfile.TemporaryFile("w+") as stdout:
        with subprocess.Popen(command, env=env(), stdout=stdout, stderr=subprocess.PIPE, text=True) as child:
            for line in child.stderr:
                if not line.startswith("error: "):  # the error becomes the exception's message instead
                    sys.stderr.write(line)
                    sys.stderr.flush()
                last = line if line.strip() else last
        stdout.seek(0)
        done = subprocess.CompletedProcess(command, child.returncode, stdout.read(), last)
    if done.returncode != 0:
        message = last.strip().removeprefix("error: ") or f"{module} exited with {done.returncode}"
        error = FaceopsError(message)
        error.exit_code = done.returncode if done.returncode in (1, 2) else 1
        raise error
    return done
