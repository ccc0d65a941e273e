"""Fine-tuning: a recognition job that starts from published or earlier weights (``inputs.init``).

The backbone comes from an ONNX recognizer through :mod:`train.importer` (a model folder we wrote
holds ``model.onnx``, so an imported folder, a previous version's model output and a bare
``.onnx`` are one case); batch norms folded in a published file are calibrated on the job's own
training images. The margin head only carries over from a previous version's ``head.params``
when it has as many classes as this job's data; otherwise it starts fresh.

During the first ``freeze_backbone_epochs`` the backbone's learning rate is zero, so a fresh head
can settle before its gradients reach the pretrained layers; afterwards the backbone learns at
``backbone_lr_mult`` times the head's rate.

With ``fresh_embedding`` the backbone's embedding layer (the dense layer to the embedding and its
feature batch norm) keeps the job's own initialisation instead of the published weights: the
features are reused, the embedding is learned anew (of any ``embedding_size``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from jobs.core.errors import DataError
from train.importer import init_source, load_onnx

HEAD = "head.params"
CALIBRATION_IMAGES = 64


def _training_images(data: Any, count: int) -> np.ndarray:
    """The first ``count`` training images back in pixel values (the dataset yields them normalised)."""
    return np.stack([np.asarray(data[i][0]) for i in range(min(count, len(data)))]) * 127.5 + 127.5


def start_from(model: Any, init: Path, data: Any, config: dict[str, Any],
               load_head: Callable[[Any], None] | None = None) -> str:
    """Load ``init`` into ``model.backbone`` (and its head when the class count matches: into
    ``model.head``, or through ``load_head`` for a Partial FC head); returns a line saying what
    was loaded."""
    import mxnet as mx

    source = init_source(init)
    net, imported = load_onnx(source, config["network"], _training_images(data, CALIBRATION_IMAGES))
    fresh = config["fresh_embedding"]
    if imported.embedding_size != config["embedding_size"] and not fresh:
        raise DataError(f"inputs.init {source.name} has {imported.embedding_size}-d embeddings, "
                        f"hyperparameters.embedding_size is {config['embedding_size']} "
                        "(fresh_embedding=true learns a new embedding layer of that size)")
    theirs = net._collect_params_with_prefix()
    kept = embedding_layers(model.backbone) if fresh else ()
    for name, param in model.backbone._collect_params_with_prefix().items():
        if not name.startswith(kept):
            param.set_data(theirs[name].data())
    if fresh:
        return f"started from {source} (backbone features; embedding layer and margin head fresh)"
    head = source.parent / HEAD
    if head.is_file():
        weight = mx.nd.load(str(head)).get("weight")
        if weight is not None and weight.shape == (data.num_classes, config["embedding_size"]):
            (load_head or model.head.weight.set_data)(weight)
            return f"started from {source} (backbone and margin head)"
    return f"started from {source} (backbone; margin head fresh)"


def embedding_layers(backbone: Any) -> tuple[str, ...]:
    """Parameter-name prefixes of the backbone's embedding layer: the last two children of its
    ``features`` (dense to the embedding, feature batch norm), the same in every backbone."""
    count = len(backbone.features)
    return (f"features.{count - 2}.", f"features.{count - 1}.")


def backbone_lr_mult(config: dict[str, Any], step: int, steps_per_epoch: int) -> float:
    """The backbone's learning-rate multiplier at ``step``: 0 while frozen, then ``backbone_lr_mult``."""
    if step < config["freeze_backbone_epochs"] * steps_per_epoch:
        return 0.0
    return config["backbone_lr_mult"]


def set_backbone_lr_mult(backbone: Any, mult: float, fresh_embedding: bool = False) -> None:
    """Scale every backbone parameter's learning rate (SGD reads ``lr_mult`` at each update, so
    a zero also stops weight decay and momentum from moving the weights); a fresh embedding layer
    is new like the margin head, so it keeps the full rate."""
    fresh = embedding_layers(backbone) if fresh_embedding else ()
    for name, param in backbone._collect_params_with_prefix().items():
        param.lr_mult = 1.0 if name.startswith(fresh) else mult
