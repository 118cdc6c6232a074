"""``salaug precompute-masks``: CAM masks of an image folder or the embedded dataset, to a file."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from salaug.data.masks import MaskBank, precompute_masks

# ---------------------------------------------------------------------------------------------
# Command line: salaug precompute-masks
# ---------------------------------------------------------------------------------------------
def _load_state_dict(model: nn.Module, weights: str) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"--weights {weights!r} does not hold a state_dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state)
        return
    except RuntimeError as first:
        # a Lightning checkpoint stores the network under a prefix such as "model."
        own = set(model.state_dict())
        for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) == own:
                model.load_state_dict(stripped)
                return
        raise ValueError(f"--weights {weights!r} does not match the architecture: {first}") from None


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="salaug precompute-masks",
        description="Run a CAM over a dataset at feature-map resolution and store the masks in a compact "
                    "file for MaskedDataset / SaliencyCollate(saliency='mask'). Nothing is downloaded.",
    )
    p.add_argument("root", nargs="?", help="image folder (torchvision ImageFolder layout: root/class/img.png)")
    p.add_argument("--dataset", choices=("folder", "cluttered"), default="folder",
                   help="'folder' (ImageFolder at ROOT) or 'cluttered' (the embedded ClutteredObjects)")
    p.add_argument("--split", default="train", help="ClutteredObjects split (default: train)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize every image to SIZE x SIZE (full resize, no crop; needed for folders of "
                        "mixed sizes; ClutteredObjects: its image size, default 64)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--arch", required=True, help="torchvision architecture name, e.g. resnet18")
    p.add_argument("--weights", default=None,
                   help="local state_dict file (torch.save(model.state_dict())); without it the model has "
                        "random weights (only useful for testing)")
    p.add_argument("--num-classes", type=int, required=True, help="number of classes of the model")
    p.add_argument("--layer", default=None, help="target layer, dotted name (default: the last conv layer)")
    p.add_argument("--cam", default="gradcam", help="CAM method (default: gradcam)")
    p.add_argument("--targets", choices=("label", "predicted"), default="label",
                   help="CAM of the true label (default) or of the predicted class")
    p.add_argument("--normalize", choices=("none", "imagenet"), default="none",
                   help="input normalisation the model was trained with (default: none, images in [0, 1])")
    p.add_argument("--out", required=True, help="output mask file")
    p.add_argument("--dtype", choices=("uint8", "float16"), default="uint8")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p


class _Normalized(nn.Module):
    def __init__(self, model: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def precompute_main(argv: list[str] | None = None) -> int:
    """Command-line entry ``salaug precompute-masks`` (see ``--help``). Returns the exit code.

    Example (shell)::

        salaug precompute-masks data/train --image-size 224 --arch resnet50 \\
            --weights resnet50_mine.pt --num-classes 10 --layer layer4 --out train_masks.salm
    """
    args = _build_parser().parse_args(argv)
    try:
        import torchvision
        from torchvision.transforms import v2

        if args.dataset == "folder":
            if not args.root:
                raise ValueError("give the image folder ROOT (or --dataset cluttered)")
            steps: list = [v2.ToImage()]
            if args.image_size:
                steps.append(v2.Resize((args.image_size, args.image_size), antialias=True))
            steps.append(v2.ToDtype(torch.float32, scale=True))
            dataset: Dataset = torchvision.datasets.ImageFolder(args.root, transform=v2.Compose(steps))
        else:
            from salaug.datasets import ClutteredObjects

            kwargs = {"split": args.split, "num_classes": args.num_classes}
            if args.image_size:
                kwargs["size"] = args.image_size
            if args.limit is not None:
                kwargs["length"] = args.limit
            dataset = ClutteredObjects(**kwargs)
        if args.limit is not None and args.dataset == "folder":
            dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
        if args.arch not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision architecture {args.arch!r}")
        model = torchvision.models.get_model(args.arch, weights=None, num_classes=args.num_classes)
        if args.weights:
            _load_state_dict(model, args.weights)
        else:
            warnings.warn("no --weights given: the CAMs come from a randomly initialised model", stacklevel=1)
        layer = args.layer
        if args.normalize == "imagenet":
            model = _Normalized(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            layer = f"model.{layer}" if layer else None
        if layer is not None and layer not in dict(model.named_modules()):
            raise ValueError(f"--layer {args.layer!r} is not a module of {args.arch}")
        out = precompute_masks(
            model, dataset, args.out, cam=args.cam, target_layer=layer, batch_size=args.batch_size,
            dtype=args.dtype, device=args.device, num_workers=args.num_workers, targets=args.targets,
            description={"arch": args.arch, "weights": os.path.basename(args.weights) if args.weights else None,
                         "normalize": args.normalize, "source": args.dataset,
                         **({"split": args.split} if args.dataset == "cluttered" else {})},
        )
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as exc:
        print(f"salaug precompute-masks: error: {exc}", file=sys.stderr)
        return 2
    bank = MaskBank(out)
    h, w = bank.mask_size
    print(f"wrote {len(bank)} masks of {h}x{w} ({bank.dtype}) to {out} "
          f"({os.path.getsize(out) / 1024:.1f} KiB)")
    return 0
