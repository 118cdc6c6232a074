"""The model check: EigenCAM tests the backbone, AblationCAM the head, the reliance test the background.

Three questions about a trained classifier, each answered beside references that say what an
uninformative answer looks like:

* **Backbone** (EigenCAM, the first principal component of the target layer's features; no
  classifier involved): does the backbone's dominant pattern sit on the object?
* **Head** (AblationCAM, each channel weighted by how much removing it lowers the class score):
  does the classifier rely on channels that fire on the object?
* **Reliance** (after Xiao et al., ICLR 2021): does the decision change when the object is shown
  on another image's background, under two fills that stay on the data's distribution (the
  image's own background tiled, black)? A validity gate says when the test cannot tell
  (:mod:`salaug.diagnosis.reliance`, :attr:`Diagnosis.reliance_state`).

Each map of each image gets a localisation score in ``[0, 1]``: with true boxes the mean of the
pointing game and the energy inside the box (:func:`salaug.metrics.localisation_score`), without
them the box-free :func:`evidence_score`. Scores are reported beside **chance** (the box's
in-image share of the image: where a map blind to the object lands) and the **same architecture
at random initialisation** (:func:`random_reference`, the model-randomisation test of Adebayo et
al., NeurIPS 2018); the verdict reads the margins over them and the reliance test, never an
absolute score (rules and thresholds: :mod:`salaug.diagnosis.report`). When the target layer's
cells are as large as the objects the maps are not judged and a finer layer is named; boxes
covering (nearly) the whole image leave nothing to judge either.

Modules: :mod:`~salaug.diagnosis.engine` (:func:`diagnose`), :mod:`~salaug.diagnosis.measure`
(the per-batch measurement shared with :class:`salaug.SaliencyMonitor`), :mod:`~salaug.diagnosis.report`
(:class:`Diagnosis`, verdict, tables, ``save``), :mod:`~salaug.diagnosis.scores`,
:mod:`~salaug.diagnosis.references`, :mod:`~salaug.diagnosis.reliance`,
:mod:`~salaug.diagnosis.checkpoint` (DemoNet checkpoints with their image size). The command
line (``salaug diagnose``) lives in :mod:`salaug.cli`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 3))
    >>> x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0]]).expand(6, 4)
    >>> d = diagnose(net, [(x, y, boxes)], "1", box_key=2)
    >>> d.num_images, d.measure, sorted(d.per_class), d.kind in KINDS
    (6, 'box', [0, 1, 2], True)
    >>> sorted(d.reliance) == sorted(VARIANTS) and d.random_scores is not None
    True
"""

from __future__ import annotations

from salaug.diagnosis.checkpoint import (
    IMAGE_SIZES,
    DemoCheckpoint,
    check_demo_image_size,
    check_image_size,
    demo_checkpoint,
    demo_model_from_state,
    load_demo_model,
    train_demo_model,
)
from salaug.diagnosis.engine import diagnose
from salaug.diagnosis.measure import CAM_ROLES, check_cams, score_maps
from salaug.diagnosis.references import REFERENCE_SEED, random_reference
from salaug.diagnosis.reliance import (
    FILLS,
    VARIANTS,
    reliance_images,
    same_class_partners,
    tiled_background,
)
from salaug.diagnosis.report import (
    BACKBONE_MARGIN,
    BACKGROUND_ONLY_MARGIN,
    BG_GAP_THRESHOLD,
    COLLAPSE_RATIO,
    FULL_BOX_SHARE,
    HEAD_MARGIN,
    KINDS,
    MIN_CLASS_IMAGES,
    OBJECT_ONLY_SHARE,
    ORIGINAL_MARGIN,
    RELIANCE_STATES,
    Diagnosis,
)
from salaug.diagnosis.scores import (
    box_energy,
    box_share,
    evidence_score,
    localisation_score,
)

__all__ = [
    "BACKBONE_MARGIN",
    "BACKGROUND_ONLY_MARGIN",
    "BG_GAP_THRESHOLD",
    "COLLAPSE_RATIO",
    "FILLS",
    "FULL_BOX_SHARE",
    "HEAD_MARGIN",
    "IMAGE_SIZES",
    "KINDS",
    "CAM_ROLES",
    "MIN_CLASS_IMAGES",
    "OBJECT_ONLY_SHARE",
    "ORIGINAL_MARGIN",
    "REFERENCE_SEED",
    "RELIANCE_STATES",
    "VARIANTS",
    "DemoCheckpoint",
    "Diagnosis",
    "box_energy",
    "box_share",
    "check_cams",
    "check_demo_image_size",
    "check_image_size",
    "demo_checkpoint",
    "demo_model_from_state",
    "diagnose",
    "evidence_score",
    "load_demo_model",
    "localisation_score",
    "random_reference",
    "reliance_images",
    "same_class_partners",
    "score_maps",
    "tiled_background",
    "train_demo_model",
]
