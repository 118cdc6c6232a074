"""salaug.cam engine: known answers, targets, output sizes, side effects, fused mode, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import salaug.cam as sc
from salaug.cam.base import LAYOUT_TOLERANCE, finalize_cam
from salaug.cam.layers import unwrap_model

# record() / from_logits() are deprecated (tests/test_deprecations.py checks the warning); their behaviour is
# still tested here until they are removed in 0.5.0.
pytestmark = pytest.mark.filterwarnings("ignore:.*record\\(\\) / from_logits\\(\\) are deprecated:DeprecationWarning")

ALL = list(sc.CAM_METHODS)
FUSED = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"]


def make_cam(name, model, layer=None, **kw):
    if name in ("scorecam", "ablationcam"):
        kw.setdefault("batch_size", 16)
    return sc.create_cam(name, model, layer, **kw)


# ------------------------------------------------------------------------------------ models
class Bright(nn.Module):
    """Hand-set weights: channel 0 = brightness, channel 1 = darkness; class 0 = bright, 1 = dark."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(4)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))
            self.fc.weight.copy_(torch.tensor([[20.0, 0.0], [0.0, 20.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.gap(self.pool(self.act(self.conv(x)))).flatten(1))


class SmallNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1, stride=2),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, classes))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = SmallNet()
    # non-trivial running statistics
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def images():
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def squares(boxes, size=32):
    imgs = torch.zeros(len(boxes), 1, size, size)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        imgs[i, 0, y0:y1, x0:x1] = 1.0
    return imgs


