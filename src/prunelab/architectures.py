"""Networks that are not chains, defined here so that nothing is downloaded: each has
what makes structured pruning hard (BatchNorm, residual additions, depthwise
convolutions) and trains on 28x28 greyscale images on a CPU in minutes."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, added to the input (projected by a 1x1
    convolution where the width or the resolution changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, 3, stride), nn.ReLU(),
                                  *_conv_bn(c_out, c_out, 3))  # fmt: skip
        changes = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride)) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(self.body(x) + skip)


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): a 3x3 stem, three stages of ``blocks``
    residual blocks at the given widths (the second and third halving the resolution),
    global average pooling and a linear classifier. ``blocks=3`` is ResNet-20."""

    def __init__(self, widths: tuple[int, ...], blocks: int = 3, num_classes: int = 10,
                 in_channels: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 3), nn.ReLU())
        stages, width = [], widths[0]
        for i, out in enumerate(widths):
            for j in range(blocks):
                stages.append(BasicBlock(width, out, 2 if i > 0 and j == 0 else 1))
                width = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al., 2018): a 1x1 expansion, a 3x3 depthwise
    convolution, a linear 1x1 projection; added to the input where the shapes agree."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        expand = [*_conv_bn(c_in, hidden, 1), nn.ReLU6()] if expansion != 1 else []
        self.body = nn.Sequential(
            *expand, *_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
            *_conv_bn(hidden, c_out, 1),
        )  # fmt: skip
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """A small MobileNetV2 for 28x28 images: a stem, one block at the first width and
    two per later width (each of those stages halving the resolution, expansion 4),
    a 1x1 convolution to four times the last width, pooling and a classifier."""

    def __init__(self, widths: tuple[int, ...], num_classes: int = 10,
                 in_channels: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 3), nn.ReLU6())
        blocks, width = [InvertedResidual(widths[0], widths[0], 1, 1)], widths[0]
        for out in widths[1:]:
            blocks += [InvertedResidual(width, out, 2, 4), InvertedResidual(out, out, 1, 4)]
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.top = nn.Sequential(*_conv_bn(width, 4 * width, 1), nn.ReLU6())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.top(self.blocks(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet20(hidden: tuple[int, ...], dropout: tuple[float, ...] = (), num_classes: int = 10,
             shape: tuple[int, ...] = (1, 28, 28)) -> ResNet:  # fmt: skip
    return ResNet(hidden, blocks=3, num_classes=num_classes, in_channels=shape[0])


def mobilenetv2(hidden: tuple[int, ...], dropout: tuple[float, ...] = (), num_classes: int = 10,
                shape: tuple[int, ...] = (1, 28, 28)) -> MobileNetV2:  # fmt: skip
    return MobileNetV2(hidden, num_classes=num_classes, in_channels=shape[0])


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al., 2021) for 28x28 images: 7x7
    patches embedded by a strided convolution, a class token and learned positions,
    pre-norm ``nn.TransformerEncoderLayer`` blocks (multi-head attention, a GELU MLP), a
    final LayerNorm and a linear classifier on the class token."""

    def __init__(self, width: int, mlp_width: int, depth: int = 4, heads: int = 4,
                 patch: int = 7, image: int = 28, num_classes: int = 10,
                 in_channels: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.patches = nn.Conv2d(in_channels, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, 1 + (image // patch) ** 2, width))
        block = nn.TransformerEncoderLayer(
            width, heads, mlp_width, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(block, depth, norm=nn.LayerNorm(width),
                                             enable_nested_tensor=False)  # fmt: skip
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.position
        return self.head(self.encoder(tokens)[:, 0])


def vit(hidden: tuple[int, ...], dropout: tuple[float, ...] = (), num_classes: int = 10,
        shape: tuple[int, ...] = (1, 28, 28)) -> ViT:  # fmt: skip
    """Patches of 7x7 pixels on 28x28 images, of 8x8 on 32x32 ones: 16 in either case."""
    channels, height, width = shape
    if height != width:
        raise ValueError(f"vit takes square images, got {height}x{width}")
    patch = next((p for p in (7, 8, 4) if height % p == 0), height)
    return ViT(*hidden, patch=patch, image=height, num_classes=num_classes, in_channels=channels)
