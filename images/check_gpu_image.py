"""Build the GPU training image without any registry and check that it lacks nothing but the driver.

    sudo python -m images.check_gpu_image [--ca-bundle FILE] [--pip-options "..."] [--cache DIR]

The base is Debian bookworm debootstrapped from this machine's apt mirror and imported into the
engine at ``DOCKER_HOST``; Python 3.11 comes from Debian and the CUDA 11 libraries from NVIDIA's
PyPI wheels, so only PyPI and a Debian mirror must be reachable. Then ``ldd`` on ``libmxnet.so``
inside the image must report nothing missing but ``libcuda.so.1``, which the NVIDIA container
runtime mounts from the host. It downloads about 3 GB, so it is a developer's check, not a test:
prints one JSON line (build seconds, image size, what ldd found missing, where each CUDA library
was found) and exits 0 when the check holds, 1 when it does not.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from images.build import build
from images.debian_base import BUILD_CA, host_mirror, import_rootfs, rootfs
from images.engine import client

DRIVER_LIBRARY = "libcuda.so.1"
LDD = "ldd $(find /opt/venv -name libmxnet.so)"


def check(cache: Path, ca_bundle: Path | None, pip_options: str) -> dict:
    """Build, run ldd in the image, and report; ``ok`` when only the driver library is missing."""
    docker = client()
    tarball = rootfs(cache, "bookworm", ("python3.11",), host_mirror("bookworm"), ca_bundle)
    base = import_rootfs(docker, tarball, f"faceops/debian:{tarball.stem}")
    options = " ".join(filter(None, [pip_options, f"--cert {BUILD_CA}" if ca_bundle else ""]))
    started = time.monotonic()
    result = build(target="gpu", base=base, build_args={"PIP_OPTIONS": options} if options else {},
                   echo=lambda line: print(line, file=sys.stderr))
    seconds = time.monotonic() - started
    listing = docker.containers.run(result.ref, ["sh", "-c", LDD], remove=True, network_mode="none").decode()
    missing = sorted(set(re.findall(r"^\s*(\S+) => not found", listing, flags=re.M)))
    found = dict(re.findall(r"^\s*(lib(?:cu|nv|nccl)\S*) => (/\S+)", listing, flags=re.M))
    return {"ref": result.ref, "built_now": result.built, "build_s": round(seconds), "size_bytes": result.size,
            "missing": missing, "cuda_libraries": found, "ok": missing == [DRIVER_LIBRARY]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "faceops-images",
                        help="where the debootstrapped root file system is kept")
    parser.add_argument("--ca-bundle", type=Path, help="CA bundle for pip behind a TLS-inspecting proxy")
    parser.add_argument("--pip-options", default="", help="more pip options, e.g. --index-url URL")
    args = parser.parse_args(argv)
    report = check(args.cache, args.ca_bundle, args.pip_options)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
