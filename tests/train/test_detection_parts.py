"""The detector's parts on small real inputs: anchors and targets, augmentation, loss, AP, and the
data checks (label.txt errors with file:line, clipping counted, negatives kept, RecordIO input)."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from jobs.core.errors import DataError, NotFoundError  # noqa: E402
from train.anchors import anchors_for, assign, decode, iou, nms  # noqa: E402
from train.augment import hflip, random_square_crop  # noqa: E402
from train.detection_data import Faces, open_split  # noqa: E402
from train.detection_eval import average_precision  # noqa: E402
from train.detection_loss import LossConfig, detection_loss, ohem_cls  # noqa: E402


def faces_of(boxes, landmarks=None, valid=None) -> Faces:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if landmarks is None:
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        w = boxes[:, 2] - boxes[:, 0]
        landmarks = np.stack([np.stack([cx + dx * w, cy + dy * w], 1)
                              for dx, dy in ((-.2, -.1), (.2, -.1), (0, .05), (-.15, .2), (.15, .2))], 1)
    valid = np.ones(len(boxes), np.float32) if valid is None else np.asarray(valid, np.float32)
    return Faces(boxes, np.asarray(landmarks, np.float32), valid)


def test_anchor_layout_matches_the_network_and_insightface():
    from train.retinaface import get_model

    anchors = anchors_for(128, 96)
    net = get_model("mobilenet0.25")
    net.initialize()
    outputs = net(mx.nd.zeros((1, 3, 128, 96)))
    assert sum(o.shape[1] for o in outputs[:3]) == len(anchors)
    # insightface's SCRFD decoder: centres (x*s, y*s), row-major, the 2 anchors of a place adjacent.
    first = anchors.centers[:outputs[0].shape[1]]
    expected = np.stack(np.mgrid[:16, :12][::-1], axis=-1).reshape(-1, 2) * 8
    np.testing.assert_array_equal(first, np.repeat(expected, 2, axis=0))


def test_targets_decode_back_to_the_faces():
    rng = np.random.default_rng(0)
    anchors = anchors_for(256, 256)
    x, y = rng.uniform(0, 180, 6), rng.uniform(0, 180, 6)
    side = rng.uniform(14, 70, 6)
    faces = faces_of(np.stack([x, y, x + side, y + side * 1.2], 1), valid=[1, 1, 1, 0, 1, 1])
    t = assign(anchors, faces.boxes, faces.landmarks, faces.landmark_valid)
    positive = t.labels == 1
    assert positive.sum() >= len(faces)  # every face claims at least its best anchor
    boxes, points = decode(anchors, t.boxes[positive], t.landmarks[positive], positive)
    best = iou(boxes, faces.boxes).argmax(1)
    np.testing.assert_allclose(boxes, faces.boxes[best], atol=1e-3)
    np.testing.assert_allclose(points, faces.landmarks[best], atol=1e-3)
    np.testing.assert_array_equal(t.landmark_mask[positive], faces.landmark_valid[best])
    overlap = iou(anchors.boxes, faces.boxes).max(1)
    assert (t.labels[overlap < 0.3] != -1).all() and (t.labels[(overlap >= 0.3) & (overlap < 0.5)] != 1).all()
    empty = assign(anchors, np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0))
    assert (empty.labels == 0).all()


def test_nms_keeps_the_best_of_overlapping_boxes():
    dets = np.asarray([[0, 0, 10, 10, .9], [1, 1, 11, 11, .8], [50, 50, 60, 60, .7], [0, 0, 10, 10, .95]], np.float32)
    assert nms(dets, 0.4).tolist() == [3, 2]


def test_flip_mirrors_boxes_and_swaps_left_and_right_landmarks():
    img = np.zeros((50, 100, 3), np.uint8)
    img[:, :10] = 255
    faces = faces_of([[10, 5, 40, 45]], [[[15, 15], [35, 15], [25, 25], [18, 35], [32, 35]]])
    flipped, out = hflip(img, faces)
    assert flipped[:, -10:].min() == 255 and flipped[:, :10].max() == 0
    np.testing.assert_allclose(out.boxes, [[60, 5, 90, 45]])
    # The person's left eye (index 0) is the one on the image's left after mirroring: 100 - 35.
    np.testing.assert_allclose(out.landmarks[0], [[65, 15], [85, 15], [75, 25], [68, 35], [82, 35]])
    _, back = hflip(flipped, out)
    np.testing.assert_allclose(back.landmarks, faces.landmarks)


def test_random_square_crop_keeps_face_centres_inside():
    rng = np.random.default_rng(3)
    img = np.zeros((200, 300, 3), np.uint8)
    faces = faces_of([[20, 20, 60, 70], [200, 100, 260, 170]])
    for _ in range(20):
        crop, out = random_square_crop(img, faces, rng)
        side = crop.shape[0]
        assert crop.shape[1] == side and 1 <= len(out) <= 2
        assert (out.boxes >= 0).all() and (out.boxes <= side).all()
    crop, out = random_square_crop(img, Faces.empty(), rng)
    assert len(out) == 0 and crop.shape[0] == crop.shape[1]


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    logits = mx.nd.array([[3.0, -2.0, 0.5, 1.0, 2.0, -1.0, 0.0, 4.0] + [-9.0] * 20])
    labels = mx.nd.array([[1, 1, 0, 0, 0, 0, -1, 0] + [0] * 20])
    cfg = LossConfig(neg_pos_ratio=3.0)
    got = ohem_cls(logits, labels, cfg).asscalar()
    z, y = logits.asnumpy()[0], labels.asnumpy()[0]
    bce = np.maximum(z, 0) - z * (y == 1) + np.log1p(np.exp(-np.abs(z)))
    negatives = np.sort(bce[y == 0])[::-1]
    expected = bce[y == 1].sum() + negatives[:16].sum()  # 6 by ratio, but at least 16 per image
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    cfg = LossConfig(neg_pos_ratio=10.0)
    np.testing.assert_allclose(ohem_cls(logits, labels, cfg).asscalar(), bce[y == 1].sum() + negatives[:20].sum(), rtol=1e-5)


def test_missing_landmarks_are_masked_out_of_the_loss():
    anchors = 6
    outputs = [mx.nd.zeros((1, anchors, 1))] + [mx.nd.zeros((1, anchors, 4))] + [mx.nd.ones((1, anchors, 10)) * 5]
    labels = mx.nd.array([[1, 1, 0, 0, 0, 0]])
    targets = (mx.nd.zeros((1, anchors, 4)), mx.nd.zeros((1, anchors, 10)))
    masked = detection_loss(tuple(outputs), labels, *targets, mx.nd.zeros((1, anchors)), LossConfig())
    seen = detection_loss(tuple(outputs), labels, *targets, mx.nd.ones((1, anchors)), LossConfig(landmark_weight=2))
    assert masked["landmark"].asscalar() == 0
    assert seen["landmark"].asscalar() == pytest.approx(10 * 4.5)
    assert seen["total"].asscalar() == pytest.approx(masked["total"].asscalar() + 2 * 45, rel=1e-5)
    focal = detection_loss(tuple(outputs), labels, *targets, mx.nd.ones((1, anchors)), LossConfig(cls_loss="focal"))
    assert 0 < focal["cls"].asscalar() < seen["cls"].asscalar()


def test_average_precision():
    truths = [np.asarray([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.asarray([[0, 0, 10, 10]], np.float32)]
    perfect = [np.asarray([[0, 0, 10, 10, .9], [20, 20, 30, 30, .8]]), np.asarray([[0, 0, 10, 10, .7]])]
    assert average_precision(perfect, truths) == pytest.approx(1.0)
    # A confident false positive first: precision 1/2, 2/3, 3/4 at recall 1/3, 2/3, 1; the
    # interpolated curve takes the best precision at any higher recall: 3/4 throughout.
    with_fp = [np.asarray([[50, 50, 60, 60, .99], [0, 0, 10, 10, .9], [20, 20, 30, 30, .8]]), perfect[1]]
    assert average_precision(with_fp, truths) == pytest.approx(3 / 4)
    # The false positive last costs nothing: every face is found before it.
    last = [np.asarray([[50, 50, 60, 60, .1], [0, 0, 10, 10, .9], [20, 20, 30, 30, .8]]), perfect[1]]
    assert average_precision(last, truths) == pytest.approx(1.0)
    # A duplicate of a matched face is a false positive; a missed face caps recall.
    assert average_precision([perfect[0][:1], np.zeros((0, 5))], truths) == pytest.approx(1 / 3)


def write_split(folder, lines, images):
    import cv2

    (folder / "images").mkdir(parents=True)
    for name, (h, w) in images.items():
        cv2.imwrite(str(folder / "images" / name), np.full((h, w, 3), 90, np.uint8))
    (folder / "label.txt").write_text("\n".join(lines) + "\n")
    return folder


LANDMARKS = " ".join(["-1"] * 15)


def test_label_errors_name_the_file_and_line(tmp_path):
    folder = write_split(tmp_path / "bad", ["# a.jpg", "10 10 20 20 " + LANDMARKS + " 0", "10 10 20"],
                         {"a.jpg": (64, 64)})
    with pytest.raises(DataError, match=r"label\.txt:3: expected 20 fields"):
        open_split(folder, "train")
    (folder / "label.txt").write_text("# a.jpg\n1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 x\n")
    with pytest.raises(DataError, match=r"label\.txt:2: expected numbers"):
        open_split(folder, "train")
    (folder / "label.txt").write_text("# a.jpg\n# missing.jpg\n")
    with pytest.raises(DataError, match="missing.jpg"):
        open_split(folder, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no label.txt .* and no .rec file"):
        open_split(tmp_path / "empty", "train")


def test_boxes_outside_are_clipped_and_counted_and_empty_images_kept(tmp_path):
    folder = write_split(tmp_path / "split", [
        "# a.jpg",
        "-10 5 30 20 " + LANDMARKS + " 0",    # reaches left of the image: clipped
        "50 40 30 30 " + LANDMARKS + " 0",    # reaches past the right and bottom: clipped
        "10 10 20 20 " + LANDMARKS + " 0",    # inside
        "100 100 10 10 " + LANDMARKS + " 0",  # entirely outside: dropped
        "# empty.jpg",
    ], {"a.jpg": (64, 64), "empty.jpg": (48, 48)})
    split = open_split(folder, "train")
    assert len(split) == 2
    img, faces = split[0]
    np.testing.assert_allclose(faces.boxes, [[0, 5, 20, 25], [50, 40, 64, 64], [10, 10, 30, 30]])
    assert (faces.landmark_valid == 0).all()
    img, faces = split[1]
    assert img.shape == (48, 48, 3) and len(faces) == 0
    split[0]  # counted once per image, however often it is read
    report = split.report
    assert (report.images, report.faces, report.negatives, report.clipped, report.dropped) == (2, 3, 1, 2, 1)
    assert "2 boxes clipped" in report.summary("train") and "a.jpg: 2 clipped, 1 dropped" in report.summary("train")


def test_packed_recordio_reads_like_the_folder(tmp_path):
    from train.pack import pack_detection

    folder = write_split(tmp_path / "split", [
        "# a.jpg", "-10 5 30 20 5 10 0 15 10 0 10 15 0 6 18 0 14 18 0 0.5", "# b.jpg",
    ], {"a.jpg": (64, 80), "b.jpg": (32, 32)})
    pack_detection(folder, str(tmp_path / "rec"), progress=False)
    packed, plain = open_split(tmp_path / "rec", "train"), open_split(folder, "train")
    assert len(packed) == len(plain) == 2
    for i in range(2):
        (img_a, faces_a), (img_b, faces_b) = packed[i], plain[i]
        assert img_a.shape == img_b.shape
        np.testing.assert_allclose(faces_a.boxes, faces_b.boxes)
        np.testing.assert_allclose(faces_a.landmarks, faces_b.landmarks)
    assert packed.report.clipped == 1 and packed.report.negatives == 1
    assert [b for b in packed.sampler(True)] and sorted(packed.sampler(False)) == [0, 1]


def test_resnet50_backbone_gives_the_same_heads_and_unknown_names_are_refused():
    from train.retinaface import get_model

    net = get_model("resnet50")
    net.initialize()
    shapes = [o.shape for o in net(mx.nd.zeros((2, 3, 64, 96)))]
    assert shapes == [(2, n, c) for c in (1, 4, 10) for n in (8 * 12 * 2, 4 * 6 * 2, 2 * 3 * 2)]
    with pytest.raises(KeyError, match="mobilenet0.25, resnet50"):
        get_model("vgg16")


def test_packed_split_streams_from_object_storage(tmp_path, s3_bucket):
    from train.pack import pack_detection

    folder = write_split(tmp_path / "split", ["# a.jpg", "4 4 20 20 " + LANDMARKS + " 0", "# b.jpg"],
                         {"a.jpg": (40, 40), "b.jpg": (32, 48)})
    pack_detection(folder, f"s3://{s3_bucket}/detection/train/", progress=False)
    split = open_split(f"s3://{s3_bucket}/detection/train/", "train")
    seen = {i: split[i] for i in split.sampler(True)}
    assert sorted(seen) == [0, 1] and seen[1][0].shape == (32, 48, 3)
    np.testing.assert_allclose(seen[0][1].boxes, [[4, 4, 24, 24]])
