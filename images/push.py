"""Pushing an image to a registry with one progress bar per layer. The engine skips layers the
registry already has (they show as ``exists``), transient failures are retried (a retried push
only sends what is still missing), and the final digest is printed and recorded with
:mod:`images.digests` so job versions can name the image by digest."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from images import digests
from images.engine import client
from images.registry import RegistryError, is_denied, repo_and_tag, retrying, split_ref
from jobs.core.errors import NotFoundError
from jobs.core.lazy import docker as sdk


@dataclass
class PushResult:
    """Where the image went, its manifest digest, and which layers were sent or already there."""

    ref: str
    digest: str
    pushed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def pinned(self) -> str:
        """``REPO@sha256:...``: the reference that always means exactly this image."""
        return f"{repo_and_tag(self.ref)[0]}@{self.digest}"


def destination(ref: str, registry: str | None) -> str:
    """The reference to push: ``ref`` itself, or its last name part and tag under ``registry``
    (``HOST[/NAMESPACE]``): ``faceops/train:gpu`` + ``swr.x.com/team`` -> ``swr.x.com/team/train:gpu``."""
    if not registry:
        return ref
    _, repo, tag = split_ref(ref)
    return f"{registry.rstrip('/')}/{repo.rsplit('/', 1)[-1]}:{tag}"


def push(ref: str, registry: str | None = None, progress: bool = True,
         say: Callable[[str], None] = print) -> PushResult:
    """Push local image ``ref`` (tagged first as ``destination(ref, registry)``) and record its digest."""
    docker = client()
    target = destination(ref, registry)
    host = split_ref(target)[0]
    if target != ref:
        _tag(docker, ref, target)
    result = retrying(lambda: _push_once(docker, target, progress), host, say=say)
    digests.record(target, result.digest)
    return result


def _tag(docker, ref: str, target: str) -> None:
    repository, tag = repo_and_tag(target)
    try:
        docker.api.tag(ref, repository, tag)
    except sdk.errors.ImageNotFound:
        raise NotFoundError(f"no local image {ref}; build it first (faceops image build)") from None


def _push_once(docker, target: str, progress: bool) -> PushResult:
    """One push attempt: stream the engine's events into per-layer bars; errors become
    :class:`RegistryError` (transient ones are retried by the caller)."""
    from tqdm import tqdm

    host, _, _ = split_ref(target)
    repository, tag = repo_and_tag(target)
    result = PushResult(ref=target, digest="")
    bars: dict[str, tqdm] = {}
    try:
        for event in docker.api.push(repository, tag, stream=True, decode=True):
            if "error" in event:
                raise RegistryError(_explain(host, target, (event.get("errorDetail") or {}).get("message") or event["error"]))
            layer, status = event.get("id"), event.get("status", "")
            if "aux" in event and event["aux"].get("Digest"):
                result.digest = event["aux"]["Digest"]
            if not layer or layer == tag:
                continue
            bar = bars.get(layer)
            if bar is None:
                bar = bars[layer] = tqdm(desc=layer, unit="B", unit_scale=True, disable=not progress, leave=True)
            _advance(bar, status, event.get("progressDetail") or {}, layer, result)
    except sdk.errors.ImageNotFound:
        raise NotFoundError(f"no local image {target}; build it first (faceops image build)") from None
    except sdk.errors.APIError as exc:
        message = exc.explanation or str(exc)
        if "does not exist" in message or "No such image" in message:
            raise NotFoundError(f"no local image {target}; build it first (faceops image build)") from None
        raise RegistryError(_explain(host, target, message)) from None
    finally:
        for bar in bars.values():
            bar.close()
    if not result.digest:
        raise RegistryError(f"{host} did not report a digest for {target}")
    return result


def _advance(bar, status: str, detail: dict, layer: str, result: PushResult) -> None:
    """Move one layer's bar for one engine event and note the layer's outcome."""
    if status == "Pushing" and detail.get("total"):
        bar.total = max(detail["total"], detail.get("current", 0))
        bar.n = detail.get("current", 0)
        bar.set_postfix_str("pushing", refresh=True)
    elif status == "Pushed":
        bar.n = bar.total = bar.total or bar.n
        bar.set_postfix_str("pushed", refresh=True)
        result.pushed.append(layer)
    elif status == "Layer already exists" or status.startswith("Mounted from"):
        bar.set_postfix_str("exists, skipped", refresh=True)
        result.skipped.append(layer)


def _explain(host: str, target: str, message: str) -> str:
    if is_denied(message):
        return (f"{host} refused the push of {target}: {message.strip()}; "
                f"log in first with `faceops image login {host}`")
    return f"pushing {target} to {host} failed: {message.strip()}"
