"""What the cloud backends (SageMaker, ModelArts) share: unique remote names, the code bundle on
object storage, required settings, retries on throttling, status bookkeeping and log following,
and :class:`CloudBackend`, the one backend flow (plan -> start -> refresh -> stop -> logs) each
service fills in with its requests and calls.

A cloud job runs the same entry point as a local one. The service downloads the job's inputs and
the code bundle (an extra input channel, ``faceops_code``) into the container, whose command is
``faceops-cloud-bootstrap`` (images/bin): it unpacks the bundle into ``/opt/ml/code``, turns the
service's string parameters back into typed JSON and sets the contract's variables, so entry points
never know where they run. Nothing here imports boto3 or the Huawei SDK.
"""
from __future__ import annotations

import hashlib
import json
import socket
import tempfile
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from images.registry import split_ref
from jobs import tracking
from jobs.backends import DEFAULT_GRACE, Backend, Launch, merge_parts
from jobs.core import retry, storage
from jobs.core.config import home, setting
from jobs.core.contract import PARTS, RESERVED_CHANNELS
from jobs.core.errors import FaceopsError, SpecError
from jobs.core.secrets import mask, refuse_literal_secrets
from jobs.store import TERMINAL, RecordFrozen, Store

BUNDLE_NAME = "code.tar.gz"
T = TypeVar("T")


class CloudError(FaceopsError):
    """A cloud service refused a request; the message passes the service's own reason on."""


@dataclass(frozen=True)
class Setting:
    """A setting a backend needs: its ``config.yaml`` section/key, the variables that override
    it, and what it is for (so a missing one can be explained)."""

    section: str
    key: str
    env: tuple[str, ...]
    what: str

    def get(self, default: Any = None) -> Any:
        return setting(self.section, self.key, self.env, default)

    def require(self) -> str:
        """The value, or a SpecError saying which setting is missing and where to set it."""
        value = self.get()
        if not value:
            where = " or ".join(self.env)
            raise SpecError(f"{self.section}: no {self.what}; set {where} or {self.section}.{self.key} "
                            f"in $FACEOPS_HOME/config.yaml")
        return str(value)


def remote_name(record: dict[str, Any], limit: int = 63) -> str:
    """``NAME-vN-<hash>``: the hash covers the version's content and the state folder it lives
    in (machine and path), so a dry run shows the name the real submit uses while two people, or
    two state folders, submitting the same job never collide on the service."""
    content = json.dumps([socket.gethostname(), str(home()), record["spec"], record["version"],
                          record["code"].get("hash"), (record.get("image") or {}).get("digest")],
                         sort_keys=True, default=str)
    suffix = f"-v{record['version']}-{hashlib.sha256(content.encode()).hexdigest()[:8]}"
    return record["name"][:limit - len(suffix)].rstrip("-") + suffix


def staging_uri(section: str, record: dict[str, Any]) -> str:
    """Where code bundles and job files go: the backend's ``staging`` setting, else a
    ``faceops/`` folder in the bucket of the ``model`` output (or the first output)."""
    check_remote_uris(section, record["spec"])
    configured = setting(section, "staging", (f"FACEOPS_{section.upper()}_STAGING",))
    if configured:
        return str(configured).rstrip("/")

    outputs = record["spec"]["outputs"]
    uri = outputs.get("model") or next(iter(outputs.values()), None)
    if not uri:
        raise SpecError(f"outputs: none given, so there is no bucket to stage the code in; add an s3:// output "
                        f"or set FACEOPS_{section.upper()}_STAGING or {section}.staging in $FACEOPS_HOME/config.yaml")
    return f"s3://{storage.parse(uri).bucket}/faceops"


def check_remote_uris(section: str, spec: dict[str, Any]) -> None:
    """Outputs must be on the service's object storage (it writes them there), and the code
    bundle's channel name is taken."""
    for name, uri in spec["outputs"].items():
        if not storage.is_remote(uri):
            raise SpecError(f"outputs.{name}: {uri} is on this machine, where {section} cannot write; "
                            f"use an s3:// URI")
    for kind in ("inputs", "outputs"):
        for name in RESERVED_CHANNELS:
            if name in spec[kind]:
                raise SpecError(f"{kind}.{name}: this name is reserved for faceops' own files; rename the channel")


