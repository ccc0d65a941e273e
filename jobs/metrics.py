"""Per-step metric history: every row a job wrote to its metrics file, and what it says per metric.

Entry points append one JSON object per line (``jobs.core.contract.log_metrics``). The record keeps
only the last value of each key; this module reads the whole history, wherever the job ran, and
folds it into the last and the best value of each metric, the best judged by the direction the
task's metric schema declares (or the spec's ``metrics:`` section for custom jobs).

Where the rows are: a local job's file under its version folder (read as it grows). A cloud job
prints each row to its log too (``faceops-metrics {...}``: the bootstrap sets
``FACEOPS_METRICS_STDOUT=1`` in every cloud container), so while it runs the rows are read from the
log the backend follows (SageMaker: CloudWatch Logs; ModelArts: the log it exports to OBS), and what
was read is cached with the log cursor in the version folder (:data:`LIVE_PATH`). Once the job is
terminal its complete metrics file, which the service uploads at the end, wins: it is copied into
the version folder once, so later views and exports read it locally.
"""
from __future__ import annotations

import csv
import io
import json
import re
import tarfile
import tempfile
from importlib import import_module
from pathlib import Path
from typing import Any, Iterable

from jobs.backends import BACKENDS, get_backend
from jobs.core import storage
from jobs.core.contract import METRICS_PREFIX, final_metrics
from jobs.core.errors import NotFoundError
from jobs.core.files import atomic_write
from jobs.core.tasks import Metric, chance_warnings, find_metric, get_task
from jobs.store import TERMINAL, Store, parse_ref, workdir

# Keys that place a row (x axes and bookkeeping), never plotted or ranked as metrics.
AXES = ("step", "epoch", "time")
METRICS_PATH = Path("output") / "metrics.jsonl"
# A running cloud job's rows read from its log so far, with the backend's log cursor.
LIVE_PATH = Path("metrics-live.json")
# A row as log_metrics prints it, behind the ``[host] `` a backend puts before each line of a job
# on several instances.
_LOG_ROW = re.compile(r"(?:\[[^\]\s]*\] )?" + re.escape(METRICS_PREFIX) + r"(\{.*\})\s*$")


def metrics_file(record: dict[str, Any]) -> Path:
    """The version's local metrics file (the container contract's ``output/metrics.jsonl``)."""
    return workdir(record) / METRICS_PATH


def parse_rows(data: bytes | str) -> list[dict[str, Any]]:
    """The JSON-object lines of a metrics file, in order. A line that is not a JSON object (a job
    killed mid-write) is skipped, never fatal. Tries one ``json.loads`` over the whole file first:
    on 10,000-line files that is several times faster than a call per line."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    try:
        rows = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [row for row in rows if isinstance(row, dict)]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a local metrics file; [] when the job has written none yet."""
    try:
        return parse_rows(path.read_bytes())
    except FileNotFoundError:
        return []


def remote_source(record: dict[str, Any]) -> tuple[str, str | None] | None:
    """Where a cloud job's metrics file is on object storage (and the tar member holding it), as
    its backend says; None for a local job or one the service has not accepted yet."""
    if record["backend"] == "local" or not (record.get("backend_info") or {}).get("remote_name"):
        return None

    module, _ = BACKENDS[record["backend"]].split(":")
    return import_module(module).metrics_source(record)


