"""Submitting versions: freeze a spec into a version record and hand it to its backend.

``submit`` and ``rerun`` share one path (:func:`launch`): check the inputs exist and note their
sizes/ETags, check every output can be written (:mod:`jobs.preflight`), pack or reuse the code bundle, resolve the image digest, then either describe what
would happen (``dry_run``, which writes nothing, and plans without S3 when its endpoint does not
answer a quick probe, naming the checks it skipped) or store the record and start the backend.
Literal secret hyperparameters go to the version's ``secrets.json``, never to its record
(:func:`jobs.core.secrets.hide`); a rerun or resume takes its parent's for the keys it keeps.
"""
from __future__ import annotations

import queue
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from images.digests import lookup
from jobs import artifacts, preflight
from jobs.backends import Launch, get_backend
from jobs.core import storage
from jobs.core.bundle import FACEOPS_CODE, Bundle, build_bundle, faceops_root, git_state, plan_bundle, stored_bundle
from jobs.core.contract import Contract
from jobs.core.errors import FaceopsError, NotFoundError, SpecError
from jobs.core.secrets import hide, mask, read_secrets, refuse_literal_secrets, write_secrets
from jobs.spec import JobSpec, validate
from jobs.store import LATEST, TERMINAL, RecordFrozen, Store, StoreError, new_record, workdir


def submit(spec: JobSpec, *, dry_run: bool = False, into_existing: bool = False) -> dict[str, Any]:
    """A new version of ``spec.name`` whose parent is the job's latest version (if any), so
    ``job versions`` shows what changed since the last run. The parent is read in the same
    transaction that creates the version, so parallel submits each get the version before theirs.
    ``into_existing`` lets outputs go into folders that hold files faceops did not write."""
    return launch(spec, parent=LATEST, dry_run=dry_run, into_existing=into_existing)


def rerun(ref: str, overrides: list[str] | tuple[str, ...] = (), *, new_code: bool = False,
          dry_run: bool = False, into_existing: bool = False) -> dict[str, Any]:
    """A new version from version ``ref`` with ``overrides`` applied and every other setting kept,
    including the exact code bundle unless ``new_code`` asks to pack the code folder again."""
    parent = Store().resolve(ref)
    spec = validate(parent["spec"], overrides=overrides)
    code_hash = None if new_code else parent["code"]["hash"]
    return launch(spec, parent=parent["version"], code_hash=code_hash, dry_run=dry_run,
                  secrets=read_secrets(workdir(parent)), into_existing=into_existing)


def resume(ref: str) -> dict[str, Any]:
    """A new version that continues stopped or failed version ``ref`` from its last checkpoint:
    the same spec and code, parent ``ref``, its checkpoints copied in before it starts (the
    training loops restore the latest one). Local versions only: a cloud job's checkpoints stay
    with the service, and a spot restart there already resumes."""
    parent = refreshed(Store().resolve(ref))
    name = f"{parent['name']}:{parent['version']}"
    if parent["status"] not in ("stopped", "failed"):
        raise SpecError(f"{name} is {parent['status']}; only a stopped or failed version can be resumed")
    if parent["backend"] != "local":
        raise SpecError(f"{name} ran on {parent['backend']}; job resume continues local versions")
    checkpoints = Contract(workdir(parent)).checkpoint_dir
    if not checkpoints.is_dir() or not any(checkpoints.iterdir()):
        raise NotFoundError(f"{name} saved no checkpoint (in {checkpoints}); rerun it instead: faceops job rerun {name}")
    spec = validate(parent["spec"])
    return launch(spec, parent=parent["version"], code_hash=parent["code"]["hash"], checkpoints=checkpoints,
                  secrets=read_secrets(workdir(parent)), into_existing=bool(parent.get("outputs_into_existing")))


