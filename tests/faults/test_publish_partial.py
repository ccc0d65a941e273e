"""Item 10 of the second fault run: ``job publish`` of a version whose job failed publishes
nothing unless ``--force``, and then its manifest says what was published."""
from __future__ import annotations

import json

from tests.faults.helpers import cli, custom_job

HALF_DONE = """\
import os, pathlib
(pathlib.Path(os.environ["FACEOPS_MODEL_DIR"]) / "model.bin").write_bytes(b"half")
raise SystemExit("died half-way")
"""


def test_publishing_a_failed_version_needs_force(tmp_path):
    out = tmp_path / "out"
    spec = custom_job(tmp_path / "proj", script=HALF_DONE, extra=f"outputs:\n  model: {out}\n")
    assert cli("job", "submit", str(spec)).returncode == 1
    refused = cli("job", "publish", "fault-job:1")
    assert refused.returncode == 2 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert not out.exists()
    forced = cli("job", "publish", "fault-job:1", "--force")
    assert forced.returncode == 0, forced.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["version"] == "fault-job:1" and manifest["status"] == "failed" and manifest["complete"] is False
