"""``salaug demo``: base only against base + a saliency method, on the embedded data, in minutes.

Trains base only (the standard recipe: 4-px padded random crop + horizontal flip) and base +
``--method`` (SnapMix by default, through the Lightning callback) side by side, in parallel
processes where there are cores, at the regime where the project's evidence shows the method
paying (50 images per class, 150 epochs), on two paired seeds, and reports test accuracy
in-distribution and on three shifted test sets with the paired differences. ``--compare`` adds
CutMix and the method's flat-saliency twin; ``--seeds`` sets the number of paired seeds. The
training itself is :func:`salaug.demo.run`; this module parses and checks the arguments and writes
the results. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from typing import Any

from salaug.cli._types import (
    HelpFormatter,
    accelerator,
    fraction,
    int_range,
    output_dir,
    positive_int,
    seed,
)

__all__ = ["build_parser", "checkpoint", "main", "parse_args"]

DEFAULT_METHOD = "snapmix"
#: what ``--compare`` alone adds: plain CutMix and the method's flat-saliency twin
DEFAULT_BASELINES = ("cutmix", "{method}-flat")
#: what the demo writes into ``--out`` (a rerun removes these first; see :func:`clear_outputs`)
OUTPUTS = ("results.md", "results.json", "model.pt", "cam_overlays.png", "augmented.png", "accuracy.png", "runs")


def build_parser() -> argparse.ArgumentParser:
    """The ``salaug demo`` argument parser: every argument typed and range-checked by argparse."""
    from salaug.demo import DEMO_ARMS, EVIDENCE_REGIME

    parser = argparse.ArgumentParser(
        prog="salaug demo", formatter_class=HelpFormatter,
        description="Train small CNNs on the embedded ClutteredObjects data (nothing is downloaded): base only "
                    "(the standard recipe: 4-px padded random crop + horizontal flip) against base + a saliency "
                    "method, and report test accuracy in-distribution and on shifted test sets with the paired "
                    "differences; results, weights and pictures go into --out.")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=DEMO_ARMS, metavar="METHOD",
                        help=f"augmentation on top of the recipe: {', '.join(DEMO_ARMS)} (none: the recipe alone; "
                             "-flat: fed a flat saliency map)")
    parser.add_argument("--compare", nargs="*", default=None, choices=DEMO_ARMS, metavar="METHOD",
                        help="more arms beside base only and --method; the flag alone: cutmix and the method's "
                             "flat-saliency twin; --compare none adds nothing")
    parser.add_argument("--seeds", type=positive_int, default=2,
                        help="paired seeds per arm (each seed: the same data, initial weights and batch order "
                             "in every arm)")
    parser.add_argument("--processes", type=positive_int, default=None,
                        help="parallel training processes (default: one per CPU core, up to one per run)")
    parser.add_argument("--no-recipe", action="store_true",
                        help="no base augmentation in any arm (the old comparison: each method alone)")
    parser.add_argument("--epochs", type=positive_int, default=EVIDENCE_REGIME["epochs"],
                        help="training epochs of each arm")
    parser.add_argument("--train-size", type=positive_int, default=EVIDENCE_REGIME["train_size"],
                        help="training images; few per class (50) is where mixing pays")
    parser.add_argument("--val-size", type=positive_int, default=200,
                        help="validation images: the curve in results.json and the runs' CSV logs (every 5th "
                             "epoch at 150 epochs) and the monitor's pictures")
    parser.add_argument("--test-size", type=positive_int, default=1000, help="test images per test split")
    parser.add_argument("--size", type=int_range(16, 512, "ClutteredObjects draws 16 to 512 px images here"),
                        default=EVIDENCE_REGIME["size"], help="image side in pixels")
    parser.add_argument("--width", type=positive_int, default=EVIDENCE_REGIME["width"],
                        help="DemoNet's base channel width")
    parser.add_argument("--batch-size", type=positive_int, default=EVIDENCE_REGIME["batch_size"],
                        help="images per training batch")
    parser.add_argument("--cam-scale", type=fraction, default=1.0,
                        help="resolution factor of the augmentation's CAM forward, in (0, 1]")
    parser.add_argument("--out", type=output_dir, default="salaug_demo",
                        help="directory for the results, the weights and the pictures (created if missing)")
    parser.add_argument("--device", type=accelerator, default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--seed", type=seed, default=0,
                        help="first seed of the training data, the weights and the augmentation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the demo's arguments; a bad one exits with argparse's code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if round(args.size * args.cam_scale) < 8:  # DemoNet halves the CAM input three times
        parser.error(f"--cam-scale {args.cam_scale} on {args.size} px images runs the CAM on "
                     f"{round(args.size * args.cam_scale)} px, below the 8 px the network needs; raise it")
    if args.seed + args.seeds - 1 > 2**32 - 1:
        parser.error(f"--seed {args.seed} with --seeds {args.seeds} runs past the largest seed 4294967295; "
                     "lower --seed")
    return args


def arms_of(method: str, compare: list[str] | None) -> list[str]:
    """The arms to train: base only first, the compared arms, ``method`` last (each once).

    Example:
        >>> arms_of("snapmix", None), arms_of("snapmix", []), arms_of("snapmix", ["none"])
        (['none', 'snapmix'], ['none', 'cutmix', 'snapmix-flat', 'snapmix'], ['none', 'snapmix'])
    """
    baselines = [b.format(method=method) for b in DEFAULT_BASELINES] if compare == [] else list(compare or ())
    from salaug.demo import DEMO_ARMS

    baselines = [b for b in baselines if b in DEMO_ARMS]  # "none-flat" and the like do not exist
    return list(dict.fromkeys(["none", *baselines, method]))


def clear_outputs(out: str) -> None:
    """Remove what an earlier demo wrote into ``out``, so that ``out`` holds only this run's files:
    the files of :data:`OUTPUTS` and the ``runs/<arm>[-seed<k>]`` folders (``runs/`` itself where
    that empties it); anything else there is left alone."""
    import re

    from salaug.demo import DEMO_ARMS

    ours = re.compile(f"({'|'.join(map(re.escape, DEMO_ARMS))})(-seed[0-9]+)?")
    runs = os.path.join(out, "runs")
    if os.path.isdir(runs) and not os.path.islink(runs):
        for entry in os.scandir(runs):
            if entry.is_dir(follow_symlinks=False) and ours.fullmatch(entry.name):
                shutil.rmtree(entry.path)
        if not os.listdir(runs):
            os.rmdir(runs)
    for name in OUTPUTS:
        path = os.path.join(out, name)
        if name != "runs" and os.path.isfile(path):
            os.remove(path)


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


def _progress(r: Any, t0: float) -> None:
    """A finished run, on stderr (the progress; the results go to stdout)."""
    accs = " ".join(f"{s} {a:.3f}" for s, a in r.accuracy.items())
    print(f"seed {r.seed} {r.method:16s} {accs}  ({r.seconds:.0f} s training, {time.perf_counter() - t0:.0f} s "
          "so far)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``salaug demo [--method M] [--compare [M ...]] [--seeds N] [--epochs N] [--out DIR] ...``.

    Trains every arm on every seed, prints the report and writes into ``--out`` (after removing
    what an earlier demo wrote there): ``results.md`` (the report, with what every column means
    and the caveats), ``results.json``, ``model.pt`` (the ``--method`` model of the first seed,
    with its metadata), ``cam_overlays.png``, ``augmented.png``, ``accuracy.png`` and, per run,
    ``runs/<arm>[-seed<k>]/`` (Lightning's CSV log and the monitor's pictures).

    Returns:
        0 on success; a bad argument exits with argparse's one-line error and code 2, before any work.
    """
    args = parse_args(argv)
    import torch

    import salaug.demo as demo
    from salaug.datasets import ClutteredObjects

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise
    arms = arms_of(args.method, args.compare)
    seeds = list(range(args.seed, args.seed + args.seeds))
    processes, threads = demo.plan_processes(len(arms) * len(seeds), args.device, processes=args.processes)
    regime = {"epochs": args.epochs, "size": args.size, "train_size": args.train_size, "width": args.width,
              "batch_size": args.batch_size, "recipe": not args.no_recipe, "cam_scale": args.cam_scale}
    os.makedirs(args.out, exist_ok=True)
    clear_outputs(args.out)
    print(f"salaug demo: {', '.join(arms)} x {len(seeds)} seed(s), {args.epochs} epochs on {args.train_size} "
          f"images, {processes} process(es) x {threads} thread(s) on {args.device}; progress on stderr, the "
          "results on stdout at the end", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    results = demo.run_arms(arms, seeds, processes=processes, threads=threads, report=lambda r: _progress(r, t0),
                            val_size=args.val_size, test_size=args.test_size, device=args.device, out=args.out,
                            progress=not args.no_progress, status=True, **regime)
    print(f"writing the report and the pictures ({time.perf_counter() - t0:.0f} s so far)", file=sys.stderr,
          flush=True)
    wall = time.perf_counter() - t0
    main_run = next(r for r in results if r.method == args.method)
    assert main_run.model is not None  # every run returns its network
    report = demo.format_report(results, args.method, regime)
    paths = demo.write_pictures(main_run.model, args.method, results, args.out, args.size, args.seed)
    setup = (f"ClutteredObjects {args.size} px, {args.train_size} training images, DemoNet width {args.width}, "
             f"{args.epochs} epochs, batch {args.batch_size}; {len(seeds)} seed(s) from {args.seed}; "
             f"{args.test_size} test images per split; wall time {wall / 60:.1f} min "
             f"({processes} process(es) on {args.device}).")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"# salaug demo\n\n{setup}\n\n{report}\n\n{demo.CAVEATS}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"setup": {**regime, "arms": arms, "seeds": seeds, "test_size": args.test_size,
                             "wall_seconds": wall},
                   "runs": [{k: v for k, v in vars(r).items() if k != "model"} for r in results]}, f, indent=1)
    weights = os.path.join(args.out, "model.pt")
    names = list(ClutteredObjects("val", size=args.size, length=1).classes)
    torch.save(checkpoint(main_run.model, image_size=args.size, class_names=names, method=args.method,
                          recipe=not args.no_recipe), weights)
    print(f"\n{setup}\n\n{report}")
    print(f"\nwhat the columns mean, and the caveats: {os.path.join(args.out, 'results.md')}")
    print("pictures: " + ", ".join(str(p) for p in paths))
    print(f"runs (CSV logs, monitor pictures): {os.path.join(args.out, 'runs')}")
    print(f"model ({args.method}): {weights}; check it with `salaug diagnose --checkpoint {weights}`")
    return 0
