"""Checkpoints: atomic, pruned, and a restore gives back the same parameters and optimizer state."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from train.checkpoint import Checkpointer  # noqa: E402


def make_net():
    net = mx.gluon.nn.Dense(3, in_units=4)
    net.initialize(mx.init.Xavier())
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    return net, trainer


def train_step(net, trainer):
    x = mx.nd.array(np.random.RandomState(0).rand(8, 4))
    with mx.autograd.record():
        loss = (net(x) ** 2).sum()
    loss.backward()
    trainer.step(8)


def test_save_restore_prune(tmp_path):
    net, trainer = make_net()
    ckpt = Checkpointer(tmp_path, every=2, keep=2)
    assert ckpt.latest() is None and not ckpt.due(1) and ckpt.due(2)
    for step in (1, 2, 3):
        train_step(net, trainer)
        ckpt.save(net, trainer, step=step, epoch=0, lr=0.1)
    assert [c.step for c in ckpt.all()] == [2, 3]
    assert not list(tmp_path.glob(".tmp-*"))

    other, other_trainer = make_net()
    restored = ckpt.restore(other, other_trainer)
    assert restored.step == 3 and restored.extra == {"lr": 0.1}
    np.testing.assert_array_equal(other.weight.data().asnumpy(), net.weight.data().asnumpy())
    # Same optimizer state: one more identical step gives identical weights.
    train_step(net, trainer)
    train_step(other, other_trainer)
    np.testing.assert_allclose(other.weight.data().asnumpy(), net.weight.data().asnumpy(), rtol=1e-6)


def test_stop_request_saves_and_exits(tmp_path):
    net, trainer = make_net()
    ckpt = Checkpointer(tmp_path)
    ckpt.exit_if_stopping(net, trainer, step=5, epoch=1)
    assert ckpt.latest() is None
    ckpt.stop_requested = True
    assert ckpt.due(7)
    with pytest.raises(SystemExit) as exit_info:
        ckpt.exit_if_stopping(net, trainer, step=7, epoch=1)
    assert exit_info.value.code == 143 and ckpt.latest().step == 7
