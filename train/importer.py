"""Import insightface ONNX recognizers into our Gluon backbones, layer by layer.

insightface publishes its recognizers as ONNX files exported from PyTorch, where a batch norm that
follows a convolution is folded into the convolution's bias. Our backbones keep those batch norms
(they are trained), so a folded one is unfolded: the convolution gets the weights, the batch norm
gets statistics measured on real face crops (``mean``/``var`` of the convolution's output) and
``gamma = sqrt(var + eps)``, ``beta = bias + mean``. In inference that is exactly ``conv + bias``;
in training the batch statistics stay close to the stored ones, so fine-tuning starts from the
published network instead of from re-normalised activations. Without crops the statistics are
``(0, 1)``, still exact in inference.

Layers are matched in graph order (a depth-first walk from the output, so exporters that list
nodes differently agree) against the backbone's layers in registration order; any shape or kind
that disagrees stops the import with the layer's name, so a wrong ``--network`` never loads
silently. Importing never runs the Gluon network in inference (the verification does, in a
process without oneDNN: see :mod:`train.fresh`).
"""
from __future__ import annotations

import argparse
import json
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from inference.models import default_model_dir, onnx_session, sha256
from inference.sources import IMAGE_EXTENSIONS
from jobs.core.errors import DataError, FaceopsError, JobFailed
from jobs.core.lazy import cv2
from jobs.core.lazy import numpy as np
from train.config import NETWORKS
from train.export import export_gluon, export_onnx
from train.pack import face_aligner

BN_EPS = 1e-5
IMAGE_SHAPE = (3, 112, 112)
IMPORT_RECORD = "import.json"


@dataclass
class OnnxLayer:
    """One weighted node of the ONNX graph: ``conv``/``dense`` (weight (out, in, ...), bias or
    None), ``bn`` (gamma, beta, mean, var, eps) or ``prelu`` (slopes)."""

    kind: str
    name: str  # the node's output: where calibration reads the activations
    arrays: list[np.ndarray | None]
    eps: float = BN_EPS


@dataclass
class Imported:
    """What an import loaded: the network's name, its embedding size and the batch norms that
    were unfolded from a convolution's (or dense layer's) bias."""

    network: str
    embedding_size: int
    folded: list[tuple[Any, str, np.ndarray]] = field(default_factory=list)  # (gluon BN, onnx output, bias)


def _walk(graph: Any) -> Iterator[Any]:
    """The graph's nodes in depth-first post-order from the outputs, inputs visited in order."""
    producer = {out: node for node in graph.node for out in node.output}
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(producer[o.name], False) for o in reversed(graph.output) if o.name in producer]
    while stack:
        node, expanded = stack.pop()
        if id(node) in seen:
            continue
        if expanded:
            seen.add(id(node))
            yield node
            continue
        stack.append((node, True))
        for name in reversed(node.input):
            if name in producer and id(producer[name]) not in seen:
                stack.append((producer[name], False))


