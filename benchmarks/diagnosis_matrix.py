"""Is ``salaug.diagnose``'s verdict right on data it was not tuned on? The fault matrix.

Trains small CNNs (``salaug.models.DemoNet``, width 8, 32-pixel images, a few epochs) with known
faults on procedural datasets and seeds, diagnoses each on its test images, and checks the
verdict's kind (:attr:`salaug.diagnosis.Diagnosis.kind`) against the fault:

=================  =================================================================  ================
fault              how the model is made                                              right verdict
=================  =================================================================  ================
healthy            trained normally; diagnosed on clean images                        ``healthy``
mark_5             a class-coded mark (a 4x4 square) in the corner farthest from the  by its worth
                   object on every train and test image; in training it codes the
                   true class on 35 % of the images and a random class on the
                   others, so the model reads it partly (meant to be worth ~5 points)
mark_10            the same, true on 50 % of the training images (~10 points)         by its worth
mark_20            the same, true on 70 % (~20 points)                                by its worth
mark_full          the same, true on every training image                             ``background``
random_backbone    backbone frozen at its random initialisation, head fitted          ``backbone``
finetune           pretrained on ClutteredObjects (6 classes), fine-tuned here (new   ``healthy``
                   head, every layer)
finetune_mark      the same, fine-tuned on mark_20's images                           by its worth
=================  =================================================================  ================

A mark's **worth** (``mark worth`` column) is what it adds to the model's accuracy on the marked
test images: accuracy with the true class's mark minus accuracy with the mark removed. Right
verdict by worth: ``background`` from 0.05 (the model reads the mark); below 0.05 the mark barely
moves the model, and either ``healthy`` or ``background`` counts as right. The goal of the issue
that built this matrix: at least 90 % of verdicts right, and never ``healthy`` (nor an
``independent`` reliance test) for a mark worth 0.10 or more.

Datasets (each 32 px, 3 channels): ``objects`` (``salaug.datasets.ClutteredObjects``, 6 classes:
colourful shapes on colourful clutter); ``silhouettes`` (``salaug.datasets.silhouettes.Silhouettes``,
12 classes, light grey shapes on black with dim clutter, plus pixel noise of standard deviation
:data:`NOISE` and fewer training images, so that the objects are not too easy and a mark can be
worth 5 to 20 points); ``dark_on_light`` (the same images inverted: dark shapes on a light background, the case
where fill B used to paint the box in the object's colour).

Thresholds: the library's (``salaug.diagnosis.Thresholds``). The reliance thresholds
(``reliance_share``, ``mixed_same_drop``) were chosen on the **tuning rows** (``objects`` and
``silhouettes``, every fault but the fine-tuned ones) and checked unchanged on the **held-out
rows** (every ``dark_on_light`` row and every fine-tuned row); the report counts the two apart.
``--rejudge`` re-reads the saved diagnoses of a run (``--raw``) under other thresholds without
training again.

Usage::

    nice -n 10 python benchmarks/diagnosis_matrix.py --workers 1 --out benchmarks/results --raw /tmp/matrix.pt
    python benchmarks/diagnosis_matrix.py --datasets silhouettes --seeds 1 --faults healthy,mark_10   # a look
    python benchmarks/diagnosis_matrix.py --rejudge /tmp/matrix.pt --reliance-share 0.2   # other thresholds
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import time
from multiprocessing import get_context
from typing import Any

import torch
import torch.nn.functional as F

SIZE = 32
TRAIN, TEST = 800, 240
EPOCHS, WIDTH, LR = 6, 8, 1e-2
FINETUNE_EPOCHS = 4
#: Pixel noise (standard deviation) on the silhouettes: hard objects, so that a mark can be worth points.
NOISE = 0.05
#: fault -> the verdict it should get ("by worth": from the mark's measured worth).
FAULTS = {"healthy": "healthy", "mark_5": "by worth", "mark_10": "by worth", "mark_20": "by worth",
          "mark_full": "background", "random_backbone": "backbone", "finetune": "healthy",
          "finetune_mark": "by worth"}
#: Share of the training images whose mark codes their true class (the others: a random class).
MARK_TRUE = {"mark_5": 0.35, "mark_10": 0.5, "mark_20": 0.7, "mark_full": 1.0, "finetune_mark": 0.7}
DATASETS = ("objects", "silhouettes", "dark_on_light")
NUM_CLASSES = {"objects": 6, "silhouettes": 12, "dark_on_light": 12}
#: A mark's worth from which the model reads it (the right verdict is background).
READS = 0.05
#: A mark's worth from which a healthy verdict (or an independent reliance test) is never right.
MUST = 0.10
HELD_OUT_DATASETS = ("dark_on_light",)
HELD_OUT_FAULTS = ("finetune", "finetune_mark")


def held_out(dataset: str, fault: str) -> bool:
    """Whether a row checks the thresholds (``True``) or chose them (``False``)."""
    return dataset in HELD_OUT_DATASETS or fault in HELD_OUT_FAULTS


# ------------------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=4)
def load(dataset: str, seed: int) -> dict[str, torch.Tensor]:
    """Train and test tensors of one dataset: image, label, box, mask."""
    out: dict[str, Any] = {}
    for split, n in (("train", TRAIN), ("test", TEST)):
        if dataset == "objects":
            from salaug.datasets import ClutteredObjects

            b = ClutteredObjects(split, size=SIZE, length=n, num_classes=6, seed=seed).render(range(n))
        elif dataset in ("silhouettes", "dark_on_light"):
            from salaug.datasets.silhouettes import Silhouettes

            b = Silhouettes(split, size=SIZE, length=n, num_classes=12, seed=seed, channels=1).render(range(n))
            g = torch.Generator().manual_seed(10 * seed + (split == "test"))
            grey = (b["image"] + NOISE * torch.randn(b["image"].shape, generator=g)).clamp(0, 1)
            grey = 1 - grey if dataset == "dark_on_light" else grey
            b["image"] = grey.expand(n, 3, SIZE, SIZE).contiguous()
        else:
            raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
        out.update({f"{split}_{k}": v for k, v in b.items()})
    return out


def palette(k: int) -> torch.Tensor:
    """``(k, 3)`` saturated colours, evenly spaced in hue."""
    h = torch.arange(k, dtype=torch.float32) / k
    rgb = (torch.stack([h, h + 2 / 3, h + 1 / 3], 1) * 6 % 6 - 3).abs() - 1
    return rgb.clamp(0, 1)


def add_mark(x: torch.Tensor, codes: torch.Tensor, boxes: torch.Tensor, k: int) -> torch.Tensor:
    """A class-coded 4x4 square in the corner farthest from the object's box centre."""
    side, alpha = 4, 1.0
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x0 = torch.where(cx > SIZE / 2, 1, SIZE - side - 1)
    y0 = torch.where(cy > SIZE / 2, 1, SIZE - side - 1)
    ar = torch.arange(SIZE)
    in_x = (ar >= x0[:, None]) & (ar < x0[:, None] + side)
    in_y = (ar >= y0[:, None]) & (ar < y0[:, None] + side)
    patch = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)
    colour = palette(k)[codes].view(-1, 3, 1, 1)
    return torch.where(patch, (1 - alpha) * x + alpha * colour, x)


