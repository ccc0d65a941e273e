"""Per-step metric history through the CLI: a real custom job (a real supervisor and entry-point
process) writes 50 rows per version; `job metrics` returns them, `job plot` draws them with a legend
that names the change, and `job versions` / `job diff` show the last and the best value."""
from __future__ import annotations

import csv
import io
import json
import re
import textwrap
from pathlib import Path

import pytest

from jobs import metrics as history
from jobs import report
from jobs.core.tasks import Metric
from jobs.store import Store

ROWS = 50

# 50 rows of a falling loss (with a bump at steps 25 and 50, so the best is not the last). With
# hyperparameter pause_at, the job stops after that step until the file go_file exists.
TRAIN = textwrap.dedent("""
    import json, math, os, time
    hp = json.load(open(os.environ["FACEOPS_HYPERPARAMETERS"]))
    lr, pause = hp["lr"], hp.get("pause_at", 0)
    with open(os.environ["FACEOPS_METRICS_FILE"], "a") as fh:
        for step in range(1, %d + 1):
            loss = 2.0 * math.exp(-lr * step) + 0.05 * (step %% 25 == 0)
            acc = 1.0 - loss / 2.5
            fh.write(json.dumps({"time": time.time(), "step": step, "epoch": 1 + step // 10, "loss": loss, "acc": acc}) + "\\n")
            fh.flush()
            deadline = time.time() + 120
            while step == pause and not os.path.exists(hp["go_file"]) and time.time() < deadline:
                time.sleep(0.1)
""" % ROWS)

SPEC = textwrap.dedent("""
    name: curves
    task: custom
    entrypoint: [python, train.py]
    hyperparameters:
      lr: 0.2
    metrics:
      loss: min
      acc: {direction: max, unit: fraction}
""")




@pytest.fixture
def two_versions(runner, tmp_path) -> Path:
    """curves:1 with lr 0.2 and curves:2 (a rerun) with lr 0.1, both done."""
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "job.yaml").write_text(SPEC)
    assert runner("job", "submit", str(tmp_path / "job.yaml")).exit_code == 0
    result = runner("job", "rerun", "curves:1", "--set", "lr=0.1")
    assert result.exit_code == 0, result.output
    return tmp_path


def test_job_metrics_returns_every_row(runner, two_versions):
    for version in (1, 2):
        table = json.loads(runner("job", "metrics", f"curves:{version}", "--json").output)
        assert [row["step"] for row in table] == list(range(1, ROWS + 1))
        assert all({"loss", "acc", "epoch", "time"} <= set(row) for row in table)
    only_loss = json.loads(runner("job", "metrics", "curves:1", "--json", "--metric", "loss").output)
    assert len(only_loss) == ROWS and all("acc" not in row for row in only_loss)
    rows = list(csv.DictReader(io.StringIO(runner("job", "metrics", "curves:2", "--csv").output)))
    assert len(rows) == ROWS and list(rows[0])[:3] == ["step", "epoch", "time"]
    assert float(rows[9]["loss"]) == pytest.approx(2.0 * 2.718281828 ** (-0.1 * 10), rel=1e-6)
    text = runner("job", "metrics", "curves:1", "--metric", "acc").output.splitlines()
    assert text[0].split() == ["step", "epoch", "time", "acc"] and len(text) == ROWS + 1
    assert re.fullmatch(r"1 +1 +\d\d:\d\d:\d\d +[0-9.]+", text[1]), text[1]


def test_versions_and_diff_show_last_best_and_direction(runner, two_versions):
    records = json.loads(runner("job", "versions", "curves", "--json").output)
    first = records[0]["metric_summary"]
    assert first["loss"]["direction"] == "min" and first["acc"]["direction"] == "max"
    assert first["acc"]["unit"] == "fraction" and first["loss"]["rows"] == ROWS
    losses = [row["loss"] for row in history.read_rows(history.metrics_file(Store().get("curves", 1)))]
    assert first["loss"]["last"] == losses[-1] and first["loss"]["best"] == min(losses)
    assert first["loss"]["best"] < first["loss"]["last"]  # the step-50 bump: the best is not the last
    assert first["loss"]["best_at"] == losses.index(min(losses)) + 1
    table = runner("job", "versions", "curves").output
    assert first["loss"]["best_axis"] == "step"
    assert "BEST" in table and f"loss {first['loss']['best']:.6g} (min @step {first['loss']['best_at']})" in table
    keys = {row["key"] for row in json.loads(runner("job", "diff", "curves:1", "curves:2", "--json").output)}
    assert {"best.loss (min)", "best.acc (max)", "metrics.loss", "hyperparameters.lr"} <= keys
    assert f"loss (min): {first['loss']['best']:.6g} at step {first['loss']['best_at']}" in runner("job", "show", "curves:1").output


