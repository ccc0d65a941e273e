"""Partial FC: the margin classifier for many identities, split across devices and workers, each
step touching only a sample of the class centres (insightface's ``recognition/arcface_torch/
partial_fc.py``, An et al., "Partial FC: Training 10 Million Identities on a Single Machine").

The classes are cut into one contiguous range per device of every worker (insightface's split:
``num_classes // parts`` each, the first ``num_classes % parts`` one more), so worker ``r`` owns
the ranges of its devices and nobody holds the whole matrix. Each step:

1. the batch's embeddings and labels are gathered from every device and worker;
2. each shard keeps the centres of the labels it owns (the positives) plus random others up to
   ``int(sample_rate * shard size)`` (all positives even when they are more), and computes the
   margin logits of the whole gathered batch against that sample only;
3. the softmax spans the shards through sums alone: ``exp(logit - s)`` (``s``, the logit scale,
   bounds every logit, so it stands in for insightface's all-reduced max) summed per shard, then
   across shards; the true-class logit likewise;
4. each shard's gradient goes to its sampled centres, updated there by SGD with momentum and
   weight decay (momentum and decay of the other centres stay untouched, as insightface's
   ``weight_mom`` bank), and the embedding gradients are summed across shards and handed back
   to each device's backbone.

Communication is sums only, so MXNet's kvstore carries it between workers (``dist_sync`` pushes
add up on the server) and plain copies between local devices. With ``sample_rate`` 1 every
centre is used (insightface's model-parallel FC), with the same numbers as the data-parallel
:class:`train.heads.MarginHead`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd

from train.heads import Margin, margin_logits

# kvstore keys for the head's sums, far above any Trainer parameter index.
KEY_BASE = 1 << 20


def class_ranges(num_classes: int, parts: int) -> list[tuple[int, int]]:
    """``(start, size)`` of each part's classes, insightface's split."""
    base, extra = divmod(num_classes, parts)
    return [(base * i + min(i, extra), base + int(i < extra)) for i in range(parts)]


class Collective:
    """Sums over every shard: this worker's devices by copies, then the workers through the kvstore
    (``dist_sync``: each push is added up on the server, the pull returns the total)."""

    def __init__(self, ctx: list[Any], kvstore: Any = None, rank: int = 0, num_workers: int = 1):
        self.ctx, self.rank, self.num_workers = ctx, rank, num_workers
        self.kvstore = kvstore if num_workers > 1 else None
        self.keys: dict[str, int] = {}

    def allreduce(self, name: str, arrays: list[mx.nd.NDArray]) -> list[mx.nd.NDArray]:
        """The sum of ``arrays`` (any devices) over all workers, one copy per device."""
        total = arrays[0].as_in_context(self.ctx[0]).copy()
        for array in arrays[1:]:
            total += array.as_in_context(self.ctx[0])
        if self.kvstore is not None:
            if name not in self.keys:
                self.keys[name] = KEY_BASE + len(self.keys)
                self.kvstore.init(self.keys[name], mx.nd.zeros(total.shape, ctx=self.ctx[0]))
            self.kvstore.push(self.keys[name], total)
            self.kvstore.pull(self.keys[name], out=total)
        return [total if c == self.ctx[0] else total.as_in_context(c) for c in self.ctx]

    def gather(self, name: str, parts: list[mx.nd.NDArray]) -> list[mx.nd.NDArray]:
        """Every worker's ``parts`` (its devices' rows, in device order) stacked in rank order, one
        copy per device; each worker contributes its rows to a zero buffer and the sum is the
        gather (every worker has the same number of rows)."""
        local = mx.nd.concat(*[p.as_in_context(self.ctx[0]) for p in parts], dim=0)
        if self.kvstore is None:
            return [local if c == self.ctx[0] else local.as_in_context(c) for c in self.ctx]
        rows = local.shape[0]
        buffer = mx.nd.zeros((rows * self.num_workers, *local.shape[1:]), ctx=self.ctx[0])
        buffer[self.rank * rows:(self.rank + 1) * rows] = local
        return self.allreduce(name, [buffer])


@dataclass
class Shard:
    """One device's classes ``[start, start + size)``: their centres and momentum."""

    start: int
    size: int
    weight: mx.nd.NDArray
    momentum: mx.nd.NDArray


@dataclass(frozen=True)
class StepResult:
    """What one step measured on this worker's rows: summed loss, correct top-1 predictions (the
    true class's plain cosine above every sampled centre of every shard), and the centres each
    shard used."""

    loss: float
    correct: int
    sampled: list[int]


