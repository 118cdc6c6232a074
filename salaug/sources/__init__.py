"""Saliency sources: where a transform's maps (and, for a box mix, its labels) come from.

One protocol (:class:`SaliencySource`); the augmenter is a transform plus a source, and the
Lightning callback, the collate and the demo use the same objects:

* :class:`LiveCAM` — a CAM forward of each batch with the model being trained (``cam_scale``, EMA);
* :class:`ForwardEvidence` — no pass of its own: the boxes are drawn flat and the labels are
  completed by the user's own training forward of the mixed batch (CNN evidence, ViT attention);
* :class:`StoredMasks` — maps that come with the batch (precomputed CAMs, masks);
* :class:`ModelFree` — a function of the images (:class:`salaug.SpectralResidual`);
* :class:`Flat` — no information: random placement, area labels (the matched control).
"""

from salaug.sources.base import Flat, ModelFree, SaliencySource, StoredMasks, as_source
from salaug.sources.forward import ForwardEvidence, PendingLabels, pasted_region
from salaug.sources.live import LiveCAM

__all__ = ["Flat", "ForwardEvidence", "LiveCAM", "ModelFree", "PendingLabels", "SaliencySource", "StoredMasks",
           "as_source", "pasted_region"]
