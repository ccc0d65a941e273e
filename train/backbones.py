"""Recognition backbones as Gluon HybridBlocks: insightface's iresnet (r18/r34/r50/r100) and
MobileFaceNet, laid out as in arcface_torch so parameter counts and embeddings match the published
models. Every backbone maps a normalised ``(N, 3, 112, 112)`` image batch to ``(N, embedding_size)``.

The layer order (children registered in forward order, PReLU slopes per channel) is what
:mod:`train.importer` relies on to load insightface's ONNX files layer by layer.

Pick one with :func:`get_model`; the networks are built only when asked for, so importing this
module costs nothing beyond MXNet itself.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from mxnet.gluon import HybridBlock, nn

from jobs.core.errors import SpecError


def _bn(**kwargs) -> nn.BatchNorm:
    # arcface_torch's BatchNorm: eps 1e-5, momentum 0.9 in MXNet's sense.
    return nn.BatchNorm(epsilon=1e-5, momentum=0.9, **kwargs)


def _prelu(channels: int) -> nn.PReLU:
    # torch's nn.PReLU(C) as insightface uses it: one slope per channel.
    return nn.PReLU(in_channels=channels)


class IBasicBlock(HybridBlock):
    """iresnet's pre-activation block: BN, 3x3 conv, BN, PReLU, 3x3 conv (stride), BN, plus the
    (projected) shortcut."""

    def __init__(self, channels: int, stride: int, downsample: bool):
        super().__init__()
        self.body = nn.HybridSequential()
        self.body.add(_bn(), nn.Conv2D(channels, 3, 1, 1, use_bias=False), _bn(), _prelu(channels),
                      nn.Conv2D(channels, 3, stride, 1, use_bias=False), _bn())
        self.downsample = None
        if downsample:
            self.downsample = nn.HybridSequential()
            self.downsample.add(nn.Conv2D(channels, 1, stride, use_bias=False), _bn())

    def hybrid_forward(self, F, x):
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.body(x) + shortcut


class IResNet(HybridBlock):
    """insightface's iresnet: 3x3 stem, four stages of :class:`IBasicBlock` (64-512 channels, each
    halving the resolution), then BN, dropout, a 7x7x512 -> embedding FC and a feature BN."""

    def __init__(self, layers: tuple[int, int, int, int], embedding_size: int = 512, dropout: float = 0.0):
        super().__init__()
        self.features = nn.HybridSequential()
        self.features.add(nn.Conv2D(64, 3, 1, 1, use_bias=False), _bn(), _prelu(64))
        for channels, count in zip((64, 128, 256, 512), layers):
            for i in range(count):
                self.features.add(IBasicBlock(channels, 2 if i == 0 else 1, downsample=i == 0))
        self.features.add(_bn())
        if dropout > 0:
            self.features.add(nn.Dropout(dropout))
        self.features.add(nn.Flatten(), nn.Dense(embedding_size), _bn(scale=False))

    def hybrid_forward(self, F, x):
        return self.features(x)


class ConvBlock(HybridBlock):
    """Convolution, BN and (unless ``linear``) PReLU: MobileFaceNet's unit."""

    def __init__(self, channels: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
                 linear: bool = False):
        super().__init__()
        self.body = nn.HybridSequential()
        self.body.add(nn.Conv2D(channels, kernel, stride, padding, groups=groups, use_bias=False), _bn())
        if not linear:
            self.body.add(_prelu(channels))

    def hybrid_forward(self, F, x):
        return self.body(x)


class DepthWise(HybridBlock):
    """Inverted bottleneck: 1x1 expand to ``groups`` channels, depth-wise 3x3, linear 1x1 project;
    a residual add when shapes allow."""

    def __init__(self, channels: int, groups: int, stride: int = 1, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.body = nn.HybridSequential()
        self.body.add(ConvBlock(groups), ConvBlock(groups, 3, stride, 1, groups=groups),
                      ConvBlock(channels, linear=True))

    def hybrid_forward(self, F, x):
        y = self.body(x)
        return y + x if self.residual else y


class MobileFaceNet(HybridBlock):
    """MobileFaceNet laid out as insightface's published ``w600k_mbf`` (``blocks=(1, 4, 6, 2)``);
    ``scale`` multiplies the widths (not the expansion groups): 2 is w600k_mbf, 1 half its width.

    The head is w600k_mbf's, not the global depth-wise conv of the paper: a 1x1 conv to 512, a 1x1
    conv to 64 (both with BN and PReLU), flatten (64x7x7 = 3136), a dense layer with bias to the
    embedding and a feature BN."""

    def __init__(self, embedding_size: int = 512, scale: int = 2, blocks: tuple[int, int, int, int] = (1, 4, 6, 2)):
        super().__init__()
        self.features = nn.HybridSequential()
        self.features.add(ConvBlock(64 * scale, 3, 2, 1))
        if blocks[0] == 1:
            self.features.add(ConvBlock(64 * scale, 3, 1, 1, groups=64))
        else:
            self.features.add(*(DepthWise(64 * scale, 128, residual=True) for _ in range(blocks[0])))
        # (output width, expansion of the strided block, expansion of the residual blocks, count)
        for channels, first, groups, count in ((64 * scale, 128, 128, blocks[1]), (128 * scale, 256, 256, blocks[2]),
                                               (128 * scale, 512, 256, blocks[3])):
            self.features.add(DepthWise(channels, first, stride=2))
            self.features.add(*(DepthWise(channels, groups, residual=True) for _ in range(count)))
        self.features.add(ConvBlock(512, 1), ConvBlock(64, 1), nn.Flatten(), nn.Dense(embedding_size), _bn())

    def hybrid_forward(self, F, x):
        return self.features(x)


BACKBONES: dict[str, Callable[..., HybridBlock]] = {
    "r18": partial(IResNet, (2, 2, 2, 2)),
    "r34": partial(IResNet, (3, 4, 6, 3)),
    "r50": partial(IResNet, (3, 4, 14, 3)),
    "r100": partial(IResNet, (3, 13, 30, 3)),
    "mbf": partial(MobileFaceNet, scale=2),
    "mbf_s1": partial(MobileFaceNet, scale=1),
}


def get_model(name: str, embedding_size: int = 512, **kwargs) -> HybridBlock:
    """A fresh, uninitialised backbone called ``name``; SpecError listing the known names otherwise."""
    if name not in BACKBONES:
        raise SpecError(f"unknown network '{name}'; known: {', '.join(BACKBONES)}")
    return BACKBONES[name](embedding_size=embedding_size, **kwargs)
