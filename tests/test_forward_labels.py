"""Forward labels (ForwardEvidence): soft labels of a mixed batch filled by the user's own forward of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import salaug
from salaug.models import DemoNet
from salaug.sources import ForwardEvidence, PendingLabels, pasted_region
from salaug.transforms.labels import evidence_share, mix_soft_labels


class MaskNet(nn.Module):
    """A model whose CAM for class c is exactly input channel c (identity 1x1 conv, GAP + identity linear)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(k, k, 1, bias=False)  # identity weights, trainable like a real trunk
        self.head = nn.Linear(k, k, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(k).view(k, k, 1, 1))
            self.head.weight.copy_(torch.eye(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        return self.head(a.mean((2, 3)))


def object_images(b: int, k: int, size: int = 16, side: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i shows one square object of class i % k, drawn in channel i % k, same size for all."""
    labels = torch.arange(b) % k
    x = torch.zeros(b, k, size, size)
    for i in range(b):
        top, left = (3 * i) % (size - side), (5 * i) % (size - side)
        x[i, labels[i], top:top + side, left:left + side] = 1.0
    return x, labels


def mixed_batch(transform, x, labels, k, seed=0):
    soft = F.one_hot(labels, k).float()
    out, params = transform(x, None, soft, return_params=True, generator=torch.Generator().manual_seed(seed))
    area = transform.area_share(params, x.shape[-2:]) * params["applied"]
    return soft, out, params, area


def arm(fwd, transform, x, labels, k, seed=0):
    """What the augmenter does: the transform on flat saliency, then the source's pending labels."""
    soft, out, params, area = mixed_batch(transform, x, labels, k, seed)
    y = fwd.labels(x, soft, out, params, transform, step=0)
    return y, out, params, area, soft


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("transform", [salaug.SnapMix(num_classes=4, p=1.0), salaug.SaliencyMix(num_classes=4, p=1.0),
                                       salaug.ResizeMix(num_classes=4, p=1.0)])
def test_labels_from_true_mask_cams_are_the_visible_object_shares(transform):
    k = 4
    net = MaskNet(k)
    x, labels = object_images(8, k)
    fwd = ForwardEvidence(net, "features", blend=1.0)
    y, out, params, area, soft = arm(fwd, transform, x, labels, k)
    assert fwd.pending and isinstance(y, PendingLabels) and not y.filled
    net(out.images)
    assert not fwd.pending
    # what each mixed image shows: pixels of its own object outside the box, of the partner's inside it
    region = pasted_region(params, x.shape[-2:])[:, 0]
    own = out.images[torch.arange(8), labels]
    partner = out.images[torch.arange(8), labels[params["perm"]]]
    vis_own, vis_partner = (own * (1 - region)).sum((1, 2)), (partner * region).sum((1, 2))
    share = torch.where(vis_own + vis_partner > 0, vis_partner / (vis_own + vis_partner), area)
    expected = mix_soft_labels(soft, params["perm"], share * params["applied"])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(y, mix_soft_labels(soft, params["perm"], area))


def test_blend_mixes_evidence_and_area():
    own, partner = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    region = torch.zeros(3, 4, 4)
    region[:, :2, :2] = 1
    area = torch.full((3,), 0.25)
    e = evidence_share(own, partner, region, area, 1.0)
    torch.testing.assert_close(evidence_share(own, partner, region, area, 0.5), 0.5 * e + 0.125)
    torch.testing.assert_close(evidence_share(own, partner, region, area, 0.0), area)


def test_no_evidence_or_nan_falls_back_to_area():
    region = torch.zeros(2, 2, 2)
    region[:, 0, 0] = 1
    area = torch.tensor([0.25, 0.25])
    zero = torch.zeros(2, 2, 2)
    nan = torch.full((2, 2, 2), float("nan"))
    torch.testing.assert_close(evidence_share(zero, zero, region, area, 1.0), area)
    torch.testing.assert_close(evidence_share(nan, nan, region, area, 0.7), area)


def counting(model):
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


def test_one_forward_per_step_and_no_hooks_left():
    torch.manual_seed(0)
    net = DemoNet(num_classes=5, width=8)
    calls = counting(net)
    fwd = ForwardEvidence(net, "features")
    t = salaug.SnapMix(num_classes=5, p=1.0)
    x, labels = torch.rand(6, 3, 32, 32), torch.arange(6) % 5
    hooks_before = hook_count(net)
    y, out, *_ = arm(fwd, t, x, labels, 5)
    assert hook_count(net) > hooks_before
    loss = F.cross_entropy(net(out.images), y)
    loss.backward()
    assert len(calls) == 1
    assert hook_count(net) == hooks_before
    torch.testing.assert_close(y.sum(1), torch.ones(6))


def test_labels_do_not_touch_grads_or_change_the_backward():
    torch.manual_seed(0)
    net = DemoNet(num_classes=5, width=8)
    t = salaug.SnapMix(num_classes=5, p=1.0)
    x, labels = torch.rand(6, 3, 32, 32), torch.arange(6) % 5
    fwd = ForwardEvidence(net, "features")
    y, out, *_ = arm(fwd, t, x, labels, 5)
    logits = net(out.images)
    assert all(p.grad is None for p in net.parameters())
    F.cross_entropy(logits, y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(out.images), y.clone()).backward()  # same labels, no hooks
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_automatic_layer_is_the_one_a_live_cam_chooses():
    net = DemoNet(num_classes=5, width=8)
    fwd = ForwardEvidence(net)
    assert fwd.kind == "auto"
    t = salaug.SnapMix(num_classes=5, p=1.0)
    x = torch.rand(4, 3, 32, 32)
    y, out, *_ = arm(fwd, t, x, torch.arange(4), 5)
    net(out.images)
    live = salaug.sources.LiveCAM(net)
    live.saliency(x, torch.arange(4))
    assert fwd.kind == "cam" and fwd.target_layer_name == live.cam.target_layer_name  # one rule
    assert not fwd.pending and y.filled


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_labels_are_finite(dtype):
    if dtype == torch.float16:
        pytest.importorskip("torch")  # CPU autocast supports float16 in recent torch
    net = DemoNet(num_classes=5, width=8)
    t = salaug.SnapMix(num_classes=5, p=1.0)
    fwd = ForwardEvidence(net, "features")
    y, out, *_ = arm(fwd, t, torch.rand(6, 3, 32, 32), torch.arange(6) % 5, 5)
    with torch.autocast("cpu", dtype=dtype):
        net(out.images)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    torch.testing.assert_close(y.sum(1), torch.ones(6))


# ----------------------------------------------------------------------------- clear errors
def armed(net, layer="features", b=4):
    t = salaug.SnapMix(num_classes=5, p=1.0)
    fwd = ForwardEvidence(net, layer)
    y, out, *_ = arm(fwd, t, torch.rand(b, 3, 32, 32), torch.arange(b) % 5, 5)
    return fwd, out, y


def test_arming_again_before_the_forward_drops_the_first_batch_with_a_warning():
    net = DemoNet(num_classes=5, width=8)
    before = hook_count(net)
    fwd, out, first = armed(net)
    t = salaug.SnapMix(num_classes=5, p=1.0)
    with pytest.warns(RuntimeWarning, match="never filled"):
        second, out2, *_ = arm(fwd, t, torch.rand(4, 3, 32, 32), torch.arange(4), 5)
    with pytest.raises(RuntimeError, match="were dropped"):
        first.sum()
    net(out2.images)
    assert second.filled and not fwd.pending and hook_count(net) == before


@pytest.mark.parametrize("copy", [lambda y: y.double(), lambda y: y.clone(), lambda y: y.to("cpu", copy=True),
                                  lambda y: y + 0, lambda y: y.detach().cpu().numpy(), lambda y: y[0].tolist(),
                                  lambda y: F.cross_entropy(torch.zeros(4, 5), y), lambda y: str(y.sum())])
def test_a_use_before_the_forward_raises_and_names_why(copy):
    net = DemoNet(num_classes=5, width=8)
    fwd, out, y = armed(net)
    with pytest.raises(RuntimeError, match="has not run yet.*Run model\\(images\\) first"):
        copy(y)
    # metadata and no-op conversions are fine before the forward; the forward then fills the same tensor
    assert y.shape == (4, 5) and y.dtype == torch.float32 and y.device.type == "cpu" and len(y) == 4
    assert y.to("cpu") is y and y.float() is y and y.contiguous() is y
    assert "PendingLabels" in repr(y)
    net(out.images)
    assert y.filled and type(y + 0) is torch.Tensor and type(y.clone()) is torch.Tensor
    torch.testing.assert_close(y.double().sum(1), torch.ones(4, dtype=torch.float64))


def test_a_forward_of_other_images_of_the_same_shape_fills_nothing():
    net = DemoNet(num_classes=5, width=8)
    fwd, out, y = armed(net)
    other = torch.rand_like(out.images)
    net(other)                          # another batch, same shape: ignored
    with torch.no_grad():
        net(torch.rand(7, 3, 32, 32))   # a validation batch under no_grad: ignored
    assert fwd.pending and not y.filled
    net(out.images)
    assert y.filled and not fwd.pending
    # the labels are those of the mixed images, as if the other forwards had never run
    fwd2, out2, y2 = armed(net)
    net(out2.images)
    fwd3 = ForwardEvidence(net, "features")
    y3, out3, *_ = arm(fwd3, salaug.SnapMix(num_classes=5, p=1.0), torch.rand(4, 3, 32, 32), torch.arange(4) % 5, 5)
    net(out3.images.clone().contiguous(memory_format=torch.channels_last))  # a copy in another layout is ours
    assert y3.filled


def test_an_exception_in_the_forward_removes_the_hooks_and_drops_the_batch():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DemoNet(num_classes=5, width=8)
            self.fail = True

        def forward(self, x):
            out = self.net(x)
            if self.fail:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return out

    model = Flaky()
    before = hook_count(model)
    fwd, out, y = armed(model, layer="net.features")
    with pytest.warns(RuntimeWarning, match="raised; its labels were dropped"), \
            pytest.raises(torch.cuda.OutOfMemoryError):
        model(out.images)
    assert hook_count(model) == before and not fwd.pending
    with pytest.raises(RuntimeError, match="were dropped"):
        F.cross_entropy(torch.zeros(4, 5), y)
    model.fail = False
    with torch.no_grad():
        model(out.images)  # the next no_grad forward works: no stale hook
    fwd2, out2, y2 = armed(model, layer="net.features")  # and the next batch works
    model(out2.images)
    assert y2.filled and hook_count(model) == before


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_forward_without_gradients_is_refused(ctx):
    net = DemoNet(num_classes=5, width=8)
    fwd, out, _ = armed(net)
    with pytest.raises(RuntimeError, match="without gradients"), ctx():
        net(out.images)
    assert not fwd.pending


def test_target_layer_that_does_not_run_is_refused():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DemoNet(num_classes=5, width=8)
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.net(x)

    model = Skip()
    fwd, out, _ = armed(model, layer="unused")
    with pytest.raises(RuntimeError, match="did not run"):
        model(out.images)
    assert not fwd.pending and hook_count(model) == 0


def test_a_submodule_forward_is_named_when_the_labels_are_used():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DemoNet(num_classes=5, width=8)

        def forward(self, x):
            return self.net(x)

    model = Wrapper()
    fwd, out, y = armed(model, layer="net.features")
    logits = model.net(out.images)  # a training step calling the submodule, not the model
    with pytest.raises(RuntimeError, match="not inside a forward of Wrapper itself.*self.net\\(x\\)"):
        F.cross_entropy(logits, y)
    fwd.cancel()
    assert hook_count(model) == 0


def test_a_tuple_returning_target_layer_is_named_as_such():
    class TupleBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)

        def forward(self, x):
            a = self.conv(x)
            return a, a.mean()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = TupleBlock()
            self.head = nn.Linear(5, 5)

        def forward(self, x):
            a, _ = self.block(x)
            return self.head(a.mean((2, 3)))

    model = Net()
    fwd, out, _ = armed(model, layer="block")
    with pytest.raises(ValueError, match="returns a tuple of 2, not a tensor"):
        model(out.images)
    assert hook_count(model) == 0


def test_a_1x1_target_map_is_warned_about():
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(5, 5))
    fwd, out, y = armed(net, layer="2")
    with pytest.warns(RuntimeWarning, match="1x1 map"):
        net(out.images)
    assert y.filled


def test_compiled_model_and_bad_blend_are_refused():
    net = DemoNet(num_classes=5, width=8)
    with pytest.raises(RuntimeError, match="torch.compile"):
        ForwardEvidence(torch.compile(net))
    with pytest.raises(ValueError, match="blend"):
        ForwardEvidence(net, blend=1.5)
    with pytest.raises(ValueError):
        ForwardEvidence(net, "no.such.layer")


def test_which_transforms_forward_evidence_serves():
    assert ForwardEvidence.serves(salaug.SnapMix(num_classes=3))
    assert ForwardEvidence.serves(salaug.SaliencyMix(num_classes=3))
    assert ForwardEvidence.serves(salaug.ResizeMix(num_classes=3))
    assert not ForwardEvidence.serves(salaug.GuidedMixup(num_classes=3))
    assert not ForwardEvidence.serves(salaug.SalientCrop())
    assert ForwardEvidence.is_default_for(salaug.SnapMix(num_classes=3))
    assert not ForwardEvidence.is_default_for(salaug.SnapMix(num_classes=3, labels="area"))
    assert not ForwardEvidence.is_default_for(salaug.SaliencyMix(num_classes=3))


# ----------------------------------------------------------------------------- ViTs: TransMix
def test_transmix_labels_match_a_direct_attention_computation():
    from salaug.models import tiny_vit

    torch.manual_seed(0)
    vit = tiny_vit(num_classes=5, num_layers=2, hidden_dim=32, mlp_dim=64)
    with torch.no_grad():
        vit.heads.head.weight.normal_()  # torchvision starts the head at zero
    t = salaug.SaliencyMix(num_classes=5, p=1.0)  # CutMix on flat saliency
    fwd = ForwardEvidence(vit)
    assert fwd.kind == "attention" and fwd.blend == 0.5
    attn_module = vit.encoder.layers[-1].self_attention
    seen = {}
    handle = attn_module.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    calls = counting(vit)
    y, out, params, area, soft = arm(fwd, t, torch.rand(6, 3, 32, 32), torch.arange(6) % 5, 5)
    vit(out.images)
    handle.remove()
    assert len(calls) == 1 and not fwd.pending
    x = seen["x"]
    _, weights = attn_module(x, x, x, need_weights=True, average_attn_weights=True)
    attn = weights[:, 0, 1:]  # (B, 64): CLS row over the 8x8 patches
    box = pasted_region(params, (32, 32))
    tokens = F.avg_pool2d(box, 4).flatten(1)  # the box on the token grid, row-major
    lam_attn = (attn * tokens).sum(1) / attn.sum(1)
    share = (0.5 * lam_attn + 0.5 * area) * params["applied"]
    torch.testing.assert_close(y, mix_soft_labels(soft, params["perm"], share), atol=1e-5, rtol=0)


def test_transmix_under_bf16_autocast_is_finite():
    from salaug.models import tiny_vit

    vit = tiny_vit(num_classes=5, num_layers=2, hidden_dim=32, mlp_dim=64)
    t = salaug.SnapMix(num_classes=5, p=1.0)
    fwd = ForwardEvidence(vit)
    y, out, *_ = arm(fwd, t, torch.rand(4, 3, 32, 32), torch.arange(4), 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vit(out.images)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.sum(1), torch.ones(4))


# ----------------------------------------------------------------------------- the augmenter and the callback
def test_augmenter_forward_labels_are_the_visible_shares_with_one_forward_per_step():
    k = 4
    net = MaskNet(k)
    calls = counting(net)
    aug = salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=k, p=1.0), target_layer="features",
                                   labels_from="forward", label_blend=1.0, seed=0)
    for step in range(3):
        x, labels = object_images(8, k)
        x = x.roll(step, 0)
        labels = labels.roll(step, 0)
        images, soft = aug(x, labels)
        params = aug.last.params
        area = aug.transform.area_share(params, (16, 16)) * params["applied"]
        area_labels = mix_soft_labels(F.one_hot(labels, k).float(), params["perm"], area)
        assert len(calls) == step  # the augmenter ran no forward of its own
        net(images)
        assert len(calls) == step + 1
        region = pasted_region(params, (16, 16))[:, 0]
        own = images[torch.arange(8), labels]
        partner = images[torch.arange(8), labels[params["perm"]]]
        vis_own, vis_partner = (own * (1 - region)).sum((1, 2)), (partner * region).sum((1, 2))
        share = torch.where(vis_own + vis_partner > 0, vis_partner / (vis_own + vis_partner), 0.0)
        expected = mix_soft_labels(F.one_hot(labels, k).float(), params["perm"], share * params["applied"])
        torch.testing.assert_close(soft, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(soft, area_labels)


def test_warmup_steps_give_area_labels_even_after_the_forward():
    # During warm-up the labels are the pasted area's, final at once: the forward that follows
    # changes nothing, nothing waits for it, and no hook stays on the model.
    k = 4
    net = MaskNet(k)
    aug = salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=k, p=1.0), target_layer="features",
                                   labels_from="forward", label_blend=1.0, warmup_steps=1, seed=0)
    x, labels = object_images(8, k)
    images, soft = aug(x, labels)
    record = aug.last
    assert record is not None and record.warmup and record.augmented
    params = record.params
    area = aug.transform.area_share(params, (16, 16)) * params["applied"]
    area_labels = mix_soft_labels(F.one_hot(labels, k).float(), params["perm"], area)
    assert not isinstance(soft, PendingLabels) and not aug.source.pending and hook_count(net) == 0
    before = soft.clone()
    net(images)
    torch.testing.assert_close(soft, area_labels, atol=1e-6, rtol=0)
    assert torch.equal(soft, before) and hook_count(net) == 0
    # the step after the warm-up does wait for its forward, and its labels are not the area's
    images, soft = aug(x, labels)
    assert isinstance(soft, PendingLabels) and aug.source.pending
    net(images)
    area = aug.transform.area_share(aug.last.params, (16, 16)) * aug.last.params["applied"]
    assert not torch.allclose(soft, mix_soft_labels(F.one_hot(labels, k).float(), aug.last.params["perm"], area))
    assert hook_count(net) == 0


