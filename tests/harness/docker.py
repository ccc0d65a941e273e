"""A private Docker engine for tests and benchmarks (dockerd with its socket and data in a
temporary folder, no network set-up) and the busybox images to build FROM, as there is no
Docker Hub here."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.harness.process import running


@dataclass(frozen=True)
class DockerEngine:
    """A private Docker engine: its API address (``unix://.../docker.sock``) and state folder."""

    host: str
    root: Path

    def client(self):
        """A docker SDK client for fixtures and assertions that must not go through faceops."""
        import docker

        return docker.DockerClient(base_url=self.host, timeout=300)


@contextmanager
def running_docker_engine(storage_driver: str | None = "vfs") -> Iterator[DockerEngine]:
    """dockerd with its socket, data and exec roots in a fresh temporary folder (vfs storage, no
    iptables, no bridge), stopped and the folder removed afterwards. RuntimeError says why it
    cannot start. ``storage_driver=None`` lets dockerd pick (overlay2 where the kernel has it):
    vfs copies a whole image for every container, a minute for a 1 GB image."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("dockerd not found (Debian package docker.io; scripts/setup-dev.sh installs it)")
    if os.geteuid() != 0:
        raise RuntimeError("dockerd needs root")
    # A short private folder: the engine's unix sockets must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="faceops-docker-"))
    engine = DockerEngine(host=f"unix://{root / 'docker.sock'}", root=root)
    command = [dockerd, f"--host={engine.host}", f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}",
               f"--pidfile={root / 'docker.pid'}", "--iptables=false", "--ip6tables=false", "--bridge=none",
               "--ip-masq=false", *([f"--storage-driver={storage_driver}"] if storage_driver else [])]
    try:
        with running(command, root / "dockerd.log", lambda: engine.client().ping(), timeout=60.0, grace=20.0,
                     start_new_session=True):
            yield engine
    finally:
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root`` (from /proc/self/mountinfo), deepest first."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    prefix = str(root.resolve())
    points = [line.split()[4].replace("\\040", " ") for line in lines]
    inside = [Path(p) for p in points if p == prefix or p.startswith(prefix + "/")]
    return sorted(set(inside), key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path) -> None:
    """Unmount what dockerd mounted in its exec root (the ``netns/default`` namespace file stays
    mounted after dockerd exits), so the folder can be removed."""
    for point in mounts_under(root):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)


def busybox_rootfs() -> bytes:
    """A tar of a minimal root file system: the static busybox and a link per applet, so images
    built FROM it have ``/bin/sh`` and the usual tools."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not found (Debian busybox-static; scripts/setup-dev.sh installs it)")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp", "etc", "root"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


def import_image(engine: DockerEngine, rootfs: bytes, ref: str) -> str:
    """``docker import`` a root file system tarball as ``ref``; returns ``ref``."""
    repository, _, tag = ref.rpartition(":")
    engine.client().api.import_image_from_data(rootfs, repository=repository, tag=tag)
    return ref
