"""Train the RetinaFace detector: data -> augmentation -> anchor targets -> loss -> SGD/Adam, with the
shared checkpoints (resume, SIGTERM), AP@0.5 on the val split and the insightface export.

:func:`fit` is the whole job as a library call; ``python -m train.detection`` wraps it in the
container contract.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jobs.core.contract import log_metrics
from jobs.core.devices import mx_contexts
from jobs.core.errors import SpecError
from train.anchors import anchors_for, assign
from train.augment import augment
from train.checkpoint import Checkpointer
from train.detection_data import DetectionSplit
from train.detection_eval import EvalConfig, evaluate
from train.detection_loss import LossConfig, detection_loss
from train.export import export_gluon
from train.retinaface import INPUT_MEAN, INPUT_STD, export_detector, get_model


class TrainSamples:
    """A split as training samples: augmented image plus per-anchor targets. The random state of
    sample ``i`` in epoch ``e`` is seeded by ``(seed, e, i)``, so loader threads need no shared RNG
    and a resumed run sees the same crops. Set :attr:`epoch` before each epoch."""

    def __init__(self, split: DetectionSplit, size: int, seed: int = 0, flip: bool = True,
                 photometric: float = 0.3, min_crop: float = 0.3) -> None:
        self.split, self.size, self.seed = split, size, seed
        self.flip, self.photometric, self.min_crop = flip, photometric, min_crop
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, ...]:
        img, faces = self.split[idx]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        img, faces = augment(img, faces, self.size, rng, self.flip, self.photometric, self.min_crop)
        t = assign(anchors_for(self.size, self.size), faces.boxes, faces.landmarks, faces.landmark_valid)
        x = ((img.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)
        return x, t.labels, t.boxes, t.landmarks, t.landmark_mask


def loader(samples: TrainSamples, batch_size: int, workers: int, shuffle: bool = True) -> Any:
    """A Gluon DataLoader over ``samples`` for epoch ``samples.epoch``, using the split's sampler
    (read-ahead for RecordIO, seeded by run seed and epoch for folders)."""
    from mxnet import gluon

    batches = gluon.data.BatchSampler(samples.split.sampler(shuffle, [samples.seed, samples.epoch]), batch_size, "keep")
    return gluon.data.DataLoader(samples, batch_sampler=batches, num_workers=workers, thread_pool=workers > 0)


def make_trainer(net: Any, hp: dict[str, Any]) -> Any:
    """SGD (momentum, weight decay) or Adam over every parameter of ``net``."""
    from mxnet import gluon

    options = {"learning_rate": hp["lr"], "wd": hp["weight_decay"]}
    if hp["optimizer"] == "sgd":
        options["momentum"] = hp["momentum"]
    return gluon.Trainer(net.collect_params(), hp["optimizer"], options)


def lr_at(epoch: int, hp: dict[str, Any]) -> float:
    """Step schedule: the base lr divided by 10 at every epoch listed in ``lr_steps``."""
    steps = [int(s) for s in str(hp.get("lr_steps") or "").split(",") if s.strip()]
    return hp["lr"] * 0.1 ** sum(epoch >= s for s in steps)


def build_net(hp: dict[str, Any], ctx: list[Any] | None = None) -> Any:
    """A freshly initialised, hybridized RetinaFace for ``hp['network']`` on ``ctx`` (default CPU)."""
    import mxnet as mx

    net = get_model(hp["network"])
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def train_step(net: Any, trainer: Any, batch: list[Any], cfg: LossConfig, ctx: list[Any] | None = None) -> dict[str, float]:
    """One forward/backward/update over ``batch`` split across ``ctx``; returns the loss parts
    (mean over devices) as floats."""
    import mxnet as mx
    from mxnet import autograd, gluon

    ctx = ctx or [mx.cpu()]
    # split_and_load also moves the loader's shared-memory batches onto the devices the net lives on.
    slices = [gluon.utils.split_and_load(b, ctx, even_split=False) for b in batch]
    with autograd.record():
        parts = [detection_loss(net(x), *targets, cfg) for x, *targets in zip(*slices)]
    autograd.backward([p["total"] for p in parts])
    trainer.step(len(parts))
    return {k: sum(float(p[k].asscalar()) for p in parts) / len(parts) for k in parts[0]}


def run_epoch(net: Any, trainer: Any, data: Any, ckpt: Any, epoch: int, step: int, cfg: LossConfig,
              ctx: list[Any], desc: str, progress: bool) -> tuple[int, dict[str, float], int]:
    """One pass over ``data``; checkpoints when due and saves + exits 143 after a SIGTERM.
    A checkpoint's ``epoch`` is the epoch a resumed run starts with: this one, when saved inside it.
    Returns the step reached, the mean loss parts and the number of samples."""
    from tqdm import tqdm

    totals: dict[str, float] = {}
    batches = seen = 0
    for batch in tqdm(data, desc=desc, disable=not progress, leave=False):
        parts = train_step(net, trainer, batch, cfg, ctx)
        step, batches, seen = step + 1, batches + 1, seen + batch[0].shape[0]
        totals = {k: totals.get(k, 0.0) + v for k, v in parts.items()}
        ckpt.exit_if_stopping(net, trainer, step, epoch)
        if ckpt.due(step):
            ckpt.save(net, trainer, step, epoch)
    return step, {k: v / max(batches, 1) for k, v in totals.items()}, seen


def val_metrics(net: Any, val: DetectionSplit, cfg: EvalConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """``val_ap50`` and counts; a val split without any face has no AP, which is said, not faked."""
    result = evaluate(net, val, cfg)
    if result["faces"] == 0:
        log(f"{val.name}: no faces in the val split, so no AP@0.5")
        return {"val_images": result["images"], "val_faces": 0}
    return {"val_ap50": round(result["ap50"], 4), "val_images": result["images"], "val_faces": result["faces"]}


def fit(train: DetectionSplit, val: DetectionSplit | None, model_dir: Path, checkpoint_dir: Path,
        hp: dict[str, Any], metrics_file: Path | None = None, log: Callable[[str], None] = print,
        progress: bool = False) -> dict[str, Any]:
    """Train on ``train``, evaluate on ``val`` (when given), export to ``model_dir``; resume from
    the newest checkpoint in ``checkpoint_dir``. Each epoch's metrics go to ``metrics_file``; the
    final ones are returned (the entry point logs them)."""
    import mxnet as mx

    if hp["image_size"] % 32 or hp["eval_size"] % 32:
        raise SpecError(f"image_size and eval_size must be multiples of 32 (got {hp['image_size']}, {hp['eval_size']})")
    mx.random.seed(hp["seed"])
    if val is None:
        log(f"{train.name}: no val split found: training only, no val_ap50 will be reported")
    ctx = mx_contexts()
    net = build_net(hp, ctx)
    trainer = make_trainer(net, hp)
    ckpt = Checkpointer(checkpoint_dir, every=hp["checkpoint_every"])
    ckpt.install_sigterm()
    restored = ckpt.restore(net, trainer, ctx)
    step, start = (restored.step, restored.epoch) if restored else (0, 0)
    if restored:
        log(f"resumed from {restored.path.name}: step {step}, epoch {start}")
    samples = TrainSamples(train, hp["image_size"], hp["seed"], hp["flip"], hp["photometric"], hp["min_crop"])
    loss_cfg = LossConfig(hp["cls_loss"], hp["neg_pos_ratio"], hp["landmark_weight"])
    eval_cfg = EvalConfig(hp["eval_size"], hp["score_threshold"], hp["nms_threshold"])
    metrics: dict[str, Any] = {}
    started, seen = time.perf_counter(), 0
    for epoch in range(start, hp["epochs"]):
        samples.epoch = epoch
        trainer.set_learning_rate(lr_at(epoch, hp))
        data = loader(samples, hp["batch_size"], hp["workers"])
        step, losses, count = run_epoch(net, trainer, data, ckpt, epoch, step, loss_cfg, ctx,
                                        f"epoch {epoch + 1}/{hp['epochs']}", progress)
        seen += count
        ckpt.save(net, trainer, step, epoch + 1)
        metrics = {"epoch": epoch + 1, "step": step, "lr": lr_at(epoch, hp),
                   **{f"train_{k}": round(v, 5) for k, v in losses.items()}}
        if val is not None and hp["eval_every"] and (epoch + 1) % hp["eval_every"] == 0 and epoch + 1 < hp["epochs"]:
            metrics.update(val_metrics(net, val, eval_cfg, log))
        log_metrics(metrics_file, **metrics)
        log(" ".join(f"{k}={v}" for k, v in metrics.items()))
    elapsed = time.perf_counter() - started
    final = {**metrics, **clean_metrics(train, "train"), "train_samples_per_s": round(seen / elapsed, 2) if seen else None}
    log(train.report.summary(train.name))
    if val is not None:
        final.update({**val_metrics(net, val, eval_cfg, log), **clean_metrics(val, "val")})
        log(val.report.summary(val.name))
    export(net, model_dir, hp, final)
    return final


def clean_metrics(split: DetectionSplit, prefix: str) -> dict[str, int]:
    """The split's clean-up counts as job metrics (``train_boxes_clipped`` ...)."""
    r = split.report
    return {f"{prefix}_images": r.images, f"{prefix}_faces": r.faces, f"{prefix}_negative_images": r.negatives,
            f"{prefix}_boxes_clipped": r.clipped, f"{prefix}_boxes_dropped": r.dropped}


def export(net: Any, model_dir: Path, hp: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """``model.onnx`` (insightface detector), ``retinaface-symbol.json`` + params and
    ``metrics.json`` in ``model_dir``; returns the ONNX path."""
    import mxnet as mx

    model_dir.mkdir(parents=True, exist_ok=True)
    net.collect_params().reset_ctx(mx.cpu())  # export traces on the CPU, wherever training ran
    net(mx.nd.zeros((1, 3, hp["image_size"], hp["image_size"])))
    export_gluon(net, model_dir, "retinaface")
    path = export_detector(net, model_dir / "model.onnx", hp["image_size"])
    (model_dir / "metrics.json").write_text(json.dumps({"hyperparameters": hp, "metrics": metrics}, indent=2, default=str))
    return path