def test_augmenter_drops_a_batch_whose_forward_never_ran():
    net = DemoNet(num_classes=5, width=8)
    aug = salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=5, p=1.0), labels_from="forward", seed=0)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    _, first = aug(x, y)
    with pytest.warns(RuntimeWarning, match="batch 0 were never filled"):
        images, second = aug(x, y)
    with pytest.raises(RuntimeError, match="batch 0 were dropped"):
        first.clone()
    net(images)
    assert second.filled
    aug(x, y)
    aug.cancel()  # a loop that abandons a batch
    assert hook_count(net) == 0


@pytest.mark.parametrize("options, match", [
    ({"labels_from": "bogus"}, "labels_from"),
    ({"labels_from": "cam", "label_blend": 0.5}, "label_blend"),
    ({"labels_from": "forward", "label_blend": 2.0}, "label_blend"),
    ({"labels_from": "forward", "cam_scale": 0.5}, "cam_scale"),
    ({"labels_from": "forward", "ema_decay": 0.9}, "ema_decay"),
    ({"labels_from": "forward", "targets": "predicted"}, "targets"),
    ({"labels_from": "forward", "cam": "eigencam"}, "cam"),
])
def test_augmenter_forward_options_are_checked(options, match):
    net = DemoNet(num_classes=5, width=8)
    with pytest.raises(ValueError, match=match):
        salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=5), **options)