def remote_inputs(record: dict[str, Any], staging: str) -> dict[str, str]:
    """Each input as the service reads it: ``s3://`` URIs as they are; a local file or folder
    at a place under ``staging`` named by its ETag (so an unchanged input is uploaded once)."""
    return {channel: uri if storage.is_remote(uri) else f"{staging}/inputs/{record['inputs'][channel]['etag']}/"
            for channel, uri in record["spec"]["inputs"].items()}


def upload_inputs(record: dict[str, Any], staging: str) -> None:
    """Upload the local inputs to where :func:`remote_inputs` says the service reads them,
    unless a complete copy is already there (a folder's manifest, or the file)."""
    for channel, target in remote_inputs(record, staging).items():
        uri = record["spec"]["inputs"][channel]
        if storage.is_remote(uri):
            continue
        source = storage.parse(uri).path
        marker = storage.join(target, storage.MANIFEST if source.is_dir() else source.name)
        if not storage.exists(marker):
            storage.upload(source, target)


def planned_uploads(launch: Any, staging: str) -> list[dict[str, Any]]:
    """What ``start`` uploads first, for --dry-run: the code bundle and any local input (each
    skipped when its copy is already there)."""
    record = launch.record
    uploads = [{"from": str(launch.bundle), "to": bundle_folder(staging, record["code"]["hash"]) + BUNDLE_NAME}]
    remote = remote_inputs(record, staging)
    uploads += [{"from": uri, "to": remote[channel]} for channel, uri in record["spec"]["inputs"].items()
                if remote[channel] != uri]
    return [{**u, "skipped_when_present": True} for u in uploads]


def bundle_folder(staging: str, sha256: str) -> str:
    """The folder holding one code bundle; addressed by its hash so every version shares it."""
    return f"{staging}/bundles/{sha256}/"


def upload_bundle(bundle: Path, staging: str) -> str:
    """Put the code bundle on object storage unless it is already there; return its folder."""
    sha256 = bundle.name.split(".")[0]
    folder = bundle_folder(staging, sha256)
    target = folder + BUNDLE_NAME
    if not storage.exists(target):
        storage.write_bytes(target, bundle.read_bytes())
    return folder


def typed_strings(hyperparameters: dict[str, Any]) -> dict[str, str]:
    """Hyperparameters as the strings the services require, each one JSON so the container's
    bootstrap gets ``0.1`` back as a number and ``"r50"`` as a string."""
    return {key: json.dumps(value) for key, value in hyperparameters.items()}


def image_in_registry(ref: str | None, digest: str | None, service: str, registry_hint: str,
                      matches: Callable[[str], bool]) -> str:
    """The image as the service must pull it: by digest when faceops pushed it. The service can
    only pull from its own registry (``matches`` decides by host), so anything else is an error
    that says how to push it there."""
    if not ref:
        raise SpecError(f"image: {service} runs a container image; set image: to one in {registry_hint}")
    host, repo, tag = split_ref(ref)
    if not matches(host):
        raise SpecError(f"image: {ref} is not in {registry_hint}, the only registry {service} pulls from; "
                        f"push it there with: faceops image push {ref} --registry <{registry_hint} host/namespace>")
    if digest:
        return f"{host}/{repo}@{digest}"
    return f"{host}/{repo}@{tag}" if tag.startswith("sha256:") else f"{host}/{repo}:{tag}"


def retrying(call: Callable[[], T], throttled: Callable[[Exception], bool], what: str) -> T:
    """Run ``call``; when the service says it is throttled or busy, wait and try again with
    exponential backoff and jitter, up to ``cloud.max_attempts`` tries."""
    attempts = int(setting("cloud", "max_attempts", ("FACEOPS_CLOUD_MAX_ATTEMPTS",), 6))
    delay = float(setting("cloud", "backoff_seconds", ("FACEOPS_CLOUD_BACKOFF",), 1.0))
    return retry.retrying(call, throttled, attempts=attempts, delay=delay, give_up=lambda exc, tries: CloudError(
        f"{what}: the service is still throttling after {tries} tries; try again later ({exc})"))


def set_status(record: dict[str, Any], status: str, reason: str | None = None, **fields: Any) -> None:
    """Move a record to ``status`` (and merge ``fields``) unless it is already there; a record
    another process closed meanwhile is left alone."""
    if record["status"] == status and not fields:
        return
    try:
        Store().update(record["name"], record["version"], status=None if record["status"] == status else status,
                       reason=reason, **fields)
    except RecordFrozen:
        pass


