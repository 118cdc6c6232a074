"""Is ``salaug.diagnose``'s verdict right on data it was not tuned on? The fault matrix.

Trains small CNNs (``salaug.models.DemoNet``, width 8, 32-pixel images) with known faults on
several procedural datasets and seeds, diagnoses each on its test images, and checks the verdict's
kind (:attr:`salaug.diagnosis.Diagnosis.kind`) against the fault:

==================  ================================================================  ==============
fault               how the model is made                                             right verdict
==================  ================================================================  ==============
healthy             trained normally; diagnosed on clean images                       ``healthy``
mark (strong)       a 4x4 mark in the class's colour in the corner farthest from the  ``background``
                    object, on every train and test image
mark (weak)         the same 3x3 and blended 75 % into the image                      ``background``
mark (partial)      the weak mark, coding the true class on 80 % of the training      ``background``
                    images and a random class on the others: the model reads it
                    partly (removing it from the test images costs some accuracy)
random backbone     backbone frozen at its random initialisation, linear head fitted  ``backbone``
background colour   everything outside the object blended 40 % towards the class's    ``background``
                    colour, on every train and test image
==================  ================================================================  ==============

Datasets: ``objects`` (``salaug.datasets.ClutteredObjects``, 6 classes), ``digits`` (scikit-learn's
8x8 digits on clutter, ``benchmarks/quality.py``'s ``ClutteredDigits``, 10 classes, boxes only),
``textures`` (``salaug.datasets.TexturedBlobs``, 6 classes), ``silhouettes`` (grey shapes on a
black background with dim clutter, ``salaug.datasets.silhouettes.Silhouettes``, 6 classes: the
dark-background case). The thresholds are the library's (``salaug.diagnosis.report``), set once
and never per dataset. The ``fault took`` column is an oracle for the shortcut faults: accuracy
with the true class code minus accuracy with another class's code (mark or tint); for the partial
mark, accuracy with the mark minus accuracy with the mark removed. A shortcut fault that did not
take (``fault took`` below :data:`TOOK`, :data:`PARTIAL_TOOK` for the partial mark) leaves a model
that reads the object, so its right verdict is ``healthy``; the table marks such cells and also
counts the verdicts against the faults as built.

Usage::

    python benchmarks/diagnosis_matrix.py --workers 2 --out benchmarks/results   # ~30 min on 2 cores
    python benchmarks/diagnosis_matrix.py --datasets objects --seeds 1 --faults healthy,mark_strong   # a look
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from multiprocessing import get_context
from typing import Any

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 32
TRAIN, TEST = 1200, 240
EPOCHS, WIDTH, LR = 8, 8, 1e-2
FAULTS = {"healthy": "healthy", "mark_strong": "background", "mark_weak": "background",
          "mark_partial": "background", "random_backbone": "backbone", "background_colour": "background"}
DATASETS = ("objects", "digits", "textures", "silhouettes")
#: A shortcut fault "took" when the true class code beats another class's code by this much accuracy.
TOOK = 0.2
#: The partly relied-on mark took when removing it costs at least this much accuracy.
PARTIAL_TOOK = 0.05
#: Share of the training images whose partial mark codes their true class (the others: a random class).
PARTIAL_TRUE = 0.8


# ------------------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=4)
def load(dataset: str, seed: int) -> dict[str, torch.Tensor]:
    """Train and test tensors of one dataset: image, label, box, mask (``None`` for digits)."""
    out: dict[str, Any] = {}
    for split, n in (("train", TRAIN), ("test", TEST)):
        if dataset == "objects":
            from salaug.datasets import ClutteredObjects

            b = ClutteredObjects(split, size=SIZE, length=n, num_classes=6, seed=seed).render(range(n))
        elif dataset == "textures":
            from salaug.datasets import TexturedBlobs

            b = TexturedBlobs(split, size=SIZE, length=n, num_classes=6, seed=seed).render(range(n))
        elif dataset == "silhouettes":
            from salaug.datasets.silhouettes import Silhouettes

            b = Silhouettes(split, size=SIZE, length=n, num_classes=6, seed=seed, channels=3).render(range(n))
        elif dataset == "digits":
            sys.path.insert(0, HERE)
            from quality import ClutteredDigits

            ds = ClutteredDigits(split, SIZE, n, seed)
            items = [ds[i] for i in range(n)]
            b = {"image": torch.stack([t[0] for t in items]), "label": torch.tensor([t[1] for t in items]),
                 "box": torch.stack([t[2] for t in items]), "mask": None}
        else:
            raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
        out.update({f"{split}_{k}": v for k, v in b.items()})
    return out


def palette(k: int) -> torch.Tensor:
    """``(k, 3)`` saturated colours, evenly spaced in hue."""
    h = torch.arange(k, dtype=torch.float32) / k
    rgb = (torch.stack([h, h + 2 / 3, h + 1 / 3], 1) * 6 % 6 - 3).abs() - 1
    return rgb.clamp(0, 1)


def object_region(boxes: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    from salaug.boxes import box_mask

    return masks if masks is not None else box_mask(boxes.round().long(), (SIZE, SIZE))


def add_mark(x: torch.Tensor, codes: torch.Tensor, boxes: torch.Tensor, k: int, strong: bool) -> torch.Tensor:
    """A class-coded square in the corner farthest from the object's box centre."""
    side, alpha = (4, 1.0) if strong else (3, 0.75)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x0 = torch.where(cx > SIZE / 2, 1, SIZE - side - 1)
    y0 = torch.where(cy > SIZE / 2, 1, SIZE - side - 1)
    ar = torch.arange(SIZE)
    in_x = (ar >= x0[:, None]) & (ar < x0[:, None] + side)
    in_y = (ar >= y0[:, None]) & (ar < y0[:, None] + side)
    patch = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)
    colour = palette(k)[codes].view(-1, 3, 1, 1)
    return torch.where(patch, (1 - alpha) * x + alpha * colour, x)


