"""Hostile inputs to the CAM engine: each ends in a correct result or an error naming problem and fix.

The rule for non-finite values, the same for all eight methods: where value checks run (CPU
tensors by default) NaN / inf images or (B, K) targets raise; wherever a map would still hold a
NaN or inf, that image's map is all zeros. No method returns a NaN map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import salaug.cam as sc

# record() / from_logits() are deprecated (tests/test_deprecations.py checks the warning); their behaviour is
# still tested here until they are removed in 0.5.0.
pytestmark = pytest.mark.filterwarnings("ignore:.*record\\(\\) / from_logits\\(\\) are deprecated:DeprecationWarning")

ALL = list(sc.CAM_METHODS)
FUSED = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"]
USES_TARGETS = [n for n in ALL if n != "eigencam"]


def make_cam(name, model, layer="features", **kw):
    if name in ("scorecam", "ablationcam"):
        kw.setdefault("batch_size", 16)
    return sc.create_cam(name, model, layer, **kw)


class Net(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
            nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.features[1].running_mean.normal_(0, 0.1)
        model.features[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def images():
    return torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def hooks_of(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _with_bad_pixel(images, value):
    bad = images.clone()
    bad[1, 0, 4, 5] = value
    return bad


# ------------------------------------------------------------------------------ NaN / inf
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ALL)
def test_nonfinite_images_raise_under_value_checks(name, value, net, images):
    with pytest.raises(ValueError, match=r"images contain 1 NaN or inf .* in sample\(s\) \[1\].*nan_to_num"):
        make_cam(name, net)(_with_bad_pixel(images, value))
    assert hooks_of(net) == 0


@pytest.mark.parametrize("name", ALL)
def test_nonfinite_image_gives_a_zero_map_without_value_checks(name, net, images, no_value_checks):
    cam = make_cam(name, net)
    clean = cam(images)
    out = cam(_with_bad_pixel(images, float("nan")))
    assert bool(torch.isfinite(out).all())
    assert float(out[1].abs().max()) == 0.0  # the rule: no evidence, never NaN
    torch.testing.assert_close(out[[0, 2]], clean[[0, 2]], atol=1e-5, rtol=0)  # others unaffected


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ALL)
def test_nonfinite_soft_targets_raise_under_value_checks(name, value, net, images):
    targets = torch.full((3, 5), 0.2)
    targets[0, 1] = value
    with pytest.raises(ValueError, match=r"\(B, K\) targets contain .*finite class weights"):
        make_cam(name, net)(images, targets)


@pytest.mark.parametrize("name", USES_TARGETS)
def test_nonfinite_soft_targets_give_zero_maps_without_value_checks(name, net, images, no_value_checks):
    targets = torch.full((3, 5), 0.2)
    clean = make_cam(name, net)(images, targets)
    targets[0, 1] = float("nan")
    out = make_cam(name, net)(images, targets)
    assert bool(torch.isfinite(out).all()) and float(out[0].abs().max()) == 0.0
    torch.testing.assert_close(out[1:], clean[1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FUSED)
def test_from_logits_nan_targets_raise_and_nan_logits_give_zero_maps(name, net, images):
    cam = sc.create_cam(name, net, "features")
    if name != "eigencam":
        targets = torch.full((3, 5), 0.2)
        targets[2, 0] = float("nan")
        with cam.record():
            logits = net(images)
        with pytest.raises(ValueError, match="finite"):
            cam.from_logits(logits, targets)
    with cam.record():
        logits = net(_with_bad_pixel(images, float("nan")))  # the caller's own forward: no check
    out = cam.from_logits(logits)
    assert bool(torch.isfinite(out).all()) and float(out[1].abs().max()) == 0.0


def test_finalize_cam_zeroes_nonfinite_maps_only():
    raw = torch.rand(3, 4, 4)
    raw[0, 1, 1] = float("nan")
    raw[2, 0, 0] = float("inf")
    out = sc.base.finalize_cam(raw, (8, 8))
    assert float(out[0].abs().max()) == 0.0 and float(out[2].abs().max()) == 0.0
    torch.testing.assert_close(out[1:2], sc.base.finalize_cam(raw[1:2], (8, 8)))
    assert float(out[1].max()) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------ AblationCAM zero score
class ZeroScore(nn.Module):
    """Binary images; class 0 = f0 + f1 - 2 f2 is exactly 0 for a half-bright image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 1.0, -1.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0, -2.0], [0.0, 0.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_ablationcam_zero_target_score_gives_the_drop_map_not_nan():
    model = ZeroScore().eval()
    images = torch.zeros(2, 1, 8, 8)
    images[:, :, :, :4] = 1.0  # left half bright: f = (0.5, 0.5, 0.5), score exactly 0
    with torch.no_grad():
        assert float(model(images)[0, 0]) == 0.0
    out = sc.AblationCAM(model, "act", batch_size=2)(images, torch.tensor([0, 0]), output_size="feature")
    # drops w = s - s_c = (0.5, 0.5, -1): cam = ReLU(x - (1 - x)) = the bright half
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, images)
    # a non-zero score keeps pytorch-grad-cam's (s - s_c) / s
    nonzero = sc.AblationCAM(model, "act")(images, torch.tensor([1, 1]), output_size="feature")
    assert bool(torch.isfinite(nonzero).all()) and float(nonzero.max()) > 0.5