def test_auto_is_forward_only_for_snapmix_with_saliency_labels_and_default_cam_options():
    net = DemoNet(num_classes=5, width=8)

    def source(transform, **options):
        return salaug.SaliencyAugmenter(net, transform, **options).labels_from

    assert source(salaug.SnapMix(num_classes=5)) == "forward"
    assert source(salaug.SnapMix(num_classes=5, labels="area")) == "cam"
    assert source(salaug.SnapMix(num_classes=5), cam_scale=0.5) == "cam"
    assert source(salaug.SnapMix(num_classes=5), ema_decay=0.9) == "cam"
    assert source(salaug.SaliencyMix(num_classes=5)) == "cam"  # its box follows the CAM
    assert source(salaug.ResizeMix(num_classes=5)) == "cam"


def test_auto_keeps_the_labels_of_a_given_saliency():
    net = DemoNet(num_classes=5, width=8)
    calls = counting(net)
    aug = salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=5, p=1.0), seed=0)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    masks = torch.zeros(4, 1, 32, 32)
    masks[..., 8:24, 8:24] = 1
    _, soft = aug(x, y, saliency=masks)
    ref = salaug.SnapMix(num_classes=5, p=1.0)(x, masks, y, params=aug.last.params)
    torch.testing.assert_close(soft, ref.labels)
    aug(x, y, saliency=masks)  # nothing armed: a second call is fine
    assert len(calls) == 0


