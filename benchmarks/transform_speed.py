"""Speed of the saliency transforms per mixed sample: batched vs a per-sample loop vs torchvision's CutMix.

Every transform runs with ``p=1`` (every sample mixed, cropped or erased, as ``v2.CutMix`` mixes
every sample), so the times are per mixed sample: the median time of a call over the batch size.
For each transform, three things are timed side by side, on the same batch, in interleaved
rounds, each round in a new random order (median over rounds): the batched salaug transform, a
straightforward per-sample Python loop implementing the same algorithm (written here, as a
reference a user might write), and ``torchvision.transforms.v2.CutMix(num_classes=K)``. One table
per thread count (``--threads 1 2``, the default, gives both), in markdown.

    python benchmarks/transform_speed.py --batch 64 --size 224 --rounds 9 --threads 1 2

Targets on CPU, per mixed sample against ``v2.CutMix``: the box-paste transforms (SaliencyMix,
AttentiveCutMix, SalientPaste, KeepCutout) within 1.5x, the resizing ones (SalientCrop, SnapMix,
ResizeMix) within 2.0x; GuidedMixup is reported; PuzzleMix within 3x, with ``transport=True``
within 5x. Every batched transform should be at least as fast as its loop (``batched / loop <= 1``).
On a CPU shared with other jobs, compare ``--threads 1`` too: with two threads every op above
PyTorch's parallel grain waits for both threads to be scheduled, which there costs milliseconds per
op and penalises transforms with many ops far more than ``v2.CutMix`` (three).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torchvision.transforms import v2

from salaug.transforms.crop import SalientCrop
from salaug.transforms.erase import KeepCutout
from salaug.transforms.mix import AttentiveCutMix, GuidedMixup, ResizeMix, SaliencyMix, SnapMix, greedy_pairing
from salaug.transforms.paste import SalientPaste
from salaug.transforms.puzzle import PuzzleMix, block_costs, solve_mask, transport_blocks

# -- per-sample loop references (the same algorithms, one sample at a time) ----------------------------------


def _mass(s: torch.Tensor, box) -> float:
    x1, y1, x2, y2 = box
    total = float(s.sum())
    return float(s[..., y1:y2, x1:x2].sum()) / total if total > 0 else (x2 - x1) * (y2 - y1) / s[0].numel()


def _rrc_box(h, w, scale, ratio):
    area = (scale[0] + (scale[1] - scale[0]) * torch.rand(()).item()) * h * w
    r = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(()).item())
    bw = min(max(round(math.sqrt(area * r)), 1), w)
    bh = min(max(round(math.sqrt(area / r)), 1), h)
    x1 = int(torch.randint(0, w - bw + 1, ()).item())
    y1 = int(torch.randint(0, h - bh + 1, ()).item())
    return x1, y1, x1 + bw, y1 + bh


def _peak_box(s, bw, bh):
    h, w = s.shape[-2:]
    idx = int(s.flatten().argmax())
    cx, cy = idx % w, idx // w
    x1 = min(max(cx - bw // 2, 0), w - bw)
    y1 = min(max(cy - bh // 2, 0), h - bh)
    return x1, y1, x1 + bw, y1 + bh


def loop_salient_crop(x, s, y, k, keep=0.8, num=16):
    b, _, h, w = x.shape
    out, sal = torch.empty_like(x), torch.empty_like(s)
    for i in range(b):
        box = (0, 0, w, h)
        for _ in range(num):
            cand = _rrc_box(h, w, (0.08, 1.0), (3 / 4, 4 / 3))
            if _mass(s[i], cand) >= keep:
                box = cand
                break
        x1, y1, x2, y2 = box
        out[i] = F.interpolate(x[i:i + 1, :, y1:y2, x1:x2], size=(h, w), mode="bilinear", align_corners=True)[0]
        sal[i] = F.interpolate(s[i:i + 1, :, y1:y2, x1:x2], size=(h, w), mode="bilinear", align_corners=True)[0]
    return out, sal, F.one_hot(y, k).float()


def loop_saliency_mix(x, s, y, k):
    b, _, h, w = x.shape
    perm = torch.randperm(b)
    out, sal, lab = x.clone(), s.clone(), F.one_hot(y, k).float()
    for i in range(b):
        j = int(perm[i])
        lam = float(torch.distributions.Beta(1.0, 1.0).sample())
        bw, bh = max(round(w * math.sqrt(lam)), 1), max(round(h * math.sqrt(lam)), 1)
        x1, y1, x2, y2 = _peak_box(s[j], bw, bh)
        out[i, :, y1:y2, x1:x2] = x[j, :, y1:y2, x1:x2]
        sal[i, :, y1:y2, x1:x2] = s[j, :, y1:y2, x1:x2]
        a = (x2 - x1) * (y2 - y1) / (h * w)
        lab[i] = (1 - a) * lab[i] + a * F.one_hot(y[j], k).float()
    return out, sal, lab


def loop_attentive_cutmix(x, s, y, k, grid=7, top=6):
    b, _, h, w = x.shape
    perm = torch.randperm(b)
    out, sal, lab = x.clone(), s.clone(), F.one_hot(y, k).float()
    ye = [i * h // grid for i in range(grid + 1)]
    xe = [i * w // grid for i in range(grid + 1)]
    cells = [(xe[c], ye[r], xe[c + 1], ye[r + 1]) for r in range(grid) for c in range(grid)]
    for i in range(b):
        j = int(perm[i])
        mass = torch.tensor([float(s[j, :, y1:y2, x1:x2].sum()) for x1, y1, x2, y2 in cells])
        area = 0.0
        for c in mass.topk(top).indices.tolist():
            x1, y1, x2, y2 = cells[c]
            out[i, :, y1:y2, x1:x2] = x[j, :, y1:y2, x1:x2]
            sal[i, :, y1:y2, x1:x2] = s[j, :, y1:y2, x1:x2]
            area += (x2 - x1) * (y2 - y1) / (h * w)
        lab[i] = (1 - area) * lab[i] + area * F.one_hot(y[j], k).float()
    return out, sal, lab


def loop_snapmix(x, s, y, k, alpha=5.0):
    b, _, h, w = x.shape
    perm = torch.randperm(b)
    out, sal, lab = x.clone(), s.clone(), F.one_hot(y, k).float()
    beta = torch.distributions.Beta(alpha, alpha)
    for i in range(b):
        j = int(perm[i])
        boxes = []
        for _ in range(2):
            lam = float(beta.sample())
            bw, bh = max(round(w * math.sqrt(1 - lam)), 1), max(round(h * math.sqrt(1 - lam)), 1)
            x1 = int(torch.randint(0, w - bw + 1, ()))
            y1 = int(torch.randint(0, h - bh + 1, ()))
            boxes.append((x1, y1, x1 + bw, y1 + bh))
        (tx1, ty1, tx2, ty2), (px1, py1, px2, py2) = boxes
        out[i, :, ty1:ty2, tx1:tx2] = F.interpolate(x[j:j + 1, :, py1:py2, px1:px2], size=(ty2 - ty1, tx2 - tx1),
                                                    mode="bilinear", align_corners=False)[0]
        sal[i, :, ty1:ty2, tx1:tx2] = F.interpolate(s[j:j + 1, :, py1:py2, px1:px2], size=(ty2 - ty1, tx2 - tx1),
                                                    mode="bilinear", align_corners=False)[0]
        removed = _mass(s[i], (tx1, ty1, tx2, ty2))
        added = _mass(s[j], (px1, py1, px2, py2))
        lab[i] = (1 - removed) * lab[i] + added * F.one_hot(y[j], k).float()
        lab[i] /= lab[i].sum()
    return out, sal, lab


def loop_resize_mix(x, s, y, k, scale=(0.1, 0.8)):
    b, _, h, w = x.shape
    perm = torch.randperm(b)
    out, sal, lab = x.clone(), s.clone(), F.one_hot(y, k).float()
    for i in range(b):
        j = int(perm[i])
        tau = scale[0] + (scale[1] - scale[0]) * torch.rand(()).item()
        bw, bh = max(round(w * tau), 1), max(round(h * tau), 1)
        x1 = int(torch.randint(0, w - bw + 1, ()))
        y1 = int(torch.randint(0, h - bh + 1, ()))
        out[i, :, y1:y1 + bh, x1:x1 + bw] = F.interpolate(x[j:j + 1], size=(bh, bw), mode="bilinear",
                                                          align_corners=False)[0]
        sal[i, :, y1:y1 + bh, x1:x1 + bw] = F.interpolate(s[j:j + 1], size=(bh, bw), mode="bilinear",
                                                          align_corners=False)[0]
        a = bw * bh / (h * w)
        lab[i] = (1 - a) * lab[i] + a * F.one_hot(y[j], k).float()
    return out, sal, lab


def loop_guided_mixup(x, s, y, k, sigma=3.0):
    b = x.shape[0]
    half = math.ceil(3 * sigma)
    smooth = []
    for i in range(b):
        m = gaussian_blur2d(s[i:i + 1], (2 * half + 1, 2 * half + 1), (sigma, sigma), border_type="reflect")
        smooth.append(m / m.sum().clamp(min=1e-30))
    pooled = torch.cat([F.adaptive_avg_pool2d(m, 16).flatten(1) for m in smooth])
    unit = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-30)
    perm = greedy_pairing(unit @ unit.T)
    out, sal, lab = torch.empty_like(x), torch.empty_like(s), F.one_hot(y, k).float()
    for i in range(b):
        j = int(perm[i])
        wa = (smooth[i] + 1e-8) / (smooth[i] + smooth[j] + 2e-8)
        out[i] = wa[0] * x[i] + (1 - wa[0]) * x[j]
        sal[i] = wa[0] * s[i] + (1 - wa[0]) * s[j]
        share = float(1 - wa.mean())
        lab[i] = (1 - share) * lab[i] + share * F.one_hot(y[j], k).float()
    return out, sal, lab


def loop_salient_paste(x, s, y, k, scale=(0.1, 0.4)):
    b, _, h, w = x.shape
    perm = torch.randperm(b)
    out, sal, lab = x.clone(), s.clone(), F.one_hot(y, k).float()
    for i in range(b):
        j = int(perm[i])
        a = scale[0] + (scale[1] - scale[0]) * torch.rand(()).item()
        z = 0.75 + 0.58 * torch.rand(()).item()
        dw, dh = max(round(w * math.sqrt(a)), 1), max(round(h * math.sqrt(a)), 1)
        sw, sh = min(max(round(dw / z), 1), w), min(max(round(dh / z), 1), h)
        px1, py1, px2, py2 = _peak_box(s[j], sw, sh)
        t = F.pad(s[i, 0].double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # summed-area table
        sums = t[dh:, dw:] - t[:-dh, dw:] - t[dh:, :-dw] + t[:-dh, :-dw]  # every position of the target
        idx = int(sums.flatten().argmin())
        tx1, ty1 = idx % sums.shape[-1], idx // sums.shape[-1]
        out[i, :, ty1:ty1 + dh, tx1:tx1 + dw] = F.interpolate(x[j:j + 1, :, py1:py2, px1:px2], size=(dh, dw),
                                                              mode="bilinear", align_corners=False)[0]
        sal[i, :, ty1:ty1 + dh, tx1:tx1 + dw] = F.interpolate(s[j:j + 1, :, py1:py2, px1:px2], size=(dh, dw),
                                                              mode="bilinear", align_corners=False)[0]
        share = dw * dh / (h * w)
        lab[i] = (1 - share) * lab[i] + share * F.one_hot(y[j], k).float()
    return out, sal, lab


def loop_keep_cutout(x, s, y, k, threshold=0.1, num=16):
    b, _, h, w = x.shape
    out, sal = x.clone(), s.clone()
    for i in range(b):
        for _ in range(num):
            x1, y1, x2, y2 = _rrc_box(h, w, (0.02, 0.25), (0.3, 3.3))
            if _mass(s[i], (x1, y1, x2, y2)) < threshold:
                out[i, :, y1:y2, x1:x2] = 0.0
                sal[i, :, y1:y2, x1:x2] = 0.0
                break
    return out, sal, F.one_hot(y, k).float()


def _blocks_moved(img, src, n):
    c, h, w = img.shape
    blocks = img.reshape(c, n, h // n, n, w // n).permute(1, 3, 0, 2, 4).reshape(n * n, c, h // n, w // n)
    return blocks[src].reshape(n, n, c, h // n, w // n).permute(2, 0, 3, 1, 4).reshape(c, h, w)


def loop_puzzlemix(x, s, y, k, grid=(2, 4, 8), transport=False):
    """One sample at a time: the same energy, solver and transport on a batch of one (sizes divisible by n)."""
    b, _, h, w = x.shape
    perm = torch.randperm(b)
    out, sal, lab = x.clone(), s.clone(), F.one_hot(y, k).float()
    beta = torch.distributions.Beta(1.0, 1.0)
    for i in range(b):
        j = int(perm[i])
        n = grid[int(torch.randint(0, len(grid), ()))]
        lam = beta.sample((1,))
        mt = F.adaptive_avg_pool2d(s[i:i + 1, 0], n)
        mp = F.adaptive_avg_pool2d(s[j:j + 1, 0], n)
        mt, mp = mt / mt.sum().clamp(min=1e-12), mp / mp.sum().clamp(min=1e-12)
        z = solve_mask(block_costs(mt, mp, lam, 0.2), lam, beta=1.2, gamma=0.5)
        zf = z.view(1, -1)
        if transport:
            st = transport_blocks(mt.view(1, -1), ~zf, move_cost=0.25)[0]
            sp = transport_blocks(mp.view(1, -1), zf, move_cost=0.25)[0]
            xi, xj = _blocks_moved(x[i], st, n), _blocks_moved(x[j], sp, n)
            si, sj = _blocks_moved(s[i], st, n), _blocks_moved(s[j], sp, n)
        else:
            xi, xj, si, sj = x[i], x[j], s[i], s[j]
        mask = F.interpolate(z[:, None].float(), size=(h, w), mode="nearest")[0] > 0.5
        out[i] = torch.where(mask, xj, xi)
        sal[i] = torch.where(mask, sj, si)
        share = float(z.float().mean())
        lab[i] = (1 - share) * lab[i] + share * F.one_hot(y[j], k).float()
    return out, sal, lab


# -- the run -------------------------------------------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_batch(b: int, n: int, k: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, s, y)``: ``(B, 3, n, n)`` noise images, CAM-like saliency (a blurred blob per image,
    min-max normalised, ``(B, n, n)``) and ``(B,)`` labels, seeded, on ``device``."""
    torch.manual_seed(0)
    x = torch.randn(b, 3, n, n)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    c = torch.rand(b, 2, 1, 1) * 0.6 + 0.2
    s = torch.exp(-((xx - c[:, 0:1]) ** 2 + (yy - c[:, 1:2]) ** 2) / 0.02)
    s = s / s.amax((2, 3), keepdim=True)
    y = torch.randint(0, k, (b,))
    return x.to(device), s.to(device), y.to(device)


