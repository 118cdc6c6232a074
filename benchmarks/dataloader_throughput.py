"""Throughput of a DataLoader with saliency-guided augmentation in its collate_fn.

A realistic per-sample pipeline (PNG bytes decoded with PIL → ``v2.RandomResizedCrop(128)`` →
``RandomHorizontalFlip`` → float tensor) in a DataLoader with 2 workers and batch 64, collated by

* ``default_collate`` (the baseline),
* ``SaliencyCollate(SaliencyMix, SpectralResidual())`` (model-free saliency in the workers; also
  with ``size=32``, a coarser working resolution, enough to find the peak SaliencyMix needs),
* ``SaliencyCollate(SaliencyMix, CAMSaliency(small CNN))`` (a frozen CNN + GradCAM on the CPU
  workers, one forward/backward per batch),
* stored masks: ``MaskedDataset`` (masks precomputed once with the same CNN, read with memmap,
  upsampled and cropped/flipped with the image) + ``SaliencyCollate(SaliencyMix, "mask")``;
  also the same dataset with ``default_collate``, to separate the mask cost from the mix.

Rounds are interleaved (each configuration once per round, one warm-up epoch each) and the median
per configuration is reported as a ratio to the plain loader measured in the same run, twice:
wall-clock images/second, and the worker processes' CPU time per image (read from
``RUSAGE_CHILDREN`` when the workers exit at the end of each epoch), which is what bounds the
throughput of CPU-bound workers and is far less disturbed by other jobs on a shared machine.
Target: SpectralResidual + SaliencyMix keeps >= 70 % of the plain throughput.

Run::

    python benchmarks/dataloader_throughput.py            # 2-4 minutes on 2 CPU cores
    python benchmarks/dataloader_throughput.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

try:
    import salaug  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image
from torchvision.transforms import v2

from salaug.data import CAMSaliency, MaskedDataset, SaliencyCollate, precompute_masks
from salaug.datasets import ClutteredObjects
from salaug.saliency import SpectralResidual
from salaug.transforms.mix import SaliencyMix

NUM_CLASSES = 10


def make_pngs(n: int, size: int) -> tuple[list[bytes], list[int]]:
    """``n`` ClutteredObjects images of ``size``² encoded as PNG bytes (what a disk dataset holds)."""
    batch = ClutteredObjects("train", size=size, length=n, num_classes=NUM_CLASSES).render(range(n))
    pngs = []
    for img in (batch["image"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs, batch["label"].tolist()


class PNGDataset(Dataset):
    """``(image, label)`` from PNG bytes, decoded with PIL, then ``transform``."""

    def __init__(self, pngs: list[bytes], labels: list[int], transform=None) -> None:
        self.pngs, self.labels, self.transform = pngs, labels, transform

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, i: int):
        image = Image.open(io.BytesIO(self.pngs[i])).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


def pipeline(crop: int) -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True)])


def small_cnn() -> nn.Module:
    """A frozen 3-block CNN (16/32/64 channels); random weights are enough to time the CAM."""
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    torch.manual_seed(0)
    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, NUM_CLASSES)).eval()


def epoch_rate(loader: DataLoader) -> tuple[float, float]:
    """One full epoch of ``loader``: (images per second of wall time, worker CPU ms per image).

    Workers are not persistent, so they exit at the end of the epoch and their CPU time shows up
    in ``RUSAGE_CHILDREN``. On a 2-core machine shared with other jobs the wall-clock rate is noisy;
    the CPU time per image is what bounds throughput when the workers are CPU-bound (each worker
    has one thread), and it is much less sensitive to other load.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = 0
    start = time.perf_counter()
    for batch in loader:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch["image"]
        n += images.shape[0]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return n / wall, 1000.0 * cpu / n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024, help="images per epoch (one measurement)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--source-size", type=int, default=160, help="side of the stored PNGs")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="256 images, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 256, 1

    load_before = os.getloadavg()[0]
    pngs, labels = make_pngs(args.images, args.source_size)
    png_kib = sum(map(len, pngs)) / len(pngs) / 1024
    cnn = small_cnn()
    tmp = tempfile.TemporaryDirectory()
    full = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    t0 = time.perf_counter()
    mask_file = precompute_masks(cnn, PNGDataset(pngs, labels, full), Path(tmp.name) / "masks.salm",
                                 batch_size=64, targets="labels")
    precompute_s = time.perf_counter() - t0

    def mix() -> SaliencyMix:
        return SaliencyMix(alpha=1.0, num_classes=NUM_CLASSES)

    plain_ds = PNGDataset(pngs, labels, pipeline(args.crop))
    masked_ds = MaskedDataset(PNGDataset(pngs, labels), mask_file, transforms=pipeline(args.crop))
    configs = {
        "plain default_collate": (plain_ds, default_collate),
        "SaliencyMix + SpectralResidual": (plain_ds, SaliencyCollate(mix(), SpectralResidual(), seed=0)),
        "SaliencyMix + SpectralResidual(32)": (plain_ds, SaliencyCollate(mix(), SpectralResidual(size=32),
                                                                          seed=0)),
        "SaliencyMix + frozen CNN GradCAM": (
            plain_ds, SaliencyCollate(mix(), CAMSaliency(cnn, "gradcam", targets="labels", output_size="feature"),
                                      seed=0)),
        "stored masks, default_collate": (masked_ds, default_collate),
        "SaliencyMix + stored masks": (masked_ds, SaliencyCollate(mix(), "mask", seed=0)),
    }
    loaders = {
        name: DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
                         collate_fn=collate, persistent_workers=False,
                         generator=torch.Generator().manual_seed(0))
        for name, (ds, collate) in configs.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    cpu_ms: dict[str, list[float]] = {name: [] for name in loaders}
    for loader in loaders.values():  # warm-up epoch
        epoch_rate(loader)
    for _ in range(args.rounds):
        for name, loader in loaders.items():
            rate, ms = epoch_rate(loader)
            rates[name].append(rate)
            cpu_ms[name].append(ms)

    base = statistics.median(rates["plain default_collate"])
    base_ms = statistics.median(cpu_ms["plain default_collate"])
    print(f"DataLoader throughput: {args.workers} workers, batch {args.batch_size}, PNG {args.source_size}² "
          f"({png_kib:.0f} KiB avg) -> RandomResizedCrop({args.crop}) + flip; torch {torch.__version__}; "
          f"median of {args.rounds} interleaved rounds of {args.images} images; load average before: "
          f"{load_before:.1f}, after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"(masks precomputed once with GradCAM at feature resolution: {args.images} images in "
          f"{precompute_s:.1f} s)")
    print()
    print(f"| {'collate_fn':<34} | {'images/s (wall)':>15} | {'ratio (wall)':>12} | "
          f"{'worker CPU ms/img':>17} | {'ratio (CPU)':>11} |")
    print(f"|{'-' * 36}|{'-' * 16}:|{'-' * 13}:|{'-' * 18}:|{'-' * 12}:|")
    for name in loaders:
        r, ms = statistics.median(rates[name]), statistics.median(cpu_ms[name])
        print(f"| {name:<34} | {r:15.0f} | {r / base:12.2f} | {ms:17.2f} | {base_ms / ms:11.2f} |")
    sr_wall = statistics.median(rates["SaliencyMix + SpectralResidual"]) / base
    sr_cpu = base_ms / statistics.median(cpu_ms["SaliencyMix + SpectralResidual"])
    print()
    print(f"SpectralResidual + SaliencyMix keeps {sr_wall:.0%} (wall) / {sr_cpu:.0%} (worker CPU) of plain "
          f"throughput; target >= 70%")
    tmp.cleanup()


if __name__ == "__main__":
    main()