def hooks_of(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# ---------------------------------------------------------------------------- known answer
@pytest.mark.parametrize("name", ALL)
def test_known_answer_peak_inside_bright_square(name):
    model = Bright().eval()
    boxes = [(4, 4, 12, 12), (20, 16, 28, 28)]
    imgs = squares(boxes)
    cam = make_cam(name, model, "pool")(imgs, torch.tensor([0, 0]))
    assert cam.shape == (2, 1, 32, 32)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        flat = int(cam[i, 0].argmax())
        y, x = divmod(flat, 32)
        assert y0 <= y < y1 and x0 <= x < x1, (name, i, (y, x))
        assert float(cam[i, 0, y0:y1, x0:x1].mean()) > float(cam[i, 0].mean())


def test_known_answer_dark_class_avoids_square():
    model = Bright().eval()
    imgs = squares([(8, 8, 24, 24)])
    cam = sc.GradCAM(model, "pool")(imgs, torch.tensor([1]), output_size="feature")
    assert cam.shape == (1, 1, 8, 8)
    assert float(cam[0, 0, 3:5, 3:5].max()) == 0.0 and float(cam.max()) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------- outputs, targets
@pytest.mark.parametrize("name", ALL)
def test_output_contract(name, net, images):
    cam = make_cam(name, net, "features")
    out = cam(images)
    assert out.shape == (4, 1, 16, 16) and out.dtype == torch.float32 and out.device == images.device
    assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert cam(images, output_size="feature").shape == (4, 1, 8, 8)
    assert cam(images, output_size=(20, 12)).shape == (4, 1, 20, 12)
    assert cam(images, output_size=10).shape == (4, 1, 10, 10)
    assert not out.requires_grad


@pytest.mark.parametrize("name", ["gradcam", "hirescam", "scorecam", "ablationcam"])
def test_each_image_gets_its_own_target(name, net, images):
    targets = torch.tensor([0, 3, 1, 4])
    cam = make_cam(name, net, "features")
    batched = cam(images, targets)
    single = torch.cat([cam(images[i : i + 1], targets[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gradcam++", "xgradcam", "layercam", "scorecam", "ablationcam"])
def test_target_forms_agree(name, net, images):
    cam = make_cam(name, net, "features")
    with torch.no_grad():
        pred = net(images).argmax(1)
    idx = torch.tensor([2, 0, 4, 1])
    torch.testing.assert_close(cam(images), cam(images, pred))
    onehot = torch.nn.functional.one_hot(idx, 5).float()
    torch.testing.assert_close(cam(images, onehot), cam(images, idx), atol=1e-6, rtol=0)
    torch.testing.assert_close(cam(images, 3), cam(images, torch.full((4,), 3)))
    torch.testing.assert_close(cam(images, [2, 0, 4, 1]), cam(images, idx))


def test_soft_targets_are_the_cam_of_the_weighted_logit(net, images):
    # HiResCAM is linear in the gradient: raw(w1 l1 + w2 l2) = w1 raw(l1) + w2 raw(l2)
    cam = sc.HiResCAM(net, "features")
    w = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0]]).expand(4, 5)
    from salaug.cam.base import Targets

    leaf, logits = cam._forward_with_grad(images, cam.target_layer)
    soft = torch.autograd.grad(Targets(None, w).score(logits).sum(), leaf, retain_graph=True)[0]
    g1 = torch.autograd.grad(logits[:, 1].sum(), leaf, retain_graph=True)[0]
    g3 = torch.autograd.grad(logits[:, 3].sum(), leaf)[0]
    torch.testing.assert_close(soft, 0.25 * g1 + 0.75 * g3)
    # and the public call with the same weights runs end to end
    assert cam(images, w).shape == (4, 1, 16, 16)


def test_finalize_cam_drops_negative_evidence_before_normalising():
    # hand-computed: ReLU -> [[0, 1], [3, 0]], then (x - 0) / (3 - 0 + 1e-7); without the ReLU the
    # min-max would give [[2/7, 5/7], [1, 0]] (negative evidence turned into "some" evidence)
    raw = torch.tensor([[[-2.0, 1.0], [3.0, -4.0]], [[-1.0, -2.0], [-3.0, -0.5]]])
    out = finalize_cam(raw, None)
    assert out.shape == (2, 1, 2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 1 / 3], [1.0, 0.0]]))
    assert out[1].abs().max().item() == 0.0  # an all-negative map: no evidence, zeros (not a min-max of the negatives)
    # at another output size: resized after the ReLU and min-max, then min-max again (still in [0, 1])
    big = finalize_cam(raw[:1], (4, 4))
    assert big.shape == (1, 1, 4, 4) and big.min().item() == 0.0 and big.max().item() == pytest.approx(1.0)
    torch.testing.assert_close(big[0, 0, 3, 0], torch.tensor(1.0))  # the corner of the raw 3: its peak


def test_all_zero_cam_stays_zero_not_nan(net, images):
    with torch.no_grad():
        net.head[-1].weight.zero_()
    for name in ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"):
        out = sc.create_cam(name, net, "features")(images)
        assert bool(torch.isfinite(out).all()) and float(out.abs().max()) == 0.0


