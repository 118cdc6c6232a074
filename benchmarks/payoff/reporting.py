"""Tables, plots and results files: what a cell prints and writes, the regime table over cells, and
the runs of earlier results files that a new cell can reuse."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from typing import Any

from benchmarks.payoff.arms import AUGMENTER, SALIENCY_FREE
from benchmarks.payoff.config import Config
from benchmarks.payoff.data import splits_of
from benchmarks.payoff.statistics import paired

ARCH_NAMES = {"demonet": "DemoNet", "resnet8": "ResNet8", "resnet18": "ResNet-18 (CIFAR stem)",
              "vit": "tiny ViT (conv stem to 8 x 8 tokens, 4 blocks, width 64)"}
BASE_NAMES = {"none": "none (no crop, no flip: a secondary, no-recipe table)",
              "cropflip": "padded random crop + horizontal flip",
              "trivialaugment": "TrivialAugmentWide + padded random crop + horizontal flip"}
_RUN_INDEPENDENT = ("seeds", "threads", "cache_dir")  # config fields that do not change a run's numbers
#: the values of config fields added after the first results files were written (those files lack them)
_DEFAULTS_OF_OLDER_FILES = {"base": "none", "arch": "demonet", "optimizer": "adamw", "root": None,
                            "finetune": "none", "source_per_class": 1000, "pretrain_epochs": 15, "start_epochs": 0}
FINETUNE_NAMES = {"whole": "fine-tuned whole", "frozen": "frozen backbone, head trained"}


def load_reusable(paths: list[str], cfg: Config) -> dict[tuple[str, int], dict[str, Any]]:
    """Runs of earlier results files whose config matches ``cfg`` (runs are deterministic per seed)."""
    want = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUN_INDEPENDENT}
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        have = {k: v for k, v in {**_DEFAULTS_OF_OLDER_FILES, **data["config"]}.items() if k not in _RUN_INDEPENDENT}
        have = {k: tuple(v) if isinstance(v, list) else v for k, v in have.items()}
        if have != want:
            print(f"--reuse {path}: its config differs ({sorted(k for k in want if have.get(k) != want[k])}); "
                  "not reused", flush=True)
            continue
        for r in data["runs"]:
            if r["augmenter"] in ("-", AUGMENTER):  # another in-loop path draws other random numbers
                found[(r["arm"], r["seed"])] = dict(r, reused_from=os.path.basename(path))
    return found


def _ci(d: dict[str, float] | None) -> str:
    if d is None:
        return "–"
    if math.isnan(d["lo"]):
        return f"{d['mean']:+.3f}"
    mark = " **↑**" if d["lo"] > 0 else (" ↓" if d["hi"] < 0 else "")
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{mark}"


def header(cfg: Config, what: str, wall: float, workers: int, trained: int, reused: int) -> str:
    """The paragraph above a cell's tables: the regime, the arms and the wall time."""
    tuned = "" if cfg.finetune == "none" else (
        f" pretrained once on {7 * cfg.source_per_class} images of 7 other ClutteredObjects shapes "
        f"({cfg.pretrain_epochs} epochs), then {FINETUNE_NAMES[cfg.finetune]} with a new head")
    return (f"Dataset {cfg.dataset}, {cfg.size}x{cfg.size}, {cfg.num_classes} classes, {cfg.train_per_class} "
            f"training images per class, {ARCH_NAMES[cfg.arch]}"
            f"{f' width {cfg.width}' if cfg.arch in ('demonet', 'resnet8') else ''}{tuned}, {cfg.epochs} epochs "
            f"{'SGD cosine' if cfg.optimizer == 'sgd' else 'AdamW OneCycle'} lr {cfg.lr:g} weight decay "
            f"{cfg.weight_decay:g}, "
            f"base augmentation in every arm: {BASE_NAMES[cfg.base]}, "
            f"batch {cfg.batch_size}, p={cfg.p:g} per sample, no mixing in the last {cfg.off_epochs} epoch(s) unless "
            f"the arm says off=; {cfg.seeds} paired seeds, final-epoch accuracy on {cfg.test_size} test images per "
            f"split; {what}; wall time {wall / 60:.1f} min with {workers} worker(s) on {cfg.device}"
            + (f" for {trained} runs ({reused} reused from --reuse)." if reused else "."))