def onnx_layers(model: Any) -> list[OnnxLayer]:
    """The weighted layers of an ONNX recognizer in graph order."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            weights[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    layers: list[OnnxLayer] = []
    for node in _walk(graph):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        const = [weights.get(name) for name in node.input]
        if node.op_type == "Conv" and const[1] is not None:
            layers.append(OnnxLayer("conv", node.output[0], [const[1], const[2] if len(const) > 2 else None]))
        elif node.op_type == "Gemm" and const[1] is not None:
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise DataError(f"node {node.name or node.output[0]}: Gemm with transA/alpha/beta is not supported")
            weight = const[1] if attrs.get("transB", 0) else const[1].T
            layers.append(OnnxLayer("dense", node.output[0], [weight, const[2] if len(const) > 2 else None]))
        elif node.op_type == "MatMul" and const[1] is not None:
            layers.append(OnnxLayer("dense", node.output[0], [const[1].T, None]))
        elif node.op_type == "Add" and layers and layers[-1].kind == "dense" and layers[-1].arrays[1] is None \
                and layers[-1].name in node.input and any(c is not None for c in const):
            layers[-1].arrays[1] = next(c for c in const if c is not None).reshape(-1)
            layers[-1].name = node.output[0]
        elif node.op_type == "BatchNormalization":
            layers.append(OnnxLayer("bn", node.output[0], const[1:5], float(attrs.get("epsilon", 1e-5))))
        elif node.op_type == "PRelu":
            layers.append(OnnxLayer("prelu", node.output[0], [const[1].reshape(-1)]))
    return layers


def gluon_layers(block: Any) -> list[tuple[str, Any]]:
    """``(kind, block)`` for every weighted layer of a Gluon network, in registration order."""
    from mxnet.gluon import nn

    kinds = ((nn.Conv2D, "conv"), (nn.Dense, "dense"), (nn.BatchNorm, "bn"), (nn.PReLU, "prelu"))
    found: list[tuple[str, Any]] = []
    for child in block._children.values():
        child = child() if isinstance(child, weakref.ref) else child
        kind = next((k for cls, k in kinds if isinstance(child, cls)), None)
        if kind is not None:
            found.append((kind, child))
        elif child._children:
            found.extend(gluon_layers(child))
        elif child.params.keys():
            raise DataError(f"{type(child).__name__}: a weighted layer the importer does not know")
    return found


def _set(param: Any, value: np.ndarray, where: str) -> None:
    import mxnet as mx

    if tuple(param.shape) != tuple(value.shape):
        raise DataError(f"{where}: our {param.name} is {tuple(param.shape)}, the ONNX weight is {tuple(value.shape)}; wrong --network?")
    param.set_data(mx.nd.array(value, dtype="float32"))


def build(network: str, embedding_size: int) -> Any:
    """A fresh backbone with every shape known (initialised and run once on zeros)."""
    import mxnet as mx

    from train.backbones import get_model  # Gluon blocks: MXNet loads only when a network is built

    net = get_model(network, embedding_size)
    net.initialize(ctx=mx.cpu())
    net(mx.nd.zeros((1, *IMAGE_SHAPE)))
    return net


def load_layers(net: Any, layers: list[OnnxLayer], network: str) -> list[tuple[Any, str, np.ndarray]]:
    """Copy ``layers`` into ``net``; returns the unfolded batch norms (BN block, ONNX output name,
    bias) with ``(0, 1)`` statistics, for :func:`calibrate`."""
    ours = gluon_layers(net)
    folded: list[tuple[Any, str, np.ndarray]] = []
    i = j = 0
    while i < len(ours):
        kind, block = ours[i]
        if j >= len(layers):
            raise DataError(f"{network}: the ONNX model ends after {j} weighted layers, our network has more "
                            f"(next: {block.name}); wrong --network?")
        layer = layers[j]
        where = f"{network} layer {block.name} vs ONNX {layer.name}"
        if layer.kind != kind:
            raise DataError(f"{where}: our network has a {kind} layer, the ONNX model a {layer.kind}; wrong --network?")
        if kind in ("conv", "dense"):
            weight, bias = layer.arrays
            _set(block.weight, weight, where)
            # Folded when our next layer is a batch norm and the ONNX one is not, or when the ONNX
            # layer has a bias ours lacks (the batch norm that follows in the ONNX graph is then
            # the next block's, as after a shortcut convolution).
            unfold = i + 1 < len(ours) and ours[i + 1][0] == "bn" and (
                j + 1 >= len(layers) or layers[j + 1].kind != "bn" or (bias is not None and block.bias is None))
            if block.bias is not None:
                _set(block.bias, bias if bias is not None and not unfold else np.zeros(weight.shape[0], np.float32), where)
            if unfold:
                bn = ours[i + 1][1]
                bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
                _unfold(bn, bias, np.zeros_like(bias), np.ones_like(bias), where)
                folded.append((bn, layer.name, bias))
                i += 1
            elif bias is not None and block.bias is None:
                raise DataError(f"{where}: the ONNX layer has a bias, ours has none and no batch norm follows")
        elif kind == "bn":
            gamma, beta, mean, var = layer.arrays
            if block.gamma.grad_req == "null" and not np.allclose(gamma, 1.0, atol=1e-6):
                raise DataError(f"{where}: our batch norm has a fixed scale of 1, the ONNX one is scaled")
            _set(block.gamma, gamma, where)
            _set(block.beta, beta, where)
            _set(block.running_mean, mean, where)
            # Our eps is fixed; moving the difference into the variance keeps the output identical.
            _set(block.running_var, np.maximum(var + layer.eps - BN_EPS, 0.0).astype(np.float32), where)
        else:
            slopes = layer.arrays[0]
            if slopes.size == 1 and block.alpha.shape[0] > 1:
                slopes = np.full(block.alpha.shape, float(slopes[0]), np.float32)
            _set(block.alpha, slopes, where)
        i += 1
        j += 1
    if j != len(layers):
        raise DataError(f"{network}: the ONNX model has {len(layers) - j} weighted layers more than our network; "
                        "wrong --network?")
    return folded


def _unfold(bn: Any, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, where: str) -> None:
    """A batch norm that computes ``x + bias`` in inference given its running ``mean`` and ``var``
    (one whose scale is fixed at 1, like iresnet's feature norm, gets ``var = 1 - eps`` instead)."""
    if bn.gamma.grad_req == "null":
        var = np.full_like(var, 1.0 - BN_EPS)
    _set(bn.running_mean, mean.astype(np.float32), where)
    _set(bn.running_var, var.astype(np.float32), where)
    _set(bn.gamma, np.sqrt(var + BN_EPS).astype(np.float32), where)
    _set(bn.beta, (bias + mean).astype(np.float32), where)


def calibrate(model: Any, folded: list[tuple[Any, str, np.ndarray]], images: np.ndarray, batch_size: int = 16) -> None:
    """Give the unfolded batch norms the statistics of their inputs on ``images`` (uint8 RGB
    ``(N, 3, 112, 112)``), read from the ONNX graph itself with onnxruntime."""
    import onnx

    if not folded or not len(images):
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [name for _, name, _ in folded]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    session = onnx_session(probe.SerializeToString(), name="the ONNX model with its batch-norm inputs as outputs")
    feed = session.get_inputs()[0].name
    sums = [np.zeros(bias.shape, np.float64) for *_, bias in folded]
    squares = [np.zeros(bias.shape, np.float64) for *_, bias in folded]
    count = [0] * len(folded)
    for start in range(0, len(images), batch_size):
        x = (images[start:start + batch_size].astype(np.float32) - 127.5) / 127.5
        for k, out in enumerate(session.run(names, {feed: x})):
            flat = np.moveaxis(out, 1, 0).reshape(out.shape[1], -1).astype(np.float64)
            sums[k] += flat.sum(axis=1)
            squares[k] += (flat ** 2).sum(axis=1)
            count[k] += flat.shape[1]
    for k, (bn, name, bias) in enumerate(folded):
        mean = sums[k] / count[k]
        var = np.maximum(squares[k] / count[k] - mean ** 2, 0.0)
        # The ONNX output already holds the bias: the convolution alone has mean - bias.
        _unfold(bn, bias, mean - bias, var, f"calibration of {name}")


def guess_network(layers: list[OnnxLayer]) -> str:
    """The backbone whose layer kinds and shapes match ``layers`` (folded batch norms allowed)."""
    embedding = _embedding_size(layers)
    for name in NETWORKS:
        try:
            load_layers(build(name, embedding), layers, name)
        except DataError:
            continue
        return name
    raise DataError(f"the ONNX model matches none of our networks ({', '.join(NETWORKS)}) layer by layer")


def _embedding_size(layers: list[OnnxLayer]) -> int:
    dense = [layer for layer in layers if layer.kind == "dense"]
    if not dense:
        raise DataError("the ONNX model has no dense layer: not an insightface recognizer")
    return int(dense[-1].arrays[0].shape[0])


def load_onnx(path: Path, network: str | None = None, calibration: np.ndarray | None = None) -> tuple[Any, Imported]:
    """A Gluon backbone holding the weights of the ONNX recognizer at ``path``; ``network`` is
    found from the graph when not given, ``calibration`` crops measure the unfolded batch norms."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types for a damaged file
        raise DataError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    layers = onnx_layers(model)
    network = network or guess_network(layers)
    embedding = _embedding_size(layers)
    net = build(network, embedding)
    folded = load_layers(net, layers, network)
    if calibration is not None:
        calibrate(model, folded, calibration)
    return net, Imported(network, embedding, folded)


def init_source(uri: Path) -> Path:
    """The ONNX file behind ``inputs.init``: the file itself, or the ``model.onnx`` that every
    model folder we write holds (a job's model output, an imported folder)."""
    path = Path(uri)
    if path.is_dir():
        candidates = [path / "model.onnx", *sorted(path.glob("*.onnx"))]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataError(f"{path}: no model.onnx in this folder (expected an imported model, a recognition "
                            "job's model output or an .onnx file)")
        return found
    if not path.is_file():
        raise DataError(f"{path}: no such model file or folder")
    return path


def face_crops(photos: Path, detector: Path | None = None, limit: int = 64) -> np.ndarray:
    """Up to ``limit`` 5-point aligned 112x112 crops (uint8 RGB, NCHW) of the main face of each
    photo under ``photos``, found by ``detector`` (default: the pretrained models' folder)."""
    detector = detector or default_model_dir()
    if detector is None:
        raise DataError("no face detector: pass --detector (an SCRFD/RetinaFace ONNX file or folder)")
    align = face_aligner(detector, 112)
    files = sorted(p for p in Path(photos).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    crops = []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        try:
            crops.append(align(image)[:, :, ::-1].transpose(2, 0, 1))
        except DataError:
            continue
        if len(crops) >= limit:
            break
    if not crops:
        raise DataError(f"{photos}: no face found in {len(files)} photos")
    return np.ascontiguousarray(np.stack(crops))


def agreement(net: Any, path: Path, crops: np.ndarray) -> dict[str, float]:
    """Cosine between our network's embeddings and onnxruntime's (through insightface's own
    recognizer wrapper, so pre-processing is insightface's) on the same crops."""
    import mxnet as mx
    from insightface.model_zoo import model_zoo

    recognizer = model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    theirs = np.asarray(recognizer.get_feat([c.transpose(1, 2, 0)[:, :, ::-1] for c in crops]), np.float32)
    ours = net(mx.nd.array((crops.astype(np.float32) - 127.5) / 127.5)).asnumpy()
    cos = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    return {"faces": int(len(crops)), "min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}


def say(step: str) -> None:
    """A progress line on stderr (stdout carries only the report), so the minute an import takes
    is not silent."""
    print(step, file=sys.stderr, flush=True)


def import_model(onnx_path: Path, out: Path, network: str | None = None, photos: Path | None = None,
                 detector: Path | None = None, min_cosine: float = 0.999) -> dict[str, Any]:
    """``faceops model import``: load the ONNX recognizer into our backbone (batch norms calibrated
    on the faces of ``photos``, default the pretrained package's sample photos), check that our
    embeddings agree with onnxruntime's on those faces (:class:`JobFailed` below ``min_cosine``,
    nothing written), then write a model folder (Gluon symbol + params, ``model.onnx``,
    ``import.json``). Run it without oneDNN (:mod:`train.fresh`)."""
    photos = photos or default_model_dir()
    if photos is None:
        raise DataError("no photos to verify on: pass --faces DIR")
    say(f"[1/4] finding and aligning faces in {photos}")
    crops = face_crops(photos, detector)
    say(f"[2/4] loading {onnx_path.name} into our backbone, batch norms calibrated on {len(crops)} faces")
    net, imported = load_onnx(onnx_path, network, crops)
    say(f"[3/4] comparing our {imported.network} embeddings with onnxruntime's")
    report = {"network": imported.network, "embedding_size": imported.embedding_size, **agreement(net, onnx_path, crops),
              "unfolded_batch_norms": len(imported.folded), "source": onnx_path.name, "sha256": sha256(onnx_path)}
    if report["min_cosine"] < min_cosine:
        raise JobFailed(f"{onnx_path.name} as our {imported.network}: embeddings disagree with onnxruntime's "
                        f"(min cosine {report['min_cosine']} < {min_cosine} over {report['faces']} faces)")
    say(f"[4/4] writing the model folder {out} (Gluon symbol + params, model.onnx)")
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(net, (None, *IMAGE_SHAPE), out / "model.onnx", example_shape=(1, *IMAGE_SHAPE))
    export_gluon(net, out, "model")
    (out / IMPORT_RECORD).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m train.importer ONNX OUT [--network N] [--faces DIR] [--detector P]``: the import
    in a process of its own; the report is the last line of stdout, as JSON."""
    parser = argparse.ArgumentParser(prog="python -m train.importer")
    parser.add_argument("onnx", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--network")
    parser.add_argument("--faces", type=Path)
    parser.add_argument("--detector", type=Path)
    parser.add_argument("--min-cosine", type=float, default=0.999)
    args = parser.parse_args(argv)
    try:
        report = import_model(args.onnx, args.out, args.network, args.faces, args.detector, args.min_cosine)
    except FaceopsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
