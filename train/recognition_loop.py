"""The recognition training loop: ArcFace-style margin training of a backbone on insightface
RecordIO, data parallel over the job's devices and, under a DMLC environment, over machines with
MXNet's own ``dist_sync`` kvstore.

One call, :func:`train`, does a whole job: open the data, build or restore the model, run the
epochs with checkpoints and metrics, then export the backbone (Gluon + ONNX) and evaluate it on the
``val`` channel's verification sets. Everything a job writes goes through ``jobs.core.contract``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from jobs.core import storage
from jobs.core.contract import JobEnv, log_metrics
from jobs.core.devices import mx_contexts
from jobs.core.errors import DataError, JobFailed
from jobs.core.tasks import chance_warnings
from train import finetune, fresh
from train.backbones import get_model
from train.checkpoint import Checkpointer
from train.config import RECOGNITION
from train.data import RecognitionDataset
from train.export import export_gluon, export_onnx
from train.heads import MarginHead, get_margin
from train.partial_fc import Collective, PartialFC, WithPartialFC
from train.verification import evaluate

IMAGE_SIZE = (112, 112)
VERIFICATION = "verification.json"


class Recognizer(gluon.HybridBlock):
    """Backbone plus margin head, trained (and checkpointed) as one block; only the backbone is
    exported. With ``sample_rate`` below 1 the head is a :class:`train.partial_fc.PartialFC`
    outside the block (``head`` is None), split across devices and workers."""

    def __init__(self, config: dict[str, Any], num_classes: int):
        super().__init__()
        # Parameters without a default are absent unless set (jobs.core.entry.checked).
        margin = get_margin(config["loss"], config.get("margin_s"), config.get("margin_m1"), config.get("margin_m2"),
                            config.get("margin_m3"))
        self.margin = margin
        with self.name_scope():
            self.backbone = get_model(config["network"], config["embedding_size"])
            self.head = MarginHead(num_classes, config["embedding_size"], margin) if config["sample_rate"] >= 1 else None

    def hybrid_forward(self, F, x, label):
        return self.head(self.backbone(x), label)


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: its devices, the kvstore, and its shard of the data."""

    ctx: list[Any]
    kvstore: Any
    rank: int = 0
    num_workers: int = 1

    @property
    def chief(self) -> bool:
        """Only worker 0 writes checkpoints, metrics and the model."""
        return self.rank == 0


def cluster() -> Cluster:
    """All local GPUs (else the CPU); ``dist_sync`` when the backend started us as one of several
    DMLC workers (roles and hosts come from the ``DMLC_*`` variables)."""
    ctx = mx_contexts()
    if os.environ.get("DMLC_ROLE") == "worker" and int(os.environ.get("DMLC_NUM_WORKER", "1")) > 1:
        kv = mx.kv.create("dist_sync")
        return Cluster(ctx, kv, kv.rank, kv.num_workers)
    return Cluster(ctx, "device")


def open_training_data(folder: Path, config: dict[str, Any]) -> RecognitionDataset:
    """The ``train`` channel as a dataset, with every problem a user can fix reported up front:
    missing ``.rec``/``.idx``/``property``, wrong image size, a class count that disagrees."""
    flip = config["flip"]

    def transform(img: mx.nd.NDArray, label: float) -> tuple[np.ndarray, np.float32]:
        x = img.asnumpy().astype(np.float32)
        if flip and np.random.rand() < 0.5:
            x = x[:, ::-1]
        return (x.transpose(2, 0, 1) - 127.5) / 127.5, np.float32(label)

    data = RecognitionDataset(folder, transform=transform)
    if not storage.exists(data.files.property):
        raise DataError(f"{data.files.property}: missing; a recognition channel needs train.rec, train.idx and "
                        "property ('num_classes,112,112'; faceops data pack-recognition writes all three)")
    if tuple(data.image_size) != IMAGE_SIZE:
        raise DataError(f"{data.files.rec}: images are {data.image_size[0]}x{data.image_size[1]}, the backbones take "
                        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} (pack with --resize 112 or --align)")
    expected = config.get("num_classes")
    if expected is not None and expected != data.num_classes:
        raise DataError(f"hyperparameters.num_classes is {expected} but {data.files.rec} holds {data.num_classes} identities")
    return data