def mark_codes(fault: str, labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The training marks' codes: the true class on :data:`MARK_TRUE` of the images, else a random one."""
    g = torch.Generator().manual_seed(1000 + seed)
    keep = torch.rand(len(labels), generator=g) < MARK_TRUE[fault]
    return torch.where(keep, labels, torch.randint(k, labels.shape, generator=g))


def faulty_images(fault: str, x: torch.Tensor, codes: torch.Tensor, boxes: torch.Tensor, k: int) -> torch.Tensor:
    return add_mark(x, codes, boxes, k) if fault in MARK_TRUE else x


# ------------------------------------------------------------------------------------------ one cell
def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: list, epochs: int = EPOCHS
          ) -> torch.nn.Module:
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=5e-4)
    steps = epochs * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def pretrained(seed: int, k: int) -> torch.nn.Module:
    """DemoNet trained on ClutteredObjects (6 classes), its head replaced by a fresh one of ``k`` outputs."""
    from salaug.models import DemoNet

    d = load("objects", seed)
    torch.manual_seed(100 + seed)
    model = DemoNet(num_classes=6, width=WIDTH)
    train(model, d["train_image"], d["train_label"], list(model.parameters()))
    head = model.head[2]
    assert isinstance(head, torch.nn.Linear)
    model.head[2] = torch.nn.Linear(head.in_features, k)
    return model


