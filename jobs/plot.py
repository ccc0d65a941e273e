"""Training curves: one panel per metric, one line per version, in a PNG, SVG or PDF.

The legend names each version by what changed against the first one (``recog:2 lr 0.2->0.1``),
so a figure of six versions says which setting made which curve. Drawn with matplotlib's
object API on its Agg canvas (no pyplot, no display: it runs headless on any server), imported
only here and only when a plot is asked for (``pip install 'faceops[plot]'``).

Why it is fast on long runs: a metrics file is parsed with one JSON call, and a line of 10,000
steps is reduced, before matplotlib sees it, to the first, minimum, maximum and last value of each
pixel column it falls in: the drawn line looks the same (every spike survives) for a fraction of
the points to lay out and rasterize.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import metrics as history
from jobs.core.errors import SpecError
from jobs.core.lazy import numpy as np
from jobs.core.tasks import Metric, find_metric
from jobs.report import changed_settings, fmt

X_AXES = ("step", "epoch", "time")
FORMATS = (".png", ".svg", ".pdf")
PANEL_SIZE = (6.4, 3.6)  # inches per metric panel
DPI = 100
MAX_CHANGES_IN_LABEL = 3


@dataclass
class Curve:
    """One version's rows and how the legend names it."""

    label: str
    rows: list[dict[str, Any]]


def legend_labels(records: list[dict[str, Any]]) -> list[str]:
    """``NAME:V`` for the first version; for the others also what changed against it
    (``recog:2 lr 0.2->0.1``), at most three settings and a count of the rest."""
    labels = []
    for index, record in enumerate(records):
        label = f"{record['name']}:{record['version']}"
        if index:
            changed = [f"{key} {fmt(old)}->{fmt(new)}" for key, old, new in changed_settings(records[0], record)]
            if len(changed) > MAX_CHANGES_IN_LABEL:
                changed = changed[:MAX_CHANGES_IN_LABEL] + [f"+{len(changed) - MAX_CHANGES_IN_LABEL} more"]
            label += " " + (", ".join(changed) if changed else "(same settings)")
        labels.append(label)
    return labels


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def axis_for(curves: list[Curve], metric: str, x: str) -> str:
    """The axis ``metric``'s panel is drawn against: ``x``, except that with ``x=step`` a metric
    logged only per epoch (its rows carry an epoch and no step: ``epoch_loss``) is drawn against
    epochs, and its panel says so, instead of its epoch numbers passing for steps."""
    rows = [row for curve in curves for row in curve.rows if _number(row.get(metric))]
    if x == "step" and rows and all("step" not in row and "epoch" in row for row in rows):
        return "epoch"
    return x


def fractional_epochs(rows: list[dict[str, Any]]) -> dict[int, float]:
    """For rows with a step and an epoch (1-based, the epoch the step is in): each step's place
    on an epoch axis, ``epoch - 1`` plus its share of that epoch's steps, so per-step values run
    smoothly from one epoch to the next (an end-of-epoch row, which has no step, sits at its epoch)."""
    last: dict[int, int] = {}
    for row in rows:
        if _number(row.get("step")) and _number(row.get("epoch")):
            last[row["epoch"]] = max(last.get(row["epoch"], row["step"]), row["step"])
    places = {}
    for epoch, end in last.items():
        start = max((step for other, step in last.items() if other < epoch), default=0)
        for row in rows:
            if row.get("epoch") == epoch and _number(row.get("step")):
                places[row["step"]] = epoch - 1 + (row["step"] - start) / max(end - start, 1)
    return places


def xy(rows: list[dict[str, Any]], metric: str, x: str) -> tuple[list[float], list[float]]:
    """The points of ``metric`` against ``x``. Rows without the metric are skipped; with
    ``x=step`` a row without a step counts as the next step; with ``x=epoch`` a per-step row
    sits at its fraction of the epoch (:func:`fractional_epochs`), not on its epoch's integer
    with every other step of it; with ``x=time`` the x is seconds since the version's first row."""
    xs: list[float] = []
    ys: list[float] = []
    start = next((r["time"] for r in rows if isinstance(r.get("time"), (int, float))), None)
    places = fractional_epochs(rows) if x == "epoch" else {}
    count = 0
    for row in rows:
        value = row.get(metric)
        if not _number(value):
            continue
        count += 1
        if x == "step":
            where = row.get("step", count)
        elif x == "epoch":
            where = places.get(row.get("step"), row.get("epoch")) if "step" in row else row.get("epoch")
        else:
            where = row["time"] - start if start is not None and isinstance(row.get("time"), (int, float)) else None
        if where is None:
            continue
        xs.append(where)
        ys.append(value)
    return xs, ys


