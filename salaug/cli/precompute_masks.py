"""``salaug precompute-masks``: CAM masks of an image folder or the embedded dataset, to a file.

The command-line face of :func:`salaug.data.precompute_masks`: a torchvision architecture with
local weights (nothing is downloaded), a CAM over every image at feature-map resolution, one
compact mask file for :class:`salaug.data.MaskBank` / ``SaliencyCollate(saliency="mask")``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from salaug._checks import check_targets
from salaug.cli._types import (
    HelpFormatter,
    LoadedWeights,
    at_least,
    cam_name,
    existing_dir,
    nonnegative_int,
    output_file,
    positive_int,
    torch_device,
    weights_file,
)
from salaug.data.masks import MaskBank, precompute_masks

__all__ = ["build_parser", "main"]


def _load_state_dict(model: nn.Module, weights: LoadedWeights) -> None:
    """Load ``weights`` into ``model``; a Lightning checkpoint's prefix (``"model."``) is stripped.

    Raises:
        ValueError: the weights do not fit the architecture (the message names the file).
    """
    state = weights.state
    try:
        model.load_state_dict(state)
        return
    except RuntimeError as first:
        # a Lightning checkpoint stores the network under a prefix such as "model."
        own = set(model.state_dict())
        for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) == own:
                try:
                    model.load_state_dict(stripped)
                    return
                except RuntimeError:
                    break
        detail = str(first).strip().splitlines()
        summary = " ".join(line.strip() for line in detail[:3])
        raise ValueError(
            f"--weights {weights.path!r} does not match the architecture and --num-classes: {summary[:300]}"
        ) from None


def _arch(text: str) -> str:
    import torchvision

    if text not in torchvision.models.list_models(module=torchvision.models):
        raise argparse.ArgumentTypeError(
            f"unknown torchvision classification architecture {text!r}, e.g. resnet18, resnet50, "
            "mobilenet_v3_small, efficientnet_b0 (see torchvision.models.list_models())"
        )
    return text


def _targets(text: str) -> str:
    """``--targets``: ``labels`` or ``predicted``; the old ``label`` warns and means ``labels``."""
    if text not in ("labels", "predicted", "label"):
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from 'labels', 'predicted')")
    return check_targets("--targets", text, "salaug precompute-masks")


def build_parser() -> argparse.ArgumentParser:
    """The ``salaug precompute-masks`` argument parser: every argument typed and range-checked."""
    p = argparse.ArgumentParser(
        prog="salaug precompute-masks", formatter_class=HelpFormatter,
        description="Run a CAM over a dataset at feature-map resolution and store the masks in a compact "
                    "file for MaskedDataset / SaliencyCollate(saliency='mask'). Nothing is downloaded.",
    )
    p.add_argument("root", nargs="?", type=existing_dir,
                   help="image folder (torchvision ImageFolder layout: root/class/img.png)")
    p.add_argument("--dataset", choices=("folder", "cluttered"), default="folder",
                   help="'folder' (ImageFolder at ROOT) or 'cluttered' (the embedded ClutteredObjects)")
    p.add_argument("--split", default="train", help="ClutteredObjects split")
    p.add_argument("--image-size", type=at_least(16, "smaller images leave the CAM no spatial resolution"),
                   default=None,
                   help="resize every image to SIZE x SIZE (full resize, no crop; needed for folders of "
                        "mixed sizes; ClutteredObjects: its image size, default 64)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N samples")
    p.add_argument("--arch", required=True, type=_arch, help="torchvision architecture name, e.g. resnet18")
    p.add_argument("--weights", type=weights_file, default=None,
                   help="local state_dict file (torch.save(model.state_dict())); without it the model has "
                        "random weights (only useful for testing)")
    p.add_argument("--num-classes", type=positive_int, required=True, help="number of classes of the model")
    p.add_argument("--layer", default=None, help="target layer, dotted name (default: the last conv layer)")
    p.add_argument("--cam", type=cam_name, default="gradcam", help="CAM method")
    p.add_argument("--targets", type=_targets, default="labels", metavar="{labels,predicted}",
                   help="CAM of the true label or of the predicted class ('label': deprecated spelling of "
                        "'labels')")
    p.add_argument("--normalize", choices=("none", "imagenet"), default="none",
                   help="input normalisation the model was trained with (none: images in [0, 1])")
    p.add_argument("--out", required=True, type=output_file, help="output mask file")
    p.add_argument("--dtype", choices=("uint8", "float16"), default="uint8", help="stored mask precision")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per CAM pass")
    p.add_argument("--num-workers", type=nonnegative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", type=torch_device, default="cpu", help="torch device of the CAM pass")
    return p


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that involve several arguments; each ends in ``parser.error`` (exit code 2)."""
    if args.dataset == "folder" and not args.root:
        parser.error("give the image folder ROOT (or --dataset cluttered)")
    if args.dataset == "cluttered" and args.root:
        parser.error(f"ROOT {args.root!r} is only for --dataset folder; drop it or use --dataset folder")
    if args.dataset == "cluttered":
        from salaug.datasets import ClutteredObjects

        try:  # the dataset checks --split, --num-classes and --image-size itself
            ClutteredObjects(split=args.split, num_classes=args.num_classes, length=1,
                             **({"size": args.image_size} if args.image_size else {}))
        except ValueError as exc:
            parser.error(f"--dataset cluttered: {exc}")


