"""CAM speed: salaug.cam versus a plain no-grad forward, pytorch-grad-cam and torchcam.

Every job of a model is run once per round, rounds are interleaved (job order rotates each
round); times are medians over rounds and ratios are medians of per-round ratios, so all numbers
of a table come from the same run and each ratio compares jobs that ran next to each other.
Random weights (no downloads); the same images, targets and output size for every library.
torchcam returns low-resolution ``(B, h, w)`` maps (no upsampling), so its times exclude a resize;
pytorch-grad-cam and salaug return full-size maps.

Gradient methods and EigenCAM run on ``--batch`` images of ``--size``; ScoreCAM/AblationCAM need
``B * C`` forwards and run on ``--perturb-batch`` images of ``--perturb-size`` for the models in
``--perturb-models``.

Usage::

    python benchmarks/cam_speed.py                       # quick default, a few minutes on 2 cores
    python benchmarks/cam_speed.py --models resnet50 --batch 32 --rounds 7
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

import salaug.cam as sc

try:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError:  # pragma: no cover
    pgc = None
try:
    import torchcam.methods as tcm
except ImportError:  # pragma: no cover
    tcm = None

GRADIENT = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"]
PERTURB = ["scorecam", "ablationcam"]
PGC = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}
TORCHCAM = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMpp", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
}


def ours_job(model, name, images, targets, batch_size=None) -> Callable[[], object]:
    kw = {} if batch_size is None else {"batch_size": batch_size}
    cam = sc.create_cam(name, model, "layer4", **kw)
    return lambda: cam(images, targets)


def pgc_job(model, name, images, targets) -> Callable[[], object] | None:
    if pgc is None:
        return None
    cls = getattr(pgc, PGC[name])
    tg = [ClassifierOutputTarget(int(t)) for t in targets]

    def run():
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
            with cls(model, [model.layer4]) as cam:
                return cam(images, tg)

    return run


def torchcam_job(model, name, images, targets) -> Callable[[], object] | None:
    if tcm is None or name not in TORCHCAM:
        return None
    cls = getattr(tcm, TORCHCAM[name])
    idx = [int(t) for t in targets]
    shape = tuple(images.shape[1:])

    def run():
        extractor = cls(model, "layer4", input_shape=shape)
        try:
            if name == "scorecam":
                with torch.no_grad():
                    scores = model(images)
            else:
                scores = model(images)
            return extractor(idx, scores)
        finally:
            extractor.remove_hooks()

    return run


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(jobs: dict[str, Callable[[], object]], rounds: int, warmup: int, clock: str) -> dict[str, list[float]]:
    """Run every job once per round (rotating order); return the per-round times."""
    clock_fn = time.process_time if clock == "cpu" else time.perf_counter

    def tick() -> float:
        _sync()  # a CUDA job is done when its kernels are, not when Python returns
        return clock_fn()

    names = list(jobs)
    for _ in range(warmup):
        for n in names:
            jobs[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = tick()
            jobs[n]()
            times[n].append(tick() - t0)
    return times


def _ratio(num: list[float], den: list[float]) -> float:
    """Median of per-round ratios: jobs of one round ran close together, under the same load."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def table(title: str, methods: list[str], t: dict[str, list[float]]) -> str:
    fwd = t["forward"]
    med = statistics.median
    lines = [
        title,
        f"  no-grad eval forward: {med(fwd) * 1e3:9.1f} ms",
        f"  {'method':<12} {'salaug ms':>10} {'x fwd':>7} {'pgc ms':>10} {'pgc/salaug':>11}"
        f" {'torchcam ms':>12} {'tc/salaug':>10}",
    ]
    for m in methods:
        ours = t[f"salaug:{m}"]
        p = t.get(f"pgc:{m}")
        c = t.get(f"torchcam:{m}")
        lines.append(
            f"  {m:<12} {med(ours) * 1e3:10.1f} {_ratio(ours, fwd):7.2f} "
            + (f"{med(p) * 1e3:10.1f} {_ratio(p, ours):11.2f} " if p is not None else f"{'-':>10} {'-':>11} ")
            + (f"{med(c) * 1e3:12.1f} {_ratio(c, ours):10.2f}" if c is not None else f"{'-':>12} {'-':>10}")
        )
    return "\n".join(lines)


def build_jobs(model, methods, images, targets) -> dict[str, Callable[[], object]]:
    """The no-grad forward, then each method by salaug and by the reference libraries that have it."""

    def forward():
        with torch.no_grad():
            return model(images)

    jobs: dict[str, Callable[[], object]] = {"forward": forward}
    for m in methods:
        jobs[f"salaug:{m}"] = ours_job(model, m, images, targets)
        for lib, make in (("pgc", pgc_job), ("torchcam", torchcam_job)):
            job = make(model, m, images, targets)
            if job is not None:
                jobs[f"{lib}:{m}"] = job
    return jobs


def build(arch: str, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).eval().to(device)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--methods", default=",".join(GRADIENT), help="gradient methods / eigencam to time")
    ap.add_argument("--perturb-models", default="resnet18", help="models for ScoreCAM/AblationCAM ('' = none)")
    ap.add_argument("--perturb-batch", type=int, default=1)
    ap.add_argument("--perturb-size", type=int, default=64)
    ap.add_argument("--perturb-rounds", type=int, default=3)
    ap.add_argument("--no-torchcam", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall time, or process CPU time (robust to a busy machine)",
    )
    args = ap.parse_args(argv)
    global tcm
    if args.no_torchcam:
        tcm = None

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"grad-cam {'yes' if pgc else 'no'}, torchcam {'yes' if tcm else 'no'}; {args.clock} clock; ms = median "
        "of rounds, ratios = median of per-round ratios; torchcam maps are low-res (B, h, w), no resize; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    gen = torch.Generator().manual_seed(0)
    for arch in [m for m in args.models.split(",") if m]:
        model = build(arch, args.device)
        images = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(args.device)
        targets = torch.randint(0, 1000, (args.batch,), generator=gen).to(args.device)
        methods = [m for m in args.methods.split(",") if m]
        jobs = build_jobs(model, methods, images, targets)
        t = measure(jobs, args.rounds, args.warmup, args.clock)
        print()
        title = f"{arch}, B={args.batch}, {args.size}x{args.size}, target layer4, {args.rounds} rounds"
        print(table(title, methods, t))

    for arch in [m for m in args.perturb_models.split(",") if m]:
        model = build(arch, args.device)
        images = torch.randn(args.perturb_batch, 3, args.perturb_size, args.perturb_size, generator=gen).to(args.device)
        targets = torch.randint(0, 1000, (args.perturb_batch,), generator=gen).to(args.device)
        jobs = build_jobs(model, PERTURB, images, targets)
        t = measure(jobs, args.perturb_rounds, 0, args.clock)
        print()
        print(
            table(
                f"{arch}, B={args.perturb_batch}, {args.perturb_size}x{args.perturb_size}, target layer4, "
                f"{args.perturb_rounds} rounds (B*C masked/ablated forwards each)",
                PERTURB,
                t,
            )
        )


if __name__ == "__main__":
    main()
