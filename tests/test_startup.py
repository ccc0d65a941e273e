"""`faceops --help` stays fast: no heavy library is imported to show help for any group."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("mxnet", "boto3", "botocore", "docker", "onnxruntime", "faiss", "cv2", "insightface", "numpy")

PROBE = """
import sys
from click.testing import CliRunner
from cli import main
for args in (["--help"], *([name, "--help"] for name in main.list_commands(None))):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(",".join(heavy))
"""


def test_help_imports_no_heavy_library():
    result = subprocess.run([sys.executable, "-c", PROBE.replace("{heavy!r}", repr(set(HEAVY)))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported at --help: {result.stdout.strip()}"


LAZY = """
import sys
import inference.commands, inference.job, jobs.demo, train.commands
from jobs.core.lazy import cv2, numpy as np
before = sorted(m for m in sys.modules if m.split(".")[0] in ("numpy", "cv2"))
assert np.zeros(3).sum() == 0 and cv2.IMREAD_COLOR == 1
print(before, "numpy" in sys.modules and "cv2" in sys.modules, repr(np))
"""


def test_numpy_and_opencv_load_on_first_use():
    # The command and job modules import the face toolkit, galleries and packers at their top;
    # numpy and OpenCV load only when a function first reads them, and then for real.
    result = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True <lazy module 'numpy' (loaded)>"


SDKS = """
import sys
import images.login, images.push, jobs.backends.sagemaker, jobs.core.storage.s3
print(sorted(m for m in ("docker", "boto3", "botocore") if m in sys.modules))
from jobs.core.lazy import botocore, docker
config, error = botocore.config.Config, botocore.exceptions.ClientError  # before anything imports them
from botocore.config import Config
from botocore.exceptions import ClientError
print(config is Config, error is ClientError, docker.credentials.StoreError.__module__)
"""


def test_cloud_and_docker_sdks_load_on_first_use_submodules_included():
    # The S3, SageMaker, registry and image modules name the SDKs at their top; the stand-ins load
    # them on the first read, and reach submodules a package does not import itself.
    result = subprocess.run([sys.executable, "-c", SDKS], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "True True docker.credentials.errors"]
