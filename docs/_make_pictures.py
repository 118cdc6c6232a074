"""Redraw the documentation's demo pictures at page width from a `salaug demo` checkpoint.

    salaug demo && python docs/_make_pictures.py salaug_demo/model.pt

The demo writes 16 images per row (``salaug_demo/augmented.png``, ``cam_overlays.png``); at the width
of a documentation page their captions are unreadable, so the pages show 6 of the same validation
images at 128 px per tile (about 780 px wide): ``docs/demo_augmented.png`` (images and their SnapMix
samples, the soft labels below) and ``docs/demo_cam_overlays.png`` (true boxes and GradCAM).
Not a page (``exclude_docs`` in mkdocs.yml).
"""

from __future__ import annotations

import argparse
import os

import torch

from salaug.cam import GradCAM
from salaug.datasets import ClutteredObjects
from salaug.demo import TARGET_LAYER, augment_as_trained, soft_label_captions
from salaug.diagnosis import load_demo_model
from salaug.transforms.registry import create_transform
from salaug.viz import draw_boxes, overlay, save_grid

HERE = os.path.dirname(os.path.abspath(__file__))
TILES = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="model.pt written by `salaug demo` (the SnapMix model)")
    parser.add_argument("--seed", type=int, default=0, help="the demo's --seed (its validation images)")
    args = parser.parse_args()
    loaded = load_demo_model(torch.load(args.checkpoint, weights_only=True))
    model, size = loaded.model.eval(), loaded.image_size or 32
    ds = ClutteredObjects(split="val", size=size, length=16, seed=args.seed)
    x, y, boxes = (torch.stack([torch.as_tensor(ds[i][j]) for i in range(16)]) for j in range(3))
    names = list(ds.classes)
    transform = create_transform("snapmix", len(names))
    assert transform is not None
    aug, images, soft = augment_as_trained(model, transform, x, y, args.seed, flat=False)
    assert aug.last is not None and aug.last.params is not None
    # four mixed samples and two that the transform left alone (p = 0.5 per sample), in their order
    mixed = aug.last.params["applied"].tolist()
    keep = ([i for i in range(16) if mixed[i]][:4] + [i for i in range(16) if not mixed[i]][:2])
    keep = sorted(keep)[:TILES]
    truth = [names[int(k)] for k in y[keep]]
    save_grid({"validation images": x[keep], "SnapMix, the soft labels from the model's forward below": images[keep]},
              os.path.join(HERE, "demo_augmented.png"), captions=[truth, soft_label_captions(soft[keep], names)],
              scale=4)
    maps = GradCAM(model, TARGET_LAYER)(x[keep], y[keep])
    save_grid({"validation images, true boxes": draw_boxes(x[keep], boxes[keep]),
               "GradCAM of the true class": overlay(x[keep], maps)},
              os.path.join(HERE, "demo_cam_overlays.png"), captions=[truth, truth], scale=4)


if __name__ == "__main__":
    main()
