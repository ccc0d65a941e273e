"""Training throughput of our recognition loop against a bare Gluon loop, in one run.

Ours: ``train.recognition_loop.train`` on a RecordIO pack of the shared LFW photos (decode, flip,
normalise in the DataLoader, margin head, loss check, metrics, checkpoint bookkeeping). Baseline:
the same network and head, batch and optimizer stepping over images already decoded in memory.
Both are measured after a warm-up window (graph building) over the same number of steps.
Ratio = our samples/s / bare samples/s (higher is better); goal 0.95: the data pipeline and the
job machinery cost at most 5%.
Run: .venv/bin/python benchmarks/recognition_train.py [--network mbf_s1] [--batch 16] [--steps 8]
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from common import parse_args, report
from tests.harness import LFW10


def ours(packed: Path, work: Path, network: str, batch: int, steps: int) -> float:
    """Samples/s of the second window of ``steps`` steps of the real training loop."""
    from jobs.core.contract import JobEnv
    from train import recognition_loop
    from train.config import resolve

    metrics = work / "metrics.jsonl"
    env = JobEnv(hyperparameters={}, channels={"train": packed}, outputs={}, model_dir=work / "model",
                 checkpoint_dir=work / "ckpt", metrics_file=metrics, failure_file=work / "failure")
    config = resolve({"network": network, "batch_size": batch, "max_steps": 2 * steps, "log_every": steps,
                      "epochs": 1000, "workers": 2, "checkpoint_every": 0})
    recognition_loop.train(config, env)
    windows = [json.loads(line) for line in metrics.read_text().splitlines() if '"samples_per_sec"' in line]
    return windows[1]["samples_per_sec"]


def bare(images: np.ndarray, labels: np.ndarray, num_classes: int, network: str, batch: int, steps: int) -> float:
    """Samples/s of a plain Gluon loop over in-memory, pre-normalised batches (after a warm-up)."""
    import mxnet as mx
    from mxnet import autograd, gluon

    from jobs.core.devices import mx_contexts
    from train.config import resolve
    from train.recognition_loop import Recognizer

    ctx = mx_contexts()[:1]  # the first GPU (else the CPU): the plain loop feeds one device
    model = Recognizer(resolve({"network": network}), num_classes)
    model.initialize(mx.init.Xavier(), ctx=ctx)
    model.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9, "wd": 5e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    data = mx.nd.array((images.transpose(0, 3, 1, 2) - 127.5) / 127.5, ctx=ctx[0])
    target = mx.nd.array(labels, ctx=ctx[0])

    def run(count: int) -> None:
        for _ in range(count):
            pick = mx.nd.array(rng.choice(len(labels), batch, replace=False), ctx=ctx[0])
            x, y = data.take(pick), target.take(pick)
            with autograd.record():
                loss = loss_fn(model(x, y)[0], y)
            loss.backward()
            trainer.step(batch)
            loss.mean().asscalar()

    run(steps)
    start = time.perf_counter()
    run(steps)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    args = parse_args(__doc__, {
        "--network": {"default": "mbf_s1"},
        "--batch": {"type": int, "default": 16},
        "--steps": {"type": int, "default": 8, "help": "steps per measured window"},
    })
    import cv2

    from train.pack import pack_recognition

    with tempfile.TemporaryDirectory(prefix="faceops-bench-") as tmp:
        work = Path(tmp)
        pack_recognition(LFW10, str(work / "packed"), resize="112", progress=False)
        people = sorted(os.listdir(LFW10))
        photos = [(i, p) for i, person in enumerate(people) for p in sorted((LFW10 / person).glob("*.jpg"))]
        images = np.stack([cv2.resize(cv2.imread(str(p)), (112, 112), interpolation=cv2.INTER_AREA)[:, :, ::-1]
                           for _, p in photos]).astype(np.float32)
        labels = np.array([i for i, _ in photos], np.float32)
        baseline = bare(images, labels, len(people), args.network, args.batch, args.steps)
        ours_rate = ours(work / "packed", work / "job", args.network, args.batch, args.steps)
    print(f"bare Gluon loop, data in memory : {baseline:.1f} samples/s")
    print(f"faceops loop, RecordIO + metrics: {ours_rate:.1f} samples/s")
    report("recognition_train", round(ours_rate / baseline, 3), 0.95, ours_samples_per_sec=round(ours_rate, 2),
           bare_samples_per_sec=round(baseline, 2), network=args.network, batch=args.batch, steps=args.steps)


if __name__ == "__main__":
    main()