def log_rows(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The metrics rows among a job's log lines: each ``faceops-metrics {...}`` line that
    :func:`jobs.core.contract.log_metrics` prints, in order; every other line is left out."""
    return parse_rows("\n".join(m.group(1) for m in map(_LOG_ROW.match, lines) if m))


def live_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a cloud job has printed to its log so far. The rows already read are kept with the
    backend's log cursor in the version folder, so each call reads only the log that is new. Two
    processes reading at once read from the same cursor and write the same cache."""
    backend = get_backend(record["backend"])
    if not record["backend_info"].get(backend.id_key):
        return []
    path = workdir(record) / LIVE_PATH
    try:
        cache = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        cache = {"cursor": None, "rows": []}
    lines, cursor = backend.read_logs(record, cache["cursor"])
    if cursor != cache["cursor"]:
        cache = {"cursor": cursor, "rows": cache["rows"] + log_rows(lines)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(cache))
    return cache["rows"]


def rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every metrics row of a version, on every backend. A local job's file is read as it runs; a
    running cloud job's rows come from its log (:func:`live_rows`); a terminal cloud job's complete
    file is fetched from object storage and kept in the version folder (the log rows only stand in
    when the service uploaded none)."""
    local = metrics_file(record)
    if local.exists() or record["backend"] == "local":
        return until_final(record, read_rows(local))
    source = remote_source(record)
    if source is None:
        return []
    if record["status"] not in TERMINAL:
        return live_rows(record)

    data = fetch_metrics(*source)
    if data is None:
        return live_rows(record)
    local.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(local, data)
    (workdir(record) / LIVE_PATH).unlink(missing_ok=True)
    return parse_rows(data)


def schema(record: dict[str, Any]) -> dict[str, Metric]:
    """The version's metric declarations: the spec's ``metrics:`` first, then the task's."""
    spec = record.get("spec") or {}
    declared = {name: Metric(m["direction"], m.get("unit", ""), m.get("chance"))
                for name, m in (spec.get("metrics") or {}).items()}
    try:
        task = get_task(record["task"]).metrics
    except KeyError:
        task = {}
    return {**declared, **{k: v for k, v in task.items() if k not in declared}}


def metric_names(table: Iterable[dict[str, Any]]) -> list[str]:
    """The numeric keys of the rows, in first-seen order, axes left out."""
    names: dict[str, None] = {}
    for row in table:
        for key, value in row.items():
            if key not in AXES and _number(value):
                names.setdefault(key)
    return list(names)


def summarize(table: list[dict[str, Any]], declared: dict[str, Metric]) -> dict[str, dict[str, Any]]:
    """Per metric: ``last``, ``rows`` and, when the schema declares a direction, ``best`` with
    where it was reached (``best_at``, on the ``best_axis``: ``step``, or ``epoch`` for rows that
    carry only an epoch; None, with the row number, for rows with neither), ``direction`` and ``unit``."""
    out: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(table):
        axis = "step" if "step" in row else "epoch" if "epoch" in row else None
        where = row[axis] if axis else index
        for key, value in row.items():
            if key in AXES or not _number(value):
                continue
            entry = out.get(key)
            if entry is None:
                metric = find_metric(declared, key)
                entry = out[key] = {"last": value, "rows": 0, "direction": metric.direction if metric else None,
                                    "unit": metric.unit if metric else "", "_metric": metric}
            entry["last"] = value
            entry["rows"] += 1
            metric = entry["_metric"]
            if metric is not None and value == value and ("best" not in entry or metric.best(value, entry["best"])):
                entry["best"], entry["best_at"], entry["best_axis"] = value, where, axis
    for entry in out.values():
        entry.pop("_metric")
    return out


def until_final(record: dict[str, Any], table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows written before the version reached its terminal state: a row stamped later came
    from a process that outlived its supervisor, and must not change a final record's values."""
    if record["status"] not in TERMINAL or not record.get("status_history"):
        return table
    final = record["status_history"][-1]["at"]
    return [row for row in table if not isinstance(row.get("time"), (int, float)) or row["time"] <= final]


def with_summary(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` plus ``metric_summary`` (see :func:`summarize`) and ``warnings`` (final metrics
    at their chance level, see :func:`jobs.core.tasks.chance_warnings`) for views; never stored."""
    declared = schema(record)
    return {**record, "metric_summary": summarize(rows(record), declared),
            "warnings": chance_warnings(record.get("metrics") or {}, declared)}


def select(table: list[dict[str, Any]], wanted: list[str]) -> list[dict[str, Any]]:
    """Only the rows that carry one of ``wanted`` metrics, with the axes and those metrics."""
    if not wanted:
        return table
    chosen = [{k: v for k, v in row.items() if k in AXES or k in wanted} for row in table]
    return [row for row in chosen if any(k in row for k in wanted)]


def to_csv(table: list[dict[str, Any]]) -> str:
    """Rows as CSV with the union of their keys (axes first); a missing value is an empty cell."""
    keys: dict[str, None] = {k: None for k in AXES if any(k in row for row in table)}
    for row in table:
        keys.update((k, None) for k in row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(keys), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in table)
    return buffer.getvalue()


def expand_refs(refs: Iterable[str], store: Store | None = None) -> list[dict[str, Any]]:
    """Records for ``NAME:V``, ``NAME:A..B`` (a range, both ends included, missing versions
    skipped) and ``NAME`` (every version), in the order given, each version once."""
    store = store or Store()
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for ref in refs:
        name, sep, span = ref.partition(":")
        if sep and ".." in span:
            first, _, last = span.partition("..")
            if not (first.isdigit() and last.isdigit()) or int(first) > int(last):
                raise NotFoundError(f"{ref}: expected a range like {name}:1..6")
            found = [r for r in store.versions(name) if int(first) <= r["version"] <= int(last)]
            if not found:
                raise NotFoundError(f"{ref}: no versions of {name} in that range")
        elif sep:
            found = [store.get(*parse_ref(ref))]
        else:
            found = store.versions(name)
        for record in found:
            out.setdefault((record["name"], record["version"]), record)
    return list(out.values())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fetch_metrics(uri: str, member: str | None = None) -> bytes | None:
    """The bytes of a job's ``metrics.jsonl`` on object storage, or of the file ``member`` inside
    the tarball at ``uri`` (SageMaker packs ``/opt/ml/output/data`` as ``output.tar.gz``); None
    when the job wrote none (or the service has not uploaded it yet)."""
    if not storage.exists(uri):
        return None
    data = storage.read_bytes(uri)
    if member:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = [m for m in tar.getnames() if m.lstrip("./") == member]
            if not names:
                return None
            data = tar.extractfile(names[0]).read()
    return data


def metrics_from(uri: str, member: str | None = None) -> dict[str, Any]:
    """Final metrics (the last value of each key) from the metrics file :func:`fetch_metrics`
    finds; {} when the job wrote none."""
    data = fetch_metrics(uri, member)
    if data is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.jsonl"
        path.write_bytes(data)
        return final_metrics(path)
