"""Small reference networks, plain ``nn.Module`` (no Lightning).

Used by the demo, the benchmarks and ``salaug diagnose``. The CNNs expose their last spatial stage
as ``features`` (the CAM target layer) and a ``head`` on average-pooled features, so that
``salaug.GradCAM(model, target_layer="features")`` works on either. :func:`tiny_vit` builds a
small torchvision ``VisionTransformer`` for token-model checks (TransMix labels read its last
block's attention, see :mod:`salaug.cam.attention`).

Example:
    >>> import torch
    >>> net = DemoNet(num_classes=10, width=8)
    >>> net(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> ResNet8(num_classes=10, width=8)(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> tiny_vit(num_classes=10)(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from torch import Tensor, nn

from salaug._checks import check_choice, check_int

if TYPE_CHECKING:
    from torchvision.models import VisionTransformer

__all__ = ["DemoNet", "ResNet8", "tiny_vit"]


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


def tiny_vit(num_classes: int = 10, image_size: int = 32, patch_size: int = 4, num_layers: int = 4,
             num_heads: int = 4, hidden_dim: int = 64, mlp_dim: int = 128,
             stem: Literal["conv", "patch"] = "conv") -> VisionTransformer:
    """A small vision transformer: torchvision's ``VisionTransformer``, randomly initialised (no download).

    Tokens of ``patch_size`` pixels, one class token, ``num_layers`` pre-norm blocks of
    ``nn.MultiheadAttention`` (``encoder.layers[i].self_attention``, ``batch_first=True``) and an
    MLP, a linear head on the class token. Input ``(B, 3, image_size, image_size)`` (exactly that
    size); output ``(B, num_classes)`` logits. The sequence is ``1 + (image_size / patch_size)²``
    tokens of width ``hidden_dim``. ``torch.manual_seed(s)`` before construction fixes the weights
    (torchvision initialises the head to zeros).

    The default ``stem="conv"`` embeds the tokens with a small convolutional stem (torchvision's
    ``conv_stem_configs``: one 3 x 3 stride-2 convolution + BatchNorm + ReLU per halving of the
    side, then a 1 x 1 projection; Xiao et al., 2021, "Early convolutions help transformers see
    better"): on a few hundred 32 x 32 images a linear patch embedding (``stem="patch"``,
    ``conv_proj``) barely leaves chance in 150 epochs, the convolutional one trains. The token grid,
    and so everything that reads the attention, is the same for both.

    For TransMix labels, :func:`salaug.cam.attention.find_attention` finds the last block's
    attention; for a CAM, use ``GradCAM(model, "encoder.layers.-1", reshape=salaug.cam.vit_reshape)``.

    Args:
        num_classes: number of output logits.
        image_size: side of the square input images.
        patch_size: side of a patch; must divide ``image_size``.
        num_layers: transformer blocks.
        num_heads: attention heads; must divide ``hidden_dim``.
        hidden_dim: token width.
        mlp_dim: hidden width of each block's MLP.
        stem: ``"conv"`` (a power-of-two ``patch_size``) or ``"patch"`` (a linear patch embedding).

    Returns:
        A ``torchvision.models.VisionTransformer``.

    Raises:
        TypeError: a non-integer argument.
        ValueError: an argument below 1, ``patch_size`` not dividing ``image_size``, ``num_heads``
            not dividing ``hidden_dim``, an unknown ``stem``, or ``stem="conv"`` with a
            ``patch_size`` that is not a power of two.

    Example:
        >>> vit = tiny_vit(num_classes=5, image_size=16, patch_size=4, num_layers=2, hidden_dim=32, mlp_dim=64)
        >>> vit.seq_length, len(vit.encoder.layers)
        (17, 2)
    """
    from torchvision.models import VisionTransformer
    from torchvision.models.vision_transformer import ConvStemConfig

    sizes = {"num_classes": num_classes, "image_size": image_size, "patch_size": patch_size,
             "num_layers": num_layers, "num_heads": num_heads, "hidden_dim": hidden_dim, "mlp_dim": mlp_dim}
    for name, value in sizes.items():
        check_int(name, value, low=1)
    if image_size % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}; e.g. patch_size=4 for "
                         "32-pixel images (an 8 x 8 grid)")
    if hidden_dim % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide hidden_dim={hidden_dim}; e.g. hidden_dim="
                         f"{num_heads * max(1, round(hidden_dim / num_heads))}")
    check_choice("stem", stem, ("conv", "patch"))
    halvings = patch_size.bit_length() - 1
    if stem == "conv" and 2 ** halvings != patch_size:
        raise ValueError(f"stem='conv' halves the side per layer, so patch_size must be a power of two, got "
                         f"{patch_size}; use patch_size={2 ** halvings} or stem='patch'")
    # widths grow towards hidden_dim: hidden_dim / 2 ** (halvings - 1), ..., hidden_dim / 2, hidden_dim
    stem_layers = [ConvStemConfig(max(hidden_dim >> (halvings - 1 - i), 8), 3, 2) for i in range(halvings)]
    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers,
                             num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=num_classes,
                             conv_stem_configs=stem_layers if stem == "conv" and halvings else None)