def test_plot_names_the_change_and_is_not_blank(runner, two_versions, tmp_path):
    import matplotlib.image

    from jobs.plot import plot_versions

    out = tmp_path / "curves.png"
    result = runner("job", "plot", "curves:1..2", "--metric", "loss", "--metric", "acc", "-o", str(out))
    assert result.exit_code == 0, result.output
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert (pixels[..., :3] < 0.9).any(axis=2).mean() > 0.01  # lines, text and axes, not a blank page

    path, fig = plot_versions(history.expand_refs(["curves"]), tmp_path / "curves.svg", ["loss", "acc"], smooth=0.5)
    assert path.read_text().startswith("<?xml")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["curves:1", "curves:2 lr 0.2->0.1"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in panels] == ["loss", "acc (fraction)"]
    assert all(ax.get_xlabel() == "step" for ax in panels) and "lower is better" in panels[0].get_title()
    # Per panel and version: the faint raw line, the smoothed line and the best point.
    assert len(panels[0].lines) == 6
    raw = panels[0].lines[0].get_ydata()
    assert len(raw) == ROWS and max(raw) == pytest.approx(2.0 * 2.718281828 ** -0.2)


def test_epoch_and_time_axes_and_bad_requests(runner, two_versions, tmp_path):
    from jobs.plot import plot_versions

    _, fig = plot_versions(history.expand_refs(["curves:2"]), tmp_path / "e.pdf", ["loss"], x="epoch", log_y=True)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_yscale() == "log" and max(ax.lines[0].get_xdata()) == 1 + ROWS // 10
    _, fig = plot_versions(history.expand_refs(["curves:1"]), tmp_path / "t.png", ["loss"], x="time")
    assert fig.axes[0].get_xlabel() == "time since start (s)" and fig.axes[0].lines[0].get_xdata()[0] == 0
    assert runner("job", "plot", "curves:1", "-o", str(tmp_path / "x.gif")).exit_code == 2
    assert runner("job", "plot", "curves:3..4", "-o", str(tmp_path / "x.png")).exit_code == 2
    assert runner("job", "plot", "curves:1", "--smooth", "1.5", "-o", str(tmp_path / "x.png")).exit_code == 2


def test_envelope_keeps_every_extreme():
    import numpy as np

    from jobs.plot import envelope

    rng = np.random.default_rng(0)
    ys = rng.normal(size=10_000)
    ys[1234], ys[8765] = 50.0, -50.0
    xs = np.arange(len(ys), dtype=float)
    ex, ey = envelope(xs, ys, 200)
    assert len(ex) <= 800 and ey.max() == 50.0 and ey.min() == -50.0
    assert ex[0] == 0 and ex[-1] == len(ys) - 1 and np.all(np.diff(ex) > 0)
    for lo in range(0, 10_000, 50):  # each bucket keeps its own min and max
        chunk = ys[lo:lo + 50]
        kept = ey[(ex >= lo) & (ex < lo + 50)]
        assert kept.max() == chunk.max() and kept.min() == chunk.min()


def test_summary_follows_the_schema_patterns():
    table = [{"step": 1, "loss": 3.0, "val_lfw_acc": 0.5, "lr": 0.1}, {"step": 2, "loss": 2.0, "val_lfw_acc": 0.7},
             {"step": 3, "loss": 2.5, "val_lfw_acc": 0.6, "note": "text"}]
    summary = history.summarize(table, {"loss": Metric("min"), "val_*_acc": Metric("max")})
    assert summary["loss"] == {"last": 2.5, "rows": 3, "direction": "min", "unit": "", "best": 2.0, "best_at": 2,
                               "best_axis": "step"}
    assert summary["val_lfw_acc"]["best"] == 0.7 and summary["val_lfw_acc"]["direction"] == "max"
    assert summary["lr"] == {"last": 0.1, "rows": 1, "direction": None, "unit": ""}  # undeclared: no best
    assert "note" not in summary and "step" not in summary
    # Epoch-only rows are told apart from steps; a processing job's single row has no axis to name.
    epochs = history.summarize([{"step": 5, "loss": 1.0}, {"epoch": 1, "epoch_acc": 0.4}, {"epoch": 2, "epoch_acc": 0.6}],
                               {"loss": Metric("min"), "epoch_acc": Metric("max")})
    assert (epochs["epoch_acc"]["best_at"], epochs["epoch_acc"]["best_axis"]) == (2, "epoch")
    final = history.summarize([{"rank1": 1.0}], {"rank1": Metric("max")})
    assert final["rank1"]["best_axis"] is None
    record = {"metric_summary": {**epochs, **final}}
    assert report.best_summary(record) == "loss 1 (min @step 5), epoch_acc 0.6 (max @epoch 2), rank1 1 (max)"