class ShardSampler(gluon.data.Sampler):
    """One epoch's positions for one worker: the dataset's read-ahead shuffle seeded by
    ``(seed, epoch)`` so every worker draws the same order, every ``num_workers``-th position
    from ``rank``, the first ``skip`` left out (to resume mid-epoch)."""

    def __init__(self, data: RecognitionDataset, seed: int, epoch: int, rank: int, num_workers: int, skip: int):
        self.data, self.seed, self.skip = data, seed * 100003 + epoch, skip
        self.rank, self.num_workers = rank, num_workers

    def __len__(self) -> int:
        return max(0, len(range(self.rank, len(self.data), self.num_workers)) - self.skip)

    def __iter__(self) -> Iterator[int]:
        mine = 0
        for i, position in enumerate(self.data.sampler(shuffle=True, seed=self.seed)):
            if i % self.num_workers == self.rank:
                if mine >= self.skip:
                    yield position
                mine += 1


def learning_rate(config: dict[str, Any], step: int, steps_per_epoch: int, total_steps: int, global_batch: int) -> float:
    """arcface_torch's schedule: lr scaled to the global batch, linear warmup, then polynomial
    (power 2) decay to zero at the last step."""
    base = config["lr"] * global_batch / 512
    warmup = int(config["warmup_epochs"] * steps_per_epoch)
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (1 - (step - warmup) / max(1, total_steps - warmup)) ** 2


