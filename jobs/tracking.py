"""MLflow tracking: every version logged as an MLflow run, as it runs or afterwards.

A run gets the version's hyperparameters as parameters, every metrics row with its step, the tags
``faceops.job``, ``faceops.version``, ``faceops.parent``, ``faceops.code_hash``,
``faceops.image_digest`` and ``faceops.backend``, and links to its outputs; a version whose parent
was logged to the same server is that run's child (``mlflow.parentRunId``), so MLflow shows the
lineage. Configured by ``tracking.mlflow_uri`` in config.yaml or ``FACEOPS_MLFLOW_URI`` (an
``http(s)://`` server or any store URI MLflow takes, such as ``sqlite:///mlflow.db``).

Delivery is durable and never fails a job: the metrics rows are the outbox. A small state file per
version and tracking store (``<version folder>/tracking/mlflow-<hash>.json``) holds the run id and
how much has been delivered: bytes of a local job's metrics file, rows of a cloud job's (read from
its log while it runs, its uploaded file at the end: :func:`jobs.metrics.rows`). A tracking server
that is down only delays delivery: the local supervisor keeps trying while the job runs and for a
while after it ends; a cloud version is delivered by every refresh of it (:func:`deliver`, called by
the cloud backends: ``job submit`` waiting, ``job logs --follow``, ``job show``, ``job list``), which
also ends its run; ``faceops job export`` sends whatever is left. Resending is harmless: a row keeps
its own timestamp and step, which MLflow stores once.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from jobs.core.config import setting
from jobs.core.errors import FaceopsError, SpecError
from jobs.core.files import atomic_write
from jobs.metrics import metrics_file, parse_rows, rows
from jobs.store import TERMINAL, Store, workdir

STATE_FOLDER = "tracking"
BATCH = 1000  # MLflow's log_batch takes at most 1000 metrics, 100 params and 100 tags
PARAM_BATCH = 100
INTERVAL = 1.0  # seconds between deliveries while a job runs
AXES = ("step", "epoch", "time")
STATUSES = {"done": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}
_BAD_KEY = re.compile(r"[^\w./\- :]")


def configured_uri() -> str | None:
    """The tracking URI from ``FACEOPS_MLFLOW_URI`` or ``tracking.mlflow_uri``; None when unset."""
    uri = setting("tracking", "mlflow_uri", ("FACEOPS_MLFLOW_URI",))
    return str(uri) if uri else None


def retry_seconds() -> float:
    """How long a supervisor keeps trying to deliver after its job has ended."""
    return float(setting("tracking", "retry_seconds", ("FACEOPS_TRACKING_RETRY_SECONDS",), 900))


def safe(message: str) -> str:
    """``message`` with any ``user:password@`` of a URI masked, for logs and errors."""
    return re.sub(r"//[^/@\s]+@", "//***@", message)


def state_file(folder: Path, uri: str) -> Path:
    """The delivery state of one version for one tracking store (named by a hash of the URI, so
    no credential in a URI is ever written to disk)."""
    return folder / STATE_FOLDER / f"mlflow-{hashlib.sha256(uri.encode()).hexdigest()[:12]}.json"


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"run_id": None, "offset": 0, "rows": 0, "finished": None, "parent_linked": False}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(state))


def metric_key(name: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, ``_ - . / : space``)."""
    return _BAD_KEY.sub("_", name)


def run_tags(record: dict[str, Any]) -> dict[str, str]:
    """The tags that tie a run to its version, plus links to where its outputs are."""
    tags = {
        "faceops.job": record["name"],
        "faceops.version": str(record["version"]),
        "faceops.parent": "" if record.get("parent") is None else str(record["parent"]),
        "faceops.code_hash": (record.get("code") or {}).get("hash") or "",
        "faceops.image_digest": (record.get("image") or {}).get("digest") or "",
        "faceops.backend": record["backend"],
        "faceops.task": record["task"],
        "faceops.workdir": str(workdir(record)),
        "mlflow.note.content": f"faceops {record['name']}:{record['version']}"
                               + (f", rerun of {record['name']}:{record['parent']}" if record.get("parent") else ""),
    }
    for name, uri in (record.get("outputs") or {}).items():
        tags[f"faceops.output.{name}"] = uri
    console = (record.get("backend_info") or {}).get("console")
    if console:
        tags["faceops.console"] = console
    return tags


def run_params(record: dict[str, Any]) -> dict[str, str]:
    """The version's hyperparameters as MLflow parameters (strings; lists and dicts as JSON)."""
    return {metric_key(k): v if isinstance(v, str) else json.dumps(v)
            for k, v in (record["spec"].get("hyperparameters") or {}).items()}