def make_cases(k: int) -> dict[str, tuple[Any, Callable[..., Any], str]]:
    """Each timed transform, with ``p=1`` (every sample transformed): ``(batched salaug transform,
    per-sample loop reference, target vs v2.CutMix per mixed sample)``."""
    return {
        "SalientCrop": (SalientCrop(num_classes=k, p=1.0), loop_salient_crop, "<= 2.0"),
        "SaliencyMix": (SaliencyMix(num_classes=k, p=1.0), loop_saliency_mix, "<= 1.5"),
        "AttentiveCutMix": (AttentiveCutMix(num_classes=k, p=1.0), loop_attentive_cutmix, "<= 1.5"),
        "SnapMix": (SnapMix(num_classes=k, p=1.0), loop_snapmix, "<= 2.0"),
        "ResizeMix": (ResizeMix(num_classes=k, p=1.0), loop_resize_mix, "<= 2.0"),
        "GuidedMixup": (GuidedMixup(num_classes=k, p=1.0), loop_guided_mixup, "report"),
        "SalientPaste": (SalientPaste(num_classes=k, p=1.0), loop_salient_paste, "<= 1.5"),
        "KeepCutout": (KeepCutout(num_classes=k, p=1.0), loop_keep_cutout, "<= 1.5"),
        "SalientPaste nearest": (SalientPaste(num_classes=k, interpolation="nearest", p=1.0), loop_salient_paste,
                                 "<= 1.5"),
        "PuzzleMix": (PuzzleMix(num_classes=k, p=1.0), loop_puzzlemix, "<= 3.0"),
        "PuzzleMix transport": (PuzzleMix(num_classes=k, transport=True, p=1.0),
                                lambda *a: loop_puzzlemix(*a, transport=True), "<= 5.0"),
    }


