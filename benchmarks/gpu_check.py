"""The device check in one command: every CUDA test and the speed goals on one GPU, one Markdown table.

Run through ``benchmarks/gpu_check.sh`` (which adds a time limit), from the repository root::

    bash benchmarks/gpu_check.sh                      # on a GPU machine: writes benchmarks/results/gpu_check.md
    bash benchmarks/gpu_check.sh --dry-run            # on CPU, tiny sizes: the same code paths, the same table

Sections, each timed (its wall seconds are in the table):

1. **CUDA tests**: ``pytest --device cuda -k cuda`` on the test files that take the ``device``
   fixture or need CUDA (the transforms without host syncs, the CAM engine and the augmenter on the
   GPU). The dry run only collects them (``--collect-only``, with ``--device cpu``).
2. **CAMs against pytorch-grad-cam** (``benchmarks/cam_speed.py``'s jobs): each gradient method on a
   torchvision ResNet-50, batch 64 at 224², target ``layer4``; goal: salaug ≥ 10x faster (the median of
   per-round ratios).
3. **Transforms against a per-sample loop and v2.CutMix** (``benchmarks/transform_speed.py``'s cases):
   batch 128 at 224²; goal: the batched transform ≥ 5x faster than the loop; the ratio to
   ``torchvision.transforms.v2.CutMix`` is reported next to the script's CPU targets.
4. **The default step against a plain step** (``benchmarks/callback_overhead.py``'s plain loop):
   ResNet-18, batch 128 at 224², ``SaliencyAugmenter(model, SnapMix(num_classes=10), target_layer="layer4",
   seed=0)`` with every other argument at its default; goal ≤ 1.05x (the median of step-by-step ratios),
   with the saliency-free CutMix step as a reference.
5. **Peak memory** (``torch.cuda.max_memory_allocated``) of each section, and of a plain step and a
   default step run alone.

``--dry-run`` runs every section on the CPU at a tiny size (ResNet-18 at 64², batches of 2–4, one
round): it checks that the code paths and the table work; its numbers are not measurements, and the
table says so in its first line. Nothing is downloaded (random weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

#: test files with a ``device`` fixture or a CUDA-only test (``-k cuda`` keeps their CUDA cases)
CUDA_TEST_FILES = ("tests/test_cam_device.py", "tests/test_transform_contract.py", "tests/test_puzzle.py",
                   "tests/test_recipe.py", "tests/test_transforms_bad_input.py")
CAM_GOAL = 10.0  # salaug CAM at least this many times faster than pytorch-grad-cam
LOOP_GOAL = 5.0  # a batched transform at least this many times faster than its per-sample loop
STEP_GOAL = 1.05  # the default step at most this many times a plain step


@dataclasses.dataclass
class Sizes:
    """What each section runs at: the GPU check, or the tiny dry run."""

    cam_model: str = "resnet50"
    cam_batch: int = 64
    cam_size: int = 224
    cam_rounds: int = 5
    cam_methods: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
    tf_batch: int = 128
    tf_size: int = 224
    tf_rounds: int = 7
    tf_only: tuple[str, ...] = ()  # () = every case of transform_speed.py
    step_batch: int = 128
    step_size: int = 224
    step_steps: int = 12
    step_warmup: int = 3
    step_rounds: int = 3
    memory_steps: int = 3


DRY = Sizes(cam_model="resnet18", cam_batch=2, cam_size=64, cam_rounds=1, cam_methods=("gradcam",), tf_batch=4,
            tf_size=32, tf_rounds=1, tf_only=("SaliencyMix", "SnapMix"), step_batch=4, step_size=64, step_steps=2,
            step_warmup=1, step_rounds=1, memory_steps=1)


@dataclasses.dataclass
class Row:
    check: str
    measured: str
    goal: str
    met: str  # "yes", "NO" or "–" (reported, no goal)


@dataclasses.dataclass
class Section:
    name: str
    rows: list[Row]
    seconds: float
    peak_mib: float | None


_DRY = False  # set by main: a dry run judges no goal (its numbers are not measurements)


def _met(ok: bool) -> str:
    return "dry run" if _DRY else "yes" if ok else "NO"


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float | None:
    """Peak CUDA memory allocated since the last reset, MiB (``None`` on the CPU)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def run_section(name: str, device: str, body: Callable[[], list[Row]]) -> Section:
    """Time ``body`` and record its peak memory; an exception becomes a failed row, not a crash."""
    _peak_reset(device)
    start = time.perf_counter()
    try:
        rows = body()
    except Exception as err:
        rows = [Row(name, f"error: {type(err).__name__}: {str(err)[:200]}", "runs", "NO")]
    return Section(name, rows, time.perf_counter() - start, _peak(device))