def launch(spec: JobSpec, *, parent: int | None | object, code_hash: str | None = None,
           dry_run: bool = False, checkpoints: Path | None = None,
           secrets: dict[str, Any] | None = None, into_existing: bool = False) -> dict[str, Any]:
    """Freeze and start one version (``parent`` may be :data:`LATEST`). Returns the stored record,
    or with ``dry_run`` a plan: ``{"record": ..., "plan": ...}`` describing the version that would
    be created, with secrets masked, and ``skipped`` (reason and checks) when the S3 endpoint did
    not answer the dry run's one quick probe, so the S3 checks were left to the real submit.
    ``checkpoints`` (a folder) seeds the new version's checkpoint folder before it starts;
    ``secrets`` (the parent's secrets file) gives the values of the ``${secret:ID}`` markers a
    rerun's spec kept. ``into_existing`` (kept in the record as ``outputs_into_existing``) lets
    outputs go beside files faceops did not write."""
    backend = get_backend(spec.backend)
    backend.check(spec.to_dict())
    skipped = preflight.s3_skipped(spec.inputs, spec.outputs) if dry_run else None

    def checked(uri: str) -> bool:  # a dry run without a reachable S3 endpoint plans its S3 URIs unchecked
        return not (skipped and storage.is_remote(uri))

    inputs = {channel: _describe_input(uri) if checked(uri) else {"uri": uri, "size": None, "etag": None}
              for channel, uri in spec.inputs.items()}
    preflight.check_outputs({name: uri for name, uri in spec.outputs.items() if checked(uri)},
                            into_existing=into_existing)
    store = Store()
    if store.shared:
        refuse_literal_secrets(spec.to_dict(), spec.backend, shared_store=store.where)
        if spec.backend == "local":
            artifacts.require(store.where)
        if code_hash:
            artifacts.fetch_bundle(code_hash)
    bundle, code = _code(spec, code_hash, store=not dry_run)
    if store.shared and not dry_run and artifacts.root():
        artifacts.upload_bundle(bundle.path, code["hash"])
    if dry_run:
        latest = _latest_version(store, spec.name)
        record = new_record(spec.to_dict(), parent=latest if parent is LATEST else parent, code=code,
                            inputs=inputs, image=_image(spec.image))
        preview = {**record, "version": (latest or 0) + 1}
        plan = backend.plan(Launch(preview, workdir(preview), bundle.path))
        packed = {"path": str(bundle.path), "files": bundle.files, "source_bytes": bundle.source_bytes,
                  "biggest": [list(item) for item in bundle.biggest]}
        return mask({"record": preview, "plan": plan, "bundle": packed, **({"skipped": skipped} if skipped else {})})
    hyperparameters, hidden = hide(spec.hyperparameters, secrets or {})
    record = new_record({**spec.to_dict(), "hyperparameters": hyperparameters}, parent=None if parent is LATEST else parent,
                        code=code, inputs=inputs, image=_image(spec.image))
    if into_existing:
        record["outputs_into_existing"] = True
    record = store.create(record, parent_is_latest=parent is LATEST)
    folder = workdir(record)
    folder.mkdir(parents=True, exist_ok=True)
    write_secrets(folder, hidden)
    if checkpoints is not None:
        shutil.copytree(checkpoints, Contract(folder).checkpoint_dir, dirs_exist_ok=True)
    info = backend.start(Launch(record, folder, bundle.path))
    try:
        record = store.update(record["name"], record["version"], backend_info={**record["backend_info"], **info})
    except RecordFrozen:
        record = store.get(record["name"], record["version"])
    return record


