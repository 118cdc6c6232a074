"""Small reference networks, plain ``nn.Module`` (no Lightning).

Used by the demo, the benchmarks and ``salaug diagnose``. Both expose their last spatial stage as
``features`` (the CAM target layer) and a ``head`` on average-pooled features, so that
``salaug.GradCAM(model, target_layer="features")`` works on either.

Example:
    >>> import torch
    >>> net = DemoNet(num_classes=10, width=8)
    >>> net(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> ResNet8(num_classes=10, width=8)(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DemoNet", "ResNet8"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class DemoNet(nn.Module):
    """A small CNN: four conv-BN-ReLU blocks (``features``; max-pool after the first three) and a
    linear head on average-pooled features.

    Input ``(B, 3, H, W)``; ``features`` gives ``(B, 4 * width, H / 8, W / 8)``; output
    ``(B, num_classes)`` logits. ``torch.manual_seed(s)`` before construction fixes the weights.

    Args:
        num_classes: number of output logits.
        width: channels of the first block (the last two have ``4 * width``).
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(3, w), nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2),
            *_conv_bn_relu(4 * w, 4 * w))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 strided) shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, stride),
                                  nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet8(nn.Module):
    """A small residual CNN (CIFAR-style ResNet with one basic block per stage).

    A 3x3 stem, three stages of one basic block at ``width``, ``2 * width``, ``4 * width`` channels
    (strides 1, 2, 2; together ``features``), and a linear head on average-pooled features.
    Input ``(B, 3, H, W)``; ``features`` gives ``(B, 4 * width, H / 4, W / 4)`` (a finer CAM grid
    than :class:`DemoNet`'s); output ``(B, num_classes)`` logits.

    Args:
        num_classes: number of output logits.
        width: channels of the stem and the first stage.
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(*_conv_bn_relu(3, w), _BasicBlock(w, w, 1), _BasicBlock(w, 2 * w, 2),
                                      _BasicBlock(2 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
