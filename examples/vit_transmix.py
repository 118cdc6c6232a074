"""TransMix on a vision transformer: CutMix whose labels come from the training forward's attention.

A CutMix box is pasted from a partner image (``SaliencyMix`` drawn on flat saliency is CutMix), and
``labels_from="forward"`` sets each mixed sample's label from the step's own forward: the last
block's class-token attention inside the pasted box over the whole row, averaged with the box's
area share (TransMix, Chen et al., CVPR 2022). No extra forward, no change to the loop: the forward
fills the returned label tensor in place before the loss reads it.

The model is :func:`salaug.models.tiny_vit` (torchvision's ``VisionTransformer``, a convolutional
stem to an 8 x 8 token grid, 4 blocks); any torchvision ``VisionTransformer`` or timm-style ViT
works the same way. The data is the embedded ClutteredObjects; the standard recipe (padded random
crop + flip) runs before the mix.

Run::

    python examples/vit_transmix.py                         # 20 epochs on 500 images
    python examples/vit_transmix.py --no-salaug             # the same loop with the recipe only
    python examples/vit_transmix.py --epochs 1 --limit 128  # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import salaug
from salaug.models import tiny_vit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--limit", type=int, default=500, help="training images")
    parser.add_argument("--test", type=int, default=500, help="test images")
    parser.add_argument("--no-salaug", action="store_true", help="the recipe alone, no mixing")
    args = parser.parse_args()
    torch.manual_seed(0)
    k = 10
    train = DataLoader(salaug.ClutteredObjects("train", size=32, length=args.limit), batch_size=64, shuffle=True)
    test = salaug.ClutteredObjects("test", size=32, length=args.test).render(range(args.test))
    model = tiny_vit(num_classes=k)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    # TransMix: CutMix boxes, labels from this step's forward (attention found in the last block)
    aug = None if args.no_salaug else salaug.SaliencyAugmenter(
        model, salaug.SaliencyMix(num_classes=k), labels_from="forward", seed=0)
    for epoch in range(args.epochs):
        model.train()
        shift, mixed = 0.0, 0
        for images, labels, _boxes in train:
            images = salaug.crop_flip(images)[0]
            if aug is None:
                targets = F.one_hot(labels, k).float()
            else:
                images, targets = aug(images, labels)  # targets: filled by the forward below
            loss = F.cross_entropy(model(images), targets)
            if aug is not None and aug.last is not None and aug.last.params is not None:
                params = aug.last.params               # CutMix's label would be the box's area share
                area = aug.transform.area_share(params, tuple(images.shape[-2:]))
                partner = labels[params["perm"]]
                mix = params["applied"] & (partner != labels)
                share = targets.gather(1, partner.unsqueeze(1)).squeeze(1)
                changed = (share - area)[mix].abs()    # how far the attention moved each label
                shift, mixed = shift + float(changed.sum()), mixed + int(mix.sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            acc = (model(test["image"]).argmax(1) == test["label"]).float().mean()
        moved = f" | attention moved {mixed} labels by {shift / max(mixed, 1):.3f} on average" if aug else ""
        print(f"epoch {epoch} | loss {loss.item():.3f} | test acc {float(acc):.3f}{moved}")


if __name__ == "__main__":
    main()
