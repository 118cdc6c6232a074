"""Gradient CAMs: GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM.

All five share the engine of :class:`salaug.cam.base.BaseCAM` (one no-grad trunk forward, a
differentiated head, ``torch.autograd.grad`` on the target activations) and differ only in how
activations ``A`` ``(B, C, h, w)`` and gradients ``g = dS/dA`` combine. The formulas are those of
pytorch-grad-cam 1.5.7, computed in float32, so the normalised maps agree with it to ~1e-6.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2))
    >>> cam = GradCAM(net, "1")
    >>> cam(torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

from torch import Tensor

from salaug.cam.base import BaseCAM, weighted_sum

__all__ = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"]


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): ``w_c = mean_hw(g_c)``, ``cam = ReLU(sum_c w_c A_c)``.

    See :class:`~salaug.cam.base.BaseCAM` for the constructor and call signature; output
    ``(B, 1, H, W)`` float32 in ``[0, 1]``.
    """

    name = "gradcam"

    def combine(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        assert grads is not None
        return weighted_sum(grads.mean(dim=(2, 3)), acts)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), pytorch-grad-cam's closed form.

    ``a = g^2 / (2 g^2 + sum_hw(A) g^3 + 1e-6)`` (0 where ``g == 0``),
    ``w_c = sum_hw(ReLU(g_c) a_c)``, ``cam = ReLU(sum_c w_c A_c)``. torchcam's variant uses
    ``sum_hw(A g^3)`` in the denominator and differs.
    """

    name = "gradcam++"

    def combine(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        assert grads is not None
        g2 = grads * grads
        g3 = g2 * grads
        sum_a = acts.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = alpha.masked_fill(grads == 0, 0.0)
        weights = (grads.clamp_min(0) * alpha).sum(dim=(2, 3))
        return weighted_sum(weights, acts)


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020): ``w_c = sum_hw(g_c A_c) / (sum_hw(A_c) + 1e-7)``."""

    name = "xgradcam"

    def combine(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        assert grads is not None
        weights = (grads * acts).sum(dim=(2, 3)) / (acts.sum(dim=(2, 3)) + 1e-7)
        return weighted_sum(weights, acts)


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020): ``cam = ReLU(sum_c g_c * A_c)`` (element-wise)."""

    name = "hirescam"

    def combine(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        assert grads is not None
        return (grads * acts).sum(dim=1)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021): ``cam = ReLU(sum_c ReLU(g_c) * A_c)`` (element-wise)."""

    name = "layercam"

    def combine(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        assert grads is not None
        return (grads.clamp_min(0) * acts).sum(dim=1)
