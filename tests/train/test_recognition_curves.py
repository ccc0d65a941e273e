"""The recognition task's per-step curves: a small from-scratch job on the shared LFW photos (packed by the
recognition tests' fixture), run twice with a different lr, logs loss and acc per step, `job
metrics` returns those rows, `job versions` ranks them by the task's schema and `job plot` draws
them with the lr change in the legend."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("mxnet")
pytest.importorskip("matplotlib")

from jobs import metrics as history  # noqa: E402
from jobs.plot import plot_versions  # noqa: E402
from tests.train.learning import SCRATCH  # noqa: E402

STEPS = 5  # one epoch: 70 packed photos in batches of 14




def test_recognition_logs_loss_and_acc_per_step_and_plots(runner, lfw_split, tmp_path):
    packed, _ = lfw_split
    common = ["--set", f"inputs.train={packed}", "--set", "batch_size=14", "--set", "log_every=1", "--set", "epochs=1"]
    assert runner("job", "submit", str(SCRATCH), *common).exit_code == 0
    assert runner("job", "rerun", "recog-mbf:1", "--set", "lr=0.1").exit_code == 0

    for version in (1, 2):
        rows = json.loads(runner("job", "metrics", f"recog-mbf:{version}", "--json", "--metric", "loss",
                                  "--metric", "acc").output)
        steps = [r for r in rows if "step" in r]
        assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
        assert all(r["loss"] > 0 and 0 <= r["acc"] <= 1 for r in steps)

    summary = json.loads(runner("job", "versions", "recog-mbf", "--json").output)[0]["metric_summary"]
    assert summary["loss"]["direction"] == "min" and summary["acc"]["direction"] == "max"
    assert summary["samples_per_sec"]["unit"] == "samples/s" and summary["lr"]["direction"] is None
    rows = history.rows(history.expand_refs(["recog-mbf:1"])[0])
    assert summary["loss"]["best"] == min(r["loss"] for r in rows if "step" in r and "loss" in r)

    out = tmp_path / "recog.png"
    result = runner("job", "plot", "recog-mbf", "--metric", "loss", "--metric", "acc", "--metric",
                     "samples_per_sec", "-o", str(out))
    assert result.exit_code == 0 and out.stat().st_size > 10_000
    _, fig = plot_versions(history.expand_refs(["recog-mbf:1..2"]), tmp_path / "recog.svg", ["loss", "acc"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["recog-mbf:1", "recog-mbf:2 lr 0.2->0.1"]
    assert [len(fig.axes[0].lines[i].get_xdata()) for i in (0, 2)] == [STEPS, STEPS]  # line + best dot each