def tint(x: torch.Tensor, codes: torch.Tensor, region: torch.Tensor, k: int) -> torch.Tensor:
    return torch.where(region, x, 0.6 * x + 0.4 * palette(k)[codes].view(-1, 3, 1, 1))


def partial_codes(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The partial mark's training codes: the true class on :data:`PARTIAL_TRUE` of the images, else a random one."""
    g = torch.Generator().manual_seed(1000 + seed)
    keep = torch.rand(len(labels), generator=g) < PARTIAL_TRUE
    return torch.where(keep, labels, torch.randint(k, labels.shape, generator=g))


def faulty_images(fault: str, x: torch.Tensor, codes: torch.Tensor, boxes: torch.Tensor,
                  masks: torch.Tensor | None, k: int) -> torch.Tensor:
    if fault.startswith("mark"):
        return add_mark(x, codes, boxes, k, fault == "mark_strong")
    if fault == "background_colour":
        return tint(x, codes, object_region(boxes, masks), k)
    return x


# ------------------------------------------------------------------------------------------ one cell
def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: list) -> torch.nn.Module:
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=5e-4)
    steps = EPOCHS * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(y)).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def cell(job: tuple[str, int, str]) -> dict[str, Any]:
    """Train one faulty model and diagnose it."""
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader, TensorDataset

    from salaug.diagnosis import diagnose
    from salaug.models import DemoNet

    dataset, seed, fault = job
    t0 = time.time()
    d = load(dataset, seed)
    k = int(d["train_label"].max()) + 1
    codes = partial_codes(d["train_label"], k, seed) if fault == "mark_partial" else d["train_label"]
    x = faulty_images(fault, d["train_image"], codes, d["train_box"], d["train_mask"], k)
    tx = faulty_images(fault, d["test_image"], d["test_label"], d["test_box"], d["test_mask"], k)
    torch.manual_seed(seed)
    model = DemoNet(num_classes=k, width=WIDTH)
    if fault == "random_backbone":
        model.features.requires_grad_(False)
        params = list(model.head.parameters())
    else:
        params = list(model.parameters())
    train(model, x, d["train_label"], params)
    took = None
    if fault in ("mark_strong", "mark_weak", "background_colour"):
        other = (d["test_label"] + 1 + torch.randint(k - 1, (len(tx),))) % k  # another class's code
        wrong = faulty_images(fault, d["test_image"], other, d["test_box"], d["test_mask"], k)
        with torch.no_grad():
            acc_true = (model(tx).argmax(1) == d["test_label"]).float().mean()
            acc_wrong = (model(wrong).argmax(1) == d["test_label"]).float().mean()
        took = float(acc_true - acc_wrong)
    if fault == "mark_partial":  # what removing the mark costs
        with torch.no_grad():
            acc_true = (model(tx).argmax(1) == d["test_label"]).float().mean()
            acc_none = (model(d["test_image"]).argmax(1) == d["test_label"]).float().mean()
        took = float(acc_true - acc_none)
    tensors = [tx, d["test_label"], d["test_box"]] + ([d["test_mask"]] if d["test_mask"] is not None else [])
    loader = DataLoader(TensorDataset(*tensors), batch_size=120)
    diag = diagnose(model, loader, "features", box_key=2, mask_key=3 if len(tensors) == 4 else None,
                    examples_per_class=0, seed=seed)
    expected = FAULTS[fault] if took is None or took >= (PARTIAL_TOOK if fault == "mark_partial" else TOOK) \
        else "healthy"
    return {"dataset": dataset, "seed": seed, "fault": fault, "expected": expected, "kind": diag.kind,
            "right": diag.kind == expected, "right_as_built": diag.kind == FAULTS[fault], "accuracy": diag.accuracy,
            "backbone_margin": diag.backbone_margin,
            "head_margin": diag.head_margin, "bg_gap": diag.bg_gap,
            "background_only": diag.reliance["background_only_t"] if diag.reliance else None,
            "background_only_b": diag.reliance["background_only_b"] if diag.reliance else None,
            "bg_gap_b": diag.fill_gap("b"), "reliance_state": diag.reliance_state,
            "chance_accuracy": diag.chance_accuracy, "cell": diag.cell, "box_side": diag.box_side, "fault_took": took,
            "verdict": diag.verdict[0], "seconds": time.time() - t0}


