"""Partial FC against the full FC: memory touched and step time for 200k identities, in one run.

On the CPU with 200,000 synthetic identities and 512-d embeddings, three arms of the recognition
loop's step: Partial FC at sample_rate 0.1 (``train.partial_fc.PartialFC.step``: gather, margin
logits, softmax across shards, embedding gradient, SGD with momentum on the sampled centres);
the full FC the loop runs at sample_rate 1 (the hybridized data-parallel ``MarginHead``, softmax
cross entropy, Gluon SGD over every centre); and the Partial FC code at 1.0 (insightface's
model-parallel FC: every centre, no sampling). By default precomputed
embeddings go through the FC part alone, because on this CPU the small backbone dominates the
step (``--network mbf_s1``: its forward, backward and SGD step on 112x112 synthetic images, one
backbone shared by the arms, measured about 12 s of a 12.6 s Partial FC step at batch 64).
Rounds alternate the two arms; each figure is the median step of a round, spread over rounds.
FC memory is the bytes of centres + their gradient + their momentum that one step reads and
writes (the sampled centres, counted from what the step used), against the whole matrix.
Ratio = full-FC (MarginHead) step time / partial step time (higher is better); goal 3 for the
FC part (a tenth of the centres; what is left is the batch's gather and the sampling).
Run: .venv/bin/python benchmarks/partial_fc.py [--classes 200000] [--batch 64] [--network none|mbf_s1]
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from common import parse_args, report

BYTES = 4  # float32


def make_backbone(network: str, dim: int):
    """The small backbone and its trainer, or (None, None) for precomputed embeddings."""
    import mxnet as mx
    from mxnet import gluon

    from train.backbones import get_model

    if network == "none":
        return None, None
    backbone = get_model(network, dim)
    backbone.initialize(mx.init.Xavier(), ctx=mx.cpu())
    backbone.hybridize(static_alloc=True, static_shape=True)
    return backbone, gluon.Trainer(backbone.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})


def make_arm(sample_rate: float, classes: int, dim: int, batch: int, backbone, trainer):
    """One step of the training loop's Partial FC path (``train.recognition_loop._partial_step``);
    returns (step, centres used per step)."""
    import mxnet as mx
    from mxnet import autograd

    from train.heads import get_margin
    from train.partial_fc import Collective, PartialFC

    head = PartialFC(classes, dim, get_margin("arcface"), sample_rate, Collective([mx.cpu()]))
    rng = np.random.RandomState(0)
    images, features = inputs(rng, batch, dim)
    sampled = []

    def step() -> None:
        labels = mx.nd.array(rng.randint(0, classes, batch))
        if backbone is None:
            grads, result = head.step([features], [labels], 0.1, 0.9, 5e-4, 1.0 / batch)
        else:
            with autograd.record():
                embeddings = [backbone(images)]
            grads, result = head.step(embeddings, [labels], 0.1, 0.9, 5e-4, 1.0 / batch)
            autograd.backward(embeddings, grads)
            trainer.step(batch)
        mx.nd.waitall()
        sampled.append(sum(result.sampled))

    return step, sampled


def make_margin_head(classes: int, dim: int, batch: int, backbone, trainer):
    """One step of the loop's sample_rate 1 path (``_step``): the hybridized data-parallel
    MarginHead, softmax cross entropy and Gluon's SGD over every centre."""
    import mxnet as mx
    from mxnet import autograd, gluon

    from train.heads import MarginHead, get_margin

    head = MarginHead(classes, dim, get_margin("arcface"))
    head.initialize(mx.init.Normal(0.01), ctx=mx.cpu())
    head.hybridize(static_alloc=True, static_shape=True)
    head_trainer = gluon.Trainer(head.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 5e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    images, features = inputs(rng, batch, dim)
    features.attach_grad()

    def step() -> None:
        labels = mx.nd.array(rng.randint(0, classes, batch))
        with autograd.record():
            embeddings = features if backbone is None else backbone(images)
            loss = loss_fn(head(embeddings, labels)[0], labels)
        loss.backward()
        head_trainer.step(batch)
        if trainer is not None:
            trainer.step(batch)
        mx.nd.waitall()

    return step, [classes]


def inputs(rng: np.random.RandomState, batch: int, dim: int):
    """Synthetic 112x112 images (for a backbone) and embeddings (without one)."""
    import mxnet as mx

    return mx.nd.array(rng.uniform(-1, 1, (batch, 3, 112, 112))), mx.nd.array(rng.randn(batch, dim))


def timed(step, count: int) -> float:
    """Median seconds of ``count`` steps."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args(__doc__, {
        "--classes": {"type": int, "default": 200_000},
        "--dim": {"type": int, "default": 512},
        "--batch": {"type": int, "default": 64},
        "--network": {"default": "none", "help": "none (precomputed embeddings) or a small backbone, e.g. mbf_s1"},
        "--rounds": {"type": int, "default": 3},
        "--steps": {"type": int, "default": 3, "help": "steps per arm per round"},
    })
    backbone, trainer = make_backbone(args.network, args.dim)
    arms = {"partial 0.1": make_arm(0.1, args.classes, args.dim, args.batch, backbone, trainer),
            "full (sample_rate 1: MarginHead)": make_margin_head(args.classes, args.dim, args.batch, backbone, trainer),
            "model-parallel 1.0 (PartialFC)": make_arm(1.0, args.classes, args.dim, args.batch, backbone, trainer)}
    for step, _ in arms.values():
        step()  # warm-up: graph building, first allocations
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, (step, _) in arms.items():
            times[name].append(timed(step, args.steps))
    touched = {name: int(np.mean(used[1:] or used)) * args.dim * BYTES * 3 for name, (_, used) in arms.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in arms:
        spread = ", ".join(f"{t:.3f}" for t in times[name])
        print(f"{name:<34}: step {median[name]:.3f} s (rounds: {spread}); FC memory touched "
              f"{touched[name] / 2**20:.1f} MiB per step")
    print(f"stored per worker either way: centres + momentum {2 * args.classes * args.dim * BYTES / 2**20:.1f} MiB")
    partial, full, model_parallel = (median[n] for n in arms)
    report("partial_fc", round(full / partial, 2), 3, partial_step_s=round(partial, 4), full_step_s=round(full, 4),
           model_parallel_step_s=round(model_parallel, 4), ratio_model_parallel=round(model_parallel / partial, 2),
           rounds_s={name: [round(t, 4) for t in ts] for name, ts in times.items()},
           partial_fc_bytes=touched["partial 0.1"], full_fc_bytes=touched["full (sample_rate 1: MarginHead)"],
           memory_ratio=round(touched["full (sample_rate 1: MarginHead)"] / touched["partial 0.1"], 2),
           classes=args.classes, embedding=args.dim, batch=args.batch, network=args.network, rounds=args.rounds,
           steps=args.steps)


if __name__ == "__main__":
    main()
