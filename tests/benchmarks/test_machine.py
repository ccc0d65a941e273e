"""The machine record every headline benchmark's JSON line carries, and the note a run prints when
its ratio moved since the previous run by more than the spread (benchmarks/common.py, machine.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402  (the scripts' own import, from their folder)
import machine  # noqa: E402


def test_the_record_names_the_machine_its_load_and_the_libraries():
    record = machine.describe([0.5, 0.4, 0.3])
    assert record["cpu"] and record["cores"] == len(os.sched_getaffinity(0))
    assert record["load_before"] == [0.5, 0.4, 0.3] and len(record["load_after"]) == 3
    assert record["versions"]["numpy"] == __import__("numpy").__version__
    assert "python" in record["versions"] and "no-such-dist" not in machine.versions(("no-such-dist",))
    assert record["quiet"] and not machine.describe([1.2, 0.4, 0.3])["quiet"]  # by the load before the run


def test_a_move_beyond_the_wider_spread_is_reported_and_one_within_it_is_not():
    previous = {"ratio": 1.5, "spread": [1.4, 1.6], "load_before": [0.4, 0, 0]}
    assert machine.moved(1.65, [1.6, 1.7], previous) is None  # 0.15 <= 0.2
    note = machine.moved(1.2, [1.15, 1.25], previous)
    assert note and "-0.300" in note and "1.5 -> 1.2" in note
    assert machine.moved(1.2, None, previous) is None and machine.moved(1.2, [1.1, 1.3], None) is None


def test_runs_are_compared_with_the_last_run_on_the_same_cpu(tmp_path):
    first = {"ratio": 1.0, "spread": [0.9, 1.1], "cpu": "A", "cores": 2}
    assert machine.remember(tmp_path, "x", first) is None
    machine.remember(tmp_path, "x", {**first, "cpu": "B"})
    assert machine.remember(tmp_path, "x", {**first, "ratio": 2.0})["ratio"] == 1.0
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 3


def test_report_ends_with_the_json_line_and_says_when_the_ratio_moved(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "HISTORY", tmp_path)
    common.report("demo", 1.5, 1.2, spread=[1.45, 1.55], rounds=3)
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["ratio"] == 1.5 and line["spread"] == [1.45, 1.55] and line["rounds"] == 3
    assert line["machine"]["cores"] >= 1 and "moved" not in line
    common.report("demo", 1.1, 1.2, spread=[1.05, 1.15])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("demo: ratio moved -0.400") and "moved" in json.loads(out[-1])
