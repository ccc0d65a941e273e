"""Bytes and seconds to get a one-line code change into a job: our hash-addressed code bundle
against rebuilding and pushing a training image that contains the code.

Both run in one go against a private Docker engine and htpasswd registry on loopback (the test
suite's own service helpers). The image holds the faceops code plus a dependency layer made of
the real installed files of the training dependencies (``--deps``, default mxnet and numpy),
fetched by a RUN step the way ``pip install`` fetches wheels. Each layout is built and pushed
once, then the same line is added to the code, and the rebuild + push is measured; bytes are what
the registry stored for it. Two Dockerfile layouts are measured:

- ``naive``: code copied before the dependencies are installed (any code change reruns the install);
- ``layered``: dependencies first, code last (Docker then re-pushes only the code layer).

Ratio = image bytes (naive layout) / bundle bytes; ``ratio_layered`` is the same against the
layered layout. Goal: 100x fewer bytes.
Run: .venv/bin/python benchmarks/image_push.py [--deps mxnet numpy]
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path

from common import ROOT, parse_args, report  # first: it puts this checkout on sys.path
from images import login, push
from images.build import build
from jobs.core.bundle import FACEOPS_CODE, build_bundle, extract_bundle
from tests.harness.docker import busybox_rootfs, import_image, running_docker_engine
from tests.harness.net import ServerThread
from tests.harness.registry import running_registry

CHANGED_FILE = "jobs/core/contract.py"
LAYOUTS = {
    "naive": ("ARG BASE\nFROM ${BASE}\nCOPY code/ /opt/ml/code/\nARG DEPS_URL\n"
              "RUN mkdir -p /opt/venv && wget -qO- \"$DEPS_URL\" | tar -x -C /opt/venv\n"),
    "layered": ("ARG BASE\nFROM ${BASE}\nARG DEPS_URL\n"
                "RUN mkdir -p /opt/venv && wget -qO- \"$DEPS_URL\" | tar -x -C /opt/venv\n"
                "COPY code/ /opt/ml/code/\n"),
}


def dependency_tar(names: list[str], dest: Path) -> int:
    """The installed files of distributions ``names`` (from this interpreter) as one tar; its size."""
    with tarfile.open(dest, "w") as tar:
        for name in names:
            dist = metadata.distribution(name)
            for file in dist.files or []:
                path = Path(dist.locate_file(file))
                if path.is_file():
                    tar.add(path, arcname=f"site-packages/{file}")
    return dest.stat().st_size


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        """Requests are not news here."""


def serve(folder: Path) -> ServerThread:
    """A loopback HTTP server for ``folder`` (the package index stand-in the RUN step fetches from)."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    return ServerThread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def change_one_line(code: Path) -> None:
    with open(code / CHANGED_FILE, "a") as fh:
        fh.write(f"# tuned at {time.time()}\n")


def image_round(layout: str, work: Path, base: str, deps_url: str, registry, say) -> dict:
    """Build and push the layout once, change one line, rebuild and push again (measured)."""
    context = work / layout
    extract_bundle(build_bundle(ROOT, FACEOPS_CODE, store=False).path, context / "code")
    (context / "Dockerfile").write_text(LAYOUTS[layout])
    ref = f"{registry.host}/bench/{layout}:latest"
    args = {"DEPS_URL": deps_url}
    build(dockerfile=context / "Dockerfile", tag=ref, base=base, build_args=args, echo=lambda line: None)
    push.push(ref, progress=False, say=say)
    change_one_line(context / "code")
    stored = folder_bytes(registry.storage)
    start = time.perf_counter()
    built = build(dockerfile=context / "Dockerfile", tag=ref, base=base, build_args=args, echo=lambda line: None)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    pushed = push.push(ref, progress=False, say=say)
    push_s = time.perf_counter() - start
    return {"bytes": folder_bytes(registry.storage) - stored, "build_s": round(build_s, 2), "push_s": round(push_s, 2),
            "seconds": round(build_s + push_s, 2), "image_bytes": built.size, "layers_pushed": len(pushed.pushed),
            "layers_skipped": len(pushed.skipped)}


def bundle_round(work: Path) -> dict:
    """The same one-line change shipped as a code bundle: pack the changed code (hash-addressed)."""
    code = work / "bundle-code"
    extract_bundle(build_bundle(ROOT, FACEOPS_CODE, store=False).path, code)
    change_one_line(code)
    start = time.perf_counter()
    bundle = build_bundle(code, FACEOPS_CODE, store=False)
    seconds = time.perf_counter() - start
    shutil.rmtree(bundle.path.parent, ignore_errors=True)
    return {"bytes": bundle.size, "seconds": round(seconds, 3), "files": bundle.files}


def main() -> None:
    args = parse_args(__doc__, {
        "--deps": {"nargs": "+", "default": ["mxnet", "numpy"],
                   "help": "installed distributions that make up the image's dependency layer"},
    })
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faceops-bench-")))
        engine = stack.enter_context(running_docker_engine())
        (work / "registry").mkdir()
        registry = stack.enter_context(running_registry(work / "registry"))
        os.environ.update(DOCKER_HOST=engine.host, DOCKER_CONFIG=str(work / "docker-config"))
        login.login(registry.host, registry.user, registry.password)
        base = import_image(engine, busybox_rootfs(), "faceops-bench/busybox:latest")
        (work / "index").mkdir()
        deps_size = dependency_tar(args.deps, work / "index" / "deps.tar")
        deps_url = f"{stack.enter_context(serve(work / 'index')).endpoint}/deps.tar"
        print(f"dependency layer: {', '.join(args.deps)} = {deps_size / 1e6:.1f} MB installed", file=sys.stderr)
        ours = bundle_round(work)
        images = {layout: image_round(layout, work, base, deps_url, registry, say) for layout in LAYOUTS}
    print(f"code bundle     : {ours['bytes'] / 1e3:9.1f} kB  {ours['seconds']:7.3f} s  ({ours['files']} files)")
    for layout, row in images.items():
        print(f"image {layout:<9} : {row['bytes'] / 1e3:9.1f} kB  {row['seconds']:7.2f} s  "
              f"(build {row['build_s']} s, push {row['push_s']} s, {row['layers_pushed']} layers pushed, "
              f"{row['layers_skipped']} skipped; image {row['image_bytes'] / 1e6:.0f} MB)")
    report("image_push", round(images["naive"]["bytes"] / ours["bytes"], 1), 100,
           ratio_layered=round(images["layered"]["bytes"] / ours["bytes"], 2),
           seconds_ratio=round(images["naive"]["seconds"] / max(ours["seconds"], 1e-3), 1),
           seconds_ratio_layered=round(images["layered"]["seconds"] / max(ours["seconds"], 1e-3), 1),
           bundle_bytes=ours["bytes"], image_bytes_naive=images["naive"]["bytes"],
           image_bytes_layered=images["layered"]["bytes"], deps=args.deps)


if __name__ == "__main__":
    main()
