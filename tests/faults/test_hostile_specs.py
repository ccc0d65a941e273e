"""Items 3 and 8 of the fault run: specs built to hurt (alias bombs, huge files) and specs that
are simply wrong (not UTF-8, many mistakes at once, nested --set keys)."""
from __future__ import annotations

import json
import time

from jobs.store import Store
from tests.faults.helpers import cli

BOMB = """\
name: bomb
task: custom
entrypoint: [python, main.py]
hyperparameters:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(BOMB)
    started = time.monotonic()
    result = cli("job", "submit", str(spec), "--dry-run", timeout=30)
    assert result.returncode == 2 and "aliases" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - started < 20


def test_huge_spec_is_refused_before_parsing(tmp_path):
    spec = tmp_path / "job.yaml"
    with open(spec, "w") as fh:
        fh.write("name: big\ntask: custom\nentrypoint: [python, main.py]\nhyperparameters:\n  blob: \"")
        fh.write("x" * (50 * 1024 * 1024))
        fh.write("\"\n")
    started = time.monotonic()
    result = cli("job", "submit", str(spec), "--dry-run", timeout=30)
    assert result.returncode == 2 and "over the" in result.stderr and "limit" in result.stderr, result.stderr
    assert time.monotonic() - started < 10


def test_non_utf8_spec_exits_2_with_the_line(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_bytes(b"name: latin\ntask: custom\ndescription: caf\xe9\n")
    result = cli("job", "submit", str(spec), "--dry-run", timeout=30)
    assert result.returncode == 2 and f"{spec}:3: not UTF-8" in result.stderr and "Traceback" not in result.stderr


def test_every_validation_error_is_reported_with_its_line(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: Bad_Name\ntask: custom\nentrypoint: [python, main.py]\nresources:\n"
                    "  spot: maybe\n  max_runtime: soon\ninputs:\n  train: ftp://x/y\nextra: 1\n")
    result = cli("job", "submit", str(spec), "--dry-run", timeout=30)
    assert result.returncode == 2
    for expected in (":1 name:", ":5 resources.spot:", ":6 resources.max_runtime:", ":8 inputs.train:", ":9 extra:"):
        assert f"{spec}{expected}" in result.stderr, (expected, result.stderr)
    assert "5 problems" in result.stderr


def test_nested_set_builds_nested_hyperparameters(tmp_path):
    (tmp_path / "main.py").write_text("print('ok')\n")
    spec = tmp_path / "job.yaml"
    spec.write_text("name: nested\ntask: custom\nentrypoint: [python, main.py]\nhyperparameters:\n  opt: {lr: 0.1}\n")
    result = cli("job", "submit", str(spec), "--dry-run", "--json", "--set", "hyperparameters.opt.momentum=0.9",
                 "--set", "hyperparameters.sched.kind=cosine", timeout=30)
    assert result.returncode == 0, result.stderr
    hp = json.loads(result.stdout)["record"]["spec"]["hyperparameters"]
    assert hp == {"opt": {"lr": 0.1, "momentum": 0.9}, "sched": {"kind": "cosine"}}
    assert not Store().list()