def wait(record: dict[str, Any], on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Follow a version's log until it reaches a terminal state; return the final record."""
    backend = get_backend(record["backend"])
    for line in backend.logs(record, follow=True):
        if on_line:
            on_line(line)
    return refreshed(Store().get(record["name"], record["version"]))


def refreshed(record: dict[str, Any], within: float | None = None) -> dict[str, Any]:
    """The record after its backend had a chance to update a live status.

    A refresh that cannot write (a full disk, a damaged store) leaves the record as stored. With
    ``within`` the check gets that many seconds (it goes on in the background, and its result is
    stored when it ends); a record still being checked then comes back with status ``checking``,
    so ``job list`` answers at once even while a busy store or a slow service holds a check up."""
    if record["status"] in TERMINAL:
        return record

    def check() -> dict[str, Any]:
        try:
            get_backend(record["backend"]).refresh(record)
            return Store().get(record["name"], record["version"])
        except StoreError:
            return record

    if within is None:
        return check()

    answer: queue.Queue[dict[str, Any]] = queue.Queue()
    threading.Thread(target=lambda: answer.put(check()), daemon=True).start()  # daemon: exit need not wait
    try:
        return answer.get(timeout=within)
    except queue.Empty:
        return {**record, "status": "checking"}


def follow_logs(record: dict[str, Any], follow: bool) -> Iterator[str]:
    """The version's log lines (to the end of the job with ``follow``)."""
    return get_backend(record["backend"]).logs(record, follow=follow)


def stop(record: dict[str, Any], grace: float) -> dict[str, Any]:
    """Stop a live version; a queued one that never started is closed right away. A version that
    is already terminal still has whatever of it runs on (its supervisor died) killed, and the
    returned record lists those process groups under ``killed_leftovers``."""
    record = refreshed(record)
    if record["status"] in TERMINAL:
        killed = get_backend(record["backend"]).leftovers(record)
        return {**record, "killed_leftovers": killed} if killed else record
    get_backend(record["backend"]).stop(record, grace=grace)
    if record["status"] == "queued" and not record["backend_info"]:
        try:
            Store().update(record["name"], record["version"], status="stopped", reason="stopped before it started")
        except RecordFrozen:
            pass
    return Store().get(record["name"], record["version"])


def publish(record: dict[str, Any], into_existing: bool = False, force: bool = False) -> list[str]:
    """Upload a finished local version's outputs again from its folder (after an upload that
    failed, or to a place that lost them), without training again. Returns the URIs written.
    Only the outputs of a version whose job finished (``done``, or failed while uploading) are
    known to be whole: any other needs ``force``, and the manifest says which version and state
    the files came from and whether they are complete."""
    if record["backend"] != "local":
        raise FaceopsError(f"{record['name']}:{record['version']} ran on {record['backend']}, which wrote its "
                           "outputs itself; only local versions keep theirs to publish again")
    if record["status"] not in TERMINAL:
        raise FaceopsError(f"{record['name']}:{record['version']} is {record['status']}; publish it once it has ended")
    ref = f"{record['name']}:{record['version']}"
    whole = record["status"] == "done" or any(h["status"] == "uploading" for h in record.get("status_history", []))
    if not whole and not force:
        raise FaceopsError(f"{ref} is {record['status']} and its job did not finish: its outputs may be partial, so "
                           "they are not published; pass --force to publish them anyway (the manifest will say so)")
    about = {"version": ref, "status": record["status"], "complete": whole}
    contract = Contract(root=workdir(record), channels=list(record["spec"]["inputs"]), outputs=list(record["spec"]["outputs"]))
    written = []
    for name, uri in record["spec"]["outputs"].items():
        folder = contract.output_dir(name)
        if not folder.is_dir() or not any(folder.iterdir()):
            raise NotFoundError(f"output {name}: {folder} is empty; {record['name']}:{record['version']} left nothing to publish")
        storage.upload(folder, uri, progress=False,
                       into_existing=into_existing or bool(record.get("outputs_into_existing")), about=about)
        written.append(uri)
    return written


def _describe_input(uri: str) -> dict[str, Any]:
    """URI, size and ETag of an input; NotFoundError/StorageError when it cannot be read."""
    info = storage.stat(uri)
    return {"uri": uri, "size": info.size, "etag": info.etag}


def _code(spec: JobSpec, code_hash: str | None, store: bool) -> tuple[Bundle, dict[str, Any]]:
    """The code bundle: the spec's ``code`` folder for custom jobs, faceops itself for built-in
    tasks, or the stored bundle ``code_hash`` when a rerun keeps its parent's code."""
    if spec.code:
        root, include = Path(spec.code), None
    else:
        root, include = faceops_root(), [name for name in FACEOPS_CODE if (faceops_root() / name).exists()]
    if code_hash:
        bundle = stored_bundle(code_hash)
    else:
        bundle = build_bundle(root, include) if store else plan_bundle(root, include)
    code = {"hash": bundle.sha256, "size": bundle.size, "files": bundle.files, "source": str(root), **git_state(root)}
    if bundle.vanished:
        code["vanished"] = list(bundle.vanished)
    return bundle, code


def _image(ref: str | None) -> dict[str, Any] | None:
    """Image reference plus the digest recorded when it was pushed (None when unknown)."""
    if not ref:
        return None
    return {"ref": ref, "digest": lookup(ref)}


def _latest_version(store: Store, name: str) -> int | None:
    try:
        return store.get(name)["version"]
    except NotFoundError:
        return None