class _Normalized(nn.Module):
    """``model((x - mean) / std)``: the CAM sees images in ``[0, 1]``, the model its normalised input."""

    def __init__(self, model: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    mean: Tensor
    std: Tensor

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry ``salaug precompute-masks`` (see ``--help``). Returns the exit code.

    Example (shell)::

        salaug precompute-masks data/train --image-size 224 --arch resnet50 \\
            --weights resnet50_mine.pt --num-classes 10 --layer layer4 --out train_masks.salm
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    import torchvision
    from torchvision.transforms import v2

    try:
        model = torchvision.models.get_model(args.arch, weights=None, num_classes=args.num_classes)
        if args.weights is not None:
            _load_state_dict(model, args.weights)
    except ValueError as exc:
        parser.error(str(exc))
    layer = args.layer
    if layer is not None and (not layer or layer not in dict(model.named_modules())):
        parser.error(f"--layer {args.layer!r} is not a module of {args.arch}; e.g. "
                     f"{', '.join(n for n, _ in list(model.named_children())[-4:])}")
    try:
        if args.dataset == "folder":
            steps: list = [v2.ToImage()]
            if args.image_size:
                steps.append(v2.Resize((args.image_size, args.image_size), antialias=True))
            steps.append(v2.ToDtype(torch.float32, scale=True))
            folder = torchvision.datasets.ImageFolder(args.root, transform=v2.Compose(steps))
            dataset: Dataset = folder
            if args.limit is not None:
                dataset = torch.utils.data.Subset(folder, range(min(args.limit, len(folder))))
        else:
            from salaug.datasets import ClutteredObjects

            kwargs = {"split": args.split, "num_classes": args.num_classes}
            if args.image_size:
                kwargs["size"] = args.image_size
            if args.limit is not None:
                kwargs["length"] = args.limit
            dataset = ClutteredObjects(**kwargs)
        if args.weights is None:
            warnings.warn("no --weights given: the CAMs come from a randomly initialised model", stacklevel=1)
        if args.normalize == "imagenet":
            model = _Normalized(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            layer = f"model.{layer}" if layer else None
        out = precompute_masks(
            model, dataset, args.out, cam=args.cam, target_layer=layer, batch_size=args.batch_size,
            dtype=args.dtype, device=args.device, num_workers=args.num_workers, targets=args.targets,
            description={"arch": args.arch,
                         "weights": os.path.basename(args.weights.path) if args.weights else None,
                         "normalize": args.normalize, "source": args.dataset,
                         **({"split": args.split} if args.dataset == "cluttered" else {})},
        )
    except (ValueError, TypeError, OSError, KeyError, RuntimeError) as exc:
        print(f"salaug precompute-masks: error: {exc}", file=sys.stderr)
        return 2
    bank = MaskBank(out)
    h, w = bank.mask_size
    print(f"wrote {len(bank)} masks of {h}x{w} ({bank.dtype}) to {out} "
          f"({os.path.getsize(out) / 1024:.1f} KiB)")
    return 0
