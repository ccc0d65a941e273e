"""`faceops --help` stays fast: no heavy library is imported to show help for any group."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("mxnet", "boto3", "botocore", "docker", "onnxruntime", "faiss", "cv2", "insightface", "numpy")

PROBE = """
import sys
from click.testing import CliRunner
from cli import main
for args in (["--help"], *([name, "--help"] for name in main.commands)):
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
