"""The model check: EigenCAM tests the backbone, AblationCAM the head, the reliance test the background.

Three questions about a trained classifier, each answered beside references that say what an
uninformative answer looks like:

* **Backbone** (EigenCAM, the first principal component of the target layer's features; no
  classifier involved): does the backbone's dominant pattern sit on the object?
* **Head** (AblationCAM, each channel weighted by how much removing it lowers the class score):
  does the classifier rely on channels that fire on the object?
* **Reliance** (after Xiao et al., ICLR 2021): does the decision change when the object is shown
  on another image's background, under two fills that stay on the data's distribution (the
  image's own background tiled, black)? Each comparison is judged by its own control, and the
  answer is graded: the share of the model's margin over chance that the background accounts
  for, with a bootstrap interval (:mod:`salaug.diagnosis.reliance`,
  :attr:`Diagnosis.background_share`, :attr:`Diagnosis.reliance_state`).

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
(:class:`Diagnosis`, verdict, tables, ``save``), :mod:`~salaug.diagnosis.thresholds`
(:class:`Thresholds`), :mod:`~salaug.diagnosis.scores`,
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
    >>> d.thresholds == Thresholds() and d.reliance_state in RELIANCE_STATES
    True
"""

from __future__ import annotations

from typing import Any

from salaug.diagnosis.checkpoint import (
    IMAGE_SIZES as IMAGE_SIZES,
)
from salaug.diagnosis.checkpoint import (
    DemoCheckpoint,
    check_image_size,
    demo_checkpoint,
    load_demo_model,
)
from salaug.diagnosis.checkpoint import (
    check_demo_image_size as check_demo_image_size,
)
from salaug.diagnosis.checkpoint import (
    demo_model_from_state as demo_model_from_state,
)
from salaug.diagnosis.checkpoint import (
    train_demo_model as train_demo_model,
)
from salaug.diagnosis.engine import Budget, diagnose
from salaug.diagnosis.measure import CAM_ROLES as CAM_ROLES
from salaug.diagnosis.measure import check_cams as check_cams
from salaug.diagnosis.measure import score_maps as score_maps
from salaug.diagnosis.references import REFERENCE_SEED as REFERENCE_SEED
from salaug.diagnosis.references import random_reference
from salaug.diagnosis.reliance import (
    FILLS,
    VARIANTS,
    reliance_images,
    reliance_share,
)
from salaug.diagnosis.reliance import (
    background_black as background_black,
)
from salaug.diagnosis.reliance import (
    same_class_partners as same_class_partners,
)
from salaug.diagnosis.reliance import (
    tiled_background as tiled_background,
)
from salaug.diagnosis.report import KINDS, RELIANCE_STATES, Diagnosis
from salaug.diagnosis.scores import (
    box_energy as box_energy,
)
from salaug.diagnosis.scores import (
    box_share as box_share,
)
from salaug.diagnosis.scores import (
    evidence_score,
    localisation_score,
)
from salaug.diagnosis.thresholds import Thresholds, deprecated_constant

# What users call. Still importable from here, but internal (used by salaug's command line, demo,
# monitor and benchmarks): IMAGE_SIZES, CAM_ROLES, REFERENCE_SEED, check_demo_image_size,
# demo_model_from_state, train_demo_model, check_cams, score_maps, same_class_partners,
# tiled_background, background_black, box_energy, box_share (the last two: salaug.metrics).
__all__ = [
    "FILLS",
    "KINDS",
    "RELIANCE_STATES",
    "VARIANTS",
    "Budget",
    "DemoCheckpoint",
    "Diagnosis",
    "Thresholds",
    "check_image_size",
    "demo_checkpoint",
    "diagnose",
    "evidence_score",
    "load_demo_model",
    "localisation_score",
    "random_reference",
    "reliance_images",
    "reliance_share",
]

def __getattr__(name: str) -> Any:
    """The deprecated threshold constants (``BACKBONE_MARGIN``, ...): see :class:`Thresholds`."""
    return deprecated_constant(__name__, name)