class MlflowStore:
    """The few MLflow calls faceops makes, on one tracking URI. MLflow's own HTTP retries are
    turned down so a server that is down costs one quick failure; faceops retries later itself."""

    def __init__(self, uri: str) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            from mlflow.tracking import MlflowClient
        except ModuleNotFoundError:
            raise SpecError("MLflow tracking needs mlflow: pip install 'faceops[tracking]'") from None
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str) -> str:
        """The experiment named after the job, created on first use."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another process created it meanwhile
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def find_run(self, experiment_id: str, name: str, version: Any) -> str | None:
        """The run already logged for ``name:version`` (an earlier export or a lost state file)."""
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`faceops.job` = '{name}' and "
                                                                      f"tags.`faceops.version` = '{version}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def create_run(self, record: dict[str, Any]) -> str:
        """A run for the version with its tags and parameters (and its parent run, if logged)."""
        from mlflow.entities import Param

        experiment = self.experiment_id(record["name"])
        existing = self.find_run(experiment, record["name"], record["version"])
        if existing:
            return existing
        tags = run_tags(record)
        started = (record.get("status_history") or [{}])[0].get("at") or record.get("created") or time.time()
        run = self.client.create_run(experiment, start_time=int(started * 1000), tags=tags,
                                     run_name=f"{record['name']}:{record['version']}")
        params = [Param(k, v) for k, v in run_params(record).items()]
        for i in range(0, len(params), PARAM_BATCH):
            self.client.log_batch(run.info.run_id, params=params[i:i + PARAM_BATCH])
        return run.info.run_id

    def link_parent(self, run_id: str, record: dict[str, Any]) -> bool:
        """Make the run a child of its parent version's run once that one is logged (it may
        still be on its way when this version starts); True when linked or there is no parent."""
        if record.get("parent") is None:
            return True
        run = self.client.get_run(run_id)
        parent = self.find_run(run.info.experiment_id, record["name"], record["parent"])
        if parent:
            self.client.set_tag(run_id, "mlflow.parentRunId", parent)
        return parent is not None

    def log_rows(self, run_id: str, rows: list[dict[str, Any]], first_index: int, default_ms: int) -> None:
        """Every numeric value of every row as a metric at the row's step (its ``step``, else its
        ``epoch``, else its position) and time."""
        from mlflow.entities import Metric

        metrics = []
        for index, row in enumerate(rows, start=first_index):
            step = row.get("step", row.get("epoch", index))
            stamp = int(row["time"] * 1000) if isinstance(row.get("time"), (int, float)) else default_ms
            for key, value in row.items():
                if key in ("step", "time") or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                metrics.append(Metric(metric_key(key), float(value), stamp, int(step) if isinstance(step, (int, float)) else index))
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + BATCH])

    def end_run(self, run_id: str, record: dict[str, Any]) -> None:
        ended = (record.get("status_history") or [{}])[-1].get("at") or time.time()
        self.client.set_terminated(run_id, STATUSES[record["status"]], end_time=int(ended * 1000))


def sync(record: dict[str, Any], uri: str, store: MlflowStore | None = None) -> dict[str, Any]:
    """Deliver the version's metrics rows beyond those delivered before; end the run when the
    record is terminal. Returns the delivery state (run id, rows sent). Raises
    whatever the tracking store raised; the state then still says what was delivered."""
    path = state_file(workdir(record), uri)
    state = _read_state(path)
    store = store or MlflowStore(uri)
    if not state["run_id"]:
        state["run_id"] = store.create_run(record)
        _write_state(path, state)
    if not state.get("parent_linked") and store.link_parent(state["run_id"], record):
        state["parent_linked"] = True
        _write_state(path, state)
    table, offset = _undelivered(record, state)
    default_ms = int((record.get("created") or time.time()) * 1000)
    for i in range(0, len(table), BATCH):
        store.log_rows(state["run_id"], table[i:i + BATCH], state["rows"] + i, default_ms)
    if table or offset != state["offset"]:
        state["offset"] = offset
        state["rows"] += len(table)
        _write_state(path, state)
    if record["status"] in TERMINAL and state["finished"] != record["status"]:
        store.end_run(state["run_id"], record)
        state["finished"] = record["status"]
        _write_state(path, state)
    return state


def _undelivered(record: dict[str, Any], state: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The rows not delivered yet, and the metrics file offset after them. A local job's file is
    read from the byte offset delivered so far (a line still being written waits for its
    newline); a cloud job's rows, which come from its log and then from its uploaded file, are
    counted by position."""
    if record["backend"] != "local":
        return rows(record)[state["rows"]:], state["offset"]
    try:
        with open(metrics_file(record), "rb") as fh:
            fh.seek(state["offset"])
            chunk = fh.read()
    except FileNotFoundError:
        return [], state["offset"]
    complete = chunk[:chunk.rfind(b"\n") + 1]
    return parse_rows(complete), state["offset"] + len(complete)


