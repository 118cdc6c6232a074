"""The command line: ``python -m benchmarks.payoff`` (see the package docstring)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Any

from benchmarks.payoff.arms import (
    DEFAULT_ARMS,
    DIGITS_ARMS,
    QUICK_ARMS,
    SALIENCY_FREE,
    build_transform,
    parse_arm,
    sweep_arms,
)
from benchmarks.payoff.config import PRESETS, VIT_RECIPE, Config
from benchmarks.payoff.data import splits_of
from benchmarks.payoff.reporting import (
    format_tables,
    header,
    load_reusable,
    regime_table,
    replot,
    write_results,
)
from benchmarks.payoff.statistics import gate, summarise
from benchmarks.payoff.training import pretrain, run_jobs

COMMAND = "python -m benchmarks.payoff"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Does saliency-guided augmentation pay on top of "
                                     "the standard recipe? Paired seeds, matched controls.")
    parser.add_argument("--quick", action="store_true", help="3 seeds, fewer arms, 500 test images (~10 min)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--dataset", choices=["objects", "textures", "digits", "finegrained", "folder"],
                        default="objects",
                        help="objects: ClutteredObjects; textures: TexturedBlobs; digits: sklearn digits on clutter; "
                             "finegrained: the class is a small mark on the object; "
                             "folder: an ImageFolder tree at --root (train/, test/ or val/)")
    parser.add_argument("--root", default=None, help="the ImageFolder tree of --dataset folder")
    parser.add_argument("--base", choices=["none", "cropflip", "trivialaugment"], default=None,
                        help="augmentation every arm gets before its mix (default cropflip: padded random crop + "
                             "flip; trivialaugment: TrivialAugmentWide then cropflip)")
    parser.add_argument("--arch", choices=["demonet", "resnet8", "resnet18", "vit"], default=None)
    parser.add_argument("--arms", default=None, help="comma-separated arms (options after ':', see the docstring)")
    parser.add_argument("--sweep", default=None, metavar="ARM", help="run the warm-up / EMA / p / alpha sweep")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-per-class", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--p", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3; 1e-3 for --arch vit)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="AdamW weight decay (default 5e-4; 0.05 for --arch vit)")
    parser.add_argument("--finetune", choices=["none", "whole", "frozen"], default=None,
                        help="start from a backbone pretrained once on 7 source shapes (cached) with a new head, and "
                             "fine-tune the whole network or the head alone (frozen); none: from scratch")
    parser.add_argument("--source-per-class", type=int, default=None,
                        help="fine-tuning: source images per class (7 classes; default 1000)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="fine-tuning: pretraining epochs (15)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the pretrained backbone is cached (default $SALAUG_BENCHMARK_CACHE or "
                             "~/.cache/salaug/benchmarks)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one thread each by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--out", default=None, help="write payoff_<name>.md / .json / .png here")
    parser.add_argument("--reuse", action="append", default=[], metavar="JSON",
                        help="take runs (same arm, seed and config) from an earlier payoff_*.json instead of rerunning")
    parser.add_argument("--name", default=None, help="output stem suffix (default: dataset, quick, sweep)")
    parser.add_argument("--regimes", nargs="+", default=None, metavar="JSON",
                        help="print one summary line per results file (the regime table) and exit")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="redraw the PNG of an earlier payoff_*.json next to it (no training)")
    return parser


def make_config(args: argparse.Namespace, preset: str) -> Config:
    """The preset, the dataset's constraints, then the command line's overrides."""
    cfg = Config(**PRESETS[preset], dataset=args.dataset, device=args.device, root=args.root)
    if args.dataset == "digits":  # sklearn's digits: 10 classes, 347 test glyphs
        cfg.test_size, cfg.num_classes = min(cfg.test_size, 347), 10
    if args.dataset == "finegrained":  # five mark patterns
        cfg.num_classes = min(cfg.num_classes, 5)
    if args.dataset == "folder":
        if not args.root or not os.path.isdir(os.path.join(args.root, "train")):
            raise SystemExit("--dataset folder needs --root PATH holding train/<class>/... and test/ (or val/)")
        cfg.num_classes = len([d for d in os.scandir(os.path.join(args.root, "train")) if d.is_dir()])
    if args.arch == "vit":
        for key, value in VIT_RECIPE.items():
            setattr(cfg, key, value)
    for key in ("seeds", "epochs", "train_per_class", "width", "p", "threads", "base", "arch", "lr", "weight_decay",
                "finetune", "source_per_class", "pretrain_epochs", "cache_dir"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    return cfg


def choose_arms(args: argparse.Namespace, cfg: Config, preset: str) -> list[str]:
    """The arms to run, each checked (its name, options and transform) before any training.

    Raises:
        ValueError: an unknown arm, or an option its transform does not take.
        SystemExit: oracle arms on data without object masks.
    """
    if args.sweep:
        arms = sweep_arms(args.sweep, math.ceil(cfg.train_per_class * cfg.num_classes / cfg.batch_size))
    elif args.arms:
        arms = [a for a in args.arms.split(",") if a]
    else:
        arms = list(QUICK_ARMS if preset == "quick" else DIGITS_ARMS if args.dataset == "digits" else DEFAULT_ARMS)
    parsed = [parse_arm(a) for a in arms]
    for arm in parsed:
        build_transform(arm, cfg)
    if args.dataset in ("digits", "folder") and any(a.saliency == "mask" for a in parsed):
        raise SystemExit(f"the {args.dataset} dataset has no object masks: drop the oracle arms")
    if cfg.base == "trivialaugment" and any(a.saliency == "mask" for a in parsed):
        raise SystemExit("--base trivialaugment cannot move object masks (torchvision's TrivialAugmentWide refuses "
                         "them): drop the oracle arms")
    return arms


def _progress(r: dict[str, Any], splits: list[str], t0: float) -> None:
    accs = " ".join(f"{s} {r[f'acc_{s}']:.3f}" for s in splits)
    mae = r.get("label_mae")
    pg = float("nan") if r["pointing_game"] is None else r["pointing_game"]
    print(f"seed {r['seed']} {r['arm']:28s} train {r['train_acc']:.3f} {accs} pg {pg:.2f} "
          f"mae {'-' if mae is None else f'{mae:.3f}'} {r['seconds']:.0f}s [{time.perf_counter() - t0:.0f}s]",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run a cell (or ``--replot`` / ``--regimes``); print its tables, write them under ``--out``."""
    args = build_parser().parse_args(argv)
    if args.replot:
        return replot(args.replot)
    if args.regimes:
        print(regime_table(args.regimes))
        return 0
    preset = args.preset or ("quick" if args.quick else "full")
    cfg = make_config(args, preset)
    arms = choose_arms(args, cfg, preset)
    splits = splits_of(cfg.dataset)
    jobs = [(cfg, a, s) for s in range(cfg.seeds) for a in arms]
    reused = load_reusable(args.reuse, cfg)
    jobs_left = [j for j in jobs if (j[1], j[2]) not in reused]
    print(f"{len(jobs)} runs: {len(arms)} arms x {cfg.seeds} seeds, {args.workers} worker(s), preset {preset}; "
          f"{cfg}", flush=True)
    t0 = time.perf_counter()
    if cfg.finetune != "none" and jobs_left:  # pretrain (or load) once, before any worker starts
        source = pretrain(cfg)
        print(f"backbone: {source['path']} (held-out source accuracy {source['source_acc']:.3f})", flush=True)
    results: list[dict[str, Any]] = []

    def report(r: dict[str, Any]) -> None:
        results.append(r)
        _progress(r, splits, t0)

    for job in jobs:
        if (job[1], job[2]) in reused:
            report(reused[(job[1], job[2])])
    run_jobs(jobs_left, args.workers, report)
    wall = time.perf_counter() - t0
    # differences to the base only, to each saliency-free mix in the run, and to the swept method
    refs = ("none",) + tuple(a for a in SALIENCY_FREE if a in arms) + ((args.sweep,) if args.sweep else ())
    summary = summarise(results, arms, splits, refs)
    what = f"sweep around {args.sweep}" if args.sweep else f"{len(summary)} arms"
    g = gate(summary)
    head = header(cfg, what, wall, args.workers, len(jobs_left), len(jobs) - len(jobs_left))
    table = format_tables(summary, splits, head + "\n\n" + g, refs)
    print("\n" + table, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        name = args.name or ("sweep" if args.sweep else "quick" if preset == "quick" else cfg.dataset)
        command = f"{COMMAND} " + " ".join(argv if argv is not None else sys.argv[1:])
        record = {"config": dataclasses.asdict(cfg), "arms": arms, "wall_seconds": wall, "gate": g,
                  "summary": summary, "runs": results}
        write_results(os.path.join(args.out, f"payoff_{name}"), command, table, record, cfg, splits, refs)
    return 0