_LAST_POLL: dict[str, float] = {}


def poll_due(record: dict[str, Any]) -> bool:
    """True when this process has not asked the service about ``record`` within
    ``cloud.min_poll_seconds``: loops that refresh often (``job stop`` waiting, ``job list``)
    must not spend the account's API rate on the same answer."""
    info = record["backend_info"]
    key = str(info.get("arn") or info.get("job_id") or info.get("remote_name"))
    wait = float(setting("cloud", "min_poll_seconds", ("FACEOPS_CLOUD_MIN_POLL_SECONDS",), 2.0))
    now = time.monotonic()
    if now - _LAST_POLL.get(key, float("-inf")) < wait:
        return False
    _LAST_POLL[key] = now
    return True


def poll_intervals() -> Iterator[float]:
    """Seconds to wait between status polls: ``cloud.poll_seconds`` growing by half each time
    up to 60 s, so a long job does not spend its API quota on polls."""
    wait = float(setting("cloud", "poll_seconds", ("FACEOPS_CLOUD_POLL_SECONDS",), 10.0))
    while True:
        yield wait
        wait = min(wait * 1.5, max(wait, 60.0))


def follow_lines(backend: Any, record: dict[str, Any], read: Callable[[Any], tuple[list[str], Any]],
                 follow_on: bool) -> Iterator[str]:
    """The log loop both services share: ``read(cursor)`` returns new lines and the next cursor;
    with ``follow_on`` it polls (and refreshes the status) until the record is terminal, then
    reads once more so the last lines are not lost."""
    cursor: Any = None
    intervals = poll_intervals()
    store = Store()
    while True:
        lines, cursor = read(cursor)
        yield from lines
        if not follow_on:
            return
        current = store.get(record["name"], record["version"])
        if current["status"] in TERMINAL:
            lines, cursor = read(cursor)
            yield from lines
            return
        backend.refresh(current)
        if lines:  # a talking job is read again soon; a quiet one less and less often
            intervals = poll_intervals()
        time.sleep(next(intervals))


@dataclass
class Request:
    """One job as a service's create call takes it, made by :meth:`CloudBackend.build`.

    ``api`` names the call (for messages and --dry-run), ``name`` is the remote job name,
    ``body`` the request as the backend's ``submit`` sends it (a dict, or an SDK model),
    ``shown`` the same as plain data for --dry-run (``body`` when it is already plain),
    ``files`` extra objects to put on object storage before the call (URI -> bytes), and
    ``about`` more fields for the plan (a region, an endpoint, a console link)."""

    api: str
    name: str
    body: Any
    shown: dict[str, Any] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    about: dict[str, Any] = field(default_factory=dict)


@dataclass
class Remote:
    """What the service says about a job, as :meth:`CloudBackend.describe` reports it: our
    ``status`` (a store state), the service's own ``remote`` status, a ``reason`` for a failed
    or stopped job, ``info`` to merge into the record's backend_info, and ``metrics`` (read only
    once the job is terminal)."""

    status: str
    remote: str
    reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None


