"""The WIDER FACE validation protocol: easy, medium and hard AP of a detector from the published
ground truth (``wider_face_val.mat``, ``wider_easy_val.mat``, ``wider_medium_val.mat``,
``wider_hard_val.mat``), computed as the evaluation code that ships with WIDER FACE computes it,
in the form of its widely used Python port (``evaluation.py`` of wondervictor/WiderFace-Evaluation):

* scores are min-max normalised over all detections of the set;
* per image, detections best first: a detection whose best ground-truth box overlaps it by
  IoU >= 0.5 (areas with the ``+1`` pixel convention) recalls that face when the setting keeps it
  (its 1-based index is in the setting's ``gt_list``); one matching a face the setting does not
  keep is neither a hit nor a false positive; a face is recalled once;
* for 1000 thresholds ``1 - (t + 1) / 1000`` the proposals and recalled faces above the threshold
  are summed over all images, precision = recalled / proposals, recall = recalled / kept faces
  (faces of images with no detection still count);
* AP is the VOC area under the precision envelope.

The layout is WIDER's: images under ``VAL_DIR/images/<event>/<file>.jpg``, the ``.mat`` files in
one folder; :func:`write_ground_truth` writes that structure for a set of one's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from inference.faces import detect, read_image
from inference.models import load_detector
from jobs.core.errors import DataError
from jobs.core.lazy import numpy as np

SETTINGS = ("easy", "medium", "hard")
FILES = {"all": "wider_face_val.mat", **{s: f"wider_{s}_val.mat" for s in SETTINGS}}
IOU_THRESHOLD = 0.5
THRESHOLDS = 1000


@dataclass(frozen=True)
class GroundTruth:
    """Per event: its name, image names (no ``.jpg``), face boxes ``(k, 4)`` as ``x y w h``, and per
    setting the 1-based indices of the faces that setting keeps."""

    events: list[str]
    files: list[list[str]]
    boxes: list[list[np.ndarray]]
    keep: dict[str, list[list[np.ndarray]]]


def ground_truth_dir(val_dir: Path) -> Path | None:
    """Where a WIDER val folder keeps its four ``.mat`` files (beside ``images/`` or in
    ``ground_truth/``, as WIDER's eval_tools ship them); None when it has none."""
    for folder in (Path(val_dir), Path(val_dir) / "ground_truth"):
        if all((folder / name).is_file() for name in FILES.values()):
            return folder
    return None


def read_ground_truth(folder: Path) -> GroundTruth:
    """The four ``.mat`` files of ``folder`` (scipy reads MATLAB's cell arrays as nested object arrays)."""
    from scipy.io import loadmat

    missing = [name for name in FILES.values() if not (Path(folder) / name).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (WIDER FACE's eval_tools/ground_truth)")
    full = loadmat(str(Path(folder) / FILES["all"]))
    events = [str(e[0][0]) for e in full["event_list"]]
    files = [[str(f[0][0]) for f in event[0]] for event in full["file_list"]]
    boxes = [[np.asarray(b[0], dtype=np.float64).reshape(-1, 4) for b in event[0]] for event in full["face_bbx_list"]]
    keep = {}
    for setting in SETTINGS:
        gt_list = loadmat(str(Path(folder) / FILES[setting]))["gt_list"]
        keep[setting] = [[np.asarray(k[0], dtype=np.int64).reshape(-1) for k in event[0]] for event in gt_list]
    return GroundTruth(events, files, boxes, keep)


def write_ground_truth(folder: Path, truth: GroundTruth) -> None:
    """``truth`` as the four ``.mat`` files, in the structure of the published ones."""
    from scipy.io import savemat

    def cells(items: list[Any]) -> np.ndarray:
        out = np.empty((len(items), 1), dtype=object)
        for i, item in enumerate(items):
            out[i, 0] = item
        return out

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    savemat(str(folder / FILES["all"]), {
        "event_list": cells([np.array([e]) for e in truth.events]),
        "file_list": cells([cells([np.array([f]) for f in names]) for names in truth.files]),
        "face_bbx_list": cells([cells([b.astype(np.float64) for b in boxes]) for boxes in truth.boxes])})
    for setting in SETTINGS:
        savemat(str(folder / FILES[setting]), {
            "event_list": cells([np.array([e]) for e in truth.events]),
            "file_list": cells([cells([np.array([f]) for f in names]) for names in truth.files]),
            "gt_list": cells([cells([k.reshape(-1, 1).astype(np.float64) for k in keep])
                              for keep in truth.keep[setting]])})


def overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes`` ``(n, 4)`` with each of ``query`` ``(k, 4)``, corners ``x1 y1 x2 y2``
    with the ``+1`` pixel convention of WIDER's ``bbox_overlaps``."""
    iw = np.minimum(boxes[:, None, 2], query[None, :, 2]) - np.maximum(boxes[:, None, 0], query[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], query[None, :, 3]) - np.maximum(boxes[:, None, 1], query[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = lambda b: (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # noqa: E731
    union = area(boxes)[:, None] + area(query)[None, :] - inter
    return np.where((iw > 0) & (ih > 0), inter / union, 0.0)


def image_eval(pred: np.ndarray, gt: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image: ``pred`` ``(n, 5)`` corners + score best first, ``gt`` ``(k, 4)`` corners, ``kept``
    a 0/1 flag per face. Returns the faces recalled after each detection and, per detection,
    1 when it counts as a proposal (-1 when it matched a face this setting does not keep)."""
    iou = overlaps(pred[:, :4], gt)
    recalled = np.zeros(len(gt))
    proposal = np.ones(len(pred))
    recall_after = np.zeros(len(pred))
    for h in range(len(pred)):
        best = int(iou[h].argmax())
        if iou[h, best] >= IOU_THRESHOLD:
            if kept[best] == 0:
                recalled[best] = -1
                proposal[h] = -1
            elif recalled[best] == 0:
                recalled[best] = 1
        recall_after[h] = (recalled == 1).sum()
    return recall_after, proposal


def image_pr(scores: np.ndarray, proposal: np.ndarray, recall_after: np.ndarray) -> np.ndarray:
    """``(THRESHOLDS, 2)``: proposals and recalled faces among the detections scoring at least
    each threshold (scores best first)."""
    thresholds = 1 - (np.arange(THRESHOLDS) + 1) / THRESHOLDS
    count = (scores[None, :] >= thresholds[:, None]).sum(axis=1)
    proposals = np.concatenate([[0], np.cumsum(proposal == 1)])[count]
    recalls = np.where(count > 0, recall_after[np.maximum(count - 1, 0)], 0)
    return np.stack([proposals, recalls], axis=1).astype(np.float64)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, summed where recall changes (VOC)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def normalise_scores(detections: dict[tuple[str, str], np.ndarray]) -> None:
    """Min-max scores over the whole set, in place (the port's ``norm_score``)."""
    scores = [d[:, 4] for d in detections.values() if len(d)]
    if not scores:
        return
    low = min(1.0, float(min(s.min() for s in scores)))
    high = max(0.0, float(max(s.max() for s in scores)))
    for d in detections.values():
        if len(d):
            d[:, 4] = (d[:, 4] - low) / max(high - low, 1e-12)


def average_precision(detections: dict[tuple[str, str], np.ndarray], truth: GroundTruth) -> dict[str, float]:
    """Easy, medium and hard AP of ``detections`` (per ``(event, file)``: ``(n, 5)`` corners
    ``x1 y1 x2 y2`` and score; missing images have none)."""
    dets = {key: d[np.argsort(-d[:, 4], kind="stable")].astype(np.float64) for key, d in detections.items() if len(d)}
    normalise_scores(dets)
    results = {}
    for setting in SETTINGS:
        curve = np.zeros((THRESHOLDS, 2))
        faces = 0
        for e, event in enumerate(truth.events):
            for j, name in enumerate(truth.files[e]):
                keep = truth.keep[setting][e][j]
                faces += len(keep)
                gt = truth.boxes[e][j]
                pred = dets.get((event, name))
                if pred is None or len(gt) == 0:
                    continue
                kept = np.zeros(len(gt))
                kept[keep - 1] = 1
                corners = np.concatenate([gt[:, :2], gt[:, :2] + gt[:, 2:4]], axis=1)
                recall_after, proposal = image_eval(pred, corners, kept)
                curve += image_pr(pred[:, 4], proposal, recall_after)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(curve[:, 0] > 0, curve[:, 1] / curve[:, 0], 0.0)
        recall = curve[:, 1] / max(faces, 1)
        results[setting] = voc_ap(recall, precision)
    return results


def detect_set(detect: Callable[[np.ndarray], np.ndarray], val_dir: Path,
               truth: GroundTruth) -> dict[tuple[str, str], np.ndarray]:
    """``detect`` (a BGR image as decoded by the face toolkit -> ``(n, 5)`` corners + score) on every image of the set, read from
    ``val_dir/images/<event>/<file>.jpg``."""
    out = {}
    for e, event in enumerate(truth.events):
        for name in truth.files[e]:
            path = Path(val_dir) / "images" / event / f"{name}.jpg"
            if not path.is_file():
                raise DataError(f"{path}: missing; the ground truth lists it (images go under VAL_DIR/images/<event>/)")
            out[(event, name)] = detect(read_image(path))
    return out


def onnx_detect(model: Path | str | None, det_size: int = 640, threshold: float = 0.02) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX face detector (SCRFD, RetinaFace; file or model folder, None for the pretrained one)
    as ``image -> (n, 5)``, run at :func:`inference.faces.detector_size` with a low score
    threshold, as WIDER evaluations keep the whole precision-recall curve."""
    detector = load_detector(model)

    def run(image: np.ndarray) -> np.ndarray:
        faces = detect(detector, image, det_size, threshold)
        return np.array([[*f.box, f.score] for f in faces], dtype=np.float64).reshape(-1, 5)

    return run


def evaluate(model: Path | str | None, val_dir: Path, gt_dir: Path, det_size: int = 640,
             threshold: float = 0.02) -> dict[str, float]:
    """WIDER easy/medium/hard AP of an ONNX detector on ``val_dir`` against ``gt_dir``'s ``.mat`` files."""
    truth = read_ground_truth(Path(gt_dir))
    return average_precision(detect_set(onnx_detect(model, det_size, threshold), Path(val_dir), truth), truth)
