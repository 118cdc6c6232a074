"""Does saliency-guided augmentation help? Accuracy, localisation and label fidelity per method.

Trains the demo CNN (``salaug.demo.DemoNet``) from scratch with each augmentation, over several
seeds, on the embedded ClutteredObjects data (and, with ``--dataset digits``, on scikit-learn's
8x8 digits drawn onto the same clutter: ``pip install -e ".[digits]"``), and reports:

* test accuracy, mean +- std over seeds;
* pointing game and CAM box IoU of GradCAM on the test set (does the model look at the object?);
* label fidelity of the method's mixed labels against the true visible fraction of each object
  (1 = the soft label matches what is visible; see ``salaug.metrics.label_fidelity``);
* training time relative to no augmentation.

Writes ``benchmarks/results/quality_<dataset>.md`` and ``.png``. Usage::

    python benchmarks/quality.py                      # all methods, 3 seeds, ~15-25 min on 2 cores
    python benchmarks/quality.py --methods none,saliencymix --seeds 1 --epochs 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from salaug.datasets import ClutteredObjects
from salaug.demo import DEMO_ARMS, run

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["none", "cutmix", "saliencymix", "snapmix", "salientcrop", "keepcutout", "guidedmixup", "salientpaste",
         "attentivecutmix"]
_SPLITS = {"train": (0, 1200), "val": (1200, 1450), "test": (1450, 1797)}


class ClutteredDigits(Dataset):
    """scikit-learn's 8x8 digits (loaded from the installed wheel, no download), upscaled and drawn
    in a contrasting colour at a random place onto ClutteredObjects images, whose own shape then
    acts as a distractor. Splits use disjoint digit images. Items: ``(image, label, box)``.
    """

    def __init__(self, split: str, size: int, length: int, seed: int) -> None:
        from sklearn.datasets import load_digits

        lo, hi = _SPLITS[split]
        digits = load_digits()
        self.images = torch.as_tensor(digits.images[lo:hi], dtype=torch.float32) / 16.0
        self.labels = torch.as_tensor(digits.target[lo:hi], dtype=torch.long)
        self.background = ClutteredObjects(split=split, size=size, length=length, seed=seed + 1, cache=True)
        self.size, self.length, self.seed, self.split = size, length, seed, split

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        split_code = list(_SPLITS).index(self.split)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + split_code) * 10_000_019 + index)
        k = int(torch.randint(len(self.labels), (1,), generator=g))
        side = int(self.size * (0.35 + 0.2 * float(torch.rand((), generator=g))))
        glyph = F.interpolate(self.images[k][None, None], size=(side, side), mode="bilinear", align_corners=False)[0]
        x0, y0 = (int(v) for v in torch.randint(0, self.size - side + 1, (2,), generator=g))
        image = self.background[index][0].clone()
        patch = image[:, y0 : y0 + side, x0 : x0 + side]
        colour = 1.0 - patch.mean((1, 2), keepdim=True).round()  # dark digit on light ground and vice versa
        image[:, y0 : y0 + side, x0 : x0 + side] = torch.lerp(patch, colour.expand_as(patch), glyph.clamp(0, 1))
        box = torch.tensor([x0, y0, x0 + side, y0 + side], dtype=torch.float32)
        return image, int(self.labels[k]), box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--train-size", type=int, default=1500)
    parser.add_argument("--dataset", choices=["objects", "digits"], default="objects")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default=None, help="output file stem suffix (default: the dataset)")
    args = parser.parse_args()
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(DEMO_ARMS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {', '.join(DEMO_ARMS)}")
    make = (lambda split, size, n, seed: ClutteredDigits(split, size, n, seed)) if args.dataset == "digits" else None
    rows: dict[str, list[Any]] = {m: [] for m in methods}
    for seed in range(args.seeds):
        for method in methods:
            r = run(method, epochs=args.epochs, size=args.size, train_size=args.train_size, val_size=250,
                    test_size=1000 if args.dataset == "objects" else 347, seed=seed, device=args.device,
                    out=os.path.join("/tmp", "salaug_quality"), progress=False, make_dataset=make,
                    fidelity=args.dataset == "objects")
            rows[method].append(r)
            print(f"seed {seed} {method:16s} acc {r.test_acc:.3f} pg {r.pointing_game:.3f} "
                  f"iou {r.box_iou:.3f} fid {r.label_fidelity} {r.seconds:.0f}s", flush=True)
    write(rows, args)


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write(rows: dict[str, list[Any]], args: argparse.Namespace) -> None:
    base = statistics.mean(r.seconds for r in rows["none"]) if "none" in rows else None
    lines = [f"Dataset: {args.dataset}, {args.size}x{args.size}, {args.train_size} training images, "
             f"{args.epochs} epochs, {args.seeds} seeds, DemoNet on {args.device}; augmentation p=0.5 per "
             "sample, no augmentation in the last epoch.", "",
             "| method | test accuracy | pointing game | CAM box IoU | label fidelity | time / none |",
             "|---|---|---|---|---|---|"]
    for method, rs in rows.items():
        fid = [r.label_fidelity for r in rs if r.label_fidelity is not None]
        t = statistics.mean(r.seconds for r in rs)
        cost = f"{t / base:.2f}x" if base else f"{t:.0f} s"
        lines.append(f"| {method} | {_ms([r.test_acc for r in rs])} | {_ms([r.pointing_game for r in rs])} | "
                     f"{_ms([r.box_iou for r in rs])} | {_ms(fid) if fid else 'n/a'} | {cost} |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"quality_{getattr(args, 'name', None) or args.dataset}")
    with open(stem + ".md", "w") as f:
        methods = ",".join(rows)
        f.write(f"Command: `python benchmarks/quality.py --dataset {args.dataset} --methods {methods} "
                f"--seeds {args.seeds} --epochs {args.epochs} --size {args.size} --train-size {args.train_size}`"
                f"\n\n{table}\n")
    with open(stem + ".json", "w") as f:
        json.dump({m: [{k: v for k, v in vars(r).items() if k not in ("model", "callback")} for r in rs]
                   for m, rs in rows.items()}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(rows)
    acc = [statistics.mean(r.test_acc for r in rows[m]) for m in names]
    err = [statistics.stdev([r.test_acc for r in rows[m]]) if len(rows[m]) > 1 else 0.0 for m in names]
    pg = [statistics.mean(r.pointing_game for r in rows[m]) for m in names]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    xs = torch.arange(len(names)).float()
    ax.bar(xs - 0.2, acc, 0.4, yerr=err, label="test accuracy", capsize=3)
    ax.bar(xs + 0.2, pg, 0.4, label="pointing game")
    ax.set_xticks(xs.tolist(), names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title(f"{args.dataset}: {args.seeds} seeds, {args.epochs} epochs")
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
