"""Soft labels: the label rules every transform follows.

Every transform returns ``(B, K)`` float32 rows summing to 1, so ``F.cross_entropy(logits, y)``
works unchanged and transforms chain. A mix with partner weight ``w`` gives
``(1 - w) * y + w * y[perm]`` (timm's and torchvision's convention, with ``w`` the partner's share).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug._checks import check_class_indices, check_float, value_checks_on

__all__ = ["evidence_share", "mix_soft_labels", "to_soft_labels"]


def mix_soft_labels(labels: Tensor, perm: Tensor, weight: Tensor) -> Tensor:
    """Mix each row with its partner's.

    Args:
        labels: ``(B, K)`` soft labels.
        perm: ``(B,)`` partner index of each sample.
        weight: ``(B,)`` share of the partner in ``[0, 1]``.

    Returns:
        ``(B, K)`` soft labels; rows still sum to 1.

    Example:
        >>> import torch
        >>> y = torch.eye(2)
        >>> mix_soft_labels(y, torch.tensor([1, 0]), torch.tensor([0.25, 0.0])).tolist()
        [[0.75, 0.25], [0.0, 1.0]]
    """
    w = weight.to(labels.dtype).clamp(0, 1).unsqueeze(1)
    return labels.lerp(labels[perm], w)


def evidence_share(own: Tensor, partner: Tensor, region: Tensor, area: Tensor, blend: float) -> Tensor:
    """The partner's label share from evidence maps of the mixed images (labels from the forward).

    ``e_in`` is the partner's evidence inside the pasted region, ``e_out`` the sample's own
    evidence outside it; the evidence share ``e_in / (e_in + e_out)`` is blended with the area
    share. GradCAM maps of both classes give the CNN rule; one attention map passed as both ``own``
    and ``partner`` gives TransMix's (:func:`transmix_share`).

    Args:
        own: ``(B, h, w)`` non-negative evidence for each sample's own class.
        partner: ``(B, h, w)`` non-negative evidence for the partner's class.
        region: ``(B, h, w)`` in ``[0, 1]``, the fraction of each cell showing the partner.
        area: ``(B,)`` the partner's area share.
        blend: weight of the evidence rule against the area share, in ``[0, 1]``.

    Returns:
        ``(B,)`` float32 ``blend * e_in / (e_in + e_out) + (1 - blend) * area``; the area share where
        there is no evidence or a value is not finite.

    Example:
        >>> own, partner = torch.ones(1, 2, 2), torch.ones(1, 2, 2)
        >>> region = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])          # one cell of four pasted
        >>> evidence_share(own, partner, region, torch.tensor([0.25]), blend=1.0)
        tensor([0.2500])
        >>> evidence_share(own * 3, partner, region, torch.tensor([0.25]), blend=1.0)  # target stronger
        tensor([0.1000])
    """
    e_in = (partner.float() * region).flatten(1).sum(1)
    e_out = (own.float() * (1 - region)).flatten(1).sum(1)
    total = e_in + e_out
    evidence = e_in / total.clamp_min(torch.finfo(torch.float32).tiny)
    valid = (total > 0) & torch.isfinite(evidence)
    area = area.float()
    return torch.where(valid, blend * evidence + (1 - blend) * area, area).clamp(0, 1)


def to_soft_labels(labels: object, batch_size: int, num_classes: int | None, device: torch.device) -> Tensor:
    """Turn ``(B,)`` class indices or ``(B, K)`` probabilities into ``(B, K)`` float32 soft labels.

    Raises:
        TypeError: if ``labels`` is not a tensor.
        ValueError: integer labels without ``num_classes``, indices out of range, a batch-size
            mismatch, or rows of ``(B, K)`` labels that are negative or do not sum to 1.

    Example:
        >>> to_soft_labels(torch.tensor([2, 0]), 2, 3, torch.device("cpu")).tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape (B,) or (B, K), got {type(labels).__name__}")
    if labels.ndim == 0 or labels.shape[0] != batch_size:
        raise ValueError(f"labels must have batch size {batch_size} (shape (B,) or (B, K)), got {tuple(labels.shape)}; "
                         "pass one label per image")
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"(B,) labels must be integer class indices, got {labels.dtype}; convert with "
                            "labels.long(), or pass (B, K) probabilities")
        if num_classes is None:
            raise ValueError(
                "integer labels need num_classes to build soft labels: pass num_classes=K to the "
                "transform (or its call), or pass (B, K) one-hot / probability labels"
            )
        check_class_indices(labels, num_classes, "label indices", f"num_classes={num_classes}")
        return F.one_hot(labels.to(device=device, dtype=torch.long), num_classes).to(torch.float32)
    if labels.ndim == 2:
        if not labels.is_floating_point():
            hint = ("squeeze (B, 1) class indices with labels.squeeze(1)" if labels.shape[1] == 1 else
                    "convert one-hot labels with labels.float()")
            raise TypeError(f"(B, K) labels must be floating point probabilities, got {labels.dtype}; {hint}")
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(f"labels have {labels.shape[1]} classes but num_classes={num_classes}; pass labels with "
                             "one column per class, or the matching num_classes")
        labels = labels.to(device=device, dtype=torch.float32)
        if value_checks_on(labels):
            if not bool(torch.isfinite(labels).all()) or bool((labels < 0).any()):
                raise ValueError("(B, K) labels must be finite and non-negative probabilities; check the code that "
                                 "built them (e.g. use softmax, not raw logits)")
            if not torch.allclose(labels.sum(1), torch.ones((), device=device), atol=1e-3):
                raise ValueError("(B, K) labels must be probabilities: each row must sum to 1; normalise them with "
                                 "labels / labels.sum(1, keepdim=True)")
        return labels
    raise ValueError(f"labels must have shape (B,) or (B, K), got {tuple(labels.shape)}")


