"""``salaug demo``: train a small CNN on the embedded data and compare augmentations.

Every arm trains on the standard recipe (4-px padded random crop + horizontal flip of the training
images); ``--method`` is applied on top of it. ``--compare`` also trains base-only (``none``) and
base + CutMix on the same schedule; ``--no-recipe`` drops the recipe from every arm. The training
itself is :func:`salaug.demo.run`; this module parses and checks the arguments and writes the
results. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from typing import Any

from salaug.cli._types import HelpFormatter, accelerator, fraction, int_range, output_dir, positive_int, seed

__all__ = ["build_parser", "checkpoint", "main", "parse_args"]

DEFAULT_METHOD = "snapmix"
DEFAULT_BASELINES = ("none", "cutmix")


def build_parser() -> argparse.ArgumentParser:
    """The ``salaug demo`` argument parser: every argument typed and range-checked by argparse."""
    from salaug.transforms.registry import TRANSFORM_NAMES

    parser = argparse.ArgumentParser(
        prog="salaug demo", formatter_class=HelpFormatter,
        description="Train a small CNN on the embedded ClutteredObjects data (nothing is downloaded) with the "
                    "standard recipe (4-px padded random crop + horizontal flip) and one augmentation method on "
                    "top, measure it, and write the results, the weights and pictures into --out.")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=TRANSFORM_NAMES, metavar="METHOD",
                        help=f"augmentation on top of the recipe: {', '.join(TRANSFORM_NAMES)} "
                             "(none: the recipe alone)")
    parser.add_argument("--compare", nargs="*", default=None, choices=TRANSFORM_NAMES, metavar="METHOD",
                        help="also train these on the same schedule; the flag alone: "
                             f"{' '.join(DEFAULT_BASELINES)} (base-only and base + CutMix)")
    parser.add_argument("--no-recipe", action="store_true",
                        help="no base augmentation in any arm (the old comparison: each method alone)")
    parser.add_argument("--epochs", type=positive_int, default=40, help="training epochs of each arm")
    parser.add_argument("--train-size", type=positive_int, default=500,
                        help="training images; few per class (50) is where mixing pays")
    parser.add_argument("--val-size", type=positive_int, default=200, help="validation images (the curves)")
    parser.add_argument("--test-size", type=positive_int, default=1000, help="test images (the table)")
    parser.add_argument("--size", type=int_range(16, 512, "ClutteredObjects draws 16 to 512 px images here"),
                        default=32, help="image side in pixels")
    parser.add_argument("--width", type=positive_int, default=16, help="DemoNet's base channel width")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per training batch")
    parser.add_argument("--cam-scale", type=fraction, default=1.0,
                        help="resolution factor of the augmentation's CAM forward, in (0, 1]")
    parser.add_argument("--out", type=output_dir, default="salaug_demo",
                        help="directory for the results, the weights and the pictures (created if missing)")
    parser.add_argument("--device", type=accelerator, default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the data, the weights and the augmentation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the demo's arguments; a bad one exits with argparse's code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if round(args.size * args.cam_scale) < 8:  # DemoNet halves the CAM input three times
        parser.error(f"--cam-scale {args.cam_scale} on {args.size} px images runs the CAM on "
                     f"{round(args.size * args.cam_scale)} px, below the 8 px the network needs; raise it")
    return args


def checkpoint(model: Any, *, image_size: int, class_names: list[str], method: str, recipe: bool) -> dict[str, Any]:
    """What the demo writes to ``model.pt``: the weights and what ``salaug diagnose`` needs to read them.

    ``{"state_dict": ..., "salaug": {"model", "image_size", "in_channels", "num_classes", "width",
    "class_names", "target_layer", "version", "method", "recipe"}}``, all plain values, so that
    ``torch.load(path, weights_only=True)`` reads it.
    """
    import salaug
    from salaug.demo import TARGET_LAYER
    from salaug.diagnosis import demo_checkpoint

    saved = demo_checkpoint(model, image_size)
    saved["salaug"].update(class_names=list(class_names), target_layer=TARGET_LAYER, version=salaug.__version__,
                           method=method, recipe=recipe)
    return saved


def main(argv: list[str] | None = None) -> int:
    """``salaug demo [--method M] [--compare [M ...]] [--no-recipe] [--epochs N] [--out DIR] ...``.

    Trains each arm, prints the results table and writes into ``--out``: ``results.md``,
    ``results.json``, ``model.pt`` (the ``--method`` model with its metadata),
    ``cam_overlays.png``, ``augmented.png``, ``accuracy.png`` and, per arm, ``runs/<method>/``
    (Lightning's CSV log and the monitor's pictures).

    Returns:
        0 on success; a bad argument exits with argparse's one-line error and code 2, before any work.
    """
    args = parse_args(argv)
    import torch

    import salaug.demo as demo
    from salaug.datasets import ClutteredObjects

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise
    common = dict(epochs=args.epochs, size=args.size, train_size=args.train_size, val_size=args.val_size,
                  test_size=args.test_size, batch_size=args.batch_size, seed=args.seed, device=args.device,
                  out=args.out, progress=not args.no_progress, cam_scale=args.cam_scale, width=args.width,
                  recipe=not args.no_recipe)
    baselines = [] if args.compare is None else list(dict.fromkeys(args.compare or DEFAULT_BASELINES))
    order = [m for m in baselines if m != args.method] + [args.method]  # base-only first, the method last
    results = [demo.run(m, **common) for m in order]
    main_run, others = results[-1], results[:-1]
    table = demo.format_table(results)
    paths = demo.write_pictures(main_run, others, args.out, args.size, args.seed)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump([{k: v for k, v in vars(r).items() if k not in ("model", "callback")} for r in results], f,
                  indent=1)
    weights = os.path.join(args.out, "model.pt")
    names = list(ClutteredObjects("val", size=args.size, length=1).classes)
    torch.save(checkpoint(main_run.model, image_size=args.size, class_names=names, method=args.method,
                          recipe=not args.no_recipe), weights)
    print()
    print(table)
    if others:
        print("\nOne seed: differences of a few points are noise here. benchmarks/payoff.py measures the same "
              "regime over paired seeds with confidence intervals (README, 'Does it help?').")
    print("\npictures: " + ", ".join(str(p) for p in paths))
    print(f"runs (CSV logs, monitor pictures): {os.path.join(args.out, 'runs')}")
    print(f"model ({args.method}): {weights}; check it with `salaug diagnose --checkpoint {weights}`")
    return 0