def test_augmenter_refuses_forward_labels_for_a_mix_that_is_not_a_box_mix():
    net = DemoNet(num_classes=5, width=8)
    with pytest.raises(ValueError, match="box mix"):
        salaug.SaliencyAugmenter(net, salaug.GuidedMixup(num_classes=5), labels_from="forward")


def test_callback_forward_labels_are_final_when_the_loss_reads_them(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = DemoNet(num_classes=5, width=8)
            self.forwards = 0
            self.read: list = []

        def forward(self, x):
            self.forwards += 1
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            with pytest.raises(RuntimeError, match="has not run yet"):
                y.clone()  # a copy before the forward cannot hold area labels
            logits = self(x)
            self.read.append(y.clone())  # what the loss reads
            return F.cross_entropy(logits, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.rand(24, 3, 32, 32), torch.arange(24) % 5)
    module = Module()
    cb = salaug.SaliencyAugmentation(salaug.SnapMix(num_classes=5, p=1.0), target_layer="net.features",
                                     labels_from="forward", seed=0, log_every_n_steps=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         precision="bf16-mixed", callbacks=[cb])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert module.forwards == 3 and len(module.read) == 3  # one forward per step: no CAM pass
    assert cb.labels_from == "forward"
    for after in module.read:
        assert torch.isfinite(after).all()
        torch.testing.assert_close(after.sum(1), torch.ones(8))
    assert any(bool((after.amax(1) < 1).any()) for after in module.read)  # mixed rows
    assert hook_count(module) == 0


def test_ddp_each_rank_fills_its_labels_from_its_own_forward(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "ddp_fit.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, script, str(tmp_path), "forward"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    y0, y1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert y0.shape == y1.shape == (2, 8, 4)
    torch.testing.assert_close(y0.sum(-1), torch.ones(2, 8))
    assert torch.isfinite(y0).all() and torch.isfinite(y1).all()
    assert not torch.equal(y0, y1)  # each rank its own boxes, its own forward
    assert (y0.amax(-1) < 1).any() and (y1.amax(-1) < 1).any()  # mixed labels
    for rank, after in ((0, y0), (1, y1)):  # the forward rewrote what the callback had written
        assert not torch.allclose(torch.load(tmp_path / f"rank{rank}_before.pt"), after)


# ----------------------------------------------------------------------------- ViTs without a class token, registers
class TimmStyleAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TokenViT(nn.Module):
    """Patches of 4x4, then ``prefix`` learned tokens (class first, then registers) or none (global pool)."""

    def __init__(self, k: int, prefix: int, dim: int = 16) -> None:
        super().__init__()
        self.prefix = prefix
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.tokens = nn.Parameter(torch.randn(1, prefix, dim)) if prefix else None
        self.attn = TimmStyleAttention(dim, 2)
        self.head = nn.Linear(dim, k)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        if self.tokens is not None:
            t = torch.cat([self.tokens.expand(t.shape[0], -1, -1), t], 1)
        t = t + self.attn(t)
        return self.head(t[:, 0] if self.prefix else t.mean(1))


@pytest.mark.parametrize("prefix", [0, 5])
def test_vits_without_a_class_token_or_with_registers_get_labels_from_the_forward(prefix):
    torch.manual_seed(0)
    vit = TokenViT(5, prefix)
    fwd = ForwardEvidence(vit)
    assert fwd.kind == "attention"
    seen = {}
    handle = vit.attn.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    y, out, params, area, soft = arm(fwd, salaug.SaliencyMix(num_classes=5, p=1.0), torch.rand(6, 3, 32, 32),
                                     torch.arange(6) % 5, 5)
    vit(out.images)
    handle.remove()
    assert y.filled
    x = seen["x"]
    b, n, c = x.shape
    q, k, _ = vit.attn.qkv(x).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * vit.attn.scale).softmax(-1).mean(1)  # (B, N, N), head mean
    # no class token: the attention each patch receives; registers: the class token's row past the prefix
    row = attn.mean(1) if prefix == 0 else attn[:, 0, prefix:]
    tokens = F.avg_pool2d(pasted_region(params, (32, 32)), 4).flatten(1)
    share = (0.5 * (row * tokens).sum(1) / row.sum(1) + 0.5 * area) * params["applied"]
    torch.testing.assert_close(y, mix_soft_labels(soft, params["perm"], share), atol=1e-5, rtol=0)


def test_a_token_count_that_tiles_nothing_names_the_fixes():
    vit = TokenViT(5, 1)
    fwd = ForwardEvidence(vit, num_prefix_tokens=3)  # wrong: the model has one
    y, out, *_ = arm(fwd, salaug.SaliencyMix(num_classes=5, p=1.0), torch.rand(2, 3, 32, 32), torch.arange(2), 5)
    with pytest.raises(RuntimeError, match="num_prefix_tokens.*labels_from='cam'"):
        vit(out.images)
    assert hook_count(vit) == 0


# ----------------------------------------------------------------------------- Lightning: ordinary training steps
def _fit(module, tmp_path, callbacks, **kw):
    pl = pytest.importorskip("pytorch_lightning")
    data = torch.utils.data.TensorDataset(torch.rand(16, 3, 32, 32), torch.arange(16) % 5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=callbacks, **kw)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    return trainer


def _module(step):
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = DemoNet(num_classes=5, width=8)
            self.read: list = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return step(self, batch)

        def validation_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Module()


@pytest.mark.parametrize("validation", [False, True])
def test_lightning_step_calling_a_submodule_is_refused_at_the_first_step(tmp_path, validation):
    module = _module(lambda self, batch: F.cross_entropy(self.net(batch[0]), batch[1]))
    cb = salaug.SaliencyAugmentation(salaug.SnapMix(num_classes=5, p=1.0), target_layer="net.features", seed=0,
                                     log_every_n_steps=0)
    kw = {"fast_dev_run": True} if validation else {}
    with pytest.raises(RuntimeError, match=r"not inside a forward of Module itself.*self\(x\)"):
        _fit(module, tmp_path, [cb], **kw)
    assert hook_count(module) == 0  # the exception cancelled the waiting capture
    assert cb.batches_seen == 1


def test_lightning_leaves_no_hook_after_fit_and_logs_the_weight_the_loss_read(tmp_path):
    def step(self, batch):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        own = self.trainer.callbacks[0].augmenter.last.labels.long().unsqueeze(1)
        self.read.append(float(y.gather(1, own).mean()))  # what the loss read: filled by the forward above
        return loss

    module = _module(step)
    logged = []

    class Spy(salaug.SaliencyAugmentation):
        def _log(self, trainer, pl_module, record):
            own = record.labels.long().unsqueeze(1)
            logged.append(float(torch.as_tensor(record.output.labels).gather(1, own).mean()))
            super()._log(trainer, pl_module, record)

    cb = Spy(salaug.SnapMix(num_classes=5, p=1.0), target_layer="net.features", seed=0, log_every_n_steps=0)
    trainer = _fit(module, tmp_path, [cb])
    assert hook_count(module) == 0 and cb.augmenter is not None and not cb.augmenter.source.pending
    assert logged == pytest.approx(module.read) and len(logged) == 2
    assert trainer.callback_metrics["salaug/label_weight_epoch"] == pytest.approx(sum(module.read) / 2, abs=1e-4)


def test_lightning_exception_in_the_step_cancels_the_waiting_capture(tmp_path):
    def step(self, batch):
        raise ValueError("user code fails before its forward")

    module = _module(step)
    cb = salaug.SaliencyAugmentation(salaug.SnapMix(num_classes=5, p=1.0), target_layer="net.features", seed=0,
                                     log_every_n_steps=0)
    with pytest.raises(ValueError, match="user code fails"):
        _fit(module, tmp_path, [cb])
    assert hook_count(module) == 0 and not cb.augmenter.source.pending


def test_lightning_step_that_skips_its_batch_leaves_nothing_waiting(tmp_path):
    module = _module(lambda self, batch: None)  # Lightning skips a batch whose step returns None
    cb = salaug.SaliencyAugmentation(salaug.SnapMix(num_classes=5, p=1.0), target_layer="net.features", seed=0,
                                     log_every_n_steps=0)
    _fit(module, tmp_path, [cb])
    assert hook_count(module) == 0 and cb.batches_seen == 2


def test_a_forward_that_wraps_ours_is_not_ours():
    # Lightning's DDP runs training_step inside a forward of the LightningModule (a redirected forward
    # called with the batch); the step's own self(x) inside it is the forward that fills the labels
    net = DemoNet(num_classes=5, width=8)
    fwd, out, y = armed(net)
    original = net.forward

    def redirected(batch):
        net.forward = original
        return F.cross_entropy(net(batch[0]), batch[1])

    net.forward = redirected  # type: ignore[method-assign]
    loss = net([out.images, y])
    assert y.filled and torch.isfinite(loss) and hook_count(net) == 0


def test_forward_labels_behind_a_frozen_trunk():
    # fine-tuning a frozen backbone: the target layer's output needs no gradient, the head does
    torch.manual_seed(0)
    trainable = DemoNet(num_classes=5, width=8)
    frozen = DemoNet(num_classes=5, width=8)
    frozen.load_state_dict(trainable.state_dict())
    for p in frozen.features.parameters():
        p.requires_grad_(False)
    x, labels = torch.rand(6, 3, 32, 32), torch.arange(6) % 5
    got = {}
    for name, net in (("trainable", trainable), ("frozen", frozen)):
        fwd = ForwardEvidence(net, "features")
        y, out, *_ = arm(fwd, salaug.SnapMix(num_classes=5, p=1.0), x, labels, 5, seed=1)
        F.cross_entropy(net(out.images), y).backward()
        assert y.filled and hook_count(net) == 0
        got[name] = y.clone()
    # the rule reads the head's gradients only: the same labels either way, and the trunk stays untouched
    torch.testing.assert_close(got["frozen"], got["trainable"])
    assert all(p.grad is None for p in frozen.features.parameters())
    assert all(p.grad is not None for p in frozen.parameters() if p.requires_grad)
