"""A Debian base image made without any registry: ``debootstrap`` a root file system from a Debian
package mirror and ``docker import`` it. It lets the training images build where Docker Hub cannot
be reached (``faceops image build --base REF``); the CPU image test and the GPU image check use it.

The root file system is cached as a tarball named by the hash of what went into it (suite,
packages, mirror, extra files), so making the same base again costs one import.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from jobs.core.errors import FaceopsError

SOURCES = Path("/etc/apt")
# Where a build-time CA bundle goes in the base: a file of its own, which installing the
# ca-certificates package (a dependency of python3.11-venv) does not overwrite.
BUILD_CA = "/etc/faceops-build-ca.pem"
# The loader and shell need a PATH; `docker import` leaves the image's environment empty.
IMPORT_CHANGES = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def host_mirror(suite: str, sources: Path = SOURCES) -> str | None:
    """The mirror this machine's apt uses for ``suite`` (deb822 ``*.sources`` or one-line
    ``sources.list`` entries), or None: debootstrap then uses its own default."""
    files = sorted((sources / "sources.list.d").glob("*.sources")) + [sources / "sources.list"]
    files += sorted((sources / "sources.list.d").glob("*.list"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, flags=re.M))
                if suite in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                    return fields.get("URIs", "").split()[0] if fields.get("URIs") else None
        else:
            for line in text.splitlines():
                match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if match and match[2] == suite:
                    return match[1]
    return None


def rootfs(cache_dir: Path, suite: str = "bookworm", packages: tuple[str, ...] = ("python3.11",),
           mirror: str | None = None, ca_bundle: Path | None = None) -> Path:
    """A tarball of a minimal ``suite`` root file system with ``packages``, made by debootstrap
    (needs root) or found in ``cache_dir``. ``ca_bundle`` is copied to :data:`BUILD_CA` for
    builds behind a TLS-inspecting proxy (``--build-arg PIP_OPTIONS="--cert /etc/faceops-build-ca.pem"``)."""
    debootstrap = shutil.which("debootstrap")
    key = hashlib.sha256(json.dumps({
        "suite": suite, "packages": sorted(packages), "mirror": mirror,
        "ca": hashlib.sha256(ca_bundle.read_bytes()).hexdigest() if ca_bundle else None,
    }, sort_keys=True).encode()).hexdigest()[:16]
    tarball = cache_dir / f"debian-{suite}-{key}.tar"
    if tarball.exists():
        return tarball
    if debootstrap is None:
        raise FaceopsError("debootstrap not found (Debian package debootstrap)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        target = Path(scratch) / "root"
        command = [debootstrap, "--variant=minbase", f"--include={','.join(packages)}", suite, str(target)]
        done = subprocess.run(command + ([mirror] if mirror else []), capture_output=True, text=True)
        if done.returncode != 0:
            raise FaceopsError(f"debootstrap {suite} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        # The downloaded packages are installed already: keep them out of every image built on it.
        for deb in (target / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        if ca_bundle:
            shutil.copyfile(ca_bundle, target / BUILD_CA.lstrip("/"))
        partial = Path(scratch) / tarball.name
        with tarfile.open(partial, "w") as tar:
            tar.add(target, arcname=".")
        partial.replace(tarball)
    return tarball


def import_rootfs(client, tarball: Path, ref: str) -> str:
    """``docker import`` the tarball as ``ref`` (with a PATH) on the engine of docker SDK ``client``."""
    repository, _, tag = ref.rpartition(":")
    client.api.import_image_from_file(str(tarball), repository=repository, tag=tag, changes=IMPORT_CHANGES)
    return ref
