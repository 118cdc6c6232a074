"""Fine-tuning a pretrained torchvision backbone on a small set, with ``salaug.SaliencyAugmenter``.

The setting most users of saliency-guided mixing are in: a backbone pretrained elsewhere, a new head
for the target's classes, a few dozen images per class, the whole network fine-tuned (or, with
``--freeze``, the head alone). The augmenter is built with its defaults::

    aug = salaug.SaliencyAugmenter(model, salaug.SnapMix(num_classes=K), target_layer="layer4", seed=0)
    images, soft_labels = aug(salaug.crop_flip(images)[0], labels)
    loss = F.cross_entropy(model(images), soft_labels)

Weights: ``--weights FILE`` loads a local ``state_dict`` of the same torchvision architecture (for
example ``torch.save(torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict(), "r18.pt")``
run once where you have the download; this script never downloads anything). Without it the backbone
is randomly initialised, which shows the code path but not what pretraining buys.

Read ``docs/evidence.md`` ("Fine-tuning") before mixing while fine-tuning: on the benchmark's
fine-tuning cells the defaults did not beat training without mixing (``--no-salaug`` here); the page
gives the numbers and the recipe it measured.

Data: the embedded ``ClutteredObjects`` (nothing is downloaded), the first ``--classes`` shapes,
``--per-class`` training images each; test accuracy in-distribution and on 40 % occlusion.

Run::

    python examples/finetune.py --weights r18.pt                  # 30 images per class, 30 epochs
    python examples/finetune.py --weights r18.pt --no-salaug      # the same fine-tuning without mixing
    python examples/finetune.py --weights r18.pt --freeze         # a frozen backbone, the head alone
    python examples/finetune.py --epochs 1 --per-class 4 --size 32 --test-size 20   # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

try:
    import salaug
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import salaug

from salaug.datasets import ClutteredObjects

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # the ImageNet statistics torchvision's weights expect
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
#: the head to replace and the CAM layer of each supported torchvision family
FAMILIES = {"resnet": ("fc", "layer4"), "mobilenet_v3": ("classifier.3", "features"),
            "efficientnet": ("classifier.1", "features"), "convnext": ("classifier.2", "features")}


def family(arch: str) -> tuple[str, str]:
    for prefix, names in FAMILIES.items():
        if arch.startswith(prefix):
            return names
    raise SystemExit(f"--arch {arch}: supported families are {', '.join(f'{p}*' for p in FAMILIES)}")


def build(arch: str, weights: str | None, num_classes: int) -> tuple[nn.Module, str, str]:
    """The torchvision ``arch`` with local weights (or random ones) and a new ``num_classes`` head.

    Returns ``(model, head_name, cam_layer)``.
    """
    head_name, layer = family(arch)
    model = getattr(torchvision.models, arch)(weights=None)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)  # strict: a file of another architecture fails here, with the names
    parent_name, _, attr = head_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    new = nn.Linear(old.in_features, num_classes)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    return model, head_name, layer


def load(split: str, n: int, args: argparse.Namespace, **shift: object) -> tuple[Tensor, Tensor]:
    ds = ClutteredObjects(split, size=args.size, length=n, num_classes=args.classes, seed=args.seed, **shift)
    batch = ds.render(range(n))
    return batch["image"], batch["label"]


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device) -> float:
    model.eval()
    correct = 0
    for x, y in zip(images.split(256), labels.split(256), strict=True):
        correct += int((model(((x - MEAN) / STD).to(device)).argmax(1).cpu() == y).sum())
    return correct / max(len(labels), 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", help="a torchvision classifier (resnet*, mobilenet_v3_*, ...)")
    ap.add_argument("--weights", default=None, help="a local state_dict file of --arch (nothing is downloaded)")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=30, help="training images per class")
    ap.add_argument("--size", type=int, default=96, help="image side (ResNets: a 3 x 3 layer4 map at 96)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (OneCycle)")
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--freeze", action="store_true", help="train the new head only (the backbone frozen, eval mode)")
    ap.add_argument("--no-salaug", action="store_true", help="the same fine-tuning without mixing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    model, head_name, layer = build(args.arch, args.weights, args.classes)
    model.to(device)
    head = model.get_submodule(head_name)
    if args.freeze:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    x_train, y_train = load("train", args.per_class * args.classes, args)
    steps = args.epochs * -(-len(y_train) // args.batch_size)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    aug = None
    if not args.no_salaug:
        # the defaults (labels from the forward; behind a frozen backbone the head's gradients suffice)
        aug = salaug.SaliencyAugmenter(model, salaug.SnapMix(num_classes=args.classes), target_layer=layer,
                                       seed=args.seed)
    source = "local weights " + args.weights if args.weights else "random initialisation (no --weights)"
    print(f"{args.arch} from {source}, new {args.classes}-class head at {head_name!r}, "
          f"{'head only' if args.freeze else 'whole network'}; {len(y_train)} training images at {args.size} px; "
          f"{'no mixing' if aug is None else f'SnapMix via SaliencyAugmenter (labels_from={aug.labels_from!r})'}")
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        if args.freeze:
            model.eval()  # the frozen backbone keeps its BatchNorm statistics
            head.train()
        total, seen = 0.0, 0
        for idx in torch.randperm(len(y_train), generator=gen).split(args.batch_size):
            images = salaug.crop_flip(x_train[idx], padding=args.size // 8, generator=gen)[0]
            images, labels = ((images - MEAN) / STD).to(device), y_train[idx].to(device)
            target: Tensor = labels
            if aug is not None and epoch < args.epochs - 1:  # no mixing in the last epoch
                images, target = aug(images, labels)
            loss = F.cross_entropy(model(images), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / seen:.3f} [{time.perf_counter() - start:.0f}s]")
    x_test, y_test = load("test", args.test_size, args)
    x_occ, y_occ = load("test", args.test_size, args, occlusion=0.4)
    print(f"test accuracy: in-distribution {accuracy(model, x_test, y_test, device):.3f}, "
          f"40% occlusion {accuracy(model, x_occ, y_occ, device):.3f}")


if __name__ == "__main__":
    main()