class Residual(nn.Module):
    """A skip connection around the target layer, and (optionally) a channel concat after it."""

    def __init__(self, concat: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.concat = concat
        self.fc = nn.Linear(12 if concat else 6, 4)

    def forward(self, x):
        s = self.stem(x)
        y = self.conv2(torch.relu(self.conv1(s))) + s
        if self.concat:  # a batch-1 trunk tensor cannot be concatenated with n rows: fallback
            y = torch.cat([y, s], dim=1)
        return self.fc(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("concat", [False, True])
def test_ablation_trunk_once_equals_full_forwards(concat, images):
    torch.manual_seed(3)
    model = Residual(concat).eval()
    targets = torch.tensor([0, 1, 2, 3])
    fast = sc.AblationCAM(model, "conv1", batch_size=4)(images, targets, output_size="feature")
    full = sc.AblationCAM(model, "conv1", batch_size=4, trunk_once=False)(images, targets, output_size="feature")
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=0)
    assert float(full.max()) > 0.5


# ---------------------------------------------------------------------------- target layers
def test_target_layer_forms_agree(net, images):
    ref = sc.GradCAM(net, "features")(images)
    torch.testing.assert_close(sc.GradCAM(net, net.features)(images), ref)
    torch.testing.assert_close(sc.GradCAM(net)(images), ref)  # automatic: last 4-D output
    a = sc.GradCAM(net, "features.5")
    b = sc.GradCAM(net, "features.-1")
    assert a.target_layer is b.target_layer is net.features[5] and b.target_layer_name == "features.5"


def vgg_like(weights=None, num_classes=3):
    # VGG's layout (features, AdaptiveAvgPool2d((7, 7)), classifier) without its 100M-parameter head
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    return _VGGLike(features, num_classes)


class _VGGLike(nn.Module):
    def __init__(self, features, num_classes):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 49, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


def test_automatic_layer_for_torchvision_models():
    x = torch.randn(1, 3, 64, 64)
    for ctor, expected in [
        (torchvision.models.resnet18, "layer4"),
        (torchvision.models.mobilenet_v2, "features"),
        (vgg_like, "features"),
    ]:
        model = ctor(weights=None, num_classes=3).eval()
        cam = sc.GradCAM(model)
        assert cam.target_layer is None
        cam(x)
        assert cam.target_layer_name == expected
        assert hooks_of(model) == 0


def _relu_flags(model: nn.Module, inplace: bool) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = inplace
    return model


@pytest.mark.parametrize("name", ALL)
def test_inplace_consumer_of_target_layer(name, net, images):
    # features.4 (BatchNorm) is followed by ReLU(inplace=True): every method must read the layer's
    # output as produced, so the maps equal those of the same weights with a non-in-place ReLU
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in net.modules())
    twin = _relu_flags(copy.deepcopy(net), False)
    out = make_cam(name, net, "features.4")(images)
    torch.testing.assert_close(out, make_cam(name, twin, "features.4")(images), atol=1e-5, rtol=0)
    assert out.shape == (4, 1, 16, 16) and float(out.amax()) > 0


@pytest.mark.parametrize("cls", list(sc.CAM_METHODS.values()), ids=list(sc.CAM_METHODS))
def test_every_method_reads_a_conv_followed_by_an_inplace_relu_as_produced(cls):
    # conv -> ReLU(inplace=True) -> pool -> linear: the conv output has negative values that the
    # ReLU overwrites in place (AblationCAM's ablation value and its maps depend on them)
    def model(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten(), nn.Linear(24, 3)).eval()

    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    kw = {"batch_size": 8} if cls in (sc.ScoreCAM, sc.AblationCAM) else {}
    for targets in (None, torch.tensor([0, 1, 2, 0])):
        a = cls(model(True), "0", **kw)(x, targets)
        b = cls(model(False), "0", **kw)(x, targets)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert float(a.amax()) > 0


def test_vit_reshape():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).view(2, 17, 3)
    fmap = sc.vit_reshape(tokens)
    assert fmap.shape == (2, 3, 4, 4)
    torch.testing.assert_close(fmap[:, :, 0, 1], tokens[:, 2])
    assert sc.vit_reshape(torch.zeros(1, 16, 5)).shape == (1, 5, 4, 4)
    assert sc.vit_reshape(torch.zeros(1, 2 + 6, 5), prefix_tokens=2, grid=(2, 3)).shape == (1, 5, 2, 3)
    with pytest.raises(ValueError, match="patch grid"):
        sc.vit_reshape(torch.zeros(1, 7, 5))
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        sc.vit_reshape(torch.zeros(1, 7))


# ---------------------------------------------------------------------------- side effects
@pytest.mark.parametrize("name", ALL)
def test_batchnorm_statistics_and_buffers_unchanged(name, net, images):
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    make_cam(name, net, "features")(images)
    after = net.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_dropout_off_and_train_mode_gives_eval_maps(net, images):
    expected = sc.GradCAM(net, "features")(images)
    net.train()
    torch.manual_seed(123)
    first = sc.GradCAM(net, "features")(images)
    second = sc.GradCAM(net, "features")(images)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