def format_tables(summary: dict[str, Any], splits: list[str], header: str,
                  refs: tuple[str, ...] = ("none", "cutmix")) -> str:
    """The per-arm table and one table of paired differences per reference arm, in markdown."""
    lines = [header, ""]
    fid_base = summary.get("cutmix", {}).get("label_mae")
    lines += ["| arm | train acc | " + " | ".join(f"test {s}" for s in splits)
              + " | pointing game | label MAE | MAE / CutMix's | time (s) | time / none |",
              "|---" * (len(splits) + 7) + "|"]
    base_time = summary.get("none", {}).get("seconds")
    for arm, row in summary.items():
        accs = " | ".join(f"{row.get(f'acc_{s}', float('nan')):.3f} ± {row.get(f'acc_{s}_sd', 0):.3f}" for s in splits)
        mae = row.get("label_mae")
        ratio = f"{mae / fid_base:.2f}" if mae is not None and fid_base else "–"
        cost = f"{row['seconds'] / base_time:.2f}x" if base_time else "–"
        pg = row.get("pointing_game")
        lines.append(f"| {arm} | {row['train_acc']:.3f} | {accs} | {'–' if pg is None else f'{pg:.3f}'} | "
                     f"{'–' if mae is None else f'{mae:.3f}'} | {ratio} | {row['seconds']:.0f} | {cost} |")
    for ref in refs:
        title = (f"Paired difference in test accuracy to **{ref}** (mean [95% t-interval]; ↑ interval above 0, "
                 "↓ below):")
        lines += ["", title, "", "| arm | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
        for arm, row in summary.items():
            if f"vs_{ref}" in row:
                lines.append(f"| {arm} | " + " | ".join(_ci(row[f"vs_{ref}"].get(s)) for s in splits) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], splits: list[str], path: str, title: str,
         refs: tuple[str, ...] = ("none", "cutmix")) -> None:
    """A forest plot of the paired differences, one panel per reference arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(refs), figsize=(6 * len(refs), 0.45 * len(summary) + 1.8), sharey=True,
                             squeeze=False)
    axes = axes[0]
    names = list(summary)
    colours = ["C0", "C1", "C2", "C3"]
    for ax, ref in zip(axes, refs, strict=True):
        for j, split in enumerate(splits):
            ys, ms, lo, hi = [], [], [], []
            for i, arm in enumerate(names):
                d = summary[arm].get(f"vs_{ref}", {}).get(split)
                if d is None:
                    continue
                ys.append(i + (j - (len(splits) - 1) / 2) * 0.18)
                ms.append(d["mean"])
                lo.append(d["mean"] - d["lo"] if not math.isnan(d["lo"]) else 0.0)
                hi.append(d["hi"] - d["mean"] if not math.isnan(d["hi"]) else 0.0)
            ax.errorbar(ms, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, color=colours[j % 4], label=split)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(f"test accuracy − {ref} (paired, 95% CI)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # the axes share y: invert once, the first arm on top
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(path: str) -> int:
    """Redraw ``payoff_x.png`` from ``payoff_x.json`` (e.g. after a change to the plot)."""
    with open(path) as f:
        data = json.load(f)
    cfg = data["config"]
    summary = data["summary"]
    found = {k[3:] for row in summary.values() for k in row if k.startswith("vs_")}
    refs = tuple(r for r in ("none", "cutmix") if r in found) + tuple(sorted(found - {"none", "cutmix"}))
    plot(summary, splits_of(cfg["dataset"]), os.path.splitext(path)[0] + ".png",
         f"{cfg['dataset']}: {cfg['seeds']} paired seeds, {cfg['epochs']} epochs", refs)
    return 0


def write_results(stem: str, command: str, table: str, record: dict[str, Any], cfg: Config, splits: list[str],
                  refs: tuple[str, ...]) -> None:
    """``<stem>.md`` (the command and the tables), ``<stem>.json`` (``record``) and, where matplotlib
    is installed, ``<stem>.png``."""
    with open(stem + ".md", "w") as f:
        f.write(f"Command: `{command}`\n\n{table}\n")
    with open(stem + ".json", "w") as f:
        json.dump(record, f, indent=1)
    try:
        plot(record["summary"], splits, stem + ".png",
             f"{cfg.dataset}: {cfg.seeds} paired seeds, {cfg.epochs} epochs", refs)
    except ImportError:  # matplotlib is optional: the tables are the result
        pass


def _regime_row(path: str, method: str) -> str:
    with open(path) as f:
        data = json.load(f)
    cfg = data["config"]
    by = {(r["arm"], r["seed"]): r for r in data["runs"]}
    splits = splits_of(cfg["dataset"])

    def diff(arm: str, ref: str, split: str) -> dict[str, float] | None:
        seeds = sorted(s for (a, s) in by if a == arm and (ref, s) in by)
        if not seeds:
            return None
        return paired([by[(arm, s)][f"acc_{split}"] for s in seeds], [by[(ref, s)][f"acc_{split}"] for s in seeds])

    def best_free(split: str) -> str | None:
        free = [a for a in SALIENCY_FREE if any(k[0] == a for k in by)]
        means = {a: statistics.mean(r[f"acc_{split}"] for (x, _), r in by.items() if x == a) for a in free}
        return max(means, key=means.__getitem__) if means else None

    def cell(ref_of: Any) -> str:
        parts = []
        for split in splits:
            ref = ref_of(split)
            d = diff(method, ref, split) if ref else None
            if d is not None:
                parts.append(f"{split}{'' if ref in ('none', f'{method}-flat') else f' vs {ref}'} {_ci(d)}")
        return "<br>".join(parts) or "–"

    base = [r["acc_id"] for (a, _), r in by.items() if a == "none"]
    o = diff("oracle", "none", "id")
    gate_cell = "–" if o is None or math.isnan(o["se"]) else (
        f"{'passed' if o['mean'] > 2 * o['se'] else 'FAILED'} ({o['mean'] / o['se'] if o['se'] > 0 else 0:.1f} SE)")
    tuned = cfg.get("finetune", "none")
    name = (f"{cfg['dataset']}, {ARCH_NAMES.get(cfg.get('arch', 'demonet'), '?')}"
            f"{'' if tuned == 'none' else ', ' + FINETUNE_NAMES[tuned]}, {cfg['train_per_class']}/class, "
            f"{cfg['epochs']} ep, base {cfg.get('base', 'none')}")
    seeds = len({s for (_, s) in by})
    if not base:
        return f"| {name} | {seeds} | – | – | – | – | – | – |"
    return (f"| {name} | {seeds} | {statistics.mean(base):.3f} | {_ci(o)} | {gate_cell} | "
            f"{cell(lambda s: 'none')} | {cell(best_free)} | {cell(lambda s: f'{method}-flat')} |")


def regime_table(paths: list[str], method: str = "snapmix") -> str:
    """One line per results file (a cell of the regime sweep): base-only accuracy, the oracle gate,
    ``method`` against base-only, against the best saliency-free mix of that cell, and against its
    flat-saliency twin, in-distribution and on the best and worst shift split.

    The best saliency-free mix is chosen per cell and split by its mean accuracy (a choice that
    favours the baseline).
    """
    head = ("| cell | seeds | base only (id) | oracle − base (id) | gate | "
            f"{method} − base | {method} − best saliency-free | {method} − flat twin |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [_regime_row(path, method) for path in paths])
