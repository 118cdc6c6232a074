"""The model-randomisation reference: the same architecture at random initialisation.

After Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): a map that explains a
trained model should differ from the map of the same network with random weights. Random
convolutional features already light up a bright object, so the diagnosis reports every score
beside the score of this reference and judges the margin.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["REFERENCE_SEED", "random_reference"]

#: The reference's weights are drawn under ``torch.manual_seed(REFERENCE_SEED + seed)`` (a fork of
#: the global generator: the caller's random state is untouched). Far from small seeds so that a
#: model built under ``torch.manual_seed(0)`` is not its own reference.
REFERENCE_SEED = 7919

_NORMS = (nn.modules.batchnorm._BatchNorm,)


def random_reference(model: nn.Module, images: Tensor, *, seed: int = 0) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every parameter re-drawn as at construction, in eval mode.

    Each submodule's own ``reset_parameters()`` re-draws its weights (PyTorch's default
    initialisation of that layer). BatchNorm layers are then **re-normalised on the data**: their
    running statistics are recomputed, as a cumulative average, from one no-grad forward of
    ``images`` in train mode (only the BatchNorm layers in train mode; dropout stays off). This is
    the network as it would start training on these images; keeping the reset statistics (mean 0,
    variance 1) instead would let activations shrink or grow layer by layer and compare a badly
    scaled network. Parameters of modules without ``reset_parameters()`` keep their trained values;
    their count is returned.

    Args:
        model: the classifier (not modified: a deep copy is re-drawn).
        images: ``(B, C, H, W)`` images on the model's device, for the BatchNorm statistics.
        seed: offset of the reference's seed (see :data:`REFERENCE_SEED`).

    Returns:
        ``(reference, kept)``: the re-drawn copy in eval mode without gradients, and the number of
        parameters that could not be re-drawn.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        >>> ref, kept = random_reference(net, torch.rand(2, 3, 8, 8))
        >>> kept, torch.equal(ref[0].weight, net[0].weight), bool(ref[1].running_var.ne(1).all())
        (0, False, True)
    """
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    kept = 0
    devices = [images.device.index or 0] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(REFERENCE_SEED + seed)
        for m in ref.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                kept += sum(p.numel() for p in m.parameters(recurse=False))
    norms = [m for m in ref.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    ref.eval()
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over what it sees
            m.train()
        with torch.no_grad():
            ref(images)
        for m in norms:
            m.eval()
    for p in ref.parameters():
        p.grad = None
    return ref, kept
