"""Class activation maps for any torchvision classifier, written as an overlay grid PNG.

No training and no augmentation: just ``salaug.create_cam(method, model, layer)`` and
``salaug.viz``. The model is randomly initialised unless ``--weights`` gives a local
``state_dict`` file (nothing is downloaded), so with random weights the maps show the method and
the plumbing, not what a trained network looks at.

Images: image files given on the command line, or (by default) ``ClutteredObjects`` validation
images, whose true object boxes are drawn on the first row.

The target layer is found automatically for CNNs (the last layer with a spatial output: ResNet's
``layer4``, VGG's and MobileNet's ``features``) or given with ``--layer``. Vision transformers
output tokens ``(B, N, D)``, not feature maps: the CAM needs an explicit layer (by default the
last encoder block's ``ln_1``) and ``reshape=salaug.vit_reshape``, which drops the class token and
lays the patch tokens out on their ``(h, w)`` grid.

Run::

    python examples/cam_only.py                                   # resnet18, gradcam, 8 images
    python examples/cam_only.py --arch vgg11 --method gradcam++ --out vgg.png
    python examples/cam_only.py --arch vit_b_16 --method layercam
    python examples/cam_only.py --arch resnet50 --weights resnet50.pt cat.jpg dog.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision
import torchvision.transforms.functional as TF
from torch import Tensor, nn

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import salaug
from salaug.viz import draw_boxes, overlay, save_grid

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(arch: str, weights: str | None, size: int) -> nn.Module:
    """A torchvision classifier with random weights, or weights from a local state_dict file."""
    kwargs = {}
    if arch.startswith("vit_"):
        # torchvision ViTs are built for one image size (the position embeddings); ImageNet weights
        # need the default 224, a random model can use any multiple of the patch size.
        kwargs["image_size"] = size
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    elif arch.startswith("vit_"):
        # torchvision zero-initialises the ViT classifier: every logit is 0 and every gradient CAM
        # of a random ViT is all zero. Random head weights make the demo show something.
        nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


def make_cam(method: str, model: nn.Module, arch: str, layer: str | None) -> salaug.BaseCAM:
    """The CAM object; ViTs get an explicit token layer and ``reshape=vit_reshape``."""
    if arch.startswith("vit_"):
        # The last block's first LayerNorm: its output tokens still feed the classifier through
        # attention, so their gradients are informative (the pytorch-grad-cam convention).
        # Integer parts of a dotted name index nn.Sequential children and may be negative.
        return salaug.create_cam(method, model, layer or "encoder.layers.-1.ln_1", reshape=salaug.vit_reshape)
    return salaug.create_cam(method, model, layer)  # layer=None: found by a probe forward


def load_images(paths: list[str], size: int) -> Tensor:
    """Image files -> ``(B, 3, size, size)`` float in [0, 1] (resize the short side, centre crop)."""
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as img:
            x = TF.pil_to_tensor(img.convert("RGB"))
        x = TF.center_crop(TF.resize(x, size, antialias=True), [size, size])
        out.append(x.float() / 255)
    return torch.stack(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="*", help="image files (default: ClutteredObjects validation images)")
    p.add_argument("--arch", default="resnet18",
                   help="any torchvision classification model: resnet18, mobilenet_v3_small, vgg11, vit_b_16, ...")
    p.add_argument("--weights", default=None, help="local state_dict file (.pt); default: random weights")
    p.add_argument("--method", default="gradcam", choices=sorted(salaug.CAM_METHODS))
    p.add_argument("--layer", default=None, help="dotted target layer name, e.g. layer4 or features.-1 (default: auto)")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted class)")
    p.add_argument("--size", type=int, default=224, help="image side the model sees")
    p.add_argument("--num-images", type=int, default=8, help="how many ClutteredObjects images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="cam_overlays.png")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)  # the random initialisation
    boxes = None
    if args.images:
        images = load_images(args.images, args.size)
    else:
        ds = salaug.ClutteredObjects("val", size=args.size, length=args.num_images, seed=args.seed)
        images, _labels, boxes = (torch.stack([torch.as_tensor(ds[i][j]) for i in range(len(ds))]) for j in range(3))

    model = build_model(args.arch, args.weights, args.size)
    cam = make_cam(args.method, model, args.arch, args.layer)

    # The model sees ImageNet-normalised images; the overlays are drawn on the [0, 1] originals.
    x = TF.normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    targets = None if args.target is None else torch.full((len(x),), args.target)
    maps = cam(x, targets)  # (B, 1, H, W) in [0, 1], at the images' resolution
    with torch.no_grad():
        probs = model(x).softmax(1)
    shown = probs.argmax(1) if targets is None else targets
    captions = [f"class {int(c)} p={float(probs[i, c]):.3f}" for i, c in enumerate(shown)]

    first = draw_boxes(images, boxes, color="white") if boxes is not None else images
    rows = {"images" + (" (true boxes)" if boxes is not None else ""): first,
            f"{args.method} @ {cam.target_layer_name}": overlay(images, maps)}
    path = save_grid(rows, args.out, captions=captions, scale=1 if args.size >= 128 else None)
    print(f"{args.arch}: {args.method} on layer {cam.target_layer_name!r}, maps {tuple(maps.shape)}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
