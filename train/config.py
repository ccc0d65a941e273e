"""The ``recognition`` task: the arcface base configuration as typed hyperparameters.

Registered through setup.py's ``faceops.tasks`` entry point, so ``faceops job submit`` checks
``--set lr=0.05`` against this schema and ``job diff`` compares typed values. The defaults are
insightface's arcface_torch recipe: SGD with momentum 0.9, lr 0.1 per 512 samples with warmup then
polynomial decay, weight decay 5e-4, 512-d embeddings, 128 images per device, ArcFace s=64 m=0.5.
Imports nothing heavy (no MXNet), since the CLI loads it at start-up.
"""
from __future__ import annotations

from typing import Any

from jobs.core.entry import checked
from jobs.core.tasks import Metric, Param, Slot, Task

NETWORKS = ("r18", "r34", "r50", "r100", "mbf", "mbf_s1")
LOSSES = ("arcface", "cosface", "combined")

PARAMS = {
    "network": Param("str", "r50", "backbone: iresnet r18/r34/r50/r100, MobileFaceNet mbf (w600k size) or mbf_s1 (half width)",
                     choices=NETWORKS),
    "embedding_size": Param("int", 512, "embedding dimension", min=2, max=4096),
    "loss": Param("str", "arcface", "margin: arcface (m2=0.5), cosface (m3=0.35) or combined (set margin_m1..m3)",
                  choices=LOSSES),
    "margin_s": Param("float", None, "logit scale (default 64)", min=1.0),
    "margin_m1": Param("float", None, "multiplicative angular margin (default 1)", min=0.0),
    "margin_m2": Param("float", None, "additive angular margin (ArcFace default 0.5)", min=0.0, max=1.5),
    "margin_m3": Param("float", None, "additive cosine margin (CosFace default 0.35)", min=0.0, max=1.0),
    "lr": Param("float", 0.1, "learning rate for a global batch of 512, scaled linearly to the real batch", min=0.0),
    "momentum": Param("float", 0.9, "SGD momentum", min=0.0, max=1.0),
    "weight_decay": Param("float", 5e-4, "weight decay", min=0.0),
    "warmup_epochs": Param("float", 1.0, "linear learning-rate warmup, in epochs", min=0.0),
    "batch_size": Param("int", 128, "images per device per step", min=1),
    "epochs": Param("int", 20, "passes over the training data", min=1),
    "max_steps": Param("int", 0, "stop after this many steps (0: run all epochs)", min=0),
    "num_classes": Param("int", None, "expected identities; the job fails if the data disagrees", min=2),
    "flip": Param("bool", True, "random horizontal flips"),
    "amp": Param("bool", True, "mixed precision (AMP) on GPUs; ignored on CPU"),
    "workers": Param("int", 2, "threads decoding images", min=0, max=64),
    "checkpoint_every": Param("int", 2000, "steps between checkpoints (and one at each epoch end)", min=0),
    "log_every": Param("int", 50, "steps between metric lines", min=1),
    "seed": Param("int", 0, "random seed (initialisation and data order)"),
    "freeze_backbone_epochs": Param("float", 0.0, "with inputs.init: epochs during which only the margin head learns",
                                    min=0.0),
    "fresh_embedding": Param("bool", False, "with inputs.init: learn the embedding layer anew (dense + feature BN; "
                             "any embedding_size), keeping only the published features; it learns at the full lr, "
                             "also while the backbone is frozen"),
    "sample_rate": Param("float", 1.0, "Partial FC below 1: each step uses the batch's classes plus a random share of "
                         "the others (e.g. 0.1 for millions of identities), the margin head split across devices "
                         "and workers", min=0.0, max=1.0),
    "backbone_lr_mult": Param("float", 1.0, "the backbone's learning rate relative to lr (fine-tuning: e.g. 0.1)",
                              min=0.0),
}

RECOGNITION = Task(
    name="recognition",
    entrypoint=("python", "-m", "train.recognition"),
    params=PARAMS,
    metrics={"loss": Metric("min"), "acc": Metric("max"), "epoch_loss": Metric("min"), "epoch_acc": Metric("max"),
             "samples_per_sec": Metric("max", "samples/s"),
             "val_*_acc": Metric("max", chance=0.5, at_chance="this recognizer does not separate people"),
             "val_*_std": Metric("min")},
    inputs={"train": Slot("insightface RecordIO: train.rec + train.idx + property (or the seed's cele.*)"),
            "val": Slot("verification .bin sets (lfw.bin, cfp_fp.bin, ...) evaluated after training", required=False),
            "init": Slot("weights to start the backbone from: an insightface .onnx, a `faceops model import` "
                         "folder or a previous version's model output", required=False)},
    outputs={"model": Slot("model.onnx (insightface recognizer), model-symbol.json + params, verification.json")},
    help="Train an ArcFace recognizer on insightface RecordIO (channel train, optional val with .bin "
         "verification sets, optional init: an .onnx recognizer or a model folder to fine-tune from); "
         "output model gets Gluon symbol+params and model.onnx for insightface.",
)


def resolve(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The full configuration: defaults, then ``hyperparameters`` checked against the schema
    (:func:`jobs.core.entry.checked`, what the entry point runs)."""
    return checked(RECOGNITION, hyperparameters)
