"""The DataLoader path: saliency-guided augmentation in a ``collate_fn``, and stored masks.

Three ways to get saliency for a batch inside DataLoader workers (on CPU):

* a **model-free source**, e.g. :class:`salaug.saliency.SpectralResidual` — cheap, batched FFT;
* a **frozen model + CAM**, wrapped by :class:`CAMSaliency` — one forward/backward per batch in
  each worker;
* **stored masks**: :func:`precompute_masks` runs a CAM once over the whole dataset at
  feature-map resolution and writes a compact file (:class:`MaskBank` reads it with
  ``numpy.memmap``); :class:`MaskedDataset` yields every sample with its mask as a
  ``torchvision.tv_tensors.Mask`` so that torchvision v2 geometric transforms move image and mask
  together; ``SaliencyCollate(transform, saliency="mask")`` then uses the transformed masks.

:class:`SaliencyCollate` wraps :func:`torch.utils.data.default_collate` and applies any salaug
transform (``SaliencyMix``, ``SalientCrop``, ...) to the collated batch.

See :mod:`salaug.data.masks` for the mask file format; ``salaug precompute-masks`` (the command
line, :mod:`salaug.cli.precompute_masks`) writes such a file.
"""

from salaug.data.collate import CAMSaliency, SaliencyCollate
from salaug.data.masks import (
    MASK_KEY,
    MaskBank,
    MaskedDataset,
    precompute_masks,
    read_mask_header,
    save_masks,
)

__all__ = [
    "MASK_KEY",
    "CAMSaliency",
    "MaskBank",
    "MaskedDataset",
    "SaliencyCollate",
    "precompute_masks",
    "read_mask_header",
    "save_masks",
]