def expected_kind(fault: str, worth: float | None) -> tuple[str, ...]:
    """The verdicts that count as right for a row."""
    if FAULTS[fault] != "by worth":
        return (FAULTS[fault],)
    assert worth is not None
    return ("background",) if worth >= READS else ("healthy", "background")


def cell(job: tuple[str, int, str], examples: int = 0) -> tuple[dict[str, Any], Any]:
    """Train one faulty model and diagnose it: the table row and the diagnosis (for ``--rejudge``;
    with ``examples`` example images per class for its report picture)."""
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader, TensorDataset

    from salaug.diagnosis import Budget, diagnose
    from salaug.models import DemoNet

    dataset, seed, fault = job
    t0 = time.time()
    d = load(dataset, seed)
    k = NUM_CLASSES[dataset]
    codes = mark_codes(fault, d["train_label"], k, seed) if fault in MARK_TRUE else d["train_label"]
    x = faulty_images(fault, d["train_image"], codes, d["train_box"], k)
    tx = faulty_images(fault, d["test_image"], d["test_label"], d["test_box"], k)
    if fault.startswith("finetune"):
        model = pretrained(seed, k)
        torch.manual_seed(seed)
        train(model, x, d["train_label"], list(model.parameters()), FINETUNE_EPOCHS)
    else:
        torch.manual_seed(seed)
        model = DemoNet(num_classes=k, width=WIDTH)
        if fault == "random_backbone":
            model.features.requires_grad_(False)
            params = list(model.head.parameters())
        else:
            params = list(model.parameters())
        train(model, x, d["train_label"], params)
    worth = None
    if fault in MARK_TRUE:  # what the mark adds: accuracy with it minus accuracy with it removed
        with torch.no_grad():
            acc_mark = (model(tx).argmax(1) == d["test_label"]).float().mean()
            acc_none = (model(d["test_image"]).argmax(1) == d["test_label"]).float().mean()
        worth = float(acc_mark - acc_none)
    loader = DataLoader(TensorDataset(tx, d["test_label"], d["test_box"], d["test_mask"]), batch_size=120)
    diag = diagnose(model, loader, "features", box_key=2, mask_key=3, budget=Budget(examples_per_class=examples),
                    seed=seed)
    row = {"dataset": dataset, "seed": seed, "fault": fault, "held_out": held_out(dataset, fault),
           "mark_worth": worth, "seconds": time.time() - t0}
    return judge(row, diag), diag


def judge(row: dict[str, Any], diag: Any) -> dict[str, Any]:
    """The row's verdict and measurements from its diagnosis (under the diagnosis's thresholds)."""
    share = diag.background_share
    right = expected_kind(row["fault"], row["mark_worth"])
    must_not_pass = row["mark_worth"] is not None and row["mark_worth"] >= MUST
    out = {**row, "expected": " or ".join(right), "kind": diag.kind, "right": diag.kind in right,
           "passed_a_mark": must_not_pass and (diag.kind == "healthy" or diag.reliance_state == "independent"),
           "accuracy": diag.accuracy, "chance_accuracy": diag.chance_accuracy,
           "backbone_margin": diag.backbone_margin, "head_margin": diag.head_margin,
           "reliance_state": diag.reliance_state, "share": None if share is None else share["share"],
           "share_low": None if share is None else share["low"], "share_high": None if share is None else share["high"],
           "share_fills": None if share is None else share["fills"],
           "gap_points": None if share is None else share["gap"] * 100,
           "margin_points": None if share is None else share["margin"] * 100,
           "verdict": diag.verdict[0]}
    for f in ("t", "b"):
        out[f"bg_gap_{f}"] = diag.fill_gap(f)
        out[f"background_only_{f}"] = diag.reliance[f"background_only_{f}"]
        out[f"object_only_{f}"] = diag.reliance[f"object_only_{f}"]
        out[f"mixed_same_{f}"] = diag.reliance[f"mixed_same_{f}"]
    out["thresholds"] = diag.thresholds.as_dict()
    return out


