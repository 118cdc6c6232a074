"""CAM numerics on this machine: salaug's float32 maps against the exact (float64) computation.

For each method, the same CAM is computed on a float64 copy of the model (the exact maps) and in
float32 three ways: salaug's default (the CPU memory layout it chooses on the first call), forced
contiguous, forced channels-last; pytorch-grad-cam's float32 maps are compared too when it is
installed. Also the target layer's gradient error in each layout (relative norm against float64),
the quantity an inexact convolution backward shows first. Random weights, no downloads. Prints a
Markdown table of the largest absolute map difference (maps in ``[0, 1]``).

    python benchmarks/cam_numerics.py                             # ResNet-34 layer3, 8 images at 224 px
    python benchmarks/cam_numerics.py --arch resnet18 --layer layer4 --size 128
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch
import torchvision

import salaug.cam as sc

try:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError:  # pragma: no cover
    pgc = None

METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"]
REFERENCE = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
             "layercam": "LayerCAM", "eigencam": "EigenCAM"}


def layer_gradient(model: torch.nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed target logits with respect to the layer's output."""
    saved = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: saved.__setitem__("a", out))
    try:
        logits = model(images.requires_grad_(False))
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), saved["a"])
    finally:
        handle.remove()
    return grad.contiguous()


def cam_with_layout(name: str, model: torch.nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor,
                    channels_last: bool | None) -> tuple[torch.Tensor, bool | None]:
    """The CAM's maps on its second call and the layout it used (``None``: the default choice, made
    on the first call; else forced)."""
    cam = sc.create_cam(name, model, layer)
    if channels_last is not None:
        cam._channels_last = channels_last  # a benchmark's forced layout; users get the default
    cam(images, targets)
    return cam(images, targets), cam._channels_last


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(arch: str, layer: str, size: int, batch: int, seed: int) -> str:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    exact_model = copy.deepcopy(model).double()
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    targets = torch.arange(batch) % 10
    g64 = layer_gradient(exact_model, layer, images.double(), targets)
    grad_error = {}
    for label, fmt in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last)):
        g = layer_gradient(model, layer, images.contiguous(memory_format=fmt), targets).double()
        grad_error[label] = float((g - g64).norm() / g64.norm())
    threads = torch.get_num_threads()
    rows = [f"{cpu_name()}: {arch} `{layer}`, {batch} images at {size} px, {threads} threads; the layer's "
            f"gradient off float64 by {grad_error['contiguous']:.1e} (contiguous) and "
            f"{grad_error['channels-last']:.1e} (channels-last) in relative norm.", "",
            "| method | salaug default (layout) | contiguous | channels-last | pytorch-grad-cam |",
            "|---|---|---|---|---|"]
    for name in METHODS:
        exact, _ = cam_with_layout(name, exact_model, layer, images.double(), targets, None)
        cells = []
        for forced in (None, False, True):
            maps, used = cam_with_layout(name, model, layer, images, targets, forced)
            gap = f"{float((maps.double() - exact).abs().amax()):.1e}"
            cells.append(gap + (f" ({'channels-last' if used else 'contiguous'})" if forced is None else ""))
        if name == "eigencam":
            cells.append("n/a (its sign is arbitrary)")
        elif pgc is not None:
            with getattr(pgc, REFERENCE[name])(model, [model.get_submodule(layer)]) as ref:
                out = torch.from_numpy(ref(images, [ClassifierOutputTarget(int(t)) for t in targets]))
            cells.append(f"{float((out.double() - exact[:, 0]).abs().amax()):.1e}")
        else:
            cells.append("not installed")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(run(args.arch, args.layer, args.size, args.batch, args.seed))


if __name__ == "__main__":
    main()
