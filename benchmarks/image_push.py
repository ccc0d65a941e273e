"""Bytes and seconds from a one-line code change to the job running with it: our hash-addressed
code bundle against rebuilding and pushing a training image that contains the code.

Everything runs against real services on loopback (the test suite's own helpers): a private Docker
engine, an htpasswd registry and a SeaweedFS S3 server. The image holds the faceops code plus a
dependency layer made of the real installed files of the training dependencies (``--deps``,
default mxnet and numpy), fetched by a RUN step the way ``pip install`` fetches wheels. Each
layout is built and pushed once off the clock; then, per round, the same line is added to the code
and each way of shipping it is timed up to a container running with the new code:

- ``bundle`` (ours): pack the code, upload the bundle to S3 as a real submit does (hash-addressed,
  ``jobs.backends.cloud.upload_bundle``), download and unpack it as the job's bootstrap does, run
  a container of the unchanged image with that code mounted;
- ``layered`` (the honest baseline: dependencies first, code last, so Docker rebuilds and re-pushes
  only the code layer): rebuild, push, run a container of the new image;
- ``naive`` (code copied before the dependencies: any code change reruns the install): the same.

The image runs on the engine that built it, so it pays no pull (a training host would pull at
least the changed layer); the bundle pays its download. Bytes are what the registry or S3 stored.
``--rounds`` interleaved rounds, median and spread.
Ratio = layered seconds / bundle seconds (higher is better); goal: 2x. Also bytes against both
layouts and seconds against naive.
Run: .venv/bin/python benchmarks/image_push.py [--deps mxnet numpy] [--rounds 3]
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import statistics
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
from tests.harness.s3 import running_s3

CHANGED_FILE = "jobs/core/contract.py"
STAGING = "s3://bench/faceops"
CHECK = ["tail", "-n", "1", f"/opt/ml/code/{CHANGED_FILE}"]  # the job's first look at its code
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


def prepare_image(layout: str, work: Path, base: str, deps_url: str, registry, say) -> tuple[Path, str]:
    """Build context and tag of ``layout``, built and pushed once (off the clock)."""
    context = work / layout
    extract_bundle(build_bundle(ROOT, FACEOPS_CODE, store=False).path, context / "code")
    (context / "Dockerfile").write_text(LAYOUTS[layout])
    ref = f"{registry.host}/bench/{layout}:latest"
    build(dockerfile=context / "Dockerfile", tag=ref, base=base, build_args={"DEPS_URL": deps_url}, echo=lambda line: None)
    push.push(ref, progress=False, say=say)
    return context, ref


def image_round(context: Path, ref: str, base: str, deps_url: str, registry, client, say) -> dict:
    """Change one line, rebuild, push, run a container of the new image (all on the clock)."""
    args = {"DEPS_URL": deps_url}
    change_one_line(context / "code")
    stored = folder_bytes(registry.storage)
    start = time.perf_counter()
    built = build(dockerfile=context / "Dockerfile", tag=ref, base=base, build_args=args, echo=lambda line: None)
    build_s = time.perf_counter() - start
    pushed = push.push(ref, progress=False, say=say)
    push_s = time.perf_counter() - start - build_s
    out = client.containers.run(ref, CHECK, remove=True, network_mode="none")
    total = time.perf_counter() - start
    assert out.decode().startswith("# tuned at"), out
    return {"bytes": folder_bytes(registry.storage) - stored, "build_s": round(build_s, 2), "push_s": round(push_s, 2),
            "run_s": round(total - build_s - push_s, 2), "seconds": round(total, 2), "image_bytes": built.size,
            "layers_pushed": len(pushed.pushed), "layers_skipped": len(pushed.skipped)}


def bundle_round(code: Path, work: Path, image: str, client) -> dict:
    """The same one-line change shipped as a code bundle: pack, upload to S3 as a submit does,
    download and unpack as the job's bootstrap does, run a container of the unchanged image."""
    from jobs.backends.cloud import BUNDLE_NAME, upload_bundle
    from jobs.core import storage

    change_one_line(code)
    job = work / "job"
    shutil.rmtree(job, ignore_errors=True)
    start = time.perf_counter()
    bundle = build_bundle(code, FACEOPS_CODE, store=False)
    pack_s = time.perf_counter() - start
    folder = upload_bundle(bundle.path, STAGING)
    upload_s = time.perf_counter() - start - pack_s
    fetched = storage.download(folder + BUNDLE_NAME, job / BUNDLE_NAME, progress=False)
    extract_bundle(fetched, job / "code")
    out = client.containers.run(image, CHECK, remove=True, network_mode="none",
                                volumes={str(job / "code"): {"bind": "/opt/ml/code", "mode": "ro"}})
    total = time.perf_counter() - start
    assert out.decode().startswith("# tuned at"), out
    shutil.rmtree(bundle.path.parent, ignore_errors=True)
    return {"bytes": bundle.size, "pack_s": round(pack_s, 3), "upload_s": round(upload_s, 3),
            "fetch_run_s": round(total - pack_s - upload_s, 2), "seconds": round(total, 2), "files": bundle.files}