def smoothed(values: Any, weight: float) -> Any:
    """TensorBoard's smoothing: an exponential moving average, debiased so the start of the
    curve is not pulled towards zero. ``weight`` 0 returns the values unchanged."""
    if weight <= 0 or len(values) == 0:
        return values
    out = np.empty(len(values))
    last, scale = 0.0, 0.0
    for i, value in enumerate(values.tolist()):
        last = last * weight + (1 - weight) * value
        scale = scale * weight + (1 - weight)
        out[i] = last / scale
    return out


def envelope(xs: Any, ys: Any, columns: int) -> tuple[Any, Any]:
    """At most four points per pixel column (first, min, max, last, in x order): the line drawn
    through them covers the same pixels as the full line. Shorter lines are returned as they are."""
    n = len(xs)
    if n <= 4 * columns or n == 0:
        return xs, ys
    edges = np.linspace(0, n, columns + 1).astype(int)
    keep = np.zeros(n, bool)
    keep[edges[:-1]] = True
    keep[edges[1:] - 1] = True
    starts = edges[:-1]
    keep[starts + _argreduce(np.minimum, ys, edges)] = True
    keep[starts + _argreduce(np.maximum, ys, edges)] = True
    return xs[keep], ys[keep]


def _argreduce(ufunc: Any, ys: Any, edges: Any) -> Any:
    """Offset, within each bucket ``edges[i]:edges[i+1]``, of its min (or max) value."""
    extreme = ufunc.reduceat(ys, edges[:-1])
    bucket = np.repeat(np.arange(len(edges) - 1), np.diff(edges))
    hits = np.flatnonzero(ys == extreme[bucket])
    first = np.full(len(edges) - 1, -1)
    # The first hit of each bucket: reversed assignment leaves the smallest index in place.
    first[bucket[hits][::-1]] = hits[::-1]
    return np.where(first >= 0, first - edges[:-1], 0)


def _time_unit(span: float) -> tuple[str, float]:
    return ("h", 3600.0) if span >= 3 * 3600 else ("min", 60.0) if span >= 180 else ("s", 1.0)


def render(curves: list[Curve], metrics: list[str], schema: dict[str, Metric], *, x: str = "step",
           smooth: float = 0.0, log_y: bool = False, title: str = "") -> Any:
    """A matplotlib ``Figure``: one panel per metric (two columns), one line per curve with the
    version's best point marked where the schema gives the metric a direction, and one legend
    for the figure below the panels."""
    from matplotlib.figure import Figure

    if x not in X_AXES:
        raise SpecError(f"--x: expected one of {', '.join(X_AXES)}, got {x!r}")
    if not 0 <= smooth < 1:
        raise SpecError(f"--smooth: expected a weight in [0, 1), got {smooth}")
    if not metrics:
        raise SpecError("no metrics to plot: the versions have not logged any numeric metric yet")
    cols = 1 if len(metrics) == 1 else 2
    rows = math.ceil(len(metrics) / cols)
    labels, ncols = legend_layout([c.label for c in curves], PANEL_SIZE[0] * cols)
    legend_rows = math.ceil(len(curves) / ncols) * max(label.count("\n") + 1 for label in labels)
    size = (PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 0.25 * legend_rows + 0.6)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = [f"C{i}" for i in range(10)] if len(curves) <= 10 else [_tab20(i) for i in range(20)]
    columns = int(PANEL_SIZE[0] * DPI)
    axes_x = [axis_for(curves, metric, x) for metric in metrics]
    points = [[xy(curve.rows, metric, axis) for metric, axis in zip(metrics, axes_x)] for curve in curves]
    span = max((max(p[0]) for per in points for p in per if p[0]), default=0.0)
    unit, scale = _time_unit(span) if x == "time" else ("", 1.0)
    handles = []
    for ax, (m_index, metric) in zip(axes, enumerate(metrics)):
        declared = find_metric(schema, metric)
        for c_index, curve in enumerate(curves):
            xs, ys = (np.asarray(v, float) for v in points[c_index][m_index])
            color = colors[c_index % len(colors)]
            if not len(xs):
                line, = ax.plot([], [], color=color, label=curve.label)
            else:
                xs = xs / scale
                if smooth:
                    ax.plot(*envelope(xs, ys, columns), color=color, alpha=0.25, linewidth=0.8)
                # A value logged once (a processing job's final metrics) is a dot, not an invisible line.
                line, = ax.plot(*envelope(xs, smoothed(ys, smooth), columns), color=color, linewidth=1.4,
                                label=curve.label, marker="o" if len(xs) == 1 else None)
                if declared is not None and np.isfinite(ys).any():
                    best = int(np.nanargmin(ys) if declared.direction == "min" else np.nanargmax(ys))
                    ax.plot([xs[best]], [ys[best]], marker="o", markersize=4, color=color, linestyle="none")
            if m_index == 0:
                handles.append(line)
        axis = axes_x[m_index]
        if not any(len(points[c][m_index][0]) for c in range(len(curves))):
            ax.text(0.5, 0.5, f"no version logged {metric} against {axis}", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
        better = f" ({'lower' if declared.direction == 'min' else 'higher'} is better, dot = best)" if declared else ""
        ax.set_title(metric + better, fontsize=10)
        ax.set_xlabel(axis if axis != "time" else f"time since start ({unit})")
        ax.set_ylabel(metric + (f" ({declared.unit})" if declared and declared.unit else ""))
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=9, frameon=False)
    return fig