def train(config: dict[str, Any], env: JobEnv) -> dict[str, Any]:
    """Run one recognition job to the end; returns the final metrics."""
    mx.random.seed(config["seed"])
    np.random.seed(config["seed"])
    place = cluster()
    # AMP's loss scaling wraps a loss Gluon differentiates; the Partial FC step hands the backbone
    # its gradient directly, so that path trains in float32.
    use_amp = config["amp"] and place.ctx[0].device_type == "gpu" and config["sample_rate"] >= 1
    if use_amp:
        from mxnet.contrib import amp

        amp.init()
    print(f"training {config['network']} on {len(place.ctx)} {place.ctx[0].device_type} device(s), "
          f"worker {place.rank} of {place.num_workers}", flush=True)
    data = open_training_data(env.channel("train"), config)
    batch = config["batch_size"] * len(place.ctx)
    per_worker = len(data) // place.num_workers
    if batch > per_worker:
        raise DataError(f"batch_size {config['batch_size']} x {len(place.ctx)} device(s) = {batch} images per step, "
                        f"but {data.files.rec} gives this worker only {per_worker} images; lower batch_size")
    steps_per_epoch = per_worker // batch
    total = config["epochs"] * steps_per_epoch
    if config["max_steps"]:
        total = min(total, config["max_steps"])
    global_batch = batch * place.num_workers
    print(f"lr {config['lr']:g} per 512 images -> {config['lr'] * global_batch / 512:.4g} effective for a global batch "
          f"of {global_batch} (peak, after {config['warmup_epochs']:g} warmup epochs); {total} steps", flush=True)

    model = Recognizer(config, data.num_classes)
    model.backbone.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=place.ctx)
    head = None
    if model.head is None:
        head = PartialFC(data.num_classes, config["embedding_size"], model.margin, config["sample_rate"],
                         Collective(place.ctx, place.kvstore, place.rank, place.num_workers), config["seed"])
        print(f"Partial FC: sample_rate {config['sample_rate']:g}, {data.num_classes} classes in "
              f"{len(place.ctx) * place.num_workers} shard(s); this worker holds "
              f"{sum(shard.size for shard in head.shards)}", flush=True)
    else:
        model.head.initialize(mx.init.Normal(0.01), ctx=place.ctx)
    if "init" in env.channels:
        print(finetune.start_from(model, env.channels["init"], data, config, None if head is None else head.load_full),
              flush=True)
    # What a checkpoint holds: the block, or the backbone with this worker's Partial FC shards.
    net = model if head is None else WithPartialFC(model.backbone, head)
    model.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(model.collect_params(), "sgd",
                            {"learning_rate": learning_rate(config, 0, steps_per_epoch, total, global_batch),
                             "momentum": config["momentum"], "wd": config["weight_decay"], "multi_precision": use_amp},
                            kvstore=place.kvstore, update_on_kvstore=False)
    if use_amp:
        amp.init_trainer(trainer)
    checkpoints = Checkpointer(env.checkpoint_dir, every=config["checkpoint_every"])
    checkpoints.install_sigterm()
    step, epoch, skip = 0, 0, 0
    restored = checkpoints.restore(net, trainer, place.ctx)
    if restored is not None:
        step, epoch, skip = restored.step, restored.epoch, int(restored.extra.get("batch", 0))
        print(f"resumed from {restored.path.name}: step {step}, epoch {epoch + 1}, batch {skip}", flush=True)

    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    say = (lambda **values: log_metrics(env.metrics_file, **values)) if place.chief else (lambda **values: None)
    save = checkpoints.save if place.chief else (lambda *a, **k: None)
    final: dict[str, Any] = {}
    while epoch < config["epochs"] and step < total:
        loader = gluon.data.DataLoader(data, batch_size=batch, last_batch="discard", num_workers=config["workers"],
                                       thread_pool=True, sampler=ShardSampler(data, config["seed"], epoch, place.rank,
                                                                              place.num_workers, skip * batch))
        epoch_loss = epoch_correct = epoch_seen = 0.0
        window_loss = window_correct = window_seen = 0.0
        tic = time.perf_counter()
        done = skip
        for index, (x, y) in enumerate(loader, start=skip):
            if index >= steps_per_epoch or step >= total:
                break
            done = index + 1
            lr = learning_rate(config, step, steps_per_epoch, total, global_batch)
            trainer.set_learning_rate(lr)
            finetune.set_backbone_lr_mult(model.backbone, finetune.backbone_lr_mult(config, step, steps_per_epoch),
                                          config["fresh_embedding"] and "init" in env.channels)
            if head is None:
                loss, correct = _step(model, trainer, loss_fn, x, y, place, data.num_classes, global_batch,
                                      amp if use_amp else None)
            else:
                loss, correct = _partial_step(model.backbone, head, trainer, x, y, place, data.num_classes,
                                              global_batch, lr, config)
            if not math.isfinite(loss):
                latest = checkpoints.latest()
                raise JobFailed(f"loss is {loss} at step {step + 1} (lr {lr:.4g}); training stopped, the last good "
                                f"checkpoint is {latest.path.name if latest else 'none (no checkpoint yet)'}; "
                                "lower lr or check the data")
            step += 1
            window_loss += loss * len(x)
            window_correct += correct
            window_seen += len(x)
            if step % config["log_every"] == 0 or index + 1 == steps_per_epoch or step == total:
                elapsed = time.perf_counter() - tic
                line = {"step": step, "epoch": epoch + 1, "loss": round(window_loss / window_seen, 5),
                        "acc": round(window_correct / window_seen, 5), "lr": lr,
                        "samples_per_sec": round(window_seen * place.num_workers / elapsed, 2)}
                say(**line)
                if place.chief:
                    print(f"epoch {epoch + 1}/{config['epochs']} step {step}/{total} loss {line['loss']:.4f} "
                          f"acc {line['acc']:.3f} lr {lr:.4g} {line['samples_per_sec']:.1f} samples/s", flush=True)
                epoch_loss += window_loss
                epoch_correct += window_correct
                epoch_seen += window_seen
                window_loss = window_correct = window_seen = 0.0
                tic = time.perf_counter()
            meta = {"batch": index + 1, "lr": lr}
            checkpoints.exit_if_stopping(net, trainer, step, epoch, **meta)
            if checkpoints.due(step):
                save(net, trainer, step, epoch, **meta)
        if epoch_seen:
            final = {"epoch": epoch + 1, "epoch_loss": round(epoch_loss / epoch_seen, 5),
                     "epoch_acc": round(epoch_correct / epoch_seen, 5)}
            say(**final)
        # Stopped by max_steps mid-epoch: the checkpoint says where, so a longer rerun continues there.
        epoch, skip = (epoch + 1, 0) if done >= steps_per_epoch else (epoch, done)
        if place.kvstore is not None:
            # Every worker finishes its pushes and pulls here, while its process is whole: a worker
            # that left them to the kvstore's destructor at exit could hold back the pull the
            # chief's checkpoint waits for, and both waited forever (a dist_sync test hung so).
            mx.nd.waitall()
        save(net, trainer, step, epoch, batch=skip)
    if place.chief:
        final.update(finish(model.backbone, config, env))
        # A later fine-tune's head; a Partial FC head is whole only on a single worker.
        if head is None:
            model.head.save_parameters(str(env.output("model") / finetune.HEAD))
        elif place.num_workers == 1:
            mx.nd.save(str(env.output("model") / finetune.HEAD), {"weight": head.full_weight()})
    return final


def _check_labels(y: mx.nd.NDArray, num_classes: int) -> None:
    if float(y.max().asscalar()) >= num_classes:
        raise DataError(f"a record is labelled {int(y.max().asscalar())} but property says {num_classes} classes")


