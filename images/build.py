"""Building images with the docker SDK's low-level API, so the build log can be streamed compactly
(one line per step; a failing step's output in full).

The tag is derived from a content hash of the build context (Dockerfile, requirements, wrapper
scripts, the container-contract modules they import) and the build arguments, and the hash is stored as an image label: building something
that has not changed finds the image already there and returns at once instead of rebuilding.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from images.engine import client as engine
from jobs.core.bundle import Bundle, build_bundle
from jobs.core.errors import FaceopsError
from jobs.core.lazy import docker as sdk

IMAGES_DIR = Path(__file__).resolve().parent
TARGETS = {"gpu": "Dockerfile.gpu", "cpu": "Dockerfile.cpu"}
DEFAULT_TARGET = "gpu"
# What a target's build context holds besides its Dockerfile (what the Dockerfile copies, so that
# nothing else changes its content hash): the code is shipped as a bundle, never baked in; only the
# standard-library modules the image's scripts import come from jobs/core.
SHARED_CONTEXT = ("install-deps.sh", "service-user.sh", "requirements.txt", "requirements-nodeps.txt", "bin")
TARGET_CONTEXT = {"gpu": (*SHARED_CONTEXT, "requirements-cuda11.txt"), "cpu": SHARED_CONTEXT}
# The standard-library modules of jobs/core the images carry next to their scripts, found by
# name rather than imported, so that `faceops --help` (which reads TARGETS) stays cheap.
SHARED_MODULES = {f"{name}.py": Path(__file__).resolve().parents[1] / "jobs" / "core" / f"{name}.py"
                  for name in ("contract", "launch")}
DEFAULT_REPO = "faceops/train"
HASH_LABEL = "org.faceops.content-hash"
STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
OUTPUT_KEPT = 60


class BuildError(FaceopsError):
    """A Dockerfile could not be built; the message holds the failing step and its output."""


@dataclass(frozen=True)
class BuildResult:
    """The image a build produced (or found already built): reference, id, size in bytes, the
    content hash its tag derives from, and whether it was built now."""

    ref: str
    image_id: str
    size: int
    content_hash: str
    built: bool


def build(target: str | None = None, dockerfile: Path | None = None, tag: str | None = None,
          base: str | None = None, build_args: dict[str, str] | None = None,
          echo: Callable[[str], None] = print, verbose: bool = False,
          cache_from: list[str] | None = None) -> BuildResult:
    """Build the faceops ``target`` (``gpu`` or ``cpu``) or a user's ``dockerfile`` (its folder is
    the context). ``base`` overrides the ``BASE`` build argument (the image to build FROM);
    ``cache_from`` names images (pulled or loaded) whose layers the build may reuse."""
    with _staged(target, dockerfile, tag, base, build_args) as (bundle, name, args, digest, ref):
        docker = engine()
        found = _existing(docker, ref, digest)
        if found:
            echo(f"{ref} is up to date (content {digest[:12]}); not rebuilt")
            return BuildResult(ref, found["Id"], found["Size"], digest, built=False)
        echo(f"building {ref} from {name} (content {digest[:12]})")
        with open(bundle.path, "rb") as fh:
            image_id = _stream(docker, fh, name, ref, args, {HASH_LABEL: digest}, echo, verbose, cache_from)
        size = docker.api.inspect_image(image_id)["Size"]
        return BuildResult(ref, image_id, size, digest, built=True)


def plan(target: str | None = None, dockerfile: Path | None = None, tag: str | None = None,
         base: str | None = None, build_args: dict[str, str] | None = None) -> dict[str, object]:
    """What :func:`build` would do, without an engine: the Dockerfile (path and text), the image
    it builds FROM (``base``, else the Dockerfile's ``ARG BASE`` default), the build args, the
    tag and the content hash it derives from, and the number of files in the context."""
    with _staged(target, dockerfile, tag, base, build_args) as (bundle, name, args, digest, ref):
        path = IMAGES_DIR / name if target else Path(dockerfile).resolve()
        text = path.read_text()
        default = re.search(r"^ARG BASE=(\S+)", text, re.MULTILINE)
        return {"ref": ref, "content_hash": digest, "dockerfile": str(path), "base": base or (default and default.group(1)),
                "build_args": args, "context_files": bundle.files, "dockerfile_text": text}


@contextmanager
def _staged(target: str | None, dockerfile: Path | None, tag: str | None, base: str | None,
            build_args: dict[str, str] | None) -> Iterator[tuple[Bundle, str, dict[str, str], str, str]]:
    """The build context packed (removed afterwards), the Dockerfile's name in it, the build
    args (``base`` as ``BASE``), the content hash and the tag it gives."""
    context, name, kind = _context(target, dockerfile)
    args = {**(build_args or {}), **({"BASE": base} if base else {})}
    with tempfile.TemporaryDirectory(prefix="faceops-context-") as staged:
        if target:
            context = _target_context(target, Path(staged))
        bundle = build_bundle(context, store=False)
    try:
        digest = content_hash(bundle.sha256, name, args)
        yield bundle, name, args, digest, tag or f"{DEFAULT_REPO if target else _repo_for(context)}:{kind}-{digest[:12]}"
    finally:
        shutil.rmtree(bundle.path.parent, ignore_errors=True)


def content_hash(context_sha256: str, dockerfile: str, build_args: dict[str, str]) -> str:
    """sha256 over the context tarball's hash, the Dockerfile's name and the sorted build args."""
    payload = json.dumps({"context": context_sha256, "dockerfile": dockerfile, "args": build_args}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _context(target: str | None, dockerfile: Path | None) -> tuple[Path, str, str]:
    """(context folder, Dockerfile name inside it, the tag's prefix) for a target or a file."""
    if (target is None) == (dockerfile is None):
        raise FaceopsError("give either a target (gpu or cpu) or a Dockerfile, not both")
    if target is not None:
        if target not in TARGETS:
            raise FaceopsError(f"unknown image target '{target}'; known: {', '.join(TARGETS)}")
        return IMAGES_DIR, TARGETS[target], target
    path = Path(dockerfile).resolve()
    if not path.is_file():
        raise FaceopsError(f"Dockerfile {dockerfile} does not exist")
    return path.parent, path.name, "custom"


def _target_context(target: str, into: Path) -> Path:
    """Lay a target's build context out in ``into``: its Dockerfile, requirements and scripts from
    images/, and the shared modules from jobs/core (which the Dockerfiles copy next to the scripts)."""
    for name in (TARGETS[target], *TARGET_CONTEXT[target]):
        source = IMAGES_DIR / name
        if source.is_dir():
            shutil.copytree(source, into / name)
        else:
            shutil.copy2(source, into / name)
    for name, source in SHARED_MODULES.items():
        shutil.copy2(source, into / name)
    return into


def _repo_for(context: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", context.name.lower()).strip("-._") or "image"
    return f"faceops/{name}"


def _existing(docker, ref: str, digest: str) -> dict | None:
    """The image ``ref`` when it exists and was built from the same content, else None."""
    try:
        info = docker.api.inspect_image(ref)
    except sdk.errors.ImageNotFound:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    return info if labels.get(HASH_LABEL) == digest else None


def _stream(docker, context, dockerfile: str, ref: str, args: dict[str, str], labels: dict[str, str],
            echo: Callable[[str], None], verbose: bool, cache_from: list[str] | None = None) -> str:
    """Run the build, echoing one line per step; raise :class:`BuildError` with the failing step
    and its output. Returns the image id."""
    step, output, image_id = "", deque(maxlen=OUTPUT_KEPT), None
    try:
        events = docker.api.build(fileobj=context, custom_context=True, encoding="gzip", dockerfile=dockerfile,
                                  tag=ref, buildargs=args, labels=labels, network_mode="host", rm=True,
                                  forcerm=True, decode=True, cache_from=cache_from)
        for event in events:
            if "error" in event:
                detail = (event.get("errorDetail") or {}).get("message") or event["error"]
                raise BuildError(_failure(step, detail, output))
            if "aux" in event and "ID" in (event["aux"] or {}):
                image_id = event["aux"]["ID"]
            for line in (event.get("stream") or "").splitlines():
                match = STEP.match(line)
                if match:
                    step = f"[{match[1]}/{match[2]}] {match[3]}"
                    output.clear()
                    echo(step)
                elif line.strip() and not line.startswith(" ---> "):
                    output.append(line)
                    if verbose:
                        echo(f"    {line}")
    except sdk.errors.APIError as exc:
        raise BuildError(_failure(step, exc.explanation or str(exc), output)) from None
    if image_id is None:
        raise BuildError(_failure(step, "the engine reported no image id", output))
    return image_id


def _failure(step: str, error: str, output: deque) -> str:
    where = f"step {step} failed" if step else "the build failed before its first step"
    shown = "\n".join(f"    {line}" for line in output)
    return f"{where}: {error.strip()}" + (f"\n  output of that step:\n{shown}" if shown else "")