# ------------------------------------------------------------------------------------------ report
def rate(rows: list[dict[str, Any]]) -> str:
    n = sum(r["right"] for r in rows)
    return f"{n}/{len(rows)} = {n / max(len(rows), 1):.0%}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def f(v: float | None, sign: bool = False, pct: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{v:.0%}" if pct else (f"{v:+.2f}" if sign else f"{v:.2f}")

    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    faults = [fl for fl in FAULTS if any(r["fault"] == fl for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    t = rows[0]["thresholds"] if rows else {}
    tune, hold = [r for r in rows if not r["held_out"]], [r for r in rows if r["held_out"]]
    passed = [r for r in rows if r["passed_a_mark"]]
    lines = [(f"DemoNet width {WIDTH}, {SIZE}x{SIZE} images, {TRAIN} training and {TEST} test images, {EPOCHS} "
              f"epochs ({FINETUNE_EPOCHS} of fine-tuning after {EPOCHS} of pretraining on objects); seeds "
              f"{', '.join(map(str, seeds))}. Thresholds: reliance share {t.get('reliance_share')}, mixed-same drop "
              f"{t.get('mixed_same_drop')}, background-only margin {t.get('background_only_margin')}, interval "
              f"{t.get('confidence')} over {t.get('resamples')} bootstrap resamples."),
             "", f"**Right verdicts: {rate(rows)}** (tuning rows {rate(tune)}; held-out rows {rate(hold)}). "
                 f"Marks worth >= {MUST:.2f} called healthy or independent: {len(passed)}.",
             "", (f"A mark's worth: test accuracy with the true class's mark minus with the mark removed. Right "
                  f"verdict for a mark: background from a worth of {READS:.2f}; below, healthy or background. "
                  "Tuning rows: objects and silhouettes, every fault but the fine-tuned ones (they chose "
                  "Thresholds.reliance_share and mixed_same_drop, see the last section); held-out rows: every "
                  "dark_on_light row and every fine-tuned row (not in that choice). The share of margin: "
                  "BG-gap / (original accuracy - chance), the BG-gap averaged over the fills whose mixed-same kept "
                  "the original's accuracy (in brackets: its 95 % bootstrap interval over the 240 test images)."),
             "", "Right verdicts per cell (of the seeds); `*` marks held-out cells:",
             "", "| fault (right verdict) | " + " | ".join(datasets) + " |", "|" + "---|" * (len(datasets) + 1)]
    for fl in faults:
        cells = []
        for ds in datasets:
            rs = [r for r in rows if r["dataset"] == ds and r["fault"] == fl]
            if not rs:
                cells.append("")
                continue
            wrong = ", ".join(sorted({r["kind"] for r in rs if not r["right"]}))
            worth = [r["mark_worth"] for r in rs if r["mark_worth"] is not None]
            note = f"; worth {min(worth):+.2f} to {max(worth):+.2f}" if worth else ""
            star = "*" if rs[0]["held_out"] else ""
            cells.append(f"{star}{sum(r['right'] for r in rs)}/{len(rs)}" + (f" (wrong: {wrong})" if wrong else "")
                         + note)
        lines.append(f"| {fl} ({FAULTS[fl]}) | " + " | ".join(cells) + " |")
    lines += ["", ("| dataset | seed | fault | held out | accuracy (chance) | mark worth | backbone / head margin | "
                   "BG-gap T / B | mixed-same T / B | background only T / B | share of margin [interval] (fills) | "
                   "reliance test | right verdict | verdict | right |"), "|" + "---|" * 15]
    for r in sorted(rows, key=lambda r: (datasets.index(r["dataset"]), faults.index(r["fault"]), r["seed"])):
        share = "n/a" if r["share"] is None else (
            f"{r['share']:+.0%} [{r['share_low']:+.0%}, {r['share_high']:+.0%}] ({''.join(r['share_fills']).upper()})")
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['fault']} | {'yes' if r['held_out'] else 'no'} | "
            f"{f(r['accuracy'])} ({f(r['chance_accuracy'])}) | {f(r['mark_worth'], True)} | "
            f"{f(r['backbone_margin'], True)} / {f(r['head_margin'], True)} | {f(r['bg_gap_t'], True)} / "
            f"{f(r['bg_gap_b'], True)} | {f(r['mixed_same_t'])} / {f(r['mixed_same_b'])} | "
            f"{f(r['background_only_t'])} / {f(r['background_only_b'])} | {share} | {r['reliance_state']} | "
            f"{r['expected']} | {r['kind']} | {'yes' if r['right'] else '**no**'} |")
    secs = [r["seconds"] for r in rows]
    lines += ["", (f"{len(rows)} cells, {statistics.mean(secs):.0f} s each on average, {sum(secs) / 60:.0f} min in all "
                   "(training and diagnosis, one thread per cell; the wall time of the run that trained them, on "
                   "whatever else the machine was running)") if secs else ""]
    return "\n".join(lines)