@pytest.mark.parametrize("name", ALL)
def test_mixed_training_flags_restored_exactly(name, net, images):
    net.train()
    net.features[1].eval()
    net.head[2].eval()
    flags = [m.training for m in net.modules()]
    seen = {}

    def spy(module, _inp, _out):
        seen.setdefault("modes", [m.training for m in net.modules()])

    h = net.head[-1].register_forward_hook(spy)
    make_cam(name, net, "features")(images)
    h.remove()
    assert [m.training for m in net.modules()] == flags
    if name != "eigencam":  # EigenCAM stops the forward at the target layer
        assert not any(seen["modes"])


@pytest.mark.parametrize("name", ALL)
def test_parameter_grads_untouched(name, net, images):
    params = list(net.parameters())
    for i, p in enumerate(params):
        if i % 2 == 0:
            p.grad = torch.randn_like(p)
    before = [None if p.grad is None else p.grad.clone() for p in params]
    requires = [p.requires_grad for p in params]
    make_cam(name, net, "features")(images)
    for p, g, r in zip(params, before, requires):
        assert p.requires_grad == r
        if g is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, g)


@pytest.mark.parametrize("name", ALL)
def test_no_hooks_left_even_on_error(name, net, images):
    assert hooks_of(net) == 0
    cam = make_cam(name, net, "features")
    cam(images)
    assert hooks_of(net) == 0
    if name != "eigencam":  # targets are ignored by EigenCAM
        with pytest.raises(ValueError):
            cam(images, torch.tensor([0, 1, 2, 99]))  # fails after the forward
        assert hooks_of(net) == 0

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    net.features.insert(0, Boom().eval())
    with pytest.raises(RuntimeError, match="boom"):
        make_cam(name, net, "features")(images)
    assert hooks_of(net) == 0
    assert torch.is_grad_enabled()
    assert not any(m.training for m in net.modules())


def test_grad_mode_restored_and_no_grad_context(net, images):
    expected = sc.GradCAM(net, "features")(images)
    assert torch.is_grad_enabled()
    with torch.no_grad():
        out = sc.GradCAM(net, "features")(images)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(out, expected)
    with torch.enable_grad():
        with pytest.raises(ValueError), torch.no_grad():
            sc.GradCAM(net, "features")(images, torch.tensor([9, 9, 9, 9]))
        assert torch.is_grad_enabled()


