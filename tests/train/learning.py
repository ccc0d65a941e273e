"""What the recognition training tests share: the example job, the held-out split's sizes, the
packer's aligned crops, the untrained control and its measure, and the entry point run outside a
job (alone or as MXNet dist_sync roles on loopback)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.harness.net import free_port
from train.pack import encode_image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "recognition.yaml"
TRAIN_PER_PERSON = 7
MARGIN_OVER_UNTRAINED = 0.09  # 3 of the 30 held-out photos, less rounding
# The example with enough steps to learn past what random features already separate (docstring below).
LEARNS = {"batch_size": 14, "epochs": 10, "lr": 2.0, "margin_m2": 0.5}


def face112(photo: Path, aligner) -> np.ndarray:
    """A photo exactly as the packer stores it (aligned, JPEG), decoded to RGB."""
    import cv2

    data = encode_image(photo, align=aligner[1])[0]
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


GLUON_EMBED = """
import sys, mxnet as mx, numpy as np
net = mx.gluon.SymbolBlock.imports(sys.argv[1] + "/model-symbol.json", ["data"], sys.argv[1] + "/model-0000.params")
x = np.load(sys.argv[2])
np.save(sys.argv[3], net((mx.nd.array(x.transpose(0, 3, 1, 2)) - 127.5) / 127.5).asnumpy())
"""


def gluon_embed(model: Path, images: list[np.ndarray], tmp_path: Path) -> np.ndarray:
    """Embeddings of RGB 112x112 images by the exported Gluon model, in a process with oneDNN off:
    MXNet 1.9.1's oneDNN inference path crashes on trained MobileFaceNet weights (training and
    the exported ONNX model are unaffected)."""
    np.save(tmp_path / "in.npy", np.stack(images))
    subprocess.run([sys.executable, "-c", GLUON_EMBED, str(model), str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                   check=True, env={**os.environ, "MXNET_MKLDNN_ENABLED": "0", "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0"})
    return np.load(tmp_path / "out.npy")


def untrained_model(network: str, folder: Path) -> Path:
    """The control: ``network`` initialised exactly as a job initialises it (seed 0), never trained,
    its batch norms at their initial statistics, exported by the same code as a job's model."""
    import mxnet as mx

    from train import fresh
    from train.backbones import get_model

    mx.random.seed(0)
    net = get_model(network)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    net(mx.nd.zeros((1, 3, 112, 112)))  # shapes the deferred parameters; inference leaves the statistics alone
    folder.mkdir(parents=True)
    net.save_parameters(str(folder / "backbone.params"))
    fresh.run("train.recognition", "export", str(folder / "backbone.params"), network, "512", str(folder))
    return folder


def recalibrated_model(network: str, folder: Path, train_images: list[np.ndarray]) -> Path:
    """A second control: ``network`` initialised as a job initialises it (seed 0), its weights never
    updated, but its batch norms holding the statistics of the training photos (one pass in
    training mode, as a job's steps would leave them), exported by the same code as a job's model.
    It separates what the weight updates learned from what batch statistics alone do (0.23 on the
    shared photos, against 0.47 for :func:`untrained_model` with the initial statistics)."""
    import mxnet as mx

    from train import fresh
    from train.backbones import get_model

    mx.random.seed(0)
    net = get_model(network)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    batch_norms = []
    stack = [net]
    while stack:
        block = stack.pop()
        if isinstance(block, mx.gluon.nn.BatchNorm):
            batch_norms.append(block)
        stack.extend(block._children.values())
    for bn in batch_norms:
        bn._kwargs["momentum"] = 0.0  # the running statistics become exactly this batch's
    x = (mx.nd.array(np.stack(train_images).transpose(0, 3, 1, 2)) - 127.5) / 127.5
    with mx.autograd.record(train_mode=True):
        out = net(x)
    out.backward()  # MXNet moves the running statistics in the backward pass; no weight is updated
    folder.mkdir(parents=True)
    net.save_parameters(str(folder / "backbone.params"))
    fresh.run("train.recognition", "export", str(folder / "backbone.params"), network, "512", str(folder))
    return folder


def nearest_centre_accuracy(emb: np.ndarray, n_train: int, held_out: list[int]) -> float:
    """Share of held-out photos whose nearest identity centre (mean of that person's training
    embeddings, TRAIN_PER_PERSON each) is their own."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    centres = emb[:n_train].reshape(len(held_out), TRAIN_PER_PERSON, -1).mean(axis=1)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(len(held_out)), held_out)
    return float((np.argmax(emb[n_train:] @ centres.T, axis=1) == truth).mean())


def contract_env(root: Path, train_dir: Path) -> dict[str, str]:
    """The container contract's variables for a run of the entry point outside a job."""
    env = {**os.environ, "FACEOPS_CHANNELS": "train", "FACEOPS_CHANNEL_TRAIN": str(train_dir),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    for name, sub in (("MODEL_DIR", "model"), ("CHECKPOINT_DIR", "ckpt"), ("FAILURE_FILE", "failure"),
                      ("METRICS_FILE", "metrics.jsonl"), ("HYPERPARAMETERS", "hp.json")):
        env[f"FACEOPS_{name}"] = str(root / sub)
    return env


SMALL = ["network=mbf_s1", "batch_size=7", "workers=0", "log_every=1", "lr=0.2"]


def metric_steps(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"step"' in line]


def finish_all(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, str]:
    """Every process's output once all have ended (stragglers are killed); all must exit 0."""
    outputs = {}
    try:
        for name, proc in procs.items():
            outputs[name] = proc.communicate(timeout=timeout)[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs.values()), outputs
    return outputs


def run_dist_sync(packed: Path, tmp_path: Path, *args: str, timeout: float = 240) -> dict[str, str]:
    """MXNet's own parameter server on loopback: a scheduler, a server and two workers of the
    recognition entry point (``SMALL`` settings plus ``args``) as separate processes, each with its
    contract folder ``tmp_path/<role><i>``; returns every process's output (all must exit 0)."""
    port = free_port()
    procs = {}
    for role, count in (("scheduler", 1), ("server", 1), ("worker", 2)):
        for i in range(count):
            root = tmp_path / f"{role}{i}"
            root.mkdir()
            env = {**contract_env(root, packed), "DMLC_ROLE": role, "DMLC_PS_ROOT_URI": "127.0.0.1",
                   "DMLC_PS_ROOT_PORT": str(port), "DMLC_NUM_SERVER": "1", "DMLC_NUM_WORKER": "2",
                   "DMLC_NODE_HOST": "127.0.0.1", "PS_VERBOSE": "0"}
            procs[f"{role}{i}"] = subprocess.Popen([sys.executable, "-m", "train.recognition", *SMALL, *args],
                                                   env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True)
    return finish_all(procs, timeout=timeout)
