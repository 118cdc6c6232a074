"""The embedded datasets: procedural images with their true boxes and masks (nothing downloads).

* :class:`ClutteredObjects` — one shape of a known class on clutter (grating, noise, fragments of
  other shapes).
* :class:`TexturedBlobs` — one blob whose *texture* is the class, on 1/f noise with smaller
  distractor blobs; its generator shares nothing with :class:`ClutteredObjects`, so results tuned
  on one can be checked on the other.
* :class:`Silhouettes` — grey shapes on a black background with dim clutter (a dark-background
  dataset for the model check's fills).
"""

from salaug.datasets.objects import CLASS_NAMES, ClutteredObjects, draw_shapes
from salaug.datasets.silhouettes import Silhouettes
from salaug.datasets.textures import TEXTURE_NAMES, TexturedBlobs

__all__ = ["CLASS_NAMES", "TEXTURE_NAMES", "ClutteredObjects", "Silhouettes", "TexturedBlobs", "draw_shapes"]
