"""What the recognition training tests share: the example job and a from-scratch one, the
held-out split's sizes, the packer's aligned crops, the control of the learning tests and their
measure, and the entry point run outside a job (alone or as MXNet dist_sync roles on loopback)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tests.harness.net import free_port
from train.pack import encode_image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "recognition.yaml"
# A small from-scratch job for the tests of the job's plumbing, where learning is not the claim.
SCRATCH = ROOT / "tests" / "train" / "scratch-recognition.yaml"
TRAIN_PER_PERSON = 7
# The example with its embedding layer learned anew and the backbone frozen: 10 steps at a rate
# that moves a fresh layer (lr 2.0 per 512 images, 0.055 for 14), so the job's own head must
# learn the people (the learning tests' docstrings give the measured figures).
LEARNS = {"fresh_embedding": True, "batch_size": 14, "epochs": 2, "lr": 2.0, "freeze_backbone_epochs": 2,
          "warmup_epochs": 0}
# Three times the spread of the measured figures (the control's: 0.00-0.20 over seeds; trained
# 1.00 for every seed and thread count): 18 of the 30 held-out photos.
MARGIN_OVER_CONTROL = 0.6


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


def initial_model(packed: Path, init: Path, hyperparameters: dict, folder: Path) -> Path:
    """The control of a fine-tuning test: the network exactly as a job with ``hyperparameters``
    starts it from ``init`` (same seed, same calibration on the training photos, fresh embedding
    layer when asked), never trained, exported by the same code as a job's model; its head is
    the full FC's fresh one (a Partial FC head starts as random), saved as ``head.params``."""
    import mxnet as mx

    from train import finetune, fresh
    from train.config import resolve
    from train.recognition_loop import Recognizer, open_training_data

    config = resolve({**hyperparameters, "workers": 0, "sample_rate": 1.0})
    mx.random.seed(config["seed"])
    np.random.seed(config["seed"])
    data = open_training_data(packed, config)
    model = Recognizer(config, data.num_classes)
    model.backbone.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    model.head.initialize(mx.init.Normal(0.01))
    finetune.start_from(model, init, data, config)
    model.backbone(mx.nd.zeros((1, 3, 112, 112)))  # shapes the fresh layers; inference leaves the statistics alone
    folder.mkdir(parents=True)
    model.backbone.save_parameters(str(folder / "backbone.params"))
    mx.nd.save(str(folder / "head.params"), {"weight": model.head.weight.data()})
    fresh.run("train.recognition", "export", str(folder / "backbone.params"), config["network"],
              str(config["embedding_size"]), str(folder))
    return folder


def identification_accuracy(model: Path, embeddings: np.ndarray, held_out: list[int]) -> float:
    """Share of held-out photos that the model's margin head (``head.params``: one centre per
    person, in the packed order) gives to their own person: what the job itself learned to do."""
    import mxnet as mx

    centres = mx.nd.load(str(model / "head.params"))["weight"].asnumpy()
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    truth = np.repeat(np.arange(len(held_out)), held_out)
    return float((np.argmax(emb @ centres.T, axis=1) == truth).mean())


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
    """Every process's output once all have ended; all must exit 0. The pipes are read together
    (a process whose pipe fills stalls, and with it the peers waiting for it), a process that fails
    ends the wait at once (its peers would wait for it until the bound), and what still runs after
    ``timeout`` seconds is killed; a failure shows every process's exit code and output."""
    chunks: dict[str, list[str]] = {name: [] for name in procs}
    readers = [threading.Thread(target=lambda proc=proc, out=chunks[name]: out.append(proc.stdout.read()), daemon=True)
               for name, proc in procs.items()]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    while (any(proc.poll() is None for proc in procs.values()) and time.monotonic() < deadline
           and not any(proc.poll() not in (None, 0) for proc in procs.values())):
        time.sleep(0.2)
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
    for reader in readers:
        reader.join(timeout=30)  # bounded: the pipes close when the processes have ended
    outputs = {name: "".join(out) for name, out in chunks.items()}
    codes = {name: proc.wait(timeout=30) for name, proc in procs.items()}
    assert all(code == 0 for code in codes.values()), f"exit codes {codes} (bound {timeout} s), outputs: {outputs}"
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
