"""Export of trained Gluon networks: MXNet symbol + params and an ONNX model, shared by every task.

insightface decides what an ONNX file is from its graph (design.md, "Model contracts"), so the
tasks only choose the input shape and keep pre-processing out of the network; this module does
the conversion once for all of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from jobs.core.lazy import numpy as np


def export_gluon(net: Any, folder: Path, name: str = "model", epoch: int = 0) -> tuple[Path, Path]:
    """Write ``name-symbol.json`` and ``name-NNNN.params`` (the hybridized net must have run once)."""
    folder.mkdir(parents=True, exist_ok=True)
    net.export(str(folder / name), epoch=epoch)
    return folder / f"{name}-symbol.json", folder / f"{name}-{epoch:04d}.params"


def export_onnx(net: Any, input_shape: Sequence[int | None], path: Path, example_shape: Sequence[int] | None = None) -> Path:
    """Convert a hybridized Gluon ``net`` to ONNX at ``path``.

    ``input_shape`` may hold ``None`` for dynamic axes (open batch, or any H/W for detectors);
    ``example_shape`` is the concrete shape used to trace (defaults to ``input_shape`` with 1s).
    The net is run once on zeros so the cached graph exists even for a fresh network."""
    import mxnet as mx

    example = tuple(example_shape or [d if d is not None else 1 for d in input_shape])
    net.hybridize()
    net(mx.nd.zeros(example))
    tmp = path.parent / f".{path.stem}-export"
    sym_file, params_file = export_gluon(net, tmp, "net")
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = any(d is None for d in input_shape)
    mx.onnx.export_model(str(sym_file), str(params_file), in_shapes=[example], in_types=[np.float32],
                         onnx_file_path=str(path), dynamic=dynamic,
                         dynamic_input_shapes=[tuple(input_shape)] if dynamic else None, verbose=False)
    for leftover in tmp.iterdir():
        leftover.unlink()
    tmp.rmdir()
    _tidy(path)
    return path


def _tidy(path: Path) -> None:
    """Fix what MXNet's exporter gets wrong for onnxruntime and insightface.

    MXNet lists every weight as a graph input too; onnxruntime then cannot fold constants and
    warns per weight, so only the image stays an input. A per-channel PReLU's slopes are written
    as ``(C,)``, which ONNX broadcasts against the last axis (width), not channels: they become
    ``(C, 1, 1)`` as in PyTorch's exports."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    for node in model.graph.node:
        slope = weights.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope is not None and len(slope.dims) == 1 and slope.dims[0] > 1:
            value = numpy_helper.to_array(slope)
            slope.CopyFrom(numpy_helper.from_array(value.reshape(-1, 1, 1), slope.name))
    onnx.save(model, str(path))