class CloudBackend(Backend):
    """plan -> start -> refresh -> stop -> logs, written once for every cloud service.

    A service supplies only its requests and calls:

    - ``name``: the backend's name, also its config.yaml section and staging setting;
    - ``id_key``: the backend_info key that says the job reached the service (``arn``, ``job_id``);
    - :meth:`check` (spec): the service's limits on what a spec says (the base refuses literal
      secret hyperparameters first; override and call ``super().check(spec)``);
    - :meth:`build` (record, staging) -> :class:`Request`, pure: checks limits, touches nothing;
    - :meth:`ready`: fail early (credentials, region) before anything is uploaded;
    - :meth:`submit` (request) -> backend_info fields (the id, a console link);
    - :meth:`describe` (record) -> :class:`Remote`;
    - :meth:`cancel` (record): the service's stop call;
    - :meth:`read_logs` (record, cursor) -> (new lines, next cursor), for :func:`follow_lines`;
    - :meth:`secrets` (record): credentials to hide in a plan beside the spec's own secrets.

    The base refuses literal secret hyperparameters (they would show in the service's console),
    uploads the bundle, the local inputs and ``Request.files``, stores ``remote_name`` and
    ``staging``, marks a job whose start failed as failed, polls no more often than
    :func:`poll_due` allows, and after each poll delivers the new metrics rows to the configured
    MLflow tracking store (:func:`jobs.tracking.deliver`)."""

    id_key = "remote_name"

    @abstractmethod
    def build(self, record: dict[str, Any], staging: str) -> Request:
        """The create request for ``record`` with its files under ``staging``."""

    def ready(self) -> None:
        """Raise a SpecError naming what is missing to reach the service (default: nothing)."""

    @abstractmethod
    def submit(self, request: Request) -> dict[str, Any]:
        """Send ``request``; return what to keep in backend_info (the service's id for the job)."""

    @abstractmethod
    def describe(self, record: dict[str, Any]) -> Remote:
        """Ask the service about the job of ``record``."""

    @abstractmethod
    def cancel(self, record: dict[str, Any]) -> None:
        """Ask the service to stop the job of ``record``."""

    @abstractmethod
    def read_logs(self, record: dict[str, Any], cursor: Any) -> tuple[list[str], Any]:
        """New log lines since ``cursor`` (None at first) and the cursor to continue from."""

    def secrets(self, record: dict[str, Any]) -> list[str]:
        """Credentials a plan must not show (the spec's own secret values are always hidden)."""
        return []

    def check(self, spec: dict[str, Any]) -> None:
        refuse_literal_secrets(spec, self.name)

    def _request(self, launch: Launch) -> tuple[str, Request]:
        self.check(launch.spec)
        staging = staging_uri(self.name, launch.record)
        return staging, self.build(launch.record, staging)

    def plan(self, launch: Launch) -> dict[str, Any]:
        staging, request = self._request(launch)
        uploads = planned_uploads(launch, staging) + [{"from": "job file", "to": uri} for uri in request.files]
        shown = request.shown if request.shown is not None else request.body
        return {"backend": self.name, **request.about, "uploads": uploads, "api": request.api,
                "request": mask(shown, self.secrets(launch.record))}

    def start(self, launch: Launch) -> dict[str, Any]:
        try:
            staging, request = self._request(launch)
            self.ready()
            upload_bundle(launch.bundle, staging)
            upload_inputs(launch.record, staging)
            for uri, data in request.files.items():
                storage.write_bytes(uri, data)
            return {"remote_name": request.name, "staging": staging, **self.submit(request)}
        except FaceopsError as exc:
            set_status(launch.record, "failed", reason=str(exc))
            raise

    def refresh(self, record: dict[str, Any]) -> None:
        info = record["backend_info"]
        if record["status"] in TERMINAL or not info.get(self.id_key) or not poll_due(record):
            return
        remote = self.describe(record)
        fields: dict[str, Any] = {}
        merged = {**info, "remote_status": remote.remote, **remote.info}
        if merged != info:
            fields["backend_info"] = merged
        if remote.status in TERMINAL and remote.metrics is not None:
            fields["metrics"] = remote.metrics
        set_status(record, remote.status, reason=remote.reason, **fields)
        tracking.deliver(record)  # the rows so far to MLflow, the run ended once terminal (never raises)

    def stop(self, record: dict[str, Any], grace: float = DEFAULT_GRACE) -> None:
        """The service stops the job with its own grace period; ``grace`` cannot change it."""
        if record["status"] in TERMINAL or not record["backend_info"].get(self.id_key):
            return
        self.cancel(record)

    def logs(self, record: dict[str, Any], follow: bool = False) -> Iterator[str]:
        if not record["backend_info"].get(self.id_key):
            return iter(())
        return follow_lines(self, record, lambda cursor: self.read_logs(record, cursor), follow)


def merge_shards(spec: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    """Merge a finished sharded job's parts on this machine: for each output, the parts the
    instances uploaded under ``sources[output]`` (``parts/<part>/``) are downloaded, merged by the
    task's merge (:func:`jobs.backends.merge_parts`) and published to the spec's output URI;
    returns the job's metrics. The parts stay where they were, so a second merge (another
    process refreshing the same record) reads the same parts and writes the same output."""
    with tempfile.TemporaryDirectory(prefix="faceops-merge-") as tmp:
        folders = {name: Path(tmp) / name for name in spec["outputs"]}
        for name, folder in folders.items():
            storage.download(storage.join(sources[name], PARTS) + "/", folder / PARTS, progress=False)
        metrics = merge_parts(spec, folders)
        for name, folder in folders.items():
            storage.upload(folder, spec["outputs"][name], progress=False)
    return metrics
