"""Which devices a training or inference step runs on: every local GPU, else the CPU."""
from __future__ import annotations

from typing import Any


def mx_contexts() -> list[Any]:
    """MXNet contexts for data-parallel work: ``[gpu(0), gpu(1), ...]``, or ``[cpu()]`` without a
    GPU. MXNet is imported here, not at module level, so importing this file stays cheap."""
    import mxnet as mx

    gpus = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(gpus)] if gpus else [mx.cpu()]
