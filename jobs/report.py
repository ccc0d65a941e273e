"""Turning version records into what people read: tables, diffs and the per-version summary.

Pure functions over record dicts, so the CLI stays thin and every view is testable without a job.
Every view shows a record through :func:`public`, so secret hyperparameters never reach a screen.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterable

from jobs.core.contract import Contract
from jobs.core.secrets import MASK, mask
from jobs.core.tasks import Metric, find_metric, get_task
from jobs.store import workdir

# What `job diff` compares, in this order. `status` and timings are shown by --all only, since two
# versions almost always differ there and it hides what was changed on purpose.
DIFF_SECTIONS = ("task", "backend", "runtime", "entrypoint", "hyperparameters", "image", "code", "inputs",
                 "outputs", "resources", "metrics", "best")
# The parts of a spec a user changes on purpose; `job versions` lists these against the parent.
CHANGE_SECTIONS = ("hyperparameters", "resources", "inputs", "outputs", "image", "runtime", "entrypoint")


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A record fit to print or serialise: secret values masked wherever they appear."""
    return mask(record)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}``; lists stay whole (an argv is one value)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def comparable(record: dict[str, Any], masked: bool = True) -> dict[str, Any]:
    """A record as flat ``section.key -> value`` pairs: the spec's settings plus what was frozen
    at submit (image digest, code hash, input sizes/ETags) and the final metrics; with ``masked``
    off, as stored (for comparing only: a secret is then its ``${secret:ID}`` marker)."""
    record = public(record) if masked else record
    spec = record["spec"]
    view = {
        "task": spec["task"],
        "backend": spec["backend"],
        "runtime": spec["runtime"],
        "entrypoint": spec.get("entrypoint"),
        "hyperparameters": spec["hyperparameters"],
        "image": record.get("image") or {},
        "code": {k: v for k, v in (record.get("code") or {}).items() if k in ("hash", "git_commit", "git_dirty")},
        "inputs": record.get("inputs") or {},
        "outputs": spec.get("outputs") or {},
        "resources": spec["resources"],
        "metrics": record.get("metrics") or {},
    }
    flat = flatten(view)
    flat.update({f"best.{name} ({entry['direction']})": entry["best"] for name, entry in best_values(record)})
    return flat


