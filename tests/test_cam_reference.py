"""salaug.cam against pytorch-grad-cam 1.5.7 on the same models, layers and per-image targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import salaug.cam as sc

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

REF = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
    "scorecam": pgc.ScoreCAM,
    "ablationcam": pgc.AblationCAM,
}
GRADIENT = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]


def _reference(name, model, layer, images, targets, reshape=None, batch_size=None):
    kwargs = {"reshape_transform": reshape} if reshape is not None else {}
    if name == "ablationcam" and batch_size is not None:
        kwargs["batch_size"] = batch_size
    with REF[name](model, [layer], **kwargs) as ref:
        if name == "scorecam" and batch_size is not None:
            ref.batch_size = batch_size
        out = ref(images, [ClassifierOutputTarget(int(t)) for t in targets])
    return torch.from_numpy(out)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def mobilenet_v2():
    torch.manual_seed(1)
    return torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(3, 3, 128, 128, generator=g), torch.tensor([1, 4, 7])


def _layer(model, arch):
    return model.layer4 if arch == "resnet18" else model.features[-1]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_methods_match_pytorch_grad_cam(name, arch, request, batch):
    model = request.getfixturevalue(arch)
    images, targets = batch
    layer = _layer(model, arch)
    ours = sc.CAM_METHODS[name](model, layer)(images, targets)
    assert ours.shape == (3, 1, 128, 128) and ours.dtype == torch.float32
    ref = _reference(name, model, layer, images, targets)
    assert float(ref.amax()) > 0.5  # a non-trivial reference
    torch.testing.assert_close(ours[:, 0], ref, atol=1e-4, rtol=0)



@pytest.fixture(scope="module")
def resnet34():
    torch.manual_seed(3)
    return torchvision.models.resnet34(weights=None, num_classes=10).eval()


@pytest.mark.parametrize("arch, layer", [("resnet18", "layer4"), ("resnet34", "layer3")])
@pytest.mark.parametrize("name", [*GRADIENT, "eigencam"])
def test_float32_maps_match_a_float64_computation_on_this_machine(name, arch, layer, request, batch):
    # The engine's own arithmetic (and its CPU memory layout, chosen on the first call) against the
    # exact computation: the same CAM on a float64 copy of the model, on the machine running the tests.
    import copy

    model = request.getfixturevalue(arch)
    images, targets = batch
    ours = sc.CAM_METHODS[name](model, layer)(images, targets)
    exact = sc.CAM_METHODS[name](copy.deepcopy(model).double(), layer)(images.double(), targets)
    assert float(exact.amax()) > 0.5
    torch.testing.assert_close(ours, exact.float(), atol=1e-4, rtol=0)

def _eigen_reference(model, layer, images, flip_to_ours=True):
    """pytorch-grad-cam's EigenCAM pipeline with our sign rule applied to its projection."""
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach().clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    a = acts["a"].numpy()
    proj = get_2d_projection(a)  # (B, h, w), sign as returned by LAPACK
    centred_mean = a.mean(axis=1) - a.mean(axis=(1, 2, 3))[:, None, None]
    sign = np.where((proj * centred_mean).sum(axis=(1, 2)) < 0, -1.0, 1.0).astype(np.float32)
    fixed = proj * sign[:, None, None]
    size = (images.shape[-1], images.shape[-2])
    out = scale_cam_image(scale_cam_image(np.maximum(fixed, 0), size))
    return torch.from_numpy(out), torch.from_numpy(sign)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_eigencam_matches_pytorch_grad_cam_up_to_sign(arch, request, batch):
    model = request.getfixturevalue(arch)
    images, _ = batch
    layer = _layer(model, arch)
    ours = sc.EigenCAM(model, layer)(images)[:, 0]
    expected, sign = _eigen_reference(model, layer, images)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    # where LAPACK's arbitrary sign agrees with ours, pytorch-grad-cam's own output is identical
    ref = _reference("eigencam", model, layer, images, [0, 0, 0])
    same = (ref - expected).abs().flatten(1).amax(1) < 1e-4
    for i in range(3):
        if same[i]:
            torch.testing.assert_close(ours[i], ref[i], atol=1e-4, rtol=0)


