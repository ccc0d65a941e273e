"""The ``detection`` job task: RetinaFace training (registered in setup.py's ``faceops.tasks``).

Channels: ``train`` (the seed's ``detection_train_data/`` with ``train/`` and optional ``val/``,
or one split directly: ``images/`` + ``label.txt`` or a packed RecordIO) and optional ``val``.
Output ``model``: ``model.onnx`` (insightface detector contract), the Gluon symbol + params and
``metrics.json``. Imports nothing heavy.
"""
from __future__ import annotations

from jobs.core.tasks import Metric, Param, Slot, Task

DETECTION = Task(
    name="detection",
    entrypoint=("python", "-m", "train.detection"),
    params={
        "network": Param("str", "mobilenet0.25", "backbone", choices=("mobilenet0.25", "resnet50")),
        "image_size": Param("int", 640, "training crop side (multiple of 32; smaller is faster on CPU)", min=64, max=2048),
        "batch_size": Param("int", 8, "images per step", min=1, max=1024),
        "epochs": Param("int", 100, "passes over the train split", min=1, max=100000),
        "optimizer": Param("str", "sgd", "optimizer", choices=("sgd", "adam")),
        "lr": Param("float", 1e-3, "learning rate", min=0.0, max=10.0),
        "momentum": Param("float", 0.9, "SGD momentum", min=0.0, max=1.0),
        "weight_decay": Param("float", 5e-4, "weight decay", min=0.0, max=1.0),
        "lr_steps": Param("str", "", "comma-separated epochs where lr drops 10x (e.g. '55,68')"),
        "cls_loss": Param("str", "ohem", "classification loss: hard negative mining or focal", choices=("ohem", "focal")),
        "neg_pos_ratio": Param("float", 3.0, "hard negatives kept per positive anchor (ohem)", min=1.0, max=100.0),
        "landmark_weight": Param("float", 1.0, "weight of the landmark loss", min=0.0, max=100.0),
        "photometric": Param("float", 0.3, "brightness/contrast/saturation jitter (0 = off)", min=0.0, max=1.0),
        "min_crop": Param("float", 0.3, "smallest random square crop, as a fraction of the short side (1 = no zoom)",
                          min=0.1, max=1.0),
        "flip": Param("bool", True, "random horizontal flips (landmarks swapped)"),
        "eval_size": Param("int", 640, "evaluation input side (multiple of 32)", min=64, max=4096),
        "score_threshold": Param("float", 0.02, "evaluation score threshold", min=0.0, max=1.0),
        "nms_threshold": Param("float", 0.4, "evaluation NMS IoU threshold", min=0.0, max=1.0),
        "eval_every": Param("int", 0, "evaluate on val every N epochs (0 = only at the end)", min=0, max=100000),
        "checkpoint_every": Param("int", 500, "save a checkpoint every N steps (and each epoch)", min=0, max=10**9),
        "workers": Param("int", 2, "threads preparing batches", min=0, max=64),
        "seed": Param("int", 0, "random seed", min=0),
    },
    inputs={"train": Slot("detection_train_data/ with train/ (and val/), or one split: images/ + label.txt or RecordIO"),
            "val": Slot("a validation split (images/ + label.txt), or a WIDER FACE val folder with its .mat "
                         "ground truth (easy/medium/hard AP)", required=False)},
    outputs={"model": Slot("model.onnx (insightface detector), Gluon symbol + params, metrics.json")},
    metrics={"val_ap50": Metric("max"), "val_wider_*_ap": Metric("max"), "train_samples_per_s": Metric("max", "samples/s"),
             "train_*": Metric("min")},
    help="Train a RetinaFace detector (Gluon) from channel train; exports model.onnx for insightface to output model.",
)