def median_row(rows: list[dict]) -> dict:
    """Per key, the median over rounds (numbers) or the first round's value."""
    return {key: statistics.median(r[key] for r in rows) if isinstance(rows[0][key], (int, float)) else rows[0][key]
            for key in rows[0]}


def main() -> None:
    args = parse_args(__doc__, {
        "--deps": {"nargs": "+", "default": ["mxnet", "numpy"],
                   "help": "installed distributions that make up the image's dependency layer"},
        "--rounds": {"type": int, "default": 3},
    })
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faceops-bench-")))
        engine = stack.enter_context(running_docker_engine())
        client = engine.client()
        (work / "registry").mkdir()
        registry = stack.enter_context(running_registry(work / "registry"))
        s3 = stack.enter_context(running_s3(work / "s3"))
        s3.client().create_bucket(Bucket="bench")
        os.environ.update(DOCKER_HOST=engine.host, DOCKER_CONFIG=str(work / "docker-config"), **s3.env())
        login.login(registry.host, registry.user, registry.password)
        base = import_image(engine, busybox_rootfs(), "faceops-bench/busybox:latest")
        (work / "index").mkdir()
        deps_size = dependency_tar(args.deps, work / "index" / "deps.tar")
        deps_url = f"{stack.enter_context(serve(work / 'index')).endpoint}/deps.tar"
        print(f"dependency layer: {', '.join(args.deps)} = {deps_size / 1e6:.1f} MB installed", file=sys.stderr)
        images = {layout: prepare_image(layout, work, base, deps_url, registry, say) for layout in LAYOUTS}
        job_image = f"{registry.host}/bench/job:latest"  # the unchanged image bundle jobs run
        client.images.get(images["layered"][1]).tag(job_image)
        code = work / "bundle-code"
        extract_bundle(build_bundle(ROOT, FACEOPS_CODE, store=False).path, code)
        rounds: dict[str, list[dict]] = {"bundle": [], "layered": [], "naive": []}
        for _ in range(args.rounds):
            rounds["bundle"].append(bundle_round(code, work, job_image, client))
            for layout in ("layered", "naive"):
                rounds[layout].append(image_round(*images[layout], base, deps_url, registry, client, say))
    med = {side: median_row(rows) for side, rows in rounds.items()}
    spread = {side: f"{min(r['seconds'] for r in rows):.2f}-{max(r['seconds'] for r in rows):.2f}"
              for side, rows in rounds.items()}
    ours = med["bundle"]
    print(f"{args.rounds} rounds, medians; load average {os.getloadavg()[0]:.1f}")
    print(f"code bundle     : {ours['bytes'] / 1e3:9.1f} kB  {ours['seconds']:6.2f} s ({spread['bundle']})  "
          f"(pack {ours['pack_s']} s, S3 upload {ours['upload_s']} s, download + unpack + run {ours['fetch_run_s']} s; "
          f"{ours['files']} files)")
    for layout in ("layered", "naive"):
        row = med[layout]
        print(f"image {layout:<9} : {row['bytes'] / 1e3:9.1f} kB  {row['seconds']:6.2f} s ({spread[layout]})  "
              f"(build {row['build_s']} s, push {row['push_s']} s, run {row['run_s']} s, {row['layers_pushed']} "
              f"layers pushed, {row['layers_skipped']} skipped; image {row['image_bytes'] / 1e6:.0f} MB)")
    ratio = med["layered"]["seconds"] / ours["seconds"]
    print(f"goal: 2x faster than the layered image: {'met' if ratio >= 2 else 'NOT met'} ({ratio:.1f}x)")
    report("image_push", round(ratio, 1), 2.0, goal_met=ratio >= 2,
           bytes_ratio_layered=round(med["layered"]["bytes"] / ours["bytes"], 2),
           bytes_ratio_naive=round(med["naive"]["bytes"] / ours["bytes"], 1),
           seconds_ratio_naive=round(med["naive"]["seconds"] / ours["seconds"], 1),
           seconds={side: [r["seconds"] for r in rows] for side, rows in rounds.items()},
           bundle_bytes=ours["bytes"], image_bytes_layered=med["layered"]["bytes"],
           image_bytes_naive=med["naive"]["bytes"], deps=args.deps, rounds=args.rounds)


if __name__ == "__main__":
    main()