def time_cases(x: torch.Tensor, s: torch.Tensor, y: torch.Tensor, k: int,
               cases: dict[str, tuple[Any, Callable[..., Any], str]], rounds: int) -> dict[str, float]:
    """Median seconds of ``v2.CutMix``, of each case's batched transform (``name``) and of its loop
    (``name + " loop"``), timed in interleaved rounds, each in a new random order (after one warm-up call)."""
    cutmix = v2.CutMix(num_classes=k)
    fns = {"v2.CutMix": lambda: cutmix(x, y)}
    for name, (t, loop, _) in cases.items():
        fns[name] = (lambda t=t: t(x, s, y))
        fns[name + " loop"] = (lambda loop=loop: loop(x, s, y, k))
    for f in fns.values():  # warm up
        f()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = random.Random(0)
    for _ in range(rounds):
        # a new order every round: each call finds the allocator as the previous call left it (at
        # this size a fresh buffer costs page faults), so a fixed order favours some entries
        for name, f in order.sample(list(fns.items()), len(fns)):
            _sync()
            t0 = time.perf_counter()
            f()
            _sync()  # a CUDA call returns before its kernels finish
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def table(med: dict[str, float], cases: dict[str, tuple[Any, Callable[..., Any], str]], batch: int) -> str:
    """The markdown table of one run: microseconds per mixed sample (``p=1``: the median call time over
    ``batch``) of the batched transform and of its loop, and the ratios to the loop and to ``v2.CutMix``."""
    base = med["v2.CutMix"]
    lines = ["| transform | batched (us / mixed sample) | per-sample loop (us / mixed sample) | batched / loop "
             "| batched / v2.CutMix | target |", "|---|---|---|---|---|---|"]
    for name, (_, _, target) in cases.items():
        bt, lt = med[name], med[name + " loop"]
        lines.append(f"| {name} | {bt / batch * 1e6:.0f} | {lt / batch * 1e6:.0f} | {bt / lt:.2f} | {bt / base:.2f} "
                     f"| {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch.set_num_threads of each table, in turn (0: leave as is)")
    ap.add_argument("--only", nargs="*", default=None, help="names of the transforms to time")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the per-sample loops then pay a launch per op)")
    args = ap.parse_args(argv)
    b, k, n = args.batch, args.classes, args.size
    x, s, y = make_batch(b, n, k, args.device)
    cases = make_cases(k)
    if args.only:
        unknown = sorted(set(args.only) - set(cases))
        if unknown:
            ap.error(f"unknown transform(s) {unknown}; choose from {sorted(cases)}")
        cases = {name: v for name, v in cases.items() if name in args.only}
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        med = time_cases(x, s, y, k, cases, args.rounds)
        print(f"B={b}, {n}x{n}, K={k}, every sample mixed (p=1), device {args.device}, {args.rounds} interleaved "
              f"rounds, torch {torch.__version__}, {torch.get_num_threads()} threads; v2.CutMix "
              f"{med['v2.CutMix'] / b * 1e6:.0f} us per sample (median {med['v2.CutMix'] * 1e3:.1f} ms)\n")
        print(table(med, cases, b) + "\n", flush=True)


if __name__ == "__main__":
    main()