#: The grid ``--tune`` searches: Thresholds.reliance_share x Thresholds.mixed_same_drop.
SHARE_GRID = (0.05, 0.075, 0.10, 0.125, 0.15, 0.20, 0.25)
DROP_GRID = (0.05, 0.10, 0.15, 0.20)


def tune(saved: list[tuple[dict[str, Any], Any]]) -> str:
    """Right verdicts on the **tuning rows** only, per pair of the reliance thresholds (a Markdown
    table; each cell: right verdicts, then marks worth >= :data:`MUST` passed as healthy or
    independent). The held-out rows are not read."""
    from salaug.diagnosis import Thresholds

    tuning = [(row, diag) for row, diag in saved if not held_out(row["dataset"], row["fault"])]
    lines = [f"Tuning rows ({len(tuning)}): right verdicts / marks worth >= {MUST:.2f} passed, per reliance_share "
             "(rows) and mixed_same_drop (columns):", "",
             "| reliance_share | " + " | ".join(f"drop {d:.2f}" for d in DROP_GRID) + " |",
             "|" + "---|" * (len(DROP_GRID) + 1)]
    for share in SHARE_GRID:
        cells = []
        for drop in DROP_GRID:
            grid = dataclasses.replace(Thresholds(), reliance_share=share, mixed_same_drop=drop)
            judged = [judge(row, dataclasses.replace(diag, thresholds=grid)) for row, diag in tuning]
            cells.append(f"{sum(r['right'] for r in judged)}/{len(judged)} / {sum(r['passed_a_mark'] for r in judged)}")
        lines.append(f"| {share:.3f} | " + " | ".join(cells) + " |")
    t = Thresholds()
    lines += ["", (f"The library's thresholds: reliance_share {t.reliance_share}, mixed_same_drop {t.mixed_same_drop}, "
                   "the pair with the most right verdicts on these rows and no mark worth >= 0.10 passed; where pairs "
                   "tie, the larger share (further from the healthy models' shares) and the smaller drop (the "
                   "stricter control). The held-out rows (every dark_on_light row, every fine-tuned row) are left "
                   "out of this grid.")]
    return "\n".join(lines)