class PartialFC:
    """The sharded margin head; :meth:`step` does forward, backward and the centres' update."""

    def __init__(self, num_classes: int, embedding_size: int, margin: Margin, sample_rate: float,
                 collective: Collective, seed: int = 0):
        self.num_classes, self.embedding_size, self.margin = num_classes, embedding_size, margin
        self.sample_rate, self.collective = sample_rate, collective
        ctx = collective.ctx
        ranges = class_ranges(num_classes, len(ctx) * collective.num_workers)
        mine = ranges[collective.rank * len(ctx):(collective.rank + 1) * len(ctx)]
        # insightface's initialisation: N(0, 0.01) centres, zero momentum.
        self.shards = [Shard(start, size, mx.nd.random.normal(0, 0.01, (size, embedding_size), ctx=c),
                             mx.nd.zeros((size, embedding_size), ctx=c)) for (start, size), c in zip(mine, ctx)]
        self.rng = np.random.RandomState(seed * 7919 + collective.rank)

    def sample(self, shard: Shard, labels: np.ndarray) -> np.ndarray | None:
        """Sorted local indices of the centres ``shard`` uses for ``labels``: its positives plus
        random others up to ``int(sample_rate * size)``; None for all of them."""
        keep = int(self.sample_rate * shard.size)
        if keep >= shard.size:
            return None
        local = labels - shard.start
        positive = np.unique(local[(local >= 0) & (local < shard.size)])
        if len(positive) >= keep:
            return positive
        score = self.rng.random_sample(shard.size)
        score[positive] = 2.0
        return np.sort(np.argpartition(-score, keep - 1)[:keep])

    def step(self, embeddings: list[mx.nd.NDArray], labels: list[mx.nd.NDArray], lr: float, momentum: float,
             wd: float, rescale: float) -> tuple[list[mx.nd.NDArray], StepResult]:
        """One step for this worker's ``embeddings`` (one array per device, from the backbone) and
        their ``labels``: the gradient of the summed loss for each device's embeddings, and what
        was measured. The centres are updated (lr, ``momentum``, ``wd``, gradients times
        ``rescale``) only when the loss is finite, so a NaN never reaches them."""
        ctx = self.collective.ctx
        features = self.collective.gather("features", [e.detach().astype("float32") for e in embeddings])
        label_all = self.collective.gather("labels", [y.astype("float32") for y in labels])[0].asnumpy().astype(np.int64)
        s = self.margin.s
        pending, stats = [], []
        for shard, x, c in zip(self.shards, features, ctx):
            index = self.sample(shard, label_all)
            sub = shard.weight if index is None else shard.weight.take(mx.nd.array(index, ctx=c, dtype="int64"))
            local = label_all - shard.start
            if index is not None:
                # Position among the sampled centres; -1 (no true class here) for other shards' labels.
                position = np.searchsorted(index, local)
                owned = (local >= 0) & (local < shard.size)
                local = np.where(owned, position, -1)
            else:
                local = np.where((local >= 0) & (local < shard.size), local, -1)
            one_hot = mx.nd.one_hot(mx.nd.array(local, ctx=c), sub.shape[0])
            x.attach_grad()
            sub.attach_grad()
            with autograd.record():
                cos = mx.nd.FullyConnected(mx.nd.L2Normalization(x), mx.nd.L2Normalization(sub), no_bias=True,
                                           num_hidden=sub.shape[0])
                cos = mx.nd.clip(cos, -1.0 + 1e-6, 1.0 - 1e-6)
                logits = margin_logits(mx.nd, cos, one_hot, self.margin)
            exp = mx.nd.exp(logits - s)  # s bounds every logit: no overflow, no max to reduce
            stats.append(mx.nd.stack(exp.sum(axis=1), (logits * one_hot).sum(axis=1), (cos * one_hot).sum(axis=1), axis=1))
            pending.append((shard, index, x, sub, cos, logits, exp, one_hot))
        total = self.collective.allreduce("stats", stats)
        above = []
        for (shard, index, x, sub, cos, logits, exp, one_hot), t in zip(pending, total):
            # Centres whose plain cosine beats the true class's (the true class itself does not).
            above.append((cos > t[:, 2:3]).sum(axis=1))
        beaten = self.collective.allreduce("beaten", above)[0].asnumpy()
        t0 = total[0].asnumpy()
        rows = slice(self.collective.rank * len(beaten) // self.collective.num_workers,
                     (self.collective.rank + 1) * len(beaten) // self.collective.num_workers)
        loss = float((np.log(t0[rows, 0]) + s - t0[rows, 1]).sum())
        result = StepResult(loss, int((beaten[rows] == 0).sum()), [p[3].shape[0] for p in pending])
        for (shard, index, x, sub, cos, logits, exp, one_hot), t in zip(pending, total):
            logits.backward(exp / t[:, 0:1] - one_hot)
        grads = self.collective.allreduce("grad", [p[2].grad for p in pending])
        if math.isfinite(loss):
            for shard, index, x, sub, *_ in pending:
                self._update(shard, index, sub, lr, momentum, wd, rescale)
        return self._own_rows(grads[0], embeddings), result

    def _update(self, shard: Shard, index: np.ndarray | None, sub: mx.nd.NDArray, lr: float, momentum: float,
                wd: float, rescale: float) -> None:
        """SGD with momentum on the sampled centres, written back into the shard (the others keep
        their weights and momentum)."""
        if index is None:
            mx.nd.sgd_mom_update(shard.weight, sub.grad, shard.momentum, lr=lr, momentum=momentum, wd=wd,
                                 rescale_grad=rescale, out=shard.weight)
            return
        rows = mx.nd.array(index, ctx=sub.context, dtype="int64")
        mom = shard.momentum.take(rows)
        weight = sub.detach()
        mx.nd.sgd_mom_update(weight, sub.grad, mom, lr=lr, momentum=momentum, wd=wd, rescale_grad=rescale, out=weight)
        at = rows.reshape((1, -1))
        mx.nd._internal._scatter_set_nd(lhs=shard.weight, rhs=weight, indices=at, shape=shard.weight.shape,
                                        out=shard.weight)
        mx.nd._internal._scatter_set_nd(lhs=shard.momentum, rhs=mom, indices=at, shape=shard.momentum.shape,
                                        out=shard.momentum)

    def _own_rows(self, grad: mx.nd.NDArray, embeddings: list[mx.nd.NDArray]) -> list[mx.nd.NDArray]:
        """This worker's devices' slices of the gathered embedding gradient, on their devices."""
        start = self.collective.rank * sum(e.shape[0] for e in embeddings)
        out = []
        for e in embeddings:
            out.append(grad[start:start + e.shape[0]].as_in_context(e.context).astype(e.dtype))
            start += e.shape[0]
        return out

    def full_weight(self) -> mx.nd.NDArray:
        """All centres in class order (a single worker holds them all)."""
        return mx.nd.concat(*[shard.weight.as_in_context(mx.cpu()) for shard in self.shards], dim=0)

    def load_full(self, weight: mx.nd.NDArray) -> None:
        """Take this worker's rows of a ``(num_classes, embedding_size)`` head (a fine-tune's start)."""
        for shard in self.shards:
            shard.weight[:] = weight[shard.start:shard.start + shard.size].as_in_context(shard.weight.context)
            shard.momentum[:] = 0

    def arrays(self) -> dict[str, mx.nd.NDArray]:
        """This worker's centres and momentum, by shard, for a checkpoint."""
        out = {}
        for i, shard in enumerate(self.shards):
            out[f"head.weight.{shard.start}"] = shard.weight
            out[f"head.momentum.{shard.start}"] = shard.momentum
        return out


class WithPartialFC:
    """The backbone and this worker's Partial FC shards as the one object a checkpoint saves and
    restores (the :class:`train.checkpoint.Checkpointer` calls ``save_parameters`` and
    ``load_parameters``); the trainer's states hold the backbone's optimizer, the momentum of the
    centres travels with them here."""

    def __init__(self, backbone: Any, head: PartialFC):
        self.backbone, self.head = backbone, head

    def save_parameters(self, path: str) -> None:
        params = {f"backbone.{name}": p.data(p.list_ctx()[0]) for name, p in
                  self.backbone._collect_params_with_prefix().items()}
        mx.nd.save(path, {**params, **self.head.arrays()})

    def load_parameters(self, path: str, ctx: Any = None) -> None:
        saved = mx.nd.load(path)
        for name, param in self.backbone._collect_params_with_prefix().items():
            param.set_data(saved[f"backbone.{name}"])
        for name, array in self.head.arrays().items():
            array[:] = saved[name].as_in_context(array.context)
