"""EigenCAM: the first principal component of the target activations (no gradients, no targets).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2))
    >>> EigenCAM(net, "1")(torch.rand(2, 3, 8, 8), output_size="feature").shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from salaug.cam.base import BaseCAM

__all__ = ["EigenCAM"]


class EigenCAM(BaseCAM):
    """EigenCAM (Muhammad & Yeasin 2020), batched and with a fixed sign.

    Per image, the activations are laid out as ``X`` ``(h*w, C)``, centred per channel, and
    projected on the first right singular vector ``v`` of ``X`` (one batched
    ``torch.linalg.svd``): ``cam = ReLU(X v)``, then the usual normalisation.

    **Sign.** A singular vector is only defined up to sign; pytorch-grad-cam keeps whatever LAPACK
    returns, so its map is sometimes the ReLU of the *negated* component (often empty). Here the
    sign is chosen so that the projection correlates positively with the channel-mean activation
    ``mean_c A_c`` (where the network "fires"); a zero correlation keeps ``+``. This equals
    pytorch-grad-cam's output whenever its arbitrary sign happens to agree.

    ``targets`` are accepted for a uniform API and ignored; the model's output is not needed, so
    the forward stops right after the target layer's first call (and the model need not return
    ``(B, K)``), so a module the model reuses is not detected here as it is by the other methods.
    An image whose activations hold NaN or inf gets an all-zero map (the rule of every CAM here;
    pytorch-grad-cam instead replaces the NaNs by 0 and projects the rest).
    """

    name = "eigencam"
    uses_gradients = False

    def _compute(self, images: Tensor, targets: Tensor | None, layer: nn.Module) -> Tensor:
        acts, _ = self._forward_capture(images, layer, stop=True)
        a, _ = self._feature_maps(acts, None)
        return self.combine(a, None)

    def from_logits(
        self,
        logits: Tensor | None = None,
        targets: Tensor | int | Sequence[int] | None = None,
        *,
        output_size: tuple[int, int] | int | str | None = None,
    ) -> Tensor:
        """CAMs of the forward captured by :meth:`record`; ``logits`` and ``targets`` are ignored.

        Returns:
            ``(B, 1, H, W)`` float32 in ``[0, 1]``.
        """
        return super().from_logits(logits, None, output_size=output_size)  # type: ignore[arg-type]

    def combine(self, acts: Tensor, grads: Tensor | None) -> Tensor:
        b, c, h, w = acts.shape
        finite = torch.isfinite(acts).flatten(1).all(dim=1).view(b, 1, 1, 1)
        # zeros for such an image: the SVD of a non-finite matrix fails, that of zeros projects to 0
        acts = torch.where(finite, acts, torch.zeros((), dtype=acts.dtype, device=acts.device))
        x = acts.reshape(b, c, h * w).transpose(1, 2)  # (B, hw, C)
        x = x - x.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        proj = torch.bmm(x, vh[:, 0, :].unsqueeze(2)).squeeze(2)  # (B, hw), zero-mean
        mean_map = x.mean(dim=2)  # centred channel-mean activation, (B, hw)
        corr = (proj * mean_map).sum(dim=1, keepdim=True)
        proj = torch.where(corr < 0, -proj, proj)
        return proj.view(b, h, w)