def test_eigencam_sign_correlates_with_mean_activation(resnet18, batch):
    images, _ = batch
    cam = sc.EigenCAM(resnet18, "layer4")(images, output_size="feature")
    acts = {}
    h = resnet18.layer4.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        resnet18(images)
    h.remove()
    assert bool((_pearson(cam, acts["a"].mean(1)) > 0).all())


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_perturbation_methods_match_pytorch_grad_cam_resnet18(name, resnet18):
    # 48x48 gives the same 2x2 layer4 map as 64x64 at half the cost of B * C = 512 forwards
    images = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([2])
    ours = sc.CAM_METHODS[name](resnet18, "layer4", batch_size=128)(images, targets)
    ref = _reference(name, resnet18, resnet18.layer4, images, targets, batch_size=128)
    assert float(ref.amax()) > 0.5
    torch.testing.assert_close(ours[:, 0], ref, atol=1e-4, rtol=0)


class SmallNet(nn.Module):
    """A small CNN (second architecture for the perturbation methods, cheap enough for CI)."""

    def __init__(self, final_act: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            final_act,
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_perturbation_methods_match_pytorch_grad_cam_second_arch(name):
    torch.manual_seed(4)
    model = SmallNet(nn.ReLU()).eval()
    images = torch.randn(3, 3, 24, 24)
    targets = torch.tensor([0, 3, 4])
    ours = sc.CAM_METHODS[name](model, "features", batch_size=7)(images, targets)  # chunks span images
    ref = _reference(name, model, model.features, images, targets)
    torch.testing.assert_close(ours[:, 0], ref, atol=1e-4, rtol=0)


def test_ablationcam_negative_activations_match_unbatched_reference():
    # activations with a negative minimum are ablated to min - 1e7; pytorch-grad-cam re-reads the
    # minimum after each in-place ablation, which only leaves its value unchanged with batch_size=1
    torch.manual_seed(5)
    model = SmallNet(nn.Identity()).eval()
    images = torch.randn(2, 3, 24, 24)
    targets = torch.tensor([1, 2])
    ours = sc.AblationCAM(model, "features", batch_size=5)(images, targets)
    ref = _reference("ablationcam", model, model.features, images, targets, batch_size=1)
    torch.testing.assert_close(ours[:, 0], ref, atol=1e-4, rtol=0)


def test_vit_gradcam_matches_pytorch_grad_cam():
    torch.manual_seed(6)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=6
    ).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([1, 5])
    layer = vit.encoder.layers[-1].ln_1
    for name in ("gradcam", "layercam"):
        ours = sc.CAM_METHODS[name](vit, layer, reshape=sc.vit_reshape)(images, targets)
        ref = _reference(name, vit, layer, images, targets, reshape=sc.vit_reshape)
        assert float(ref.amax()) > 0.5
        torch.testing.assert_close(ours[:, 0], ref, atol=1e-4, rtol=0)


def _without_inplace(model: nn.Module) -> nn.Module:
    """The same network with every in-place ReLU made out-of-place (identical function)."""
    import copy

    clone = copy.deepcopy(model)
    for m in clone.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return clone


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "gradcam", "eigencam"])
def test_inplace_relu_after_target_layer_matches_reference(name, resnet18):
    # resnet18's stem `bn1` feeds ReLU(inplace=True): a captured view of bn1's output would be
    # overwritten by the ReLU. pytorch-grad-cam keeps such a view on CPU, so its reference is taken
    # on the same network without in-place ops; both versions of the model compute the same function.
    plain = _without_inplace(resnet18)
    images = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(7))
    targets = torch.tensor([2])
    ours = sc.CAM_METHODS[name](resnet18, "bn1", **({"batch_size": 64} if name in ("scorecam", "ablationcam") else {}))
    out = ours(images, targets)
    if name == "eigencam":
        ref, _ = _eigen_reference(plain, plain.bn1, images)
    else:
        # batch_size=1: pytorch-grad-cam's ablation value only stays fixed then (bn1 has negatives)
        ref = _reference(name, plain, plain.bn1, images, targets, batch_size=1 if name == "ablationcam" else 64)
    assert float(ref.amax()) > 0.5
    torch.testing.assert_close(out[:, 0], ref, atol=1e-4, rtol=0)
