"""``salaug diagnose``: what does a trained model attend to?

Checks the demo's network (a ``model.pt`` of ``salaug demo`` with ``--checkpoint``, or one trained
briefly here) on the embedded ClutteredObjects test images with :func:`salaug.diagnose`, prints
the table and the verdict, and writes ``report.md`` / ``report.png`` into ``--out``. Loads no
Lightning. For another architecture, call :func:`salaug.diagnose` from Python.
"""

from __future__ import annotations

import argparse
from typing import Any

from salaug.cli._types import (
    HelpFormatter,
    accelerator,
    demo_image_size,
    nonnegative_int,
    output_dir,
    positive_int,
    seed,
    weights_file,
)

__all__ = ["build_parser", "main"]

TRAIN_SIZE = 64  # image side when the model is trained here (no --checkpoint)


def build_parser() -> argparse.ArgumentParser:
    """The ``salaug diagnose`` argument parser: every argument typed and range-checked by argparse."""
    parser = argparse.ArgumentParser(
        prog="salaug diagnose", formatter_class=HelpFormatter,
        description="Check a classifier: do its backbone's features (EigenCAM) and its head's evidence "
                    "(AblationCAM) sit on the object? Runs on the embedded ClutteredObjects data and writes a "
                    "report (picture + Markdown table) into --out.")
    parser.add_argument("--checkpoint", type=weights_file, default=None,
                        help="DemoNet weights: the model.pt of salaug demo (it records its image size), a "
                             "Lightning checkpoint or a state dict (then give --size); default: train the demo "
                             "model briefly")
    parser.add_argument("--size", type=demo_image_size, default=None,
                        help="image side in pixels, that of the model's training; default: the checkpoint's "
                             f"recorded size, or {TRAIN_SIZE} when the model is trained here")
    parser.add_argument("--epochs", type=nonnegative_int, default=4, help="training epochs without --checkpoint")
    parser.add_argument("--train-size", type=positive_int, default=2000, help="training images without --checkpoint")
    parser.add_argument("--num-images", type=positive_int, default=300, help="test images diagnosed")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per CAM pass")
    parser.add_argument("--examples", type=nonnegative_int, default=3,
                        help="example images per class in the picture (0: only report.md)")
    parser.add_argument("--device", type=accelerator, default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the data (and of the training here)")
    parser.add_argument("--out", type=output_dir, default="salaug_diagnosis",
                        help="directory of the report (created if missing)")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch lines while training here")
    return parser


def _device(name: str) -> Any:
    """An accelerator name of :func:`salaug.cli._types.accelerator` (already checked available) as a
    ``torch.device``."""
    import torch

    if name == "gpu":
        return torch.device("cuda")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    """``salaug diagnose [--checkpoint model.pt] [--size S] [--out DIR] ...``.

    Prints the table and the verdict, and writes ``report.md`` (and ``report.png`` unless
    ``--examples 0``) into ``--out``; nothing else is written.

    Returns:
        0 on success. A bad argument, a checkpoint that does not fit the demo's network (the first
        missing / unexpected key is named), a ``--size`` that differs from the checkpoint's or is
        missing where the checkpoint does not record it: argparse's one-line error and code 2,
        before any work.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch
    from torch.utils.data import DataLoader

    from salaug.datasets import CLASS_NAMES, ClutteredObjects
    from salaug.diagnosis import (
        Budget,
        check_image_size,
        diagnose,
        load_demo_model,
        train_demo_model,
    )

    device = _device(args.device)
    torch.manual_seed(args.seed)
    if args.checkpoint is not None:
        where = f"argument --checkpoint: {args.checkpoint.path!r}"
        try:
            loaded = load_demo_model(args.checkpoint.checkpoint)
        except ValueError as exc:
            parser.error(f"{where}: {exc}")
        try:
            size = check_image_size(loaded, args.size)
        except ValueError as exc:
            parser.error(f"{where}: {exc}")
        num_classes = loaded.num_classes
        if not 2 <= num_classes <= len(CLASS_NAMES):
            parser.error(f"{where}: the model has {num_classes} outputs, but the embedded data has 2 to "
                         f"{len(CLASS_NAMES)} classes")
        model = loaded.model.to(device)
        layer = str(loaded.metadata.get("target_layer", "features"))  # what the demo recorded
    else:
        size = TRAIN_SIZE if args.size is None else args.size
        num_classes = 10
        train = ClutteredObjects("train", size=size, length=args.train_size, seed=args.seed, cache=True)
        model = train_demo_model(DataLoader(train, batch_size=args.batch_size, shuffle=True),
                                 num_classes=num_classes, epochs=args.epochs, device=device,
                                 progress=not args.no_progress)
        layer = "features"
    test = ClutteredObjects("test", size=size, length=args.num_images, num_classes=num_classes, seed=args.seed,
                            cache=True, return_mask=True)
    try:
        result = diagnose(model, DataLoader(test, batch_size=args.batch_size), layer, box_key=2, mask_key=3,
                          budget=Budget(examples_per_class=args.examples), seed=args.seed)
    except ValueError as exc:  # e.g. NaN / inf logits of the checkpoint's model
        parser.error(str(exc))
    print(result)
    paths = result.save(args.out, examples=args.examples)
    print("\nreport: " + ", ".join(str(p) for p in paths))
    return 0