# inference_mode for every method: tests/test_cam_bad_input.py


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "layercam", "eigencam"])
def test_cpu_autocast_bfloat16_close_to_float32(name):
    torch.manual_seed(2)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([1, 3])
    ref = sc.create_cam(name, model, "layer3")(x, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sc.create_cam(name, model, "layer3")(x, targets)
    _assert_close_maps(out, ref)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_cpu_autocast_bfloat16_perturbation(name, net, images):
    ref = make_cam(name, net, "features")(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = make_cam(name, net, "features")(images)
    _assert_close_maps(out, ref)


def _assert_close_maps(out, ref):
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    corr = torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1]
    assert float(corr) > 0.95, float(corr)
    assert float((out - ref).abs().mean()) < 0.05


# ---------------------------------------------------------------------------- fused mode
@pytest.mark.parametrize("name", FUSED)
def test_record_matches_standalone_in_eval_mode(name, net, images):
    targets = torch.tensor([0, 3, 1, 4])
    cam = sc.create_cam(name, net, "features")
    expected = cam(images, targets)
    with cam.record():
        logits = net(images)
    assert hooks_of(net) == 0
    torch.testing.assert_close(cam.from_logits(logits, targets), expected, atol=1e-6, rtol=0)


def test_record_keeps_training_step_grads_identical(net, images):
    labels = torch.tensor([0, 3, 1, 4])
    net.train()

    def step(with_cam):
        torch.manual_seed(7)  # same dropout mask
        net.zero_grad(set_to_none=True)
        cam = sc.GradCAM(net, "features")
        if with_cam:
            with cam.record():
                logits = net(images)
            sal = cam.from_logits(logits, labels)
            assert sal.shape == (4, 1, 16, 16)
        else:
            logits = net(images)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return [p.grad.clone() for p in net.parameters()]

    state = {k: v.clone() for k, v in net.state_dict().items()}
    plain = step(False)
    net.load_state_dict(state)
    fused = step(True)
    for a, b in zip(plain, fused):
        assert torch.equal(a, b)


def test_record_grads_identical_with_batchnorm_stats(net, images):
    # the fused forward is the caller's own: BatchNorm statistics update exactly once, as without the CAM
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net(images)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    cam = sc.GradCAM(net, "features")
    with cam.record():
        logits = net(images)
    cam.from_logits(logits)
    for k, v in net.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_record_automatic_layer_and_output_size(net, images):
    cam = sc.LayerCAM(net)
    with cam.record():
        logits = net(images)
    out = cam.from_logits(logits, output_size=(32, 32))
    assert cam.target_layer_name == "features" and out.shape == (4, 1, 32, 32)
    with cam.record():
        logits = net(images)
    assert cam.from_logits(logits, output_size="feature").shape == (4, 1, 8, 8)


def test_record_errors(net, images):
    with pytest.raises(RuntimeError, match="record"):
        sc.GradCAM(net, "features").from_logits(net(images))
    cam = sc.GradCAM(net, "features")
    with cam.record(), torch.no_grad():
        logits = net(images)
    with pytest.raises(RuntimeError, match="without gradients"):
        cam.from_logits(logits)
    with cam.record():
        logits = net(images)
    cam.from_logits(logits)
    with pytest.raises(RuntimeError, match="record"):  # a recording is used once
        cam.from_logits(logits)
    for name in ("scorecam", "ablationcam"):
        with pytest.raises(TypeError, match="fused mode"):
            with sc.create_cam(name, net, "features").record():
                pass
    with pytest.raises(ValueError), cam.record():
        net(images)
        raise ValueError("inside")
    assert hooks_of(net) == 0


# ---------------------------------------------------------------------------- compile / wrappers
def test_compiled_model_runs_eagerly(net, images):
    compiled = torch.compile(net)
    assert unwrap_model(compiled) is net
    expected = sc.GradCAM(net, "features")(images)
    cam = sc.GradCAM(compiled, "features")
    torch.testing.assert_close(cam(images), expected)
    assert sc.GradCAM(compiled, "_orig_mod.features").target_layer is net.features
    with pytest.raises(RuntimeError, match="torch.compile"), cam.record():
        pass


# ---------------------------------------------------------------------------- errors
def test_unknown_layer_lists_close_names(net):
    with pytest.raises(ValueError, match=r"closest: \['features'"):
        sc.GradCAM(net, "featurs")
    with pytest.raises(ValueError, match="not a submodule"):
        sc.GradCAM(net, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="target_layer"):
        sc.GradCAM(net, 3)


def test_non_spatial_target_layer(net, images):
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        sc.GradCAM(net, "head.3")(images)
    with pytest.raises(ValueError, match="reshape"):
        sc.GradCAM(net, "head.1")(images)
    with pytest.raises(ValueError, match="target_layer"):
        sc.GradCAM(net, reshape=sc.vit_reshape)
    with pytest.raises(ValueError, match="reshape"):
        sc.AblationCAM(net, "features", reshape=sc.vit_reshape)


@pytest.mark.parametrize(
    "targets, exc, match",
    [
        (torch.tensor([0, 1, 2]), ValueError, "batch size"),
        (torch.tensor([0, 1, 2, 5]), ValueError, r"\[0, 4\]"),
        (torch.tensor([0, -1, 2, 3]), ValueError, r"\[0, 4\]"),
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, "integer"),
        (torch.tensor([True, False, True, False]), TypeError, "integer"),
        (torch.zeros(4, 5, dtype=torch.long), TypeError, "floating"),
        (torch.zeros(4, 6), ValueError, "K=6"),
        (torch.zeros(4, 5, 1), ValueError, "shape"),
        ("cat", TypeError, "targets"),
    ],
)
def test_bad_targets(net, images, targets, exc, match):
    with pytest.raises(exc, match=match):
        sc.GradCAM(net, "features")(images, targets)