def _step(model: Recognizer, trainer: gluon.Trainer, loss_fn: Any, x: mx.nd.NDArray, y: mx.nd.NDArray,
          place: Cluster, num_classes: int, global_batch: int, amp: Any) -> tuple[float, int]:
    """One optimizer step over all devices; returns the mean loss and the correct predictions.
    The loss is read before the update so a NaN never reaches the parameters."""
    _check_labels(y, num_classes)
    xs = gluon.utils.split_and_load(x, place.ctx, even_split=False)
    ys = gluon.utils.split_and_load(y, place.ctx, even_split=False)
    with autograd.record():
        outputs = [model(a, b) for a, b in zip(xs, ys)]
        losses = [loss_fn(logits, b) for (logits, _), b in zip(outputs, ys)]
    if amp is not None:
        with amp.scale_loss(losses, trainer) as scaled:
            autograd.backward(scaled)
    else:
        autograd.backward(losses)
    loss = sum(float(l.sum().asscalar()) for l in losses) / len(x)
    correct = sum(int((cos.argmax(axis=1) == b).sum().asscalar()) for (_, cos), b in zip(outputs, ys))
    if math.isfinite(loss):
        trainer.step(global_batch)
    return loss, correct


def _partial_step(backbone: gluon.HybridBlock, head: PartialFC, trainer: gluon.Trainer, x: mx.nd.NDArray,
                  y: mx.nd.NDArray, place: Cluster, num_classes: int, global_batch: int, lr: float,
                  config: dict[str, Any]) -> tuple[float, int]:
    """One step with a Partial FC head: the backbone's embeddings go to the head, which updates
    its sampled centres and returns their gradient, which the backbone then follows (the trainer
    averages it over devices and workers like any other)."""
    _check_labels(y, num_classes)
    xs = gluon.utils.split_and_load(x, place.ctx, even_split=False)
    ys = gluon.utils.split_and_load(y, place.ctx, even_split=False)
    with autograd.record():
        embeddings = [backbone(a) for a in xs]
    grads, result = head.step(embeddings, ys, lr, config["momentum"], config["weight_decay"], 1.0 / global_batch)
    loss = result.loss / len(x)
    if math.isfinite(loss):
        autograd.backward(embeddings, grads)
        trainer.step(global_batch)
    return loss, result.correct


def finish(backbone: gluon.HybridBlock, config: dict[str, Any], env: JobEnv) -> dict[str, Any]:
    """Export the trained backbone into the model folder and evaluate the ``val`` channel."""
    model_dir = env.output("model")
    model_dir.mkdir(parents=True, exist_ok=True)
    params = model_dir / "backbone.params"
    backbone.save_parameters(str(params))
    # A fresh process without oneDNN exports and evaluates (train.fresh says why).
    val = [str(env.channels["val"])] if "val" in env.channels else []
    fresh.run("train.recognition", "export", str(params), config["network"], str(config["embedding_size"]),
              str(model_dir), *val)
    params.unlink()
    print(f"exported {model_dir / 'model-symbol.json'} and {model_dir / 'model.onnx'}", flush=True)
    report = model_dir / VERIFICATION
    results = json.loads(report.read_text()) if val else {}
    if results:
        log_metrics(env.metrics_file, **results)
        print("verification: " + ", ".join(f"{k} {v}" for k, v in results.items()), flush=True)
        for line in chance_warnings(results, RECOGNITION.metrics):
            print(f"warning: {line}", flush=True)
    return results


def export_model(params: Path, network: str, embedding_size: int, model_dir: Path, val: Path | None = None) -> Path:
    """Rebuild the backbone from ``params`` and write ``model-symbol.json`` + ``model-0000.params``
    and ``model.onnx`` (open batch, 3x112x112, no normalisation nodes: insightface normalises
    itself) into ``model_dir``; with ``val``, also the accuracy on its ``.bin`` sets as
    ``verification.json``."""
    backbone = get_model(network, embedding_size)
    backbone.load_parameters(str(params), ctx=mx.cpu())
    onnx_path = export_onnx(backbone, (None, 3, *IMAGE_SIZE), model_dir / "model.onnx", example_shape=(1, 3, *IMAGE_SIZE))
    export_gluon(backbone, model_dir, "model")
    if val is not None:
        ctx = mx.gpu(0) if mx.context.num_gpus() else mx.cpu()
        backbone.collect_params().reset_ctx(ctx)
        (model_dir / VERIFICATION).write_text(json.dumps(evaluate(backbone, val, ctx)))
    return onnx_path