def best_values(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(metric, summary)`` for each metric with a declared direction, from the per-step summary
    views attach as ``metric_summary`` (see jobs.metrics.with_summary); [] without one."""
    return [(name, entry) for name, entry in (record.get("metric_summary") or {}).items() if "best" in entry]


def best_at(entry: dict[str, Any]) -> str:
    """Where a best value was reached, naming the axis: ``step 40``, ``epoch 3``; empty for a
    metric of rows without either (a processing job's one final row)."""
    axis = entry.get("best_axis")
    return f"{axis} {fmt(entry['best_at'])}" if axis else ""


def best_summary(record: dict[str, Any]) -> str:
    """``loss 0.1 (min @step 40)``: the best value of every declared metric, its direction and the
    step or epoch it was reached at."""
    return ", ".join(f"{name} {fmt(e['best'])} ({e['direction']}" + (f" @{best_at(e)})" if best_at(e) else ")")
                     for name, e in best_values(record)) or "-"


def clock(seconds: Any) -> str:
    """A metrics row's ``time`` (seconds since the epoch) as the local clock time it was written."""
    return time.strftime("%H:%M:%S", time.localtime(seconds)) if isinstance(seconds, (int, float)) else fmt(seconds)


def diff(a: dict[str, Any], b: dict[str, Any], show_all: bool = False) -> list[tuple[str, Any, Any]]:
    """``(key, value in a, value in b)`` for every key that differs (every key with ``show_all``).
    Records are compared as stored and shown masked: a secret that changed (its marker did) shows
    as ``*** (changed)``, never as its value."""
    left, right = comparable(a), comparable(b)
    stored_left, stored_right = comparable(a, masked=False), comparable(b, masked=False)
    if show_all:
        left.update(status=a["status"], duration=duration(a))
        right.update(status=b["status"], duration=duration(b))
    keys = sorted(set(left) | set(right), key=_section_order)
    rows = []
    for k in keys:
        changed = stored_left.get(k, left.get(k)) != stored_right.get(k, right.get(k))
        if show_all or changed:
            shown = right.get(k)
            rows.append((k, left.get(k), f"{shown} (changed)" if changed and shown == left.get(k) == MASK else shown))
    return rows


def changed_settings(parent: dict[str, Any], child: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for the settings ``child`` changed on purpose relative to ``parent``;
    hyperparameters are named without their section (``lr``, not ``hyperparameters.lr``)."""
    return [(key.split(".", 1)[-1] if key.startswith("hyperparameters.") else key, old, new)
            for key, old, new in diff(parent, child) if key.split(".")[0] in CHANGE_SECTIONS
            and not key.endswith((".size", ".etag", ".digest"))]


def changes(parent: dict[str, Any] | None, child: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for the settings ``child`` changed relative to ``parent``."""
    if parent is None:
        return []
    return [f"{key}: {fmt(old)} -> {fmt(new)}" for key, old, new in changed_settings(parent, child)]


def duration(record: dict[str, Any]) -> float | None:
    """Seconds from leaving the queue to the terminal state (or to now while live)."""
    history = record.get("status_history") or []
    if len(history) < 2:
        return None
    start = history[1]["at"]
    end = history[-1]["at"] if record["status"] in ("done", "failed", "stopped") else time.time()
    return round(end - start, 2)


def started(record: dict[str, Any]) -> str:
    history = record.get("status_history") or []
    at = history[1]["at"] if len(history) > 1 else record.get("created")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def fmt(value: Any) -> str:
    """Compact text for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def metrics_summary(record: dict[str, Any], limit: int = 4, declared: dict[str, Metric] | None = None) -> str:
    """The first few final metrics as ``k=v``, those ``declared`` (the version's metric schema,
    :func:`jobs.metrics.schema`) first: an identify job's rank1, tar_at_far and unknown_rejection
    before its counts; step/epoch counters left out."""
    items = sorted(((k, v) for k, v in (record.get("metrics") or {}).items() if k not in ("step", "epoch")),
                   key=lambda item: find_metric(declared or {}, item[0]) is None)
    return " ".join(f"{k}={fmt(v)}" for k, v in items[:limit]) or "-"


def table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    """A plain left-aligned text table."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def versions_table(records: list[dict[str, Any]]) -> str:
    """`job versions`: version, parent, status, start, duration, changes vs parent, last metrics
    and, when the records carry a ``metric_summary``, the best value of each declared metric."""
    records = [public(r) for r in records]
    by_version = {r["version"]: r for r in records}
    rows = []
    for record in records:
        changed = changes(by_version.get(record["parent"]), record)
        rows.append([record["version"], record["parent"], record["status"], started(record),
                     fmt_duration(duration(record)), ", ".join(changed) or "-", metrics_summary(record),
                     best_summary(record)])
    return table(["VERSION", "PARENT", "STATUS", "STARTED", "DURATION", "CHANGED", "METRICS (LAST)", "BEST"], rows)


def list_table(records: list[dict[str, Any]]) -> str:
    """`job list`: one line per version, newest first."""
    records = [public(r) for r in records]
    rows = [[f"{r['name']}:{r['version']}", r["task"], r["backend"], r["status"], started(r),
             fmt_duration(duration(r)), f"{r['user']}@{r['host']}" if r.get("user") else "-", metrics_summary(r, 2)]
            for r in records]
    return table(["JOB", "TASK", "BACKEND", "STATUS", "STARTED", "DURATION", "BY", "METRICS"], rows)


def diff_text(a: dict[str, Any], b: dict[str, Any], show_all: bool = False) -> str:
    rows = diff(a, b, show_all)
    if not rows:
        return f"{a['name']}:{a['version']} and {b['name']}:{b['version']} do not differ"
    return table(["KEY", f"{a['name']}:{a['version']}", f"{b['name']}:{b['version']}"], [list(r) for r in rows])


def locations(record: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """Where each output of a version is: ``local`` (the folder the job wrote it to, for the local
    backend; it stays there when the spec names no upload) and ``remote`` (the spec's URI; for a
    SageMaker training job's model, the model.tar.gz it wrote). Every output the task declares is
    listed, so ``job show`` tells where the model is even without an ``outputs:`` section."""
    spec = record["spec"]
    try:
        declared = get_task(spec["task"]).outputs
    except KeyError:
        declared = None
    names = list(dict.fromkeys([*(declared if declared is not None else ["model"]), *(spec.get("outputs") or {})]))
    local = Contract(workdir(record)) if record["backend"] == "local" else None
    artifact = (record.get("backend_info") or {}).get("model_artifact")
    return {name: {"local": str(local.output_dir(name)) if local else None,
                   "remote": (artifact if name == "model" and artifact else None) or (spec.get("outputs") or {}).get(name)}
            for name in names}


def show_text(record: dict[str, Any]) -> str:
    """`job show`: the resolved spec, what was frozen at submit, status, timings and metrics."""
    record = public(record)
    spec = record["spec"]
    lines = [
        f"{record['name']}:{record['version']}  task={record['task']}  backend={record['backend']}  status={record['status']}",
        f"parent:    {record['parent'] if record['parent'] is not None else '-'}",
        f"started:   {started(record)}   duration: {fmt_duration(duration(record))}",
        *([f"by:        {record['user']}@{record['host']}  (faceops {record.get('faceops_version') or '?'})"]
          if record.get("user") else []),
        f"image:     {fmt((record.get('image') or {}).get('ref'))}  digest: {fmt((record.get('image') or {}).get('digest'))}",
        f"code:      {record['code']['hash'][:12]}  ({record['code'].get('files', '?')} files, {record['code'].get('size', 0)} bytes)"
        + (f"  git {record['code']['git_commit'][:10]}{' dirty' if record['code'].get('git_dirty') else ''}" if record["code"].get("git_commit") else ""),
    ]
    if spec.get("entrypoint"):
        lines.append(f"command:   {' '.join(spec['entrypoint'])}")
    if record["failure_reason"]:
        lines.append(f"reason:    {record['failure_reason']}")
    lines += [f"warning:   {line}" for line in record.get("warnings") or []]
    sections = [
        ("hyperparameters", spec["hyperparameters"]),
        ("inputs", {c: f"{i['uri']}  ({fmt(i.get('size'))} bytes, etag {fmt(i.get('etag'))})" for c, i in record["inputs"].items()}),
        ("outputs", {name: "  ->  ".join(p for p in (where["local"], where["remote"]) if p) or "-"
                     for name, where in locations(record).items()}),
        ("resources", {k: v for k, v in spec["resources"].items() if v not in (None, False, 0) or k == "instance_count"}),
        ("backend", {k: v for k, v in (record.get("backend_info") or {}).items() if v not in (None, "")}),
        ("timings (s)", record.get("timings") or {}),
        ("metrics", record.get("metrics") or {}),
        ("best", {f"{name} ({e['direction']})": fmt(e["best"]) + (f" at {best_at(e)}" if best_at(e) else "")
                  for name, e in best_values(record)}),
    ]
    for title, values in sections:
        if values:
            lines.append(f"{title}:")
            lines += [f"  {k}: {fmt(v)}" for k, v in values.items()]
    return "\n".join(lines)


def _section_order(key: str) -> tuple[int, str]:
    section = key.split(".")[0]
    return (DIFF_SECTIONS.index(section) if section in DIFF_SECTIONS else len(DIFF_SECTIONS), key)