# ------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", ALL)
def test_any_float_dtype_images_on_a_float32_model(name, dtype, net, images):
    cam = make_cam(name, net)
    ref = cam(images)
    out = cam(images.to(dtype))  # cast to the model's float32 (was: "Input type (c10::Half) and bias type")
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    tol = 1e-5 if dtype == torch.float64 else 0.1
    assert float((out - ref).abs().mean()) < tol


@pytest.mark.parametrize("name", ALL)
def test_half_images_under_cpu_autocast(name, net, images):
    ref = make_cam(name, net)(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = make_cam(name, net)(images.half())
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert float((out - ref).abs().mean()) < 0.1


@pytest.mark.parametrize("name", ["gradcam", "eigencam", "scorecam", "ablationcam"])
def test_float32_images_on_a_bfloat16_model(name, net, images):
    ref = make_cam(name, net)(images)
    net.to(torch.bfloat16)
    out = make_cam(name, net)(images)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert float((out - ref).abs().mean()) < 0.15


# ------------------------------------------------------------------------------ batches and layouts
def test_empty_batch_and_empty_images_are_refused(net, images):
    cam = sc.GradCAM(net, "features")
    with pytest.raises(ValueError, match="empty batch"):
        cam(images[:0])
    for bad in (torch.zeros(2, 0, 8, 8), torch.zeros(2, 3, 0, 8), torch.zeros(2, 3, 8, 0)):
        with pytest.raises(ValueError, match=r"pixel"):
            cam(bad)


@pytest.mark.parametrize("name", ALL)
def test_one_image_batch_in_train_mode_with_batchnorm(name, net, images):
    # train-mode BatchNorm refuses a batch of one; the CAM runs in eval mode and changes no statistic
    expected = make_cam(name, net)(images[:1])
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    out = make_cam(name, net)(images[:1])
    torch.testing.assert_close(out, expected)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize("name", ALL)
def test_non_contiguous_channels_last_and_grad_requiring_images(name, net, images):
    cam = make_cam(name, net)
    ref = cam(images)
    torch.testing.assert_close(cam(images.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5, rtol=0)
    wide = torch.randn(3, 3, 12, 24)
    wide[..., ::2] = images
    torch.testing.assert_close(cam(wide[..., ::2]), ref, atol=1e-5, rtol=0)
    leaf = images.clone().requires_grad_(True)
    out = cam(leaf)
    assert not out.requires_grad and leaf.grad is None
    torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------------------ targets
def test_scalar_and_numpy_targets_broadcast(net, images):
    cam = sc.GradCAM(net, "features")
    ref = cam(images, 3)
    torch.testing.assert_close(cam(images, torch.tensor(3)), ref)
    torch.testing.assert_close(cam(images, np.int64(3)), ref)
    torch.testing.assert_close(cam(images, np.array([3, 3, 3])), ref)
    with pytest.raises(TypeError, match="single target must be an integer"):
        cam(images, torch.tensor(2.0))
    with pytest.raises(TypeError, match="single target must be an integer"):
        cam(images, 2.5)
    with pytest.raises(TypeError, match="bool"):
        cam(images, True)


@pytest.mark.parametrize(
    "targets, exc, match",
    [
        ([0, 1], ValueError, "one target per image"),
        (torch.zeros(2, 5), ValueError, "one target per image"),
        (torch.zeros(3, 4), ValueError, "K=4 but the model has 5"),
        (7, ValueError, r"\[0, 4\]"),
        (-1, ValueError, r"\[0, 4\]"),
        (torch.zeros(3, 5, dtype=torch.complex64), TypeError, "floating"),
    ],
)
@pytest.mark.parametrize("name", ["gradcam", "scorecam", "ablationcam"])
def test_bad_targets_every_engine_path(name, targets, exc, match, net, images):
    with pytest.raises(exc, match=match):
        make_cam(name, net)(images, targets)
    assert hooks_of(net) == 0


# ------------------------------------------------------------------------------ models and layers
@pytest.mark.parametrize(
    "wrap", [lambda y: (y, y), lambda y: {"logits": y}, lambda y: y.unsqueeze(1), lambda y: y.long()]
)
@pytest.mark.parametrize("name", ["gradcam", "scorecam", "ablationcam"])
def test_model_not_returning_logits(name, wrap, net, images):
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return wrap(self.net(x))

    model = Wrapped().eval()
    with pytest.raises(TypeError, match=r"logits of shape \(B, K\).*wrap the model"):
        make_cam(name, model, "net.features")(images)
    assert hooks_of(model) == 0


def test_bad_constructor_arguments(net):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sc.GradCAM(lambda x: x)
    with pytest.raises(TypeError, match="reshape must be callable"):
        sc.GradCAM(net, "features", reshape="vit")
    with pytest.raises(ValueError, match="batch_size"):
        sc.ScoreCAM(net, batch_size=2.5)
    with pytest.raises(ValueError, match="batch_size"):
        sc.AblationCAM(net, batch_size=True)


def test_reshape_returning_the_wrong_shape(net, images):
    with pytest.raises(ValueError, match=r"reshape must return a \(B, C, h, w\)"):
        sc.GradCAM(net, "features", reshape=lambda t: t.flatten(2))(images)


def test_target_layer_that_does_not_run(images):
    class Unused(Net):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Conv2d(3, 3, 1)

    model = Unused().eval()
    for name in ("gradcam", "eigencam", "scorecam"):
        with pytest.raises(RuntimeError, match="did not run"):
            make_cam(name, model, "spare")(images)
    assert hooks_of(model) == 0


@pytest.mark.parametrize("bad", [-3, 0, True, (4.0, 4), (4, None), "Feature", (8,), [8, -8]])
def test_output_size_nonsense(bad, net, images):
    with pytest.raises(ValueError, match="output_size"):
        sc.GradCAM(net, "features")(images, output_size=bad)


def test_numpy_integer_output_sizes_are_accepted(net, images):
    cam = sc.GradCAM(net, "features")
    assert cam(images, output_size=np.int64(10)).shape == (3, 1, 10, 10)
    assert cam(images, output_size=(np.int32(6), 8)).shape == (3, 1, 6, 8)
    assert cam(images, output_size=torch.Size([5, 7])).shape == (3, 1, 5, 7)


# ------------------------------------------------------------------------------ grad modes
@pytest.mark.parametrize("name", ALL)
def test_no_grad_and_inference_mode_give_the_same_maps(name, net, images):
    expected = make_cam(name, net)(images)
    with torch.no_grad():
        out = make_cam(name, net)(images)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(out, expected)
    with torch.inference_mode():
        out = make_cam(name, net)(images.clone())
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(out, expected)


# ------------------------------------------------------------------------------ record() misuse
def test_nested_record_is_refused(net, images):
    cam = sc.GradCAM(net, "features")
    with cam.record():
        with pytest.raises(RuntimeError, match="do not nest"):
            with cam.record():
                pass
        logits = net(images)
    assert hooks_of(net) == 0
    assert cam.from_logits(logits).shape == (3, 1, 12, 12)  # the outer recording still works


def test_direct_call_and_from_logits_inside_record_are_refused(net, images):
    cam = sc.GradCAM(net, "features")
    with cam.record():
        logits = net(images)
        with pytest.raises(RuntimeError, match="inside its own record"):
            cam(images)
        with pytest.raises(RuntimeError, match="after the block"):
            cam.from_logits(logits)
    torch.testing.assert_close(cam.from_logits(logits), cam(images), atol=1e-6, rtol=0)


def test_from_logits_with_foreign_or_malformed_logits(net, images):
    cam = sc.GradCAM(net, "features")
    with cam.record():
        net(images)
    other = net(images)  # a second forward, outside the block
    with pytest.raises(RuntimeError, match="same forward"):
        cam.from_logits(other)
    for bad, match in [((None,), "run inside record"), (torch.zeros(2, 5), r"\(3, K\)")]:
        with cam.record():
            logits = net(images)
        with pytest.raises(TypeError, match=match):
            cam.from_logits(bad if not isinstance(bad, tuple) else (logits, logits))
    with cam.record():
        logits = net(images)
    with pytest.raises(RuntimeError, match="do not require grad"):
        cam.from_logits(logits.detach())


def test_record_on_a_model_that_raises_leaves_no_hooks(net, images):
    cam = sc.LayerCAM(net)  # automatic layer: one hook per module while recording
    with pytest.raises(ZeroDivisionError):
        with cam.record():
            net(images)
            raise ZeroDivisionError
    assert hooks_of(net) == 0
    with cam.record():  # not refused as nested: the failed block was closed
        logits = net(images)
    assert cam.from_logits(logits).shape == (3, 1, 12, 12)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_model_raising_midway_through_perturbation_forwards(name, net, images):
    calls = {"n": 0}

    def flaky(_module, _inputs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("flaky model")

    handle = net.head.register_forward_pre_hook(flaky)
    net.train()
    flags = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError, match="flaky model"):
        make_cam(name, net, batch_size=4, **({"trunk_once": False} if name == "ablationcam" else {}))(images)
    handle.remove()
    assert hooks_of(net) == 0 and [m.training for m in net.modules()] == flags and torch.is_grad_enabled()


# ------------------------------------------------------------------------------ reused modules
class SharedAct(nn.Module):
    """One ReLU module used twice, as in torchvision's BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", [n for n in ALL if n != "eigencam"])
def test_target_layer_that_runs_twice_is_refused(name, images):
    # the second call's output would silently be used (and AblationCAM would replace both)
    model = SharedAct().eval()
    with pytest.raises(ValueError, match=r"'relu' ran 2 times in one forward.*runs once"):
        make_cam(name, model, "relu")(images)
    assert hooks_of(model) == 0


def test_automatic_layer_skips_reused_modules(images):
    model = SharedAct().eval()
    cam = sc.GradCAM(model)
    cam(images)
    assert cam.target_layer_name == "conv2"
    fused = sc.GradCAM(model)
    with fused.record():
        logits = model(images)
    fused.from_logits(logits)
    assert fused.target_layer_name == "conv2"


@pytest.mark.parametrize("name", ["gradcam", "eigencam"])
def test_two_forwards_inside_record_are_refused(name, net, images):
    cam = sc.create_cam(name, net, "features")
    with cam.record():
        logits = net(images)
        net(images)
    with pytest.raises(ValueError, match="ran 2 times inside record"):
        cam.from_logits(logits)


@pytest.mark.parametrize("name", ["gradcam", "layercam", "eigencam"])
def test_record_with_an_inplace_consumer_of_the_target(name, net, images):
    # features.1 (BatchNorm) feeds ReLU(inplace=True); EigenCAM keeps a copy and agrees with the
    # direct call, the gradient methods see the modified output (documented) but never fail
    cam = sc.create_cam(name, net, "features.1")
    with cam.record():
        logits = net(images)
    out = cam.from_logits(logits)
    assert out.shape == (3, 1, 12, 12) and bool(torch.isfinite(out).all())
    if name == "eigencam":
        torch.testing.assert_close(out, cam(images), atol=1e-5, rtol=0)
