"""Fine-tuning: a recognition job that starts from published or earlier weights (``inputs.init``).

The backbone comes from an ONNX recognizer through :mod:`train.importer` (a model folder we wrote
holds ``model.onnx``, so an imported folder, a previous version's model output and a bare
``.onnx`` are one case); batch norms folded in a published file are calibrated on the job's own
training images. The margin head only carries over from a previous version's ``head.params``
when it has as many classes as this job's data; otherwise it starts fresh.

During the first ``freeze_backbone_epochs`` the backbone's learning rate is zero, so a fresh head
can settle before its gradients reach the pretrained layers; afterwards the backbone learns at
``backbone_lr_mult`` times the head's rate.
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
    if imported.embedding_size != config["embedding_size"]:
        raise DataError(f"inputs.init {source.name} has {imported.embedding_size}-d embeddings, "
                        f"hyperparameters.embedding_size is {config['embedding_size']}")
    theirs = net._collect_params_with_prefix()
    for name, param in model.backbone._collect_params_with_prefix().items():
        param.set_data(theirs[name].data())
    head = source.parent / HEAD
    if head.is_file():
        weight = mx.nd.load(str(head)).get("weight")
        if weight is not None and weight.shape == (data.num_classes, config["embedding_size"]):
            (load_head or model.head.weight.set_data)(weight)
            return f"started from {source} (backbone and margin head)"
    return f"started from {source} (backbone; margin head fresh)"


def backbone_lr_mult(config: dict[str, Any], step: int, steps_per_epoch: int) -> float:
    """The backbone's learning-rate multiplier at ``step``: 0 while frozen, then ``backbone_lr_mult``."""
    if step < config["freeze_backbone_epochs"] * steps_per_epoch:
        return 0.0
    return config["backbone_lr_mult"]


def set_backbone_lr_mult(backbone: Any, mult: float) -> None:
    """Scale every backbone parameter's learning rate (SGD reads ``lr_mult`` at each update, so
    a zero also stops weight decay and momentum from moving the weights)."""
    for param in backbone.collect_params().values():
        param.lr_mult = mult
