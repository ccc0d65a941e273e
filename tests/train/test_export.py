"""ONNX export keeps the Gluon network's outputs, with open batch and image size."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
ort = pytest.importorskip("onnxruntime")

from train.export import export_onnx  # noqa: E402


def test_dynamic_export_matches_gluon(tmp_path):
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(8, 3, padding=1), mx.gluon.nn.BatchNorm(), mx.gluon.nn.Activation("relu"),
            mx.gluon.nn.GlobalAvgPool2D(), mx.gluon.nn.Dense(5))
    net.initialize(mx.init.Xavier())
    path = export_onnx(net, (None, 3, None, None), tmp_path / "model.onnx", (1, 3, 32, 32))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]  # weights are not inputs
    for shape in [(1, 3, 32, 32), (3, 3, 40, 56)]:
        x = np.random.RandomState(1).rand(*shape).astype("float32")
        ours = session.run(None, {"data": x})[0]
        np.testing.assert_allclose(ours, net(mx.nd.array(x)).asnumpy(), atol=1e-5)
    assert not list(tmp_path.glob(".*"))