def test_bad_images_and_output_size(net, images):
    cam = sc.GradCAM(net, "features")
    with pytest.raises(ValueError, match="unsqueeze"):
        cam(images[0])
    with pytest.raises(TypeError, match="floating"):
        cam((images * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        cam(images.numpy())
    for bad in ("full", (0, 4), (3, 4, 5), 2.5):
        with pytest.raises(ValueError, match="output_size"):
            cam(images, output_size=bad)


def test_model_output_must_be_logits(images):
    class DictNet(SmallNet):
        def forward(self, x):
            return {"logits": super().forward(x)}

    with pytest.raises(TypeError, match=r"\(B, K\).*wrap"):
        sc.GradCAM(DictNet().eval(), "features")(images)
    # EigenCAM needs no logits
    assert sc.EigenCAM(DictNet().eval(), "features")(images).shape == (4, 1, 16, 16)


# ---------------------------------------------------------------------------- registry
def test_registry_and_create_cam(net):
    assert set(sc.CAM_METHODS) == {
        "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam",
    }
    for name, cls in sc.CAM_METHODS.items():
        cam = sc.create_cam(name, net, "features")
        assert type(cam) is cls and cls.name == name and isinstance(cam, sc.BaseCAM)
    built = sc.GradCAM(net, "features")
    assert sc.create_cam(built, net) is built
    assert type(sc.create_cam(sc.XGradCAM, net)) is sc.XGradCAM
    assert sc.create_cam("ScoreCAM", net, batch_size=3).batch_size == 3
    assert type(sc.create_cam("grad_cam_pp", net)) is sc.GradCAMPlusPlus
    with pytest.raises(ValueError, match="valid names.*gradcam"):
        sc.create_cam("smoothgrad", net)
    with pytest.raises(ValueError, match="batch_size"):
        sc.ScoreCAM(net, batch_size=0)
    with pytest.raises(TypeError):
        sc.create_cam(3, net)
    assert "features" in repr(sc.GradCAM(net, "features"))


# ---------------------------------------------------------------------- CPU memory layout
class ViewNet(SmallNet):
    """Flattens a feature map with .view(), which needs a contiguous tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        f = self.features(x)
        return self.fc(f.view(f.shape[0], -1))


@pytest.mark.parametrize("name", ALL)
def test_cpu_channels_last_gives_the_same_maps(name, net, images):
    fast = make_cam(name, net, "features")
    plain = make_cam(name, net, "features")
    plain._channels_last = False  # the ordinary contiguous layout
    maps = fast(images, torch.tensor([0, 1, 2, 3]))
    assert fast._channels_last is True  # the convolutional model took the channels-last path
    torch.testing.assert_close(maps, plain(images, torch.tensor([0, 1, 2, 3])), atol=1e-5, rtol=0)


def test_a_model_needing_contiguous_tensors_falls_back(images):
    torch.manual_seed(0)
    model = ViewNet().eval()
    cam = sc.GradCAM(model, "features")
    plain = sc.GradCAM(model, "features")
    plain._channels_last = False
    maps = cam(images, 1)
    assert cam._channels_last is False  # the .view() refused channels-last: contiguous from now on
    torch.testing.assert_close(maps, plain(images, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(cam(images, 2), plain(images, 2), atol=1e-6, rtol=0)



class LayoutSensitiveNet(SmallNet):
    """Gives other numbers on channels-last inputs, as an inexact channels-last convolution does."""

    def forward(self, x):
        f = self.features(x)
        if f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous():
            f = f * (1 + 0.5 * torch.linspace(-1, 1, f.shape[1])).view(1, -1, 1, 1)  # other channel weights
        return self.head(f)


def test_channels_last_is_kept_only_where_its_maps_agree_with_the_contiguous_layout(images):
    torch.manual_seed(0)
    model = LayoutSensitiveNet().eval()
    cam = sc.GradCAM(model, "features")
    plain = sc.GradCAM(model, "features")
    plain._channels_last = False
    maps = cam(images, 1)
    assert cam._channels_last is False  # the trial on the first call disagreed beyond LAYOUT_TOLERANCE
    torch.testing.assert_close(maps, plain(images, 1), atol=0, rtol=0)  # the first call returns the contiguous maps
    torch.testing.assert_close(cam(images, 2), plain(images, 2), atol=0, rtol=0)
    channels_last = sc.GradCAM(model, "features")
    channels_last._channels_last = True
    gap = (channels_last(images, 1) - maps).abs().amax()
    assert gap > LAYOUT_TOLERANCE  # the disagreement the trial saw is real

def test_a_model_error_is_not_retried_under_another_layout(net, images):
    calls = {"n": 0}

    def fail(_module, _inputs):
        calls["n"] += 1
        raise RuntimeError("broken model")

    handle = net.head.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="broken model"):
        sc.GradCAM(net, "features")(images)
    handle.remove()
    assert calls["n"] == 1


def test_models_without_convolutions_keep_their_layout(images):
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    cam = sc.EigenCAM(model, "0")
    assert cam._channels_last is False
    assert cam(images, output_size="feature").shape == (4, 1, 16, 16)


# ---------------------------------------------------------------------------- AblationCAM across images
def test_ablation_across_images_matches_the_per_image_path_and_falls_back_where_inexact():
    from salaug.models import DemoNet, ResNet8

    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    for model, layer, shared in ((DemoNet(6, 4).eval(), "features", True), (ResNet8(6, 4).eval(), "features", True),
                                 (ResNet8(6, 4).eval(), "features.3.body", False),  # the shortcut is carried
                                 (Residual(False).eval(), "conv1", False)):
        fast = sc.AblationCAM(model, layer, batch_size=5)  # chunks straddle images
        got = fast(x)
        per_image = sc.AblationCAM(model, layer, batch_size=5)
        per_image._shared_trunk[id(per_image.target_layer)] = False  # force the per-image trunk
        full = sc.AblationCAM(model, layer, batch_size=5, trunk_once=False)
        assert list(fast._shared_trunk.values()) == [shared], (type(model).__name__, layer)
        torch.testing.assert_close(got, per_image(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(got, full(x), atol=1e-4, rtol=0)
        assert float(got.amax()) > 0.5


def test_ablation_trunk_errors_other_than_shapes_propagate(images, monkeypatch):
    torch.manual_seed(3)
    model = Residual(False).eval()
    cam = sc.AblationCAM(model, "conv1", batch_size=4)
    calls = [0]
    real = model.fc.forward

    def flaky(x):
        calls[0] += 1
        if calls[0] > 1:  # the CAM's capture forward passes, the ablated forwards run out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x)

    monkeypatch.setattr(model.fc, "forward", flaky)
    with pytest.raises(torch.OutOfMemoryError):
        cam(images)
    from salaug.cam.perturbation import _is_shape_error

    assert _is_shape_error(RuntimeError("Sizes of tensors must match except in dimension 1"))
    assert not _is_shape_error(RuntimeError("CUDA out of memory"))
    assert not _is_shape_error(RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"))
