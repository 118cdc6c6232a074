"""Does saliency-guided augmentation pay *on top of the standard recipe*? Paired seeds, matched controls.

A plain PyTorch training loop (no Lightning: it is faster on tiny data) trains a small network from
scratch with each augmentation *arm*, over paired seeds (per seed every arm sees the same training
images, the same initial weights, the same batch order and the same base augmentation), and
reports final-epoch test accuracy on the in-distribution test split and on shifted splits, with
paired differences to ``none`` and to ``cutmix`` and their 95 % t-intervals. It also reports train
accuracy, the pointing game of GradCAM on the test set, label fidelity of each arm's mixed labels
against the true visible fractions (where the dataset has masks) and the training time per arm.

**The base augmentation** (``--base``, the same in every arm, ``none`` included): ``cropflip``
(default: a per-sample random crop of the image zero-padded by ``size / 8`` pixels, 4 px at 32², and
a horizontal flip with probability 1/2, batched on the tensor and applied to the object masks
alike), ``trivialaugment`` (torchvision's ``TrivialAugmentWide`` per sample, then ``cropflip``; the
masks cannot follow it, so no oracle arm there), or ``none`` (no recipe at all: the tables of
salaug 0.2, kept as a secondary, labelled table). A gain measured without the recipe says little
about a real pipeline, which always has it.

Datasets (``--dataset``): ``objects`` (:class:`salaug.ClutteredObjects`; shift splits: a background
family never seen in training, 40 % occlusion, small objects), ``textures``
(:class:`salaug.datasets.TexturedBlobs`, a generator that shares nothing with ClutteredObjects:
the class is a blob's texture among distractor blobs on 1/f noise; shift splits: a colour-gradient
background, small objects), ``digits`` (sklearn's digits on clutter, boxes only, no shift split) and
``finegrained`` (the class is the pattern of a small low-contrast mark — stripes, checks, solid,
hollow — painted on a disc, square or diamond of ClutteredObjects; the mark is about 2.5 % of the
image; shift splits: the new background family, 40 % occlusion, which may hide the mark) and
``folder`` (an ImageFolder tree at ``--root``: e.g. a local CIFAR-100 or CUB-200 export; with
``--preset cifar100`` the published CIFAR-100 ResNet-18 setting: 200 epochs, SGD 0.1 with Nesterov
momentum, weight decay 1e-4, cosine, batch 100, on ``--device cuda``). Networks (``--arch``):
``demonet`` (:class:`salaug.models.DemoNet`), ``resnet8`` (:class:`salaug.models.ResNet8`) and
``resnet18`` (torchvision's, CIFAR stem).

**Fine-tuning** (``--finetune whole|frozen``, the ``finetune`` preset): the network of ``--arch`` is
pretrained once on a source set the benchmark generates — 1000 ClutteredObjects images of each of 7
shapes (cross, plus, bars, diamond, star, crescent, tee: none is a target class), 15 epochs — and
cached under ``--cache-dir`` (default ``$SALAUG_BENCHMARK_CACHE`` or ``~/.cache/salaug/benchmarks``,
outside the repository); each run loads that backbone, puts a new head (seeded per seed) for the
target's classes on it and fine-tunes the whole network (``whole``) or the head alone (``frozen``:
the backbone's parameters frozen and its BatchNorm in eval mode). The preset: DemoNet, 5 target
classes (the first five shapes for ``objects``, the five marks for ``finegrained``), 30 images per
class, 100 epochs, batch 32, AdamW OneCycle lr 1e-3.

Default regime (see ``Config`` and ``PRESETS``): 32x32, 10 classes, 50 training images per class,
DemoNet width 16, AdamW 3e-3, weight decay 5e-4, OneCycle over ``--epochs`` (40 by default; the
with-recipe tables use 150), batch 64, every mixing arm at ``p = 0.5`` per sample, no mixing in
the last epoch, one fixed test set of 1000 images per split.

The gate, per cell: the oracle arm (SnapMix fed the true object masks, so its labels are the
visible object mass) must beat ``none`` by more than 2 standard errors over paired seeds; where
even the oracle cannot help, no saliency method can be expected to.

Arms (all through ``salaug.SaliencyAugmenter``, the in-loop path, except ``none`` and ``mixup``):

* ``none`` (the base only); ``mixup`` (per-sample MixUp, Beta(1, 1), written here: torchvision's
  v2.MixUp mixes the whole batch with one lambda and has no per-sample ``p``);
* saliency-free mixes: ``cutmix`` (SaliencyMix fed flat saliency: per-sample CutMix boxes, area
  labels, the same code path as SaliencyMix) and ``resizemix`` (:class:`salaug.ResizeMix`, the whole
  partner resized into a box, area labels: the saliency-free twin of SnapMix's paste);
* CAM-driven salaug mixes (GradCAM of the live model at its last spatial layer): ``saliencymix``,
  ``saliencymix-mass`` (``labels="saliency"``), ``attentivecutmix``, ``salientpaste``,
  ``guidedmixup``, ``snapmix``, ``puzzlemix`` and ``puzzlemix-transport`` (:class:`salaug.PuzzleMix`
  without / with its block transport);
* controls that isolate what saliency adds: ``snapmix-flat`` (flat saliency: the same boxes with
  area labels) and ``snapmix-area`` (``labels="area"``);
* ``oracle``: SnapMix fed the true object masks (the ceiling a CAM could reach),
  ``oracle-saliencymix`` (SaliencyMix with masks and mass labels).

Any arm takes options after a colon, e.g. ``snapmix:warmup=40,ema=0.99,alpha=1,p=1,off=3,start=50,cam_scale=0.5``
(warm-up calls with flat saliency, CAMs from an EMA of the weights, Beta alpha, mixing
probability, epochs without mixing at the end, epochs without mixing at the start, CAMs computed on
images downscaled by ``cam_scale``); ``--sweep`` runs a one-factor sweep around one method.

Statistics: the final-epoch accuracy of each run (never the best epoch), paired differences per
seed, mean and 95 % t-interval (Student t, ``n - 1`` degrees of freedom). Label fidelity: every
second mixed batch of training, the sampled params are replayed on the true masks; ``label MAE``
is the mean |partner share of the label - partner's share of the visible object pixels| over the
samples mixed with another class (a rescaled paste counts pixels at the source scale).

Runs are deterministic per (config, arm, seed, in-loop path), so ``--reuse payoff_x.json`` takes
matching runs from an earlier results file instead of training them again.

Usage, from the repository root (``python benchmarks/payoff ...`` works too)::

    python -m benchmarks.payoff --quick --workers 2            # 6 arms x 3 seeds at 40 epochs
    python -m benchmarks.payoff --epochs 150 --arms none,cutmix,mixup,resizemix,snapmix,snapmix-flat,oracle \
        --workers 2 --out benchmarks/results --name objects_recipe150       # a with-recipe cell
    python -m benchmarks.payoff --dataset textures --epochs 150 --workers 2 --out benchmarks/results  # held out
    python -m benchmarks.payoff --base none --workers 2 --out benchmarks/results   # the no-recipe table
    python -m benchmarks.payoff --preset finetune --dataset finegrained --workers 2 \
        --arms none,cutmix,mixup,resizemix,snapmix-fwd,snapmix,snapmix-flat --out benchmarks/results \
        --name finetune_finegrained100                                     # a fine-tuning cell
    python -m benchmarks.payoff --dataset folder --root ~/data/cifar100 --preset cifar100 --device cuda \
        --arms none,cutmix,resizemix,snapmix,snapmix-flat --out results       # the published setting

Nothing is written unless ``--out`` is given; ``--replot payoff_x.json`` redraws a plot.

Cost (2 CPU cores, one thread per worker, 2026-12-04): a 150-epoch run of DemoNet takes 50-75 s
(SnapMix about 1.2x ``none``, for its CAM forward); a 7-arm x 5-seed cell about 25 min with
``--workers 2``. Fine-tuning (2026-12-07, a shared machine): the one pretraining run about 8 min; a
7-arm x 5-seed cell of 100 epochs on 150 images 15-25 min with ``--workers 2`` (30 epochs: 5-8 min).

Modules: :mod:`.config` (``Config``, ``PRESETS``), :mod:`.arms` (arm names and options over
``salaug.transforms.registry``, MixUp, the sweep), :mod:`.data` (datasets, splits, the base
augmentation), :mod:`.training` (one run, label fidelity, the worker pool), :mod:`.statistics`
(``paired``, ``t975``, the gate), :mod:`.reporting` (tables, plots, results files, ``--reuse``)
and :mod:`.cli` (the command line).
"""

from __future__ import annotations

from benchmarks.payoff.arms import (
    AUGMENTER,
    DEFAULT_ARMS,
    SALIENCY_FREE,
    Arm,
    build_transform,
    make_augmenter,
    mixup,
    parse_arm,
    sweep_arms,
)
from benchmarks.payoff.cli import main
from benchmarks.payoff.config import PRESETS, Config
from benchmarks.payoff.data import apply_base, load_data, load_folder, splits_of
from benchmarks.payoff.reporting import (
    format_tables,
    load_reusable,
    plot,
    regime_table,
    replot,
)
from benchmarks.payoff.statistics import gate, paired, summarise, t975
from benchmarks.payoff.training import build_model, label_error, run_one, target_layer

__all__ = ["AUGMENTER", "DEFAULT_ARMS", "PRESETS", "SALIENCY_FREE", "Arm", "Config", "apply_base", "build_model",
           "build_transform", "format_tables", "gate", "label_error", "load_data", "load_folder", "load_reusable",
           "main", "make_augmenter", "mixup", "paired", "parse_arm", "plot", "regime_table", "replot", "run_one",
           "splits_of", "summarise", "sweep_arms", "t975", "target_layer"]