def transmix_share(attn: Tensor, token_mask: Tensor, area_share: Tensor, blend: float = 0.5) -> Tensor:
    """The partner's label weight: the attention share of the pasted region blended with its area share.

    ``λ_attn = Σ attn · token_mask / Σ attn`` per sample (the attention inside the box over the
    whole row), ``λ = blend · λ_attn + (1 − blend) · area_share``; the mixed target is
    ``(1 − λ) · y_a + λ · y_b``. TransMix uses ``blend=0.5``. A sample whose attention sums to
    zero (or is not finite) keeps its area share.

    Args:
        attn: ``(B, N)`` non-negative attention over patches (:func:`salaug.cam.attention.cls_attention`).
        token_mask: ``(B, N)`` fraction of each patch covered by the pasted region
            (:func:`salaug.cam.attention.tokens_from_mask`).
        area_share: ``(B,)`` the pasted region's share of the image area.
        blend: weight of the attention share in ``[0, 1]``.

    Returns:
        ``(B,)`` float32.

    Raises:
        TypeError: an argument is not a floating-point tensor, or ``blend`` not a number.
        ValueError: wrong shapes, or ``blend`` outside ``[0, 1]``.

    Example:
        >>> attn = torch.tensor([[0.1, 0.3, 0.2, 0.2]])
        >>> transmix_share(attn, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([0.25])).tolist()
        [0.3125]
    """
    check_float("blend", blend, low=0.0, high=1.0)
    blend = float(blend)
    for name, t, dims in (("attn", attn, 2), ("token_mask", token_mask, 2), ("area_share", area_share, 1)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            what = type(t).__name__ if not isinstance(t, Tensor) else t.dtype
            raise TypeError(f"{name} must be a floating-point tensor, got {what}")
        if t.ndim != dims:
            raise ValueError(f"{name} must be {'(B, N)' if dims == 2 else '(B,)'}, got shape {tuple(t.shape)}")
    if token_mask.shape != attn.shape or area_share.shape[0] != attn.shape[0]:
        raise ValueError(f"attn {tuple(attn.shape)}, token_mask {tuple(token_mask.shape)} and area_share "
                         f"{tuple(area_share.shape)} must agree: (B, N), (B, N), (B,) on the same patch grid")
    return evidence_share(attn, attn, token_mask, area_share, blend)