def test_rows_survive_a_torn_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "loss": 1}\n{"step": 2, "lo\n{"step": 3, "loss": 0.5}\n[1, 2]\n')
    assert history.read_rows(path) == [{"step": 1, "loss": 1}, {"step": 3, "loss": 0.5}]


def test_a_finished_identify_job_is_summed_up_by_its_declared_metrics():
    record = {"task": "identify", "spec": {}, "metrics": {
        "images": 40, "faces": 98, "no_face": 0, "errors": 0, "unknown": 6, "faces_per_s": 70.5,
        "rank1": 1.0, "tar_at_far": 0.97, "unknown_rejection": 1.0}}
    line = report.metrics_summary(record, declared=history.schema(record))
    assert line == "faces_per_s=70.5 rank1=1 tar_at_far=0.97 unknown_rejection=1"


def test_epoch_metrics_get_an_epoch_axis_and_steps_run_smoothly_across_epochs():
    import numpy as np

    from jobs.plot import Curve, render

    # A recognition job's rows: per-step loss (step and the epoch it is in), then each epoch's summary.
    rows = []
    for epoch in (1, 2, 3):
        rows += [{"step": step, "epoch": epoch, "loss": 3.0 / step} for step in range(5 * epoch - 4, 5 * epoch + 1)]
        rows.append({"epoch": epoch, "epoch_loss": 3.0 / epoch})
    curves = [Curve("recog:1", rows)]
    fig = render(curves, ["loss", "epoch_loss"], {"loss": Metric("min"), "epoch_loss": Metric("min")}, x="step")
    loss, epoch_loss = fig.axes[:2]
    assert (loss.get_xlabel(), epoch_loss.get_xlabel()) == ("step", "epoch")
    assert list(epoch_loss.lines[0].get_xdata()) == [1, 2, 3]

    fig = render(curves, ["loss", "epoch_loss"], {}, x="epoch")
    steps = fig.axes[0].lines[0].get_xdata()
    assert np.all(np.diff(steps) > 0), steps  # no sawtooth: each step at its share of its epoch
    assert steps[0] == pytest.approx(0.2) and steps[4] == 1 and steps[-1] == 3
    assert list(fig.axes[1].lines[0].get_xdata()) == [1, 2, 3]


FINAL = textwrap.dedent("""
    import json, os
    with open(os.environ["FACEOPS_METRICS_FILE"], "a") as fh:
        fh.write(json.dumps({"images": 40, "faces": 98, "no_face": 0, "errors": 0, "unknown": 6, "rank1": 0.9,
                             "tar_at_far": 0.8, "unknown_rejection": 1.0}) + "\\n")
""")


def test_a_processing_job_plots_its_declared_metrics_as_dots_with_a_legend_that_fits(runner, tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from jobs.plot import plot_versions

    (tmp_path / "final.py").write_text(FINAL)
    (tmp_path / "job.yaml").write_text(textwrap.dedent("""
        name: finals
        task: custom
        entrypoint: [python, final.py]
        hyperparameters: {threshold_for_the_gallery_people: 0.3, detector_input_size_in_pixels: 640}
        metrics: {rank1: max, tar_at_far: max, unknown_rejection: max}
    """))
    assert runner("job", "submit", str(tmp_path / "job.yaml")).exit_code == 0
    result = runner("job", "rerun", "finals:1", "--set", "threshold_for_the_gallery_people=0.45",
                    "--set", "detector_input_size_in_pixels=320", "--set", "a_third_setting_with_a_long_name=yes")
    assert result.exit_code == 0, result.output
    _, fig = plot_versions(history.expand_refs(["finals"]), tmp_path / "finals.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split()[0] for ax in panels] == ["rank1", "tar_at_far", "unknown_rejection"]
    assert all(line.get_marker() == "o" for line in panels[0].lines)
    FigureCanvasAgg(fig).draw()
    legend, page = fig.legends[0].get_window_extent(), fig.bbox
    assert page.x0 <= legend.x0 and legend.x1 <= page.x1, (legend, page)


def test_job_show_flags_a_final_metric_at_its_chance_level(runner, tmp_path):
    """A metric declared with its chance level (0.5 for verification accuracy on balanced pairs,
    as the recognition task declares val_*_acc) is flagged by `job show` when the finished job
    ends within 0.1 of it, and not when it ends clear of it."""
    (tmp_path / "train.py").write_text(textwrap.dedent("""
        import json, os
        hp = json.load(open(os.environ["FACEOPS_HYPERPARAMETERS"]))
        with open(os.environ["FACEOPS_METRICS_FILE"], "a") as fh:
            fh.write(json.dumps({"epoch": 1, "val_pairs_acc": hp["acc"]}) + "\\n")
    """))
    (tmp_path / "job.yaml").write_text(SPEC.replace("curves", "verify").replace(
        "acc: {direction: max, unit: fraction}", "val_*_acc: {direction: max, chance: 0.5}"))
    for version, acc in ((1, 0.52), (2, 0.97)):
        result = runner("job", "submit", str(tmp_path / "job.yaml"), "--set", f"acc={acc}")
        assert result.exit_code == 0, result.output
    flagged, clear = (runner("job", "show", f"verify:{v}").output for v in (1, 2))
    assert "warning:   val_pairs_acc 0.52: at chance (0.5), nothing was learned" in flagged, flagged
    assert "warning" not in clear, clear
    assert json.loads(runner("job", "show", "verify:1", "--json").output)["warnings"] == [
        "val_pairs_acc 0.52: at chance (0.5), nothing was learned"]
    from train.config import RECOGNITION
    from jobs.core.tasks import chance_warnings

    assert chance_warnings({"val_lfw_acc": 0.523}, RECOGNITION.metrics) == [
        "val_lfw_acc 0.52: at chance (0.5), this recognizer does not separate people"]
