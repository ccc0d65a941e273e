"""Spec validation: every bad input names file, line and key path; values get the schema's type."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from jobs.backends import entry_argv
from jobs.core.errors import SpecError
from jobs.spec import load_spec, parse_duration, validate
from jobs.core.tasks import Param, Task

GOOD = """\
name: line-fit
task: custom
entrypoint: [python, fit.py]
inputs:
  train: data/
outputs:
  model: s3://bucket/models/line-fit/
hyperparameters:
  lr: 0.05
  epochs: 3
  note: "7"
resources:
  max_runtime: 1h30m
  spot: true
"""


def write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_spec_resolves_paths_and_keeps_types(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.name == "line-fit" and spec.backend == "local" and spec.runtime == "process"
    assert spec.inputs["train"] == str((tmp_path / "data").resolve())
    assert spec.outputs["model"] == "s3://bucket/models/line-fit/"
    assert spec.code == str(tmp_path.resolve())
    assert spec.hyperparameters == {"lr": 0.05, "epochs": 3, "note": "7"}
    assert spec.resources.max_runtime == 5400 and spec.resources.spot is True
    assert entry_argv(spec.to_dict()) == ["python", "fit.py"]


def test_set_overrides_are_typed(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), ["lr=0.1", "epochs=5", "resources.retries=2", "inputs.train=s3://b/p/", "image=reg/x:1"])
    assert spec.hyperparameters["lr"] == 0.1 and spec.hyperparameters["epochs"] == 5
    assert spec.resources.retries == 2 and spec.inputs["train"] == "s3://b/p/" and spec.image == "reg/x:1"


@pytest.mark.parametrize("text, overrides, expected", [
    (GOOD.replace("task: custom", "task: custm"), [], "spec.yaml:2 task: unknown task 'custm' (did you mean 'custom'?)"),
    (GOOD + "resourses: {}\n", [], "spec.yaml:15 resourses: unknown key 'resourses' (did you mean 'resources'?)"),
    (GOOD.replace("name: line-fit", "name: Line_Fit"), [], "spec.yaml:1 name: expected lowercase"),
    (GOOD.replace("spot: true", "spot: maybe"), [], "spec.yaml:14 resources.spot: expected true or false, got 'maybe'"),
    (GOOD.replace("max_runtime: 1h30m", "max_runtime: soon"), [], "spec.yaml:13 resources.max_runtime: expected a duration"),
    (GOOD.replace("entrypoint: [python, fit.py]", "entrypoint: []"), [], "spec.yaml:3 entrypoint: task custom needs entrypoint"),
    (GOOD.replace("train: data/", "train: ftp://host/x"), [], "spec.yaml:5 inputs.train: unsupported scheme"),
    (GOOD, ["resources.spot=perhaps"], "--set resources.spot=perhaps: resources.spot: expected true or false"),
    (GOOD, ["lr"], "--set lr: expected key=value"),
    (GOOD, ["resourcez.spot=true"], "unknown key 'resourcez' (did you mean 'resources'?)"),
    (GOOD.replace("backend: local\n", "") + "backend: sagemakr\n", [], "spec.yaml:15 backend: unknown backend 'sagemakr' (did you mean 'sagemaker'?)"),
    ("name: x\ntask: custom\n  bad: indent: here\n", [], "spec.yaml:3: YAML syntax error"),
    ("- just\n- a list\n", [], "expected a mapping"),
    (GOOD.replace("runtime", "") + "runtime: docker\n", [], "spec.yaml:15 runtime: runtime docker needs an image"),
])
def test_bad_specs_name_file_line_and_key(tmp_path, text, overrides, expected):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, text), overrides)
    assert expected in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_typed_task_schema(monkeypatch):
    """A registered schema converts --set text to its type, checks ranges and names the nearest key."""
    task = Task("toy", ("python", "-m", "toy"), {
        "lr": Param("float", 0.1, min=0.0), "epochs": Param("int", 2, min=1),
        "network": Param("str", "r50", choices=("r18", "r50")), "amp": Param("bool", False)})
    monkeypatch.setattr("jobs.core.tasks.registry", lambda: {"toy": task})
    raw = {"name": "toy-job", "task": "toy", "hyperparameters": {"lr": 0.05}}
    spec = validate(raw, overrides=["epochs=4", "amp=yes"])
    assert spec.hyperparameters == {"lr": 0.05, "epochs": 4, "network": "r50", "amp": True}
    for override, message in [("lr=fast", "expected a number, got 'fast'"), ("epochs=0", "expected a value >= 1"),
                              ("network=r34", "expected one of r18, r50"), ("lr_rate=1", "did you mean 'lr'?"),
                              ("epochs=2.5", "expected an integer")]:
        with pytest.raises(SpecError, match=message):
            validate(raw, overrides=[override])
    with pytest.raises(SpecError, match="task toy runs its own entry point"):
        validate({**raw, "entrypoint": ["sh"]})


@pytest.mark.parametrize("value, seconds", [(3600, 3600), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


def test_set_paths_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write(spec_dir, GOOD), ["inputs.train=mydata", "outputs.model=s3://b/m/"])
    assert spec.inputs["train"] == str(tmp_path / "mydata") and spec.outputs["model"] == "s3://b/m/"


@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_spec_is_valid(example):
    """The shipped examples validate against their tasks' schemas (they are what users copy)."""
    spec = load_spec(example)
    assert spec.task in ("custom", "detection", "recognition", "gallery", "identify")
