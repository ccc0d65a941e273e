"""Submitting versions: freeze a spec into a version record and hand it to its backend.

``submit`` and ``rerun`` share one path (:func:`launch`): check the inputs exist and note their
sizes/ETags, pack or reuse the code bundle, resolve the image digest, then either describe what
would happen (``dry_run``, which writes nothing) or store the record and start the backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from images.digests import lookup
from jobs.backends import Launch, get_backend
from jobs.core.bundle import FACEOPS_CODE, Bundle, build_bundle, faceops_root, git_state, stored_bundle
from jobs.core.errors import NotFoundError
from jobs.spec import JobSpec, validate
from jobs.store import TERMINAL, RecordFrozen, Store, new_record, workdir


def submit(spec: JobSpec, *, dry_run: bool = False) -> dict[str, Any]:
    """A new version of ``spec.name`` whose parent is the job's latest version (if any), so
    ``job versions`` shows what changed since the last run."""
    try:
        parent = Store().get(spec.name)["version"]
    except NotFoundError:
        parent = None
    return launch(spec, parent=parent, dry_run=dry_run)


def rerun(ref: str, overrides: list[str] | tuple[str, ...] = (), *, new_code: bool = False,
          dry_run: bool = False) -> dict[str, Any]:
    """A new version from version ``ref`` with ``overrides`` applied and every other setting kept,
    including the exact code bundle unless ``new_code`` asks to pack the code folder again."""
    parent = Store().resolve(ref)
    spec = validate(parent["spec"], overrides=overrides)
    code_hash = None if new_code else parent["code"]["hash"]
    return launch(spec, parent=parent["version"], code_hash=code_hash, dry_run=dry_run)


def launch(spec: JobSpec, *, parent: int | None, code_hash: str | None = None,
           dry_run: bool = False) -> dict[str, Any]:
    """Freeze and start one version. Returns the stored record, or with ``dry_run`` a plan:
    ``{"record": ..., "plan": ...}`` describing the version that would be created."""
    backend = get_backend(spec.backend)
    inputs = {channel: _describe_input(uri) for channel, uri in spec.inputs.items()}
    bundle, code = _code(spec, code_hash, store=not dry_run)
    record = new_record(spec.to_dict(), parent=parent, code=code, inputs=inputs, image=_image(spec.image))
    store = Store()
    if dry_run:
        preview = {**record, "version": _next_version(store, spec.name)}
        return {"record": preview, "plan": backend.plan(Launch(preview, workdir(preview), bundle.path))}
    record = store.create(record)
    folder = workdir(record)
    folder.mkdir(parents=True, exist_ok=True)
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


def refreshed(record: dict[str, Any]) -> dict[str, Any]:
    """The record after its backend had a chance to update a live status."""
    if record["status"] in TERMINAL:
        return record
    get_backend(record["backend"]).refresh(record)
    return Store().get(record["name"], record["version"])


def follow_logs(record: dict[str, Any], follow: bool) -> Iterator[str]:
    """The version's log lines (to the end of the job with ``follow``)."""
    return get_backend(record["backend"]).logs(record, follow=follow)


def stop(record: dict[str, Any], grace: float) -> dict[str, Any]:
    """Stop a live version; a queued one that never started is closed right away."""
    record = refreshed(record)
    if record["status"] in TERMINAL:
        return record
    get_backend(record["backend"]).stop(record, grace=grace)
    if record["status"] == "queued" and not record["backend_info"]:
        try:
            Store().update(record["name"], record["version"], status="stopped", reason="stopped before it started")
        except RecordFrozen:
            pass
    return Store().get(record["name"], record["version"])


def _describe_input(uri: str) -> dict[str, Any]:
    """URI, size and ETag of an input; NotFoundError/StorageError when it cannot be read."""
    from jobs.core import storage

    info = storage.stat(uri)
    return {"uri": uri, "size": info.size, "etag": info.etag}


def _code(spec: JobSpec, code_hash: str | None, store: bool) -> tuple[Bundle, dict[str, Any]]:
    """The code bundle: the spec's ``code`` folder for custom jobs, faceops itself for built-in
    tasks, or the stored bundle ``code_hash`` when a rerun keeps its parent's code."""
    if spec.code:
        root, include = Path(spec.code), None
    else:
        root, include = faceops_root(), [name for name in FACEOPS_CODE if (faceops_root() / name).exists()]
    bundle = stored_bundle(code_hash) if code_hash else build_bundle(root, include, store=store)
    return bundle, {"hash": bundle.sha256, "size": bundle.size, "files": bundle.files, "source": str(root), **git_state(root)}


def _image(ref: str | None) -> dict[str, Any] | None:
    """Image reference plus the digest recorded when it was pushed (None when unknown)."""
    if not ref:
        return None
    return {"ref": ref, "digest": lookup(ref)}


def _next_version(store: Store, name: str) -> int:
    try:
        return store.get(name)["version"] + 1
    except NotFoundError:
        return 1
