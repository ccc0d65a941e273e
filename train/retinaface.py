"""RetinaFace in Gluon: a backbone (``mobilenet0.25`` or ``resnet50``), an FPN, an SSH context
module per level and score/box/landmark heads at strides 8, 16 and 32 with 2 anchors per location.

The heads speak insightface's SCRFD convention so that export is a pure reshape (+ sigmoid):
every level returns ``(N, H*W*2, C)`` with locations row-major and the 2 anchors of a location
adjacent; boxes are ``l, t, r, b`` distances from the anchor centre and landmarks offsets from it,
both in stride units. Training sees score logits; :class:`ExportedDetector` adds the sigmoid.
Input: RGB, ``(x - 127.5) / 128``, height and width multiples of 32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

from train.anchors import ANCHORS_PER_LOCATION, STRIDES
from train.export import export_onnx

INPUT_MEAN, INPUT_STD = 127.5, 128.0
SCORE_PRIOR_BIAS = -4.6  # log(0.01 / 0.99)


def conv_bn(channels: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True,
            leaky: float = 0.1) -> nn.HybridSequential:
    """Conv (no bias) + BatchNorm (+ LeakyReLU, RetinaFace's activation)."""
    block = nn.HybridSequential()
    block.add(nn.Conv2D(channels, kernel, stride, kernel // 2, groups=groups, use_bias=False),
              nn.BatchNorm())
    if act:
        block.add(nn.LeakyReLU(leaky) if leaky > 0 else nn.Activation("relu"))
    return block


def conv_dw(in_channels: int, out_channels: int, stride: int) -> nn.HybridSequential:
    """MobileNet's depthwise-separable unit."""
    block = nn.HybridSequential()
    block.add(conv_bn(in_channels, 3, stride, groups=in_channels), conv_bn(out_channels, 1))
    return block


class MobileNet025(gluon.HybridBlock):
    """MobileNet-0.25 as in RetinaFace: feature maps of 64/128/256 channels at strides 8/16/32."""

    out_channels = 64

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.stage1 = nn.HybridSequential()
            self.stage1.add(conv_bn(8, 3, 2), conv_dw(8, 16, 1), conv_dw(16, 32, 2), conv_dw(32, 32, 1),
                            conv_dw(32, 64, 2), conv_dw(64, 64, 1))
            self.stage2 = nn.HybridSequential()
            self.stage2.add(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
            self.stage3 = nn.HybridSequential()
            self.stage3.add(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def hybrid_forward(self, F: Any, x: Any) -> tuple[Any, Any, Any]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return c3, c4, self.stage3(c4)


class ResNet50(gluon.HybridBlock):
    """ResNet-50 v1 (Gluon model zoo layout, randomly initialised: no weights are downloaded)
    returning its stride 8/16/32 stages."""

    out_channels = 256

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from mxnet.gluon.model_zoo.vision import resnet50_v1

        with self.name_scope():
            features = resnet50_v1(pretrained=False).features
            self.stem = nn.HybridSequential()
            for layer in features[:5]:
                self.stem.add(layer)
            self.stage2, self.stage3, self.stage4 = features[5], features[6], features[7]

    def hybrid_forward(self, F: Any, x: Any) -> tuple[Any, Any, Any]:
        c3 = self.stage2(self.stem(x))
        c4 = self.stage3(c3)
        return c3, c4, self.stage4(c4)


BACKBONES: dict[str, Callable[[], gluon.HybridBlock]] = {
    "mobilenet0.25": MobileNet025,
    "resnet50": ResNet50,
}


class SSH(gluon.HybridBlock):
    """RetinaFace's context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3s), concatenated."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        leaky = 0.1 if channels <= 64 else 0.0
        with self.name_scope():
            self.conv3 = conv_bn(channels // 2, act=False)
            self.conv5_1 = conv_bn(channels // 4, leaky=leaky)
            self.conv5_2 = conv_bn(channels // 4, act=False)
            self.conv7_2 = conv_bn(channels // 4, leaky=leaky)
            self.conv7_3 = conv_bn(channels // 4, act=False)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        branch5 = self.conv5_1(x)
        branch7 = self.conv7_2(branch5)
        out = F.concat(self.conv3(x), self.conv5_2(branch5), self.conv7_3(branch7), dim=1)
        return F.relu(out)


class RetinaFace(gluon.HybridBlock):
    """Backbone + FPN + SSH + per-level heads. Returns 9 arrays: score logits for strides 8/16/32
    ``(N, HW*2, 1)``, then boxes ``(N, HW*2, 4)``, then landmarks ``(N, HW*2, 10)``."""

    def __init__(self, backbone: str = "mobilenet0.25", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone_name = backbone
        with self.name_scope():
            self.body = BACKBONES[backbone]()
            width = self.body.out_channels
            leaky = 0.1 if width <= 64 else 0.0
            self.lateral = nn.HybridSequential()
            self.merge = nn.HybridSequential()
            self.context = nn.HybridSequential()
            self.heads = nn.HybridSequential()
            for _ in STRIDES:
                self.lateral.add(conv_bn(width, 1, leaky=leaky))
                self.context.add(SSH(width))
            for _ in STRIDES[:-1]:
                self.merge.add(conv_bn(width, 3, leaky=leaky))
            for channels in (1, 4, 10):
                # Score bias starts at a 1% face prior so the first steps are not swamped by background.
                bias = mx.init.Constant(SCORE_PRIOR_BIAS if channels == 1 else 0.0)
                for _ in STRIDES:
                    self.heads.add(nn.Conv2D(ANCHORS_PER_LOCATION * channels, 1, bias_initializer=bias))

    def hybrid_forward(self, F: Any, x: Any) -> tuple[Any, ...]:
        c3, c4, c5 = self.body(x)
        p5 = self.lateral[2](c5)
        p4 = self.merge[1](self.lateral[1](c4) + F.UpSampling(p5, scale=2, sample_type="nearest"))
        p3 = self.merge[0](self.lateral[0](c3) + F.UpSampling(p4, scale=2, sample_type="nearest"))
        features = [self.context[i](p) for i, p in enumerate((p3, p4, p5))]
        outputs = []
        for kind, channels in enumerate((1, 4, 10)):
            for level, feature in enumerate(features):
                head = self.heads[kind * len(STRIDES) + level](feature)
                # (N, A*C, H, W) -> (N, H, W, A*C) -> (N, H*W*A, C): insightface's anchor order.
                outputs.append(F.reshape(F.transpose(head, axes=(0, 2, 3, 1)), shape=(0, -1, channels)))
        return tuple(outputs)


class ExportedDetector(gluon.HybridBlock):
    """The trained net as insightface loads it: score logits turned into probabilities."""

    def __init__(self, net: RetinaFace, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.net = net

    def hybrid_forward(self, F: Any, x: Any) -> tuple[Any, ...]:
        outputs = self.net(x)
        levels = len(STRIDES)
        return tuple(F.sigmoid(o) for o in outputs[:levels]) + tuple(outputs[levels:])


def get_model(name: str = "mobilenet0.25") -> RetinaFace:
    """A fresh (uninitialised) RetinaFace with backbone ``name``; unknown names list the known ones."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return RetinaFace(name)


def export_detector(net: RetinaFace, path: Path, example_size: int = 640) -> Path:
    """Write ``model.onnx`` in insightface's SCRFD contract (9 outputs, dynamic batch, H and W)."""
    return export_onnx(ExportedDetector(net), (None, 3, None, None), path, (1, 3, example_size, example_size))