LEGEND_CHAR_WIDTH = 0.075  # inches per character at the legend's 9 pt, with room to spare
LEGEND_ENTRY_EXTRA = 0.7  # inches of line sample and padding per legend entry


def legend_layout(labels: list[str], width: float) -> tuple[list[str], int]:
    """Labels wrapped and a column count so the legend fits the figure's ``width`` (inches):
    two columns when the longest label fits half of it, else one, labels wrapped to fit."""
    def chars(columns: int) -> int:
        return max(10, int((width / columns - LEGEND_ENTRY_EXTRA) / LEGEND_CHAR_WIDTH))

    ncols = 2 if len(labels) > 1 and max(len(label) for label in labels) <= chars(2) else 1
    return [textwrap.fill(label, chars(ncols)) for label in labels], ncols


def _tab20(index: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab20"](index % 20)


def save(fig: Any, out: str | Path) -> Path:
    """Write the figure; the format follows the file's suffix (.png, .svg or .pdf)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise SpecError(f"-o {out}: expected a .png, .svg or .pdf file")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def default_metrics(curves: list[Curve], schema: dict[str, Metric]) -> list[str]:
    """The panels when none are asked for: every metric the versions logged, in first-seen order;
    but when no version logged any metric more than once (a processing job's final values), only
    the declared ones (an identify job's rank1, TAR, rejection, speed), not a panel per count."""
    names = history.metric_names(row for curve in curves for row in curve.rows)
    repeated = [n for n in names if any(sum(_number(r.get(n)) for r in c.rows) > 1 for c in curves)]
    if repeated:
        return names
    declared = [n for n in names if find_metric(schema, n) is not None]
    return declared or names


def plot_versions(records: list[dict[str, Any]], out: str | Path, metrics: list[str] | None = None, *,
                  x: str = "step", smooth: float = 0.0, log_y: bool = False) -> tuple[Path, Any]:
    """``job plot``: read every version's rows, draw and save the figure; returns the path and
    the figure. Metrics default to every one the versions logged, in first-seen order."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise SpecError("job plot needs matplotlib: pip install 'faceops[plot]'") from None
    if not records:
        raise SpecError("no versions to plot")
    curves = [Curve(label, history.rows(record)) for label, record in zip(legend_labels(records), records)]
    schema: dict[str, Metric] = {}
    for record in reversed(records):
        schema.update(history.schema(record))
    wanted = list(metrics or []) or default_metrics(curves, schema)
    names = sorted({r["name"] for r in records})
    title = f"{', '.join(names)}: {len(records)} version{'s' if len(records) > 1 else ''} by {x}"
    fig = render(curves, wanted, schema, x=x, smooth=smooth, log_y=log_y, title=title)
    return save(fig, out), fig