# --------------------------------------------------------------------------- sections
def cuda_tests(dry_run: bool, workers: int) -> list[Row]:
    """``pytest --device cuda -k cuda`` on :data:`CUDA_TEST_FILES` (collected only in a dry run)."""
    files = [f for f in CUDA_TEST_FILES if os.path.isfile(os.path.join(ROOT, f))]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    if dry_run:
        cmd += ["--device", "cpu", "--collect-only", "-k", "cpu or cuda"]
    else:
        cmd += ["--device", "cuda", "-k", "cuda"] + (["-n", str(workers)] if workers > 1 else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()
    summary = tail[-1] if tail else "no output"
    if dry_run:
        found = re.search(r"(\d+)(?:/\d+)? tests? collected", summary)
        count = found[1] if found else "?"
        return [Row(f"CUDA tests ({len(files)} files, `-k cuda`)", f"dry run: {count} device tests collected, not run",
                    "all pass", "dry run" if done.returncode == 0 else "NO")]
    return [Row(f"CUDA tests ({len(files)} files, `pytest --device cuda -k cuda`)", summary.strip("= "),
                "all pass", _met(done.returncode == 0))]


def cam_section(device: str, sizes: Sizes) -> list[Row]:
    """Each gradient CAM of salaug against pytorch-grad-cam's, interleaved rounds (cam_speed.py's jobs)."""
    from benchmarks import cam_speed

    if cam_speed.pgc is None:
        return [Row("CAM against pytorch-grad-cam", "pytorch-grad-cam is not installed (pip install grad-cam)",
                    f">= {CAM_GOAL:g}x", "NO")]
    cam_speed.tcm = None  # torchcam is not a goal here
    model = cam_speed.build(sizes.cam_model, device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(sizes.cam_batch, 3, sizes.cam_size, sizes.cam_size, generator=gen).to(device)
    targets = torch.randint(0, 1000, (sizes.cam_batch,), generator=gen).to(device)
    jobs = cam_speed.build_jobs(model, list(sizes.cam_methods), images, targets)
    t = cam_speed.measure(jobs, sizes.cam_rounds, 1, "wall")
    rows = []
    for m in sizes.cam_methods:
        ours, theirs = t[f"salaug:{m}"], t[f"pgc:{m}"]
        ratio = cam_speed._ratio(theirs, ours)
        times = f"{statistics.median(theirs) * 1e3:.1f} / {statistics.median(ours) * 1e3:.1f} ms"
        rows.append(Row(f"CAM {m}, {sizes.cam_model} B={sizes.cam_batch} {sizes.cam_size}²: pytorch-grad-cam / salaug",
                        f"{times} = {ratio:.1f}x",
                        f">= {CAM_GOAL:g}x", _met(ratio >= CAM_GOAL)))
    return rows


def transform_section(device: str, sizes: Sizes) -> list[Row]:
    """Each transform: batched against its per-sample loop and against v2.CutMix (transform_speed.py's cases)."""
    from benchmarks import transform_speed as ts

    k = 10
    x, s, y = ts.make_batch(sizes.tf_batch, sizes.tf_size, k, device)
    cases = ts.make_cases(k)
    if sizes.tf_only:
        cases = {n: c for n, c in cases.items() if n in sizes.tf_only}
    med = ts.time_cases(x, s, y, k, cases, sizes.tf_rounds)
    base = med["v2.CutMix"]
    rows = []
    for name, (_, _, target) in cases.items():
        speedup = med[name + " loop"] / med[name]
        rows.append(Row(f"{name}, B={sizes.tf_batch} {sizes.tf_size}²: per-sample loop / batched",
                        f"{med[name + ' loop'] * 1e3:.1f} / {med[name] * 1e3:.2f} ms = {speedup:.1f}x",
                        f">= {LOOP_GOAL:g}x", _met(speedup >= LOOP_GOAL)))
        rows.append(Row(f"{name}: batched / v2.CutMix ({base * 1e3:.2f} ms)", f"{med[name] / base:.2f}x",
                        f"report (CPU target {target})", "–"))
    return rows


def step_configurations(num_classes: int) -> dict[str, Any]:
    """The plain step, the saliency-free CutMix step and the default step (``model -> augmenter``)."""
    import salaug
    from benchmarks import callback_overhead as co

    return {"plain step": None,
            "CutMix step (SaliencyMix on flat saliency)": co.flat_mix(salaug.SaliencyMix, num_classes),
            "default step": lambda model: salaug.SaliencyAugmenter(model, salaug.SnapMix(num_classes=num_classes),
                                                                   target_layer="layer4", seed=0)}


def step_section(device: str, sizes: Sizes) -> list[Row]:
    """The default step and the CutMix step against a plain step (callback_overhead.py's plain loop)."""
    from benchmarks import callback_overhead as co

    k = 10
    gen = torch.Generator().manual_seed(0)
    n = sizes.step_steps + sizes.step_warmup
    batches = [(torch.randn(sizes.step_batch, 3, sizes.step_size, sizes.step_size, generator=gen).to(device),
                torch.randint(0, k, (sizes.step_batch,), generator=gen).to(device)) for _ in range(n)]
    configs = step_configurations(k)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(sizes.step_rounds):
        for name, ts in co.loop_round(configs, batches, sizes.step_warmup, device, k).items():
            times[name].extend(ts)
    plain = times["plain step"]
    rows = []
    for name in configs:
        if name == "plain step":
            continue
        ratio = statistics.median(t / p for t, p in zip(times[name], plain, strict=True))
        default = name == "default step"
        rows.append(Row(f"{name} / plain step, ResNet-18 B={sizes.step_batch} {sizes.step_size}²",
                        f"{statistics.median(times[name]) * 1e3:.1f} / {statistics.median(plain) * 1e3:.1f} ms "
                        f"= {ratio:.3f}x", f"<= {STEP_GOAL:g}x" if default else "report",
                        _met(ratio <= STEP_GOAL) if default else "–"))
    # peak memory of a plain step and of a default step, each run alone
    peaks = {}
    for name in ("plain step", "default step"):
        _peak_reset(device)
        run = co.LoopRun(configs[name], device, k, "resnet18", sizes.step_size)
        for images, labels in batches[:sizes.memory_steps]:
            run.step(images, labels)
        peaks[name] = _peak(device)
        del run
    if peaks["plain step"] is None or peaks["default step"] is None:
        measured = "n/a on the CPU (steps run)"
    else:
        extra = peaks["default step"] / peaks["plain step"] - 1
        measured = f"{peaks['plain step']:.0f} / {peaks['default step']:.0f} MiB ({extra:+.1%})"
    rows.append(Row(f"peak memory: plain step / default step, ResNet-18 B={sizes.step_batch} {sizes.step_size}²",
                    measured, "report", "–"))
    return rows


# --------------------------------------------------------------------------- the table
def describe_device(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return f"CPU, {torch.get_num_threads()} threads"


def format_table(sections: list[Section], device: str, dry_run: bool, wall: float) -> str:
    """One Markdown table: check, measured, goal, met, the section's wall time and peak memory."""
    head = ("**DRY RUN** on the CPU at tiny sizes: the code paths and the table format only; these numbers are "
            "not measurements.\n\n" if dry_run else "")
    lines = [head + f"Device check, {time.strftime('%Y-%m-%d')}: {describe_device(device)}; torch {torch.__version__}; "
             f"total {wall:.0f} s.", "",
             "| section | check | measured | goal | met | section time (s) | section peak memory (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for sec in sections:
        peak = "–" if sec.peak_mib is None else f"{sec.peak_mib:.0f}"
        for i, row in enumerate(sec.rows):
            first = i == 0
            lines.append(f"| {sec.name if first else ''} | {row.check} | {row.measured} | {row.goal} | {row.met} | "
                         f"{f'{sec.seconds:.0f}' if first else ''} | {peak if first else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the code paths and the table")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    ap.add_argument("--out", default=None,
                    help="write the table here (default benchmarks/results/gpu_check.md; a dry run writes only "
                         "when --out is given)")
    ap.add_argument("--test-workers", type=int, default=4, help="pytest-xdist workers for the CUDA tests")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "cam", "transforms", "step"],
                    help="sections to leave out")
    args = ap.parse_args(argv)
    global _DRY
    _DRY = args.dry_run
    device = args.device or ("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(1)  # tiny tensors: one thread is faster, and kind to a shared machine
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("CUDA is not available here: run on a GPU machine, or check the script with --dry-run")
    sizes = DRY if args.dry_run else Sizes()
    bodies: dict[str, Callable[[], list[Row]]] = {
        "tests": lambda: cuda_tests(args.dry_run, args.test_workers),
        "cam": lambda: cam_section(device, sizes),
        "transforms": lambda: transform_section(device, sizes),
        "step": lambda: step_section(device, sizes),
    }
    start = time.perf_counter()
    sections = []
    for key, body in bodies.items():
        if key in args.skip:
            continue
        print(f"[gpu_check] {key} ...", flush=True)
        sections.append(run_section(key, device, body))
    table = format_table(sections, device, args.dry_run, time.perf_counter() - start)
    print(table)
    out = args.out or (None if args.dry_run else os.path.join(ROOT, "benchmarks", "results", "gpu_check.md"))
    if out:
        with open(out, "w") as f:
            f.write(f"Command: `bash benchmarks/gpu_check.sh {' '.join(argv if argv is not None else sys.argv[1:])}`"
                    f"\n\n{table}\n")
        print(f"wrote {out}")
    return 0 if all(r.met != "NO" for s in sections for r in s.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