# ------------------------------------------------------------------------------------------ report
def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def f(v: float | None, sign: bool = False) -> str:
        return "n/a" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")

    datasets = [d for d in args.datasets if any(r["dataset"] == d for r in rows)]
    faults = [fl for fl in args.faults if any(r["fault"] == fl for r in rows)]
    right = sum(r["right"] for r in rows)
    built = sum(r["right_as_built"] for r in rows)
    lines = [(f"DemoNet width {WIDTH}, {SIZE}x{SIZE} images, {TRAIN} training and {TEST} test images, {EPOCHS} "
              f"epochs; seeds {', '.join(map(str, args.seeds))}. "
              f"Right verdicts per cell (of {len(args.seeds)} seeds):"),
             "", "| fault (right verdict) | " + " | ".join(datasets) + " |", "|" + "---|" * (len(datasets) + 1)]
    for fl in faults:
        cells = []
        for ds in datasets:
            rs = [r for r in rows if r["dataset"] == ds and r["fault"] == fl]
            kinds = ", ".join(sorted({r["kind"] for r in rs if not r["right"]}))
            untaken = sum(r["expected"] != FAULTS[fl] for r in rs)
            note = f"; {untaken} did not take" if untaken else ""
            cells.append(f"{sum(r['right'] for r in rs)}/{len(rs)}" + (f" (wrong: {kinds})" if kinds else "") + note)
        lines.append(f"| {fl} ({FAULTS[fl]}) | " + " | ".join(cells) + " |")
    lines += ["", (f"**Right verdicts: {right}/{len(rows)} = {right / max(len(rows), 1):.0%}** (against the faults "
                   f"as built, counting shortcuts that did not take as faults: {built}/{len(rows)} = "
                   f"{built / max(len(rows), 1):.0%})"), "",
              ("| dataset | seed | fault | accuracy | backbone margin | head margin | BG-gap T / B | background only "
               "T / B (chance) | reliance test | fault took | right verdict | verdict | right |"), "|" + "---|" * 13]
    for r in sorted(rows, key=lambda r: (datasets.index(r["dataset"]), faults.index(r["fault"]), r["seed"])):
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['fault']} | {f(r['accuracy'])} | "
                     f"{f(r['backbone_margin'], True)} | {f(r['head_margin'], True)} | {f(r['bg_gap'], True)} / "
                     f"{f(r['bg_gap_b'], True)} | {f(r['background_only'])} / {f(r['background_only_b'])} "
                     f"({r['chance_accuracy']:.2f}) | {r['reliance_state']} | {f(r['fault_took'], True)} | "
                     f"{r['expected']} | {r['kind']} | {'yes' if r['right'] else '**no**'} |")
    secs = [r["seconds"] for r in rows]
    lines += ["", f"{len(rows)} cells, {statistics.mean(secs):.0f} s each on average ({args.workers} workers)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {DATASETS}")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {tuple(FAULTS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for diagnosis_matrix.md / .json (default: print only)")
    parser.add_argument("--from-json", default=None,
                        help="rewrite the report of the rows in this JSON file (no training)")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.faults = [fl.strip() for fl in args.faults.split(",") if fl.strip()]
    for name, got, allowed in (("--datasets", args.datasets, DATASETS), ("--faults", args.faults, tuple(FAULTS))):
        bad = [g for g in got if g not in allowed]
        if bad or not got:
            parser.error(f"argument {name}: {bad or got} not in {allowed}")
    if args.seeds < 1 or args.workers < 1:
        parser.error("--seeds and --workers must be >= 1")
    args.seeds = list(range(args.seeds))
    jobs = [(ds, s, fl) for ds in args.datasets for s in args.seeds for fl in args.faults]
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    if args.from_json:
        with open(args.from_json) as fh:
            rows = [r for r in json.load(fh) if (r["dataset"], r["seed"], r["fault"]) in set(jobs)]
        jobs = []
    with get_context("spawn").Pool(args.workers) as pool:
        for r in pool.imap_unordered(cell, jobs):
            rows.append(r)
            print(f"[{time.time() - t0:4.0f}s] {r['dataset']:8s} seed {r['seed']} {r['fault']:17s} acc "
                  f"{r['accuracy']:.2f} -> {r['kind']:10s} {'ok' if r['right'] else 'WRONG'}", flush=True)
    text = report(rows, args)
    print("\n" + text + f"\n\nwall time {time.time() - t0:.0f} s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "diagnosis_matrix.md"), "w") as fh:
            fh.write("# salaug.diagnose fault matrix\n\n" + text + "\n")
        with open(os.path.join(args.out, "diagnosis_matrix.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