def write(rows: list[dict[str, Any]], args: argparse.Namespace, grid: str = "") -> str:
    text = report(rows, args) + (f"\n\n## How the thresholds were chosen\n\n{grid}" if grid else "")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "diagnosis_matrix.md"), "w") as fh:
            fh.write("# salaug.diagnose fault matrix\n\n" + text + "\n")
        with open(os.path.join(args.out, "diagnosis_matrix.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {DATASETS}")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {tuple(FAULTS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for diagnosis_matrix.md / .json (default: print only); "
                                                    "rewritten after every cell")
    parser.add_argument("--raw", default=None,
                        help="file to save the diagnoses in (for --rejudge); cells already in it are not run again")
    parser.add_argument("--example", default=None, metavar="DATASET,SEED,FAULT",
                        help="diagnose this one cell and write its report (text, report.md, report.png) to --out")
    parser.add_argument("--rejudge", default=None,
                        help="re-judge the diagnoses saved in these files (comma-separated; no training) under the "
                             "library's thresholds (salaug.diagnosis.Thresholds()), changed by the options below")
    parser.add_argument("--tune", action="store_true",
                        help="with --rejudge: add the tuning rows' grid over the reliance thresholds to the report")
    parser.add_argument("--reliance-share", type=float, default=None, help="with --rejudge: Thresholds.reliance_share")
    parser.add_argument("--mixed-same-drop", type=float, default=None,
                        help="with --rejudge: Thresholds.mixed_same_drop")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.faults = [fl.strip() for fl in args.faults.split(",") if fl.strip()]
    for name, got, allowed in (("--datasets", args.datasets, DATASETS), ("--faults", args.faults, tuple(FAULTS))):
        bad = [g for g in got if g not in allowed]
        if bad or not got:
            parser.error(f"argument {name}: {bad or got} not in {allowed}")
    if args.seeds < 1 or args.workers < 1:
        parser.error("--seeds and --workers must be >= 1")
    if args.example:
        ds, seed, fault = args.example.split(",")
        row, diag = cell((ds, int(seed), fault), examples=2)
        print(f"{args.example}: mark worth {row['mark_worth']}, accuracy {row['accuracy']:.2f}\n\n{diag}")
        if args.out:
            diag.save(args.out)
        return 0
    if args.rejudge:
        change = {k: v for k, v in (("reliance_share", args.reliance_share), ("mixed_same_drop", args.mixed_same_drop))
                  if v is not None}
        saved = [item for path in args.rejudge.split(",") for item in torch.load(path, weights_only=False)]
        from salaug.diagnosis import Thresholds

        thresholds = dataclasses.replace(Thresholds(), **change)  # the library's, with the changes asked for
        rows = [judge(row, dataclasses.replace(diag, thresholds=thresholds)) for row, diag in saved]
        print(write(rows, args, tune(saved) if args.tune else ""))
        return 0
    jobs = [(ds, s, fl) for ds in args.datasets for s in range(args.seeds) for fl in args.faults]
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    raw: list[tuple[dict[str, Any], Any]] = []
    if args.raw and os.path.exists(args.raw):  # resume: keep the cells already diagnosed
        raw = [(row, diag) for row, diag in torch.load(args.raw, weights_only=False)
               if (row["dataset"], row["seed"], row["fault"]) in set(jobs)]
        rows = [judge(row, diag) for row, diag in raw]
        done = {(r["dataset"], r["seed"], r["fault"]) for r in rows}
        jobs = [j for j in jobs if j not in done]
        print(f"resuming: {len(done)} cells from {args.raw}, {len(jobs)} to go", flush=True)
    with get_context("spawn").Pool(args.workers) as pool:
        for row, diag in pool.imap_unordered(cell, jobs):
            rows.append(row)
            raw.append(({k: row[k] for k in ("dataset", "seed", "fault", "held_out", "mark_worth", "seconds")}, diag))
            worth, share = row["mark_worth"], row["share"]
            print(f"[{time.time() - t0:4.0f}s] {row['dataset']:13s} seed {row['seed']} {row['fault']:15s} acc "
                  f"{row['accuracy']:.2f} worth {'n/a' if worth is None else f'{worth:+.2f}'} share "
                  f"{'n/a' if share is None else f'{share:+.2f}'} -> {row['kind']:10s} "
                  f"{'ok' if row['right'] else 'WRONG'}", flush=True)
            write(rows, args)  # partial results as they come
            if args.raw:
                torch.save(raw, args.raw)
    print("\n" + write(rows, args) + f"\n\nwall time {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
