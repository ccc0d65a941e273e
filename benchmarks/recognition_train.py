"""Training throughput of our recognition loop against a bare Gluon loop, in one run.

Ours: ``train.recognition_loop.train`` on a RecordIO pack of the shared LFW photos, each photo
packed COPIES times so one epoch holds the warm-up and the measured window (decode, flip,
normalise in the DataLoader, margin head, loss check, metrics, checkpoint bookkeeping). Baseline:
the same network and head, batch and optimizer stepping over the photos already decoded in memory.
Both: the same warm-up (``--warmup`` steps: graph building, the loader filling), then the same
measured window (``--steps`` steps, read from our loop's per-window metrics, timed directly in the
bare loop); ``--runs`` runs each, interleaved, median and spread.
Ratio = our samples/s / bare samples/s (higher is better); goal 0.95: the data pipeline and the
job machinery cost at most 5%.
Run: .venv/bin/python benchmarks/recognition_train.py [--network mbf_s1] [--batch 16] [--steps 30] [--runs 3]
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


COPIES = 16  # each LFW photo packed this often: 1,600 records, 100 steps per epoch at batch 16


def ours(packed: Path, work: Path, network: str, batch: int, warmup: int, steps: int) -> float:
    """Samples/s of the real training loop over ``steps`` steps after ``warmup`` steps, from its
    metrics windows of ``warmup`` steps (``steps`` a multiple of it), all inside the first epoch."""
    from jobs.core.contract import JobEnv
    from train import recognition_loop
    from train.config import resolve

    metrics = work / "metrics.jsonl"
    env = JobEnv(hyperparameters={}, channels={"train": packed}, outputs={}, model_dir=work / "model",
                 checkpoint_dir=work / "ckpt", metrics_file=metrics, failure_file=work / "failure")
    config = resolve({"network": network, "batch_size": batch, "max_steps": warmup + steps, "log_every": warmup,
                      "epochs": 1000, "workers": 2, "checkpoint_every": 0})
    recognition_loop.train(config, env)
    windows = [json.loads(line) for line in metrics.read_text().splitlines() if '"samples_per_sec"' in line]
    assert all(w["epoch"] == 1 for w in windows) and windows[-1]["step"] == warmup + steps, windows
    measured = windows[1:]
    return len(measured) * warmup * batch / sum(warmup * batch / w["samples_per_sec"] for w in measured)


def bare(images: np.ndarray, labels: np.ndarray, num_classes: int, network: str, batch: int, warmup: int,
         steps: int) -> float:
    """Samples/s of a plain Gluon loop over in-memory, pre-normalised batches, ``steps`` steps
    after ``warmup`` steps."""
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

    run(warmup)
    start = time.perf_counter()
    run(steps)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    args = parse_args(__doc__, {
        "--network": {"default": "mbf_s1"},
        "--batch": {"type": int, "default": 16},
        "--warmup": {"type": int, "default": 10, "help": "steps before the clock (our metrics window)"},
        "--steps": {"type": int, "default": 30, "help": "measured steps (a multiple of --warmup)"},
        "--runs": {"type": int, "default": 3},
    })
    import statistics

    import cv2

    from train.pack import pack_recognition

    with tempfile.TemporaryDirectory(prefix="faceops-bench-") as tmp:
        work = Path(tmp)
        copies = work / "photos"
        for person in sorted(p for p in LFW10.iterdir() if p.is_dir()):
            (copies / person.name).mkdir(parents=True)
            for photo in sorted(person.glob("*.jpg")):
                for n in range(COPIES):
                    (copies / person.name / f"{photo.stem}_{n}.jpg").symlink_to(photo.resolve())
        pack_recognition(copies, str(work / "packed"), resize="112", progress=False)
        people = sorted(os.listdir(LFW10))
        photos = [(i, p) for i, person in enumerate(people) for p in sorted((LFW10 / person).glob("*.jpg"))]
        images = np.stack([cv2.resize(cv2.imread(str(p)), (112, 112), interpolation=cv2.INTER_AREA)[:, :, ::-1]
                           for _, p in photos]).astype(np.float32)
        labels = np.array([i for i, _ in photos], np.float32)
        bare_rates, our_rates = [], []
        for run in range(args.runs):
            bare_rates.append(bare(images, labels, len(people), args.network, args.batch, args.warmup, args.steps))
            our_rates.append(ours(work / "packed", work / f"job{run}", args.network, args.batch, args.warmup, args.steps))
    baseline, ours_rate = statistics.median(bare_rates), statistics.median(our_rates)
    print(f"{args.warmup} warm-up + {args.steps} measured steps at batch {args.batch}, {args.runs} runs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"bare Gluon loop, data in memory : median {baseline:.1f} samples/s ({min(bare_rates):.1f}-{max(bare_rates):.1f})")
    print(f"faceops loop, RecordIO + metrics: median {ours_rate:.1f} samples/s ({min(our_rates):.1f}-{max(our_rates):.1f})")
    ratio = ours_rate / baseline
    print(f"goal: at least 0.95 of the bare loop: {'met' if ratio >= 0.95 else 'NOT met'}")
    report("recognition_train", round(ratio, 3), 0.95, goal_met=ratio >= 0.95, ours_samples_per_sec=round(ours_rate, 2),
           bare_samples_per_sec=round(baseline, 2), runs={"ours": [round(r, 2) for r in our_rates],
                                                           "bare": [round(r, 2) for r in bare_rates]},
           network=args.network, batch=args.batch, warmup=args.warmup, steps=args.steps, records=100 * COPIES)


if __name__ == "__main__":
    main()