def export(record: dict[str, Any], uri: str, store: MlflowStore | None = None) -> dict[str, Any]:
    """``job export --mlflow``: log a version that already ran (or send what a supervisor or a
    refresh could not)."""
    return sync(record, uri, store)


_STORES: dict[str, MlflowStore] = {}
_WARNED: set[str] = set()


def deliver(record: dict[str, Any]) -> None:
    """The cloud backends' hook after each refresh of a running version: send the rows read so far
    to the configured tracking store and end the run once the version is terminal, through the same
    delivery state as a local job's :class:`Tracker`. Never raises: a store that is down (or mlflow
    missing) is said once per process and tracking URI on stderr, and a later refresh or
    ``job export`` sends the rest."""
    uri = None
    try:
        uri = configured_uri()
        if not uri:
            return
        current = Store().get(record["name"], record["version"])
        if uri not in _STORES:
            _STORES[uri] = MlflowStore(uri)
        sync(current, uri, _STORES[uri])
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a refresh
        if uri in _WARNED:
            return
        _WARNED.add(uri)

        ref = f"{record['name']}:{record['version']}"
        what = str(exc) if isinstance(exc, FaceopsError) else f"{type(exc).__name__}: {str(exc)[:200]}"
        print(f"warning: MLflow tracking of {ref} failed ({safe(what)}); the rows are sent by a later refresh "
              f"or with: faceops job export {ref} --mlflow URI", file=sys.stderr)


class Tracker:
    """Delivers a running job's rows in the background and finishes its run when it ends.
    Failures are logged as warnings through ``say`` and retried; they never reach the job."""

    def __init__(self, record: dict[str, Any], uri: str, say: Callable[[str], None]) -> None:
        self.record = record
        self.uri = uri
        self.say = say
        self.store: MlflowStore | None = None
        self.down: str | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="faceops-tracking", daemon=True)
        self.thread.start()

    def _attempt(self, record: dict[str, Any]) -> bool:
        """One delivery; True when everything so far reached the tracking store."""
        try:
            if self.store is None:
                self.store = MlflowStore(self.uri)
            state = sync(record, self.uri, self.store)
        except FaceopsError as exc:  # mlflow missing: nothing later can fix it in this process
            self._warn(str(exc))
            return True
        except Exception as exc:  # noqa: BLE001 - a tracking problem must never fail the job
            self._warn(f"MLflow tracking store unreachable ({type(exc).__name__}: {safe(str(exc))[:200]}); "
                       "the rows stay in metrics.jsonl and are sent when it is back")
            return False
        if self.down:
            self.say(f"MLflow tracking store reachable again; {state['rows']} rows delivered to run {state['run_id']}")
            self.down = None
        return True

    def _warn(self, message: str) -> None:
        if self.down != message:
            self.say(f"warning: {message}")
            self.down = message

    def _loop(self) -> None:
        while True:
            self._attempt(self.record)
            if self.done.wait(INTERVAL if not self.down else 3 * INTERVAL):
                return

    def finish(self, status: str) -> None:
        """Stop the background loop, deliver the last rows and end the run. While the store is
        unreachable keep trying (the record is already terminal, so nobody waits) until
        ``tracking.retry_seconds``; then say how to send the rest."""
        self.done.set()
        self.thread.join()
        try:
            record = Store().get(self.record["name"], self.record["version"])
        except FaceopsError:
            record = {**self.record, "status": status}
        deadline = time.monotonic() + retry_seconds()
        wait = INTERVAL
        while not self._attempt(record):
            if time.monotonic() + wait > deadline:
                ref = f"{record['name']}:{record['version']}"
                self.say(f"warning: MLflow rows of {ref} not delivered; send them with: "
                         f"faceops job export {ref} --mlflow URI")
                return
            time.sleep(wait)
            wait = min(wait * 2, 30.0)


class _NoTracker:
    """Tracking not configured: nothing to do."""

    def finish(self, status: str) -> None:
        return None


def start(record: dict[str, Any], say: Callable[[str], None]) -> Tracker | _NoTracker:
    """The local supervisor's hook: a :class:`Tracker` when a tracking URI is configured."""
    try:
        uri = configured_uri()
    except FaceopsError as exc:
        say(f"warning: tracking disabled: {exc}")
        return _NoTracker()
    return Tracker(record, uri, say) if uri else _NoTracker()
